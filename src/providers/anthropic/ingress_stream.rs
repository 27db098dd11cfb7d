//! OpenAI chat completion chunks → an Anthropic Messages event stream.

use super::ingress::{message_id, OutUsage};
use super::{error_kind_for_status, stop_reason, unix_now, write_event, OpenAiUsage, SseReader};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// Turns an OpenAI chat completion stream into Anthropic `/v1/messages` events: one
/// `message_start`; each content block as start, deltas, stop (one block open at a time, each
/// tool call its own block); `message_delta` with the stop reason and usage; `message_stop`.
///
/// OpenAI may interleave the argument pieces of parallel tool calls (and text) in any order,
/// while Anthropic sends one block after another. So once a tool call's block is open, it
/// streams live, and any other block that begins after it is gathered whole and sent when the
/// message ends.
pub struct ChatStreamToMessages {
    reader: SseReader,
    model: String,
    started: bool,
    open: Option<Open>,
    /// Blocks begun while a tool call's block was open, in order, with their text so far.
    pending: Vec<(Open, String, String)>,
    /// How many blocks were started; the open one is the last.
    blocks: usize,
    /// OpenAI tool call indexes that got a block.
    tools_seen: Vec<u64>,
    stop: Option<&'static str>,
    refused: bool,
    usage: Option<(u64, u64, u64)>,
    ended: bool,
    error: bool,
}

enum Open {
    Text,
    Tool { index: u64, id: String },
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolDelta<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: StartMessage<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: StartBlock<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: StopDelta,
        usage: OutUsage,
    },
    MessageStop,
    Error {
        error: ErrorOut<'a>,
    },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Error { .. } => "error",
        }
    }
}

#[derive(Serialize)]
struct StartMessage<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [u8; 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: OutUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: EmptyObject,
    },
}

#[derive(Serialize)]
struct EmptyObject {}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

impl ChatStreamToMessages {
    pub fn new(model_id: &str) -> Self {
        ChatStreamToMessages {
            reader: SseReader::default(),
            model: model_id.to_string(),
            started: false,
            open: None,
            pending: Vec::new(),
            blocks: 0,
            tools_seen: Vec::new(),
            stop: None,
            refused: false,
            usage: None,
            ended: false,
            error: false,
        }
    }

