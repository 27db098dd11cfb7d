//! Anthropic Messages stream → OpenAI chat completion chunks.

use super::response::openai_error_json;
use super::{
    compact_json, finish_reason, unix_now, write_event, AnthropicUsage, ChatUsage, ErrorBody,
    SseReader, Tokens,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Turns an Anthropic `/v1/messages` event stream into OpenAI `chat.completion.chunk` events.
pub struct MessagesStreamToChat {
    reader: SseReader,
    model: String,
    include_usage: bool,
    id: String,
    created: u64,
    /// The `tool_use` blocks, in the order they started; a block's OpenAI tool call index is its
    /// place here. Deltas find their block by its Anthropic index, in whatever order they come.
    tool_blocks: Vec<ToolBlock>,
    tokens: Tokens,
    seen_usage: bool,
    /// A chunk with `finish_reason` was sent.
    finished: bool,
    stopped: bool,
    error: bool,
}

struct ToolBlock {
    /// The Anthropic content block index.
    block: u64,
    /// Some argument text was sent for it.
    has_arguments: bool,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    message: Option<StartMessage>,
    index: Option<u64>,
    #[serde(borrow)]
    content_block: Option<StartBlock<'a>>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    usage: Option<AnthropicUsage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Cow<'a, str>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Cow<'a, str>,
    #[serde(default, borrow)]
    partial_json: Cow<'a, str>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl MessagesStreamToChat {
    /// `include_usage`: the client asked for `stream_options.include_usage`.
    pub fn new(model_id: &str, include_usage: bool) -> Self {
        MessagesStreamToChat {
            reader: SseReader::default(),
            model: model_id.to_string(),
            include_usage,
            id: String::new(),
            created: unix_now(),
            tool_blocks: Vec::new(),
            tokens: Tokens::default(),
            seen_usage: false,
            finished: false,
            stopped: false,
            error: false,
        }
    }

    /// Takes upstream bytes, cut anywhere; returns the OpenAI events to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for data in self.reader.push(chunk) {
            self.event(&data, &mut out);
        }
        out
    }

    /// The end of the upstream stream: what is left, then the usage chunk (if asked for) and
    /// `data: [DONE]` when the stream ended properly with `message_stop`.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for data in self.reader.finish() {
            self.event(&data, &mut out);
        }
        if self.stopped && !self.error {
            if self.include_usage {
                self.write(&mut out, &[], Some(self.tokens.chat_usage()));
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    /// (prompt, completion, cached) tokens, once the upstream reported any.
    pub fn usage(&self) -> Option<(u64, u64, u64)> {
        let t = &self.tokens;
        self.seen_usage
            .then_some((t.prompt(), t.output, t.cache_read))
    }

    /// An `error` event arrived.
    pub fn error(&self) -> bool {
        self.error
    }

    /// `message_stop` arrived.
    pub fn complete(&self) -> bool {
        self.stopped
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let Ok(e) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        if let Some(u) = &e.usage {
            self.tokens.merge(u);
            self.seen_usage = true;
        }
        match e.kind.as_ref() {
            "message_start" => {
                if let Some(m) = e.message {
                    self.id = m.id;
                    self.tokens.merge(&m.usage);
                    self.seen_usage = true;
                }
                let delta = ChunkDelta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Default::default()
                };
                self.delta(out, delta, None);
            }
            "content_block_start" => match e.content_block {
                Some(b) if b.kind == "tool_use" => {
                    let index = self.tool_blocks.len();
                    self.tool_blocks.push(ToolBlock {
                        block: e.index.unwrap_or(0),
                        has_arguments: false,
                    });
                    let call = ToolCallDelta {
                        index,
                        id: Some(&b.id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(&b.name),
                            arguments: "",
                        },
                    };
                    self.tool_delta(out, call);
                    // Anthropic starts with `"input": {}` and streams the input as deltas; a
                    // compatible server may give the whole input here instead.
                    let input = b.input.map(|i| compact_json(i.get()));
                    if let Some(input) = input.filter(|i| i.starts_with('{') && i != "{}") {
                        self.arguments(out, index, &input);
                    }
                }
                Some(b) if b.kind == "text" && !b.text.is_empty() => {
                    self.text(out, &b.text);
                }
                _ => {}
            },
            "content_block_delta" => match e.delta {
                Some(d) if d.kind == "text_delta" && !d.text.is_empty() => self.text(out, &d.text),
                Some(d) if d.kind == "input_json_delta" && !d.partial_json.is_empty() => {
                    // Deltas of server-side tools (web search, code execution) are not sent.
                    if let Some(index) = self.tool_index(e.index.unwrap_or(0)) {
                        self.arguments(out, index, &d.partial_json);
                    }
                }
                _ => {}
            },
            "content_block_stop" => {
                // A tool called with no input streams no argument text; OpenAI clients parse the
                // arguments as JSON, so they get `{}` as OpenAI would send.
                match self.tool_index(e.index.unwrap_or(0)) {
                    Some(index) if !self.tool_blocks[index].has_arguments => {
                        self.arguments(out, index, "{}");
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(stop) = e.delta.and_then(|d| d.stop_reason) {
                    self.finish_with(out, finish_reason(&stop));
                }
            }
            "message_stop" => {
                // A message that ends without a stop reason still tells the client it ended.
                self.finish_with(out, "stop");
                self.stopped = true;
            }
            "error" => {
                self.error = true;
                let err = e.error.unwrap_or(ErrorBody {
                    kind: "api_error".into(),
                    message: String::new(),
                });
                let message = if err.message.is_empty() {
                    "the upstream stream failed"
                } else {
                    &err.message
                };
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&openai_error_json(&err.kind, message));
                out.extend_from_slice(b"\n\n");
            }
            _ => {}
        }
    }

    /// The OpenAI tool call index of the `tool_use` block at Anthropic index `block`.
    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tool_blocks.iter().rposition(|t| t.block == block)
    }

    fn arguments(&mut self, out: &mut Vec<u8>, index: usize, arguments: &str) {
        self.tool_blocks[index].has_arguments = true;
        let call = ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta {
                name: None,
                arguments,
            },
        };
        self.tool_delta(out, call);
    }

    /// The chunk with the finish reason, once.
    fn finish_with(&mut self, out: &mut Vec<u8>, reason: &'static str) {
        if !self.finished {
            self.finished = true;
            self.delta(out, ChunkDelta::default(), Some(reason));
        }
    }

    fn text(&self, out: &mut Vec<u8>, text: &str) {
        let delta = ChunkDelta {
            content: Some(text),
            ..Default::default()
        };
        self.delta(out, delta, None);
    }

    fn tool_delta(&self, out: &mut Vec<u8>, call: ToolCallDelta) {
        let delta = ChunkDelta {
            tool_calls: Some([call]),
            ..Default::default()
        };
        self.delta(out, delta, None);
    }

    fn delta(&self, out: &mut Vec<u8>, delta: ChunkDelta, finish_reason: Option<&'static str>) {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        };
        self.write(out, std::slice::from_ref(&choice), None);
    }

    fn write(&self, out: &mut Vec<u8>, choices: &[ChunkChoice], usage: Option<ChatUsage>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        write_event(out, None, &chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::super::shapes;
    use super::*;
    use serde_json::{json, Value};

    /// What the recorded stream says: text, tool arguments per tool block, usage, and whether
    /// it ended with `message_stop`.
    struct Expected {
        text: String,
        tools: Vec<(String, String, String)>,
        prompt: u64,
        completion: u64,
        cached: u64,
        stops: bool,
        finish: Option<&'static str>,
        id: String,
    }

    fn expected(input: &[u8]) -> Expected {
        let mut x = Expected {
            text: String::new(),
            tools: Vec::new(),
            prompt: 0,
            completion: 0,
            cached: 0,
            stops: false,
            finish: None,
            id: String::new(),
        };
        let mut tool_at = Vec::new();
        let text = String::from_utf8(input.to_vec()).unwrap();
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let e: Value = serde_json::from_str(data).unwrap();
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            match e["type"].as_str().unwrap() {
                "message_start" => {
                    let u = &e["message"]["usage"];
                    x.id = e["message"]["id"].as_str().unwrap().to_string();
                    x.prompt = n(&u["input_tokens"])
                        + n(&u["cache_read_input_tokens"])
                        + n(&u["cache_creation_input_tokens"]);
                    x.cached = n(&u["cache_read_input_tokens"]);
                    x.completion = n(&u["output_tokens"]);
                }
                "content_block_start" if e["content_block"]["type"] == "tool_use" => {
                    tool_at.push(n(&e["index"]));
                    let b = &e["content_block"];
                    x.tools.push((
                        b["id"].as_str().unwrap().into(),
                        b["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                }
                "content_block_delta" => match e["delta"]["type"].as_str().unwrap() {
                    "text_delta" => x.text.push_str(e["delta"]["text"].as_str().unwrap()),
                    "input_json_delta" => {
                        let at = tool_at.iter().position(|i| *i == n(&e["index"])).unwrap();
                        x.tools[at]
                            .2
                            .push_str(e["delta"]["partial_json"].as_str().unwrap());
                    }
                    _ => {}
                },
                "message_delta" => {
                    x.completion = x.completion.max(n(&e["usage"]["output_tokens"]));
                    x.finish = Some(finish_reason(e["delta"]["stop_reason"].as_str().unwrap()));
                }
                "message_stop" => x.stops = true,
                _ => {}
            }
        }
        x
    }

    fn replay(input: &[u8], cuts: &[usize], include_usage: bool) -> (String, MessagesStreamToChat) {
        let mut t = MessagesStreamToChat::new("my-model", include_usage);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            out.extend(t.push(&input[from..cut]));
            from = cut;
        }
        out.extend(t.finish());
        (String::from_utf8(out).unwrap(), t)
    }

    /// Checks the OpenAI stream against what the recording says.
    fn check(name: &str, out: &str, t: &MessagesStreamToChat, x: &Expected, include_usage: bool) {
        assert!(out.ends_with("\n\n"), "{name}");
        let events: Vec<&str> = out.trim_end().split("\n\n").collect();
        let mut text = String::new();
        let mut tools: Vec<(String, String, String)> = Vec::new();
        let mut usage_chunks = Vec::new();
        let mut finishes = Vec::new();
        let mut done = false;
        for (i, e) in events.iter().enumerate() {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("{name}: {e}"));
            assert!(!data.contains('\n'));
            if data == "[DONE]" {
                assert_eq!(i, events.len() - 1, "{name}: [DONE] is last");
                done = true;
                continue;
            }
            let c: Value = serde_json::from_str(data).unwrap();
            assert_eq!(c["id"], x.id.as_str(), "{name}");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "my-model");
            assert!(c["created"].is_u64());
            if i == 0 {
                assert_eq!(
                    c["choices"][0]["delta"],
                    json!({"role": "assistant", "content": ""})
                );
            }
            let choices = c["choices"].as_array().unwrap();
            if choices.is_empty() {
                usage_chunks.push(c["usage"].clone());
                continue;
            }
            let choice = &choices[0];
            if let Some(f) = choice["finish_reason"].as_str() {
                finishes.push(f.to_string());
            }
            let delta = &choice["delta"];
            if let Some(s) = delta["content"].as_str() {
                text.push_str(s);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap() as usize;
                if let Some(id) = call["id"].as_str() {
                    assert_eq!(index, tools.len(), "{name}: new calls count up");
                    assert_eq!(call["type"], "function");
                    assert_eq!(call["function"]["arguments"], "");
                    tools.push((
                        id.into(),
                        call["function"]["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                } else {
                    tools[index]
                        .2
                        .push_str(call["function"]["arguments"].as_str().unwrap());
                }
            }
        }
        assert_eq!(text, x.text, "{name}");
        assert_eq!(tools, x.tools, "{name}");
        assert_eq!(done, x.stops, "{name}");
        let finish: Vec<String> = x.finish.iter().map(|f| f.to_string()).collect();
        assert_eq!(finishes, finish, "{name}");
        assert_eq!(
            t.usage(),
            Some((x.prompt, x.completion, x.cached)),
            "{name}"
        );
        if include_usage && x.stops {
            assert_eq!(usage_chunks.len(), 1, "{name}");
            let u = &usage_chunks[0];
            assert_eq!(u["prompt_tokens"], x.prompt);
            assert_eq!(u["completion_tokens"], x.completion);
            assert_eq!(u["total_tokens"], x.prompt + x.completion);
            assert_eq!(u["prompt_tokens_details"]["cached_tokens"], x.cached);
        } else {
            assert!(usage_chunks.is_empty(), "{name}");
        }
        assert!(!t.error());
    }

    #[test]
    fn recorded_streams_cut_anywhere() {
        for (name, input) in shapes("anthropic/messages_sse", "", ".sse") {
            let x = expected(&input);
            let len = input.len();
            let cut_sets: Vec<Vec<usize>> = vec![
                vec![],
                vec![1],
                vec![len / 3, 2 * len / 3],
                (1..len).step_by(7).collect(),
                (1..len).step_by(64).collect(),
                vec![len - 1],
            ];
            for cuts in cut_sets {
                for include_usage in [true, false] {
                    let (out, t) = replay(&input, &cuts, include_usage);
                    check(&name, &out, &t, &x, include_usage);
                }
            }
            let crlf = String::from_utf8(input.clone())
                .unwrap()
                .replace('\n', "\r\n");
            let (out, t) = replay(crlf.as_bytes(), &[len / 2], true);
            check(&name, &out, &t, &x, true);
        }
    }

    #[test]
    fn one_recording_cut_at_every_byte() {
        let files = shapes(
            "anthropic/messages_sse",
            "fixture_tool_use_response",
            ".sse",
        );
        let input = &files[0].1;
        let x = expected(input);
        assert_eq!(x.tools.len(), 1);
        // Only `created` could differ: it is read from the clock once per translator.
        let norm = |s: &str| {
            let mut pieces = s.split("\"created\":");
            let first = pieces.next().unwrap_or("").to_string();
            pieces.fold(first, |acc, p| {
                acc + p.trim_start_matches(|c: char| c.is_ascii_digit())
            })
        };
        let whole = norm(&replay(input, &[], true).0);
        for cut in 1..input.len() {
            let (out, t) = replay(input, &[cut], true);
            check(&files[0].0, &out, &t, &x, true);
            assert_eq!(norm(&out), whole, "cut at {cut}");
        }
        let every: Vec<usize> = (1..input.len()).collect();
        let (out, t) = replay(input, &every, true);
        check(&files[0].0, &out, &t, &x, true);
    }

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":50,\"cache_read_input_tokens\":30,\"cache_creation_input_tokens\":5,\"output_tokens\":1}}}\n\n";

    #[test]
    fn parallel_tool_calls_keep_their_index() {
        let body = format!(
            "{START}{}{}{}{}{}{}{}{}{}{}",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Both.\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"a\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":1}\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_b\",\"name\":\"b\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"input_tokens\":50,\"cache_read_input_tokens\":30,\"output_tokens\":20}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let x = expected(body.as_bytes());
        let (out, t) = replay(body.as_bytes(), &[], true);
        check("parallel", &out, &t, &x, true);
        assert_eq!(t.usage(), Some((85, 20, 30)));
        assert!(out.contains("\"tool_calls\":[{\"index\":1,\"id\":\"toolu_b\""));
        assert!(out.contains("\"cache_creation_input_tokens\":5"));
    }

    fn ev(kind: &str, body: Value) -> String {
        let mut v = body;
        v["type"] = json!(kind);
        format!("event: {kind}\ndata: {v}\n\n")
    }

    #[test]
    fn interleaved_blocks_keep_their_arguments() {
        let json_delta = |index: u64, partial: &str| {
            ev(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "input_json_delta", "partial_json": partial}}),
            )
        };
        let text_delta = |index: u64, text: &str| {
            ev(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "text_delta", "text": text}}),
            )
        };
        let start_tool = |index: u64, id: &str, name: &str| {
            ev(
                "content_block_start",
                json!({"index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            )
        };
        let body = [
            START.to_string(),
            start_tool(0, "toolu_a", "a"),
            ev(
                "content_block_start",
                json!({"index": 1, "content_block": {"type": "text", "text": ""}}),
            ),
            start_tool(2, "toolu_b", "b"),
            json_delta(2, "{\"y\":"),
            text_delta(1, "Hel"),
            json_delta(0, "{\"x\":"),
            json_delta(2, "2}"),
            text_delta(1, "lo"),
            json_delta(0, "1}"),
            ev("content_block_stop", json!({"index": 0})),
            ev("content_block_stop", json!({"index": 2})),
            ev("content_block_stop", json!({"index": 1})),
            // A text block after the tool blocks, then a tool with no arguments at all.
            ev(
                "content_block_start",
                json!({"index": 3, "content_block": {"type": "text", "text": ""}}),
            ),
            text_delta(3, " there"),
            ev("content_block_stop", json!({"index": 3})),
            start_tool(4, "toolu_c", "c"),
            json_delta(4, ""),
            ev("content_block_stop", json!({"index": 4})),
            ev(
                "message_delta",
                json!({"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            ),
            ev("message_stop", json!({})),
        ]
        .concat();
        for cut in [0, body.len() / 2, body.len() - 3] {
            let (out, t) = replay(body.as_bytes(), &[cut], false);
            let (text, calls) = openai_view(&out);
            assert_eq!(text, "Hello there");
            assert_eq!(
                calls,
                [
                    (
                        "toolu_a".to_string(),
                        "a".to_string(),
                        "{\"x\":1}".to_string()
                    ),
                    ("toolu_b".into(), "b".into(), "{\"y\":2}".into()),
                    ("toolu_c".into(), "c".into(), "{}".into()),
                ]
            );
            assert!(out.contains("\"finish_reason\":\"tool_calls\""));
            assert!(out.ends_with("data: [DONE]\n\n") && !t.error());
        }
    }

    #[test]
    fn whole_input_at_start_and_a_missing_stop_reason() {
        // A compatible server that gives the input in `content_block_start` and ends the message
        // without a `message_delta`.
        let body = [
            START.to_string(),
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"a\",\"input\":{\"z\": 1, \"a\": [true]}}}\n\n".to_string(),
            ev("content_block_stop", json!({"index": 0})),
            ev("message_stop", json!({})),
        ]
        .concat();
        let (out, _) = replay(body.as_bytes(), &[], false);
        let (_, calls) = openai_view(&out);
        assert_eq!(
            calls,
            [(
                "toolu_a".into(),
                "a".into(),
                "{\"z\":1,\"a\":[true]}".into()
            )]
        );
        assert_eq!(
            out.matches("\"finish_reason\":\"stop\"").count(),
            1,
            "{out}"
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    /// The content text and the tool calls (id, name, arguments) an OpenAI client puts together.
    fn openai_view(out: &str) -> (String, Vec<(String, String, String)>) {
        let mut text = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for e in out.split_terminator("\n\n") {
            let data = e.strip_prefix("data: ").unwrap();
            if data == "[DONE]" {
                continue;
            }
            let c: Value = serde_json::from_str(data).unwrap();
            let Some(choice) = c["choices"].get(0) else {
                continue;
            };
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = call["index"].as_u64().unwrap() as usize;
                if i == calls.len() {
                    calls.push(Default::default());
                }
                let c = &mut calls[i];
                c.0.push_str(call["id"].as_str().unwrap_or(""));
                c.1.push_str(call["function"]["name"].as_str().unwrap_or(""));
                c.2.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        (text, calls)
    }

    #[test]
    fn error_event_and_truncated_streams() {
        let body = format!(
            "{START}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n"
        );
        let (out, t) = replay(body.as_bytes(), &[], true);
        assert!(t.error());
        let last = out.trim_end().rsplit("\n\n").next().unwrap();
        let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Overloaded", "type": "overloaded_error", "code": "overloaded"}})
        );
        assert!(!out.contains("[DONE]"));

        let (out, t) = replay(START.as_bytes(), &[], true);
        assert!(!t.error());
        assert!(!out.contains("[DONE]") && !out.contains("\"choices\":[]"));
        assert_eq!(t.usage(), Some((85, 1, 30)));

        let (out, t) = replay(b"", &[], true);
        assert!(out.is_empty() && t.usage().is_none());
    }
}