    /// Takes upstream bytes, cut anywhere; returns the Anthropic events to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for data in self.reader.push(chunk) {
            self.event(&data, &mut out);
        }
        out
    }

    /// The end of the upstream stream. A stream that gave a finish reason but no `[DONE]` is
    /// still closed properly; one cut short gets no `message_stop`.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for data in self.reader.finish() {
            self.event(&data, &mut out);
        }
        if self.stop.is_some() {
            self.close(&mut out);
        }
        out
    }

    /// (prompt, completion, cached) tokens from the upstream's usage chunk.
    pub fn usage(&self) -> Option<(u64, u64, u64)> {
        self.usage
    }

    /// An error object arrived in the stream.
    pub fn error(&self) -> bool {
        self.error
    }

    /// The message was ended (`[DONE]` or a finish reason).
    pub fn complete(&self) -> bool {
        self.ended
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if data.trim_ascii() == b"[DONE]" {
            self.close(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return;
        };
        if let Some(err) = chunk.error {
            self.fail(&err, out);
            return;
        }
        if self.ended || self.error {
            return;
        }
        self.start(&chunk.id, out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u.counts());
        }
        // Anthropic has one answer; other choices (n > 1) are not sent.
        for choice in chunk.choices.into_iter().flatten().filter(|c| c.index == 0) {
            if let Some(d) = choice.delta {
                if let Some(text) = d.content.filter(|t| !t.is_empty()) {
                    self.text(&text, out);
                }
                if let Some(text) = d.refusal.filter(|t| !t.is_empty()) {
                    self.refused = true;
                    self.text(&text, out);
                }
                for call in d.tool_calls.into_iter().flatten() {
                    self.tool(call, out);
                }
            }
            if let Some(f) = choice.finish_reason {
                self.stop = Some(stop_reason(&f));
            }
        }
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = if id.is_empty() {
            format!("msg_{}", unix_now())
        } else {
            message_id(id)
        };
        let message = StartMessage {
            id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content: [],
            stop_reason: None,
            stop_sequence: None,
            // OpenAI reports usage last; the real numbers go in `message_delta`.
            usage: OutUsage::new((0, 0, 0)),
        };
        emit(out, &Event::MessageStart { message });
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if matches!(self.open, Some(Open::Tool { .. })) {
            match self.pending.last_mut() {
                Some((Open::Text, _, held)) => held.push_str(text),
                _ => self
                    .pending
                    .push((Open::Text, String::new(), text.to_string())),
            }
            return;
        }
        if !matches!(self.open, Some(Open::Text)) {
            self.begin(Open::Text, "", out);
        }
        let delta = BlockDelta::TextDelta { text };
        self.block_delta(delta, out);
    }

    fn tool(&mut self, call: ToolDelta, out: &mut Vec<u8>) {
        let id = call.id.as_deref().filter(|i| !i.is_empty());
        let function = call.function.as_ref();
        let args = function.and_then(|f| f.arguments.as_deref()).unwrap_or("");
        let same =
            |index: u64, open_id: &str| index == call.index && id.is_none_or(|i| i == open_id);
        let continues =
            matches!(&self.open, Some(Open::Tool { index, id: open_id }) if same(*index, open_id));
        if !continues {
            let held = self.pending.iter_mut().rev().find(
                |(o, _, _)| matches!(o, Open::Tool { index, id: open_id } if same(*index, open_id)),
            );
            if let Some((_, _, held)) = held {
                held.push_str(args);
                return;
            }
            // A piece of a call whose block is already closed cannot be sent.
            if id.is_none() && self.tools_seen.contains(&call.index) {
                return;
            }
            let id = id.map_or_else(
                || format!("call_{}", self.blocks + self.pending.len()),
                str::to_string,
            );
            let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
            self.tools_seen.push(call.index);
            let open = Open::Tool {
                index: call.index,
                id,
            };
            if matches!(self.open, Some(Open::Tool { .. })) {
                self.pending
                    .push((open, name.to_string(), args.to_string()));
                return;
            }
            self.begin(open, name, out);
        }
        if !args.is_empty() {
            let delta = BlockDelta::InputJsonDelta { partial_json: args };
            self.block_delta(delta, out);
        }
    }

    /// Closes the open block and starts another.
    fn begin(&mut self, open: Open, name: &str, out: &mut Vec<u8>) {
        self.end_block(out);
        let content_block = match &open {
            Open::Text => StartBlock::Text { text: "" },
            Open::Tool { id, .. } => StartBlock::ToolUse {
                id,
                name,
                input: EmptyObject {},
            },
        };
        let index = self.blocks;
        emit(
            out,
            &Event::ContentBlockStart {
                index,
                content_block,
            },
        );
        self.blocks += 1;
        self.open = Some(open);
    }

    fn block_delta(&self, delta: BlockDelta, out: &mut Vec<u8>) {
        let index = self.blocks.saturating_sub(1);
        emit(out, &Event::ContentBlockDelta { index, delta });
    }

    fn end_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            let index = self.blocks - 1;
            emit(out, &Event::ContentBlockStop { index });
        }
    }

    /// Ends the message: the open block, the stop reason with usage, `message_stop`.
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.ended || self.error {
            return;
        }
        self.start("", out);
        self.end_block(out);
        for (open, name, held) in std::mem::take(&mut self.pending) {
            let text = matches!(open, Open::Text);
            self.begin(open, &name, out);
            if !held.is_empty() {
                let delta = if text {
                    BlockDelta::TextDelta { text: &held }
                } else {
                    BlockDelta::InputJsonDelta {
                        partial_json: &held,
                    }
                };
                self.block_delta(delta, out);
            }
            self.end_block(out);
        }
        let stop_reason = if self.refused {
            "refusal"
        } else {
            self.stop.unwrap_or("end_turn")
        };
        let delta = StopDelta {
            stop_reason,
            stop_sequence: None,
        };
        let usage = OutUsage::new(self.usage.unwrap_or_default());
        emit(out, &Event::MessageDelta { delta, usage });
        emit(out, &Event::MessageStop);
        self.ended = true;
    }

    fn fail(&mut self, err: &Value, out: &mut Vec<u8>) {
        self.error = true;
        let text = |key: &str| err[key].as_str().unwrap_or("");
        let kind = match (text("type"), text("code")) {
            (_, "rate_limit_exceeded") | ("rate_limit_error", _) => "rate_limit_error",
            (_, "overloaded") | ("overloaded_error", _) => "overloaded_error",
            (_, "invalid_request") | ("invalid_request_error", _) => "invalid_request_error",
            _ => match err["code"].as_u64().and_then(|c| u16::try_from(c).ok()) {
                Some(status) => error_kind_for_status(status),
                None => "api_error",
            },
        };
        let message = match err {
            Value::String(s) => s.as_str(),
            _ => text("message"),
        };
        let message = if message.is_empty() {
            "the upstream stream failed"
        } else {
            message
        };
        emit(
            out,
            &Event::Error {
                error: ErrorOut { kind, message },
            },
        );
    }
}

fn emit(out: &mut Vec<u8>, event: &Event) {
    write_event(out, Some(event.name()), event);
}

#[cfg(test)]
mod tests {
    use super::super::shapes;
    use super::*;
    use serde_json::json;

    fn replay(input: &[u8], cuts: &[usize]) -> (String, ChatStreamToMessages) {
        let mut t = ChatStreamToMessages::new("claude-alias");
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            out.extend(t.push(&input[from..cut]));
            from = cut;
        }
        out.extend(t.finish());
        (String::from_utf8(out).unwrap(), t)
    }

    /// A content block as seen in the event stream.
    #[derive(Debug, PartialEq)]
    struct Block {
        kind: String,
        id: String,
        name: String,
        body: String,
    }

    /// Checks the event grammar and returns the blocks, the final `message_delta` and whether
    /// the stream ended with `message_stop`.
    fn parse(out: &str) -> (Vec<Block>, Option<Value>, bool) {
        let mut blocks: Vec<Block> = Vec::new();
        let mut open: Option<usize> = None;
        let mut delta = None;
        let mut stopped = false;
        let mut starts = 0;
        for (i, e) in out.split_terminator("\n\n").enumerate() {
            let (name_line, data) = e.split_once('\n').unwrap();
            let name = name_line.strip_prefix("event: ").unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["type"], name);
            assert!(!stopped, "nothing after message_stop");
            match name {
                "message_start" => {
                    assert_eq!(i, 0, "message_start comes first");
                    starts += 1;
                    let m = &v["message"];
                    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
                    assert_eq!(m["model"], "claude-alias");
                    assert_eq!(m["content"], json!([]));
                    assert!(m["usage"]["input_tokens"].is_u64());
                }
                "content_block_start" => {
                    assert!(open.is_none(), "one block open at a time");
                    assert!(delta.is_none());
                    let index = v["index"].as_u64().unwrap() as usize;
                    assert_eq!(index, blocks.len(), "block indexes count up");
                    let b = &v["content_block"];
                    blocks.push(Block {
                        kind: b["type"].as_str().unwrap().into(),
                        id: b["id"].as_str().unwrap_or("").into(),
                        name: b["name"].as_str().unwrap_or("").into(),
                        body: String::new(),
                    });
                    if b["type"] == "tool_use" {
                        assert_eq!(b["input"], json!({}));
                    } else {
                        assert_eq!(b["text"], "");
                    }
                    open = Some(index);
                }
                "content_block_delta" => {
                    let index = v["index"].as_u64().unwrap() as usize;
                    assert_eq!(open, Some(index));
                    let b = &mut blocks[index];
                    let d = &v["delta"];
                    match (b.kind.as_str(), d["type"].as_str().unwrap()) {
                        ("text", "text_delta") => b.body.push_str(d["text"].as_str().unwrap()),
                        ("tool_use", "input_json_delta") => {
                            b.body.push_str(d["partial_json"].as_str().unwrap())
                        }
                        other => panic!("delta {other:?}"),
                    }
                }
                "content_block_stop" => {
                    assert_eq!(open.take(), Some(v["index"].as_u64().unwrap() as usize));
                }
                "message_delta" => {
                    assert!(open.is_none(), "blocks closed before message_delta");
                    assert!(delta.is_none(), "one message_delta");
                    delta = Some(v.clone());
                }
                "message_stop" => {
                    assert!(delta.is_some());
                    stopped = true;
                }
                other => panic!("unexpected event {other}"),
            }
        }
        assert_eq!(starts, 1, "one message_start");
        (blocks, delta, stopped)
    }

    /// Choice 0's text, tool calls (id, name, arguments) and usage, read straight from the file.
    fn expected(input: &[u8]) -> (String, Vec<(String, String, String)>, Value, String) {
        let mut text = String::new();
        let mut tools: Vec<(String, String, String)> = Vec::new();
        let mut usage = Value::Null;
        let mut finish = String::new();
        for line in std::str::from_utf8(input).unwrap().lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(c) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if !c["usage"].is_null() {
                usage = c["usage"].clone();
            }
            for ch in c["choices"].as_array().unwrap() {
                if ch["index"] != 0 {
                    continue;
                }
                let d = &ch["delta"];
                text.push_str(d["content"].as_str().unwrap_or(""));
                text.push_str(d["refusal"].as_str().unwrap_or(""));
                for call in d["tool_calls"].as_array().into_iter().flatten() {
                    let i = call["index"].as_u64().unwrap() as usize;
                    if let Some(id) = call["id"].as_str() {
                        assert_eq!(i, tools.len());
                        let name = call["function"]["name"].as_str().unwrap();
                        tools.push((id.into(), name.into(), String::new()));
                    }
                    tools[i]
                        .2
                        .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                }
                if let Some(f) = ch["finish_reason"].as_str() {
                    finish = f.to_string();
                }
            }
        }
        (text, tools, usage, finish)
    }

    #[test]
    fn recorded_streams_give_valid_event_sequences() {
        for (name, input) in shapes("openai/chat_completions", "stream_", ".sse") {
            let (text, tools, usage, finish) = expected(&input);
            let len = input.len();
            let cut_sets: Vec<Vec<usize>> = vec![
                vec![],
                vec![len / 2],
                (1..len).step_by(13).collect(),
                (1..len).step_by(500).collect(),
            ];
            for cuts in cut_sets {
                let (out, t) = replay(&input, &cuts);
                let (blocks, delta, stopped) = parse(&out);
                assert!(stopped, "{name}");
                let got_text: String = blocks
                    .iter()
                    .filter(|b| b.kind == "text")
                    .map(|b| b.body.as_str())
                    .collect();
                assert_eq!(got_text, text, "{name}");
                assert!(blocks.iter().filter(|b| b.kind == "text").count() <= 1);
                let got_tools: Vec<(String, String, String)> = blocks
                    .into_iter()
                    .filter(|b| b.kind == "tool_use")
                    .map(|b| (b.id, b.name, b.body))
                    .collect();
                assert_eq!(got_tools, tools, "{name}");
                let delta = delta.unwrap();
                let refused = name.contains("refusal");
                let want = match finish.as_str() {
                    _ if refused => "refusal",
                    "tool_calls" => "tool_use",
                    "length" => "max_tokens",
                    _ => "end_turn",
                };
                assert_eq!(delta["delta"]["stop_reason"], want, "{name}");
                let prompt = usage["prompt_tokens"].as_u64().unwrap();
                let completion = usage["completion_tokens"].as_u64().unwrap();
                assert_eq!(delta["usage"]["input_tokens"], prompt, "{name}");
                assert_eq!(delta["usage"]["output_tokens"], completion, "{name}");
                assert_eq!(delta["usage"]["cache_read_input_tokens"], 0);
                assert_eq!(t.usage(), Some((prompt, completion, 0)));
                assert!(!t.error());
            }
        }
    }

    #[test]
    fn parallel_tool_calls_are_two_blocks() {
        let files = shapes(
            "openai/chat_completions",
            "stream_parse_multiple_pydantic_tools",
            ".sse",
        );
        let input = &files[0].1;
        let (out, t) = replay(input, &[]);
        let (blocks, delta, _) = parse(&out);
        let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["GetWeatherArgs", "get_stock_price"]);
        for b in &blocks {
            assert_eq!(b.kind, "tool_use");
            assert!(b.id.starts_with("call_"));
            serde_json::from_str::<Value>(&b.body).unwrap();
        }
        assert_eq!(delta.unwrap()["delta"]["stop_reason"], "tool_use");
        assert_eq!(t.usage(), Some((149, 60, 0)));
        for cut in (1..input.len()).step_by(3) {
            assert_eq!(replay(input, &[cut]).0, out, "cut at {cut}");
        }
    }

    fn chunk(delta: Value, finish: Value) -> String {
        let c = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    #[test]
    fn text_then_tools_then_usage_with_cache() {
        let input = [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hi"}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "a", "arguments": "{\"x\""}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), Value::Null),
            // A server that numbers every call 0 but gives each its own id.
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_b", "type": "function",
                "function": {"name": "b", "arguments": "{}"}}]}), Value::Null),
            chunk(json!({}), json!("tool_calls")),
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":64}}}\r\n\r\n".to_string(),
            "data: [DONE]\r\n\r\n".to_string(),
        ]
        .concat();
        let (out, t) = replay(input.as_bytes(), &[]);
        let (blocks, delta, stopped) = parse(&out);
        assert!(stopped);
        let got: Vec<(&str, &str, &str)> = blocks
            .iter()
            .map(|b| (b.kind.as_str(), b.name.as_str(), b.body.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("text", "", "Hi"),
                ("tool_use", "a", "{\"x\":1}"),
                ("tool_use", "b", "{}")
            ]
        );
        assert!(out.contains("\"id\":\"msg_chatcmpl-1\""));
        assert_eq!(
            delta.unwrap(),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 36, "output_tokens": 9, "cache_read_input_tokens": 64,
                    "cache_creation_input_tokens": 0}})
        );
        assert_eq!(t.usage(), Some((100, 9, 64)));
    }

    #[test]
    fn endings_errors_and_other_choices() {
        // A finish reason without [DONE] still closes the message.
        let input = [
            chunk(json!({"content": "a"}), Value::Null),
            r#"data: {"id":"x","choices":[{"index":1,"delta":{"content":"other"}}]}"#.to_string()
                + "\n\n",
            chunk(json!({}), json!("length")),
        ]
        .concat();
        let (out, _) = replay(input.as_bytes(), &[]);
        let (blocks, delta, stopped) = parse(&out);
        assert!(stopped);
        assert_eq!(blocks[0].body, "a");
        assert_eq!(delta.unwrap()["delta"]["stop_reason"], "max_tokens");

        // Cut short: no message_stop.
        let (out, t) = replay(chunk(json!({"content": "a"}), Value::Null).as_bytes(), &[]);
        let (_, delta, stopped) = parse(&out);
        assert!(!stopped && delta.is_none() && t.usage().is_none());

        // An error object mid-stream becomes an `error` event and ends the message.
        let input = chunk(json!({"content": "a"}), Value::Null)
            + "data: {\"error\":{\"message\":\"slow down\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n"
            + "data: [DONE]\n\n";
        let (out, t) = replay(input.as_bytes(), &[]);
        assert!(t.error());
        let last = out.split_terminator("\n\n").last().unwrap();
        assert_eq!(
            last,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}"
        );
        assert!(!out.contains("message_stop"));

        // Only [DONE]: an empty but valid message.
        let (out, _) = replay(b"data: [DONE]\n\n", &[]);
        let (blocks, delta, stopped) = parse(&out);
        assert!(stopped && blocks.is_empty());
        assert_eq!(delta.unwrap()["delta"]["stop_reason"], "end_turn");
    }
}
