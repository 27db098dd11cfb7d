//! OpenAI chat completions request → Anthropic Messages request.

use super::{read_content, Content, RawObject, Schema};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(default, borrow)]
    tools: Option<Vec<ChatTool<'a>>>,
    #[serde(default, borrow)]
    tool_choice: Option<&'a RawValue>,
    parallel_tool_calls: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default, borrow)]
    stop: Option<&'a RawValue>,
    stream: Option<bool>,
    user: Option<String>,
    n: Option<u64>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    role: String,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    tool_call_id: Option<String>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    refusal: Option<String>,
    image_url: Option<ImageUrl>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ImageUrl {
    Plain(String),
    Object { url: String },
}

#[derive(Deserialize)]
struct ChatTool<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    function: Option<FunctionDef<'a>>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FunctionDef<'a> {
    name: String,
    description: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NamedChoice {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionName>,
}

#[derive(Deserialize)]
struct FunctionName {
    name: String,
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
    /// The index of the first client message in this turn.
    #[serde(skip)]
    from: usize,
}

type CacheControl<'a> = Option<&'a RawValue>;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: CacheControl<'a>,
    },
    Image {
        source: ImageSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: CacheControl<'a>,
    },
    ToolUse {
        id: String,
        name: String,
        input: RawObject,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: CacheControl<'a>,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolContent<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: CacheControl<'a>,
    },
}

impl<'a> Block<'a> {
    fn text(text: String, cache_control: CacheControl<'a>) -> Block<'a> {
        Block::Text {
            text,
            cache_control,
        }
    }

    /// Sets `cache_control` unless the block has its own.
    fn mark(&mut self, mark: &'a RawValue) {
        let (Block::Text { cache_control, .. }
        | Block::Image { cache_control, .. }
        | Block::ToolUse { cache_control, .. }
        | Block::ToolResult { cache_control, .. }) = self;
        cache_control.get_or_insert(mark);
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolContent<'a> {
    Text(String),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Url { url: String },
    Base64 { media_type: String, data: String },
}

#[derive(Serialize)]
struct Tool<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Schema<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: CacheControl<'a>,
}

#[derive(Serialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Serialize)]
struct Metadata {
    user_id: String,
}

/// Translates an OpenAI `/v1/chat/completions` request into an Anthropic `/v1/messages` one.
/// Fields Anthropic has no use for (`n` = 1, penalties, `logit_bias`, `seed`, `stream_options`,
/// `response_format`, `logprobs`, ...) are dropped; `n` > 1 is refused.
///
/// Anthropic refuses empty and whitespace-only text, so such text blocks are left out and an empty
/// tool result is sent without `content`. Consecutive messages of one role make one turn; a turn
/// left with no content is refused (dropping it would join the turns around it, or leave a
/// conversation without its user turn), except a final assistant turn, an empty prefill, which
/// is dropped. The trailing whitespace of a final assistant text is trimmed (Anthropic refuses
/// it). Empty stop sequences are dropped, whitespace-only ones refused.
pub fn chat_to_messages(
    openai_body: &[u8],
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Vec<u8>, String> {
    let req: ChatRequest =
        serde_json::from_slice(openai_body).map_err(|e| format!("invalid request body: {e}"))?;
    if req.n.is_some_and(|n| n > 1) {
        return Err("`n` greater than 1 is not supported by this model's provider".into());
    }
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (at, m) in req.messages.into_iter().enumerate() {
        let (role, mut blocks) = match m.role.as_str() {
            "system" | "developer" => {
                let start = system.len();
                system.extend(blocks_of(m.content)?);
                mark_last(&mut system[start..], m.cache_control);
                continue;
            }
            "user" => ("user", blocks_of(m.content)?),
            "assistant" => ("assistant", assistant_blocks(m.content, m.tool_calls)?),
            "tool" => {
                let id = m
                    .tool_call_id
                    .ok_or("a `tool` message needs `tool_call_id`")?;
                let content = match read_content::<Part>(m.content)? {
                    Content::Text(t) if is_blank(&t) => None,
                    Content::Text(t) => Some(ToolContent::Text(t)),
                    Content::Parts(parts) => Some(ToolContent::Blocks(
                        parts
                            .into_iter()
                            .filter_map(|p| block(p).transpose())
                            .collect::<Result<Vec<_>, _>>()?,
                    ))
                    .filter(|c| !matches!(c, ToolContent::Blocks(b) if b.is_empty())),
                };
                let result = Block::ToolResult {
                    tool_use_id: id,
                    content,
                    cache_control: None,
                };
                ("user", vec![result])
            }
            other => return Err(format!("unsupported message role `{other}`")),
        };
        mark_last(&mut blocks, m.cache_control);
        match turns.last_mut() {
            Some(t) if t.role == role => t.content.extend(blocks),
            _ => turns.push(Turn {
                role,
                content: blocks,
                from: at,
            }),
        }
    }
    if let Some(last) = turns.last_mut().filter(|t| t.role == "assistant") {
        if let Some(Block::Text { text, .. }) = last.content.last_mut() {
            text.truncate(text.trim_end().len());
        }
        if last.content.is_empty() {
            turns.pop();
        }
    }
    if let Some(t) = turns.iter().find(|t| t.content.is_empty()) {
        return Err(format!(
            "messages[{}]: this {} message has no content (its text is empty or whitespace only), \
             which this model's provider refuses; only a final assistant message may be empty",
            t.from, t.role
        ));
    }
    // Anthropic wants the tool results of a user turn before anything else in it.
    for t in turns.iter_mut().filter(|t| t.role == "user") {
        t.content
            .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
    }
    let tools = req
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(tool)
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = tool_choice(req.tool_choice, req.parallel_tool_calls, !tools.is_empty())?;
    let out = MessagesRequest {
        model: upstream_model,
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(default_max_tokens),
        system,
        messages: turns,
        tools,
        tool_choice,
        // OpenAI allows up to 2, Anthropic up to 1.
        temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: req.top_p,
        stop_sequences: stop(req.stop)?,
        stream: req.stream,
        metadata: req
            .user
            .filter(|u| !u.is_empty())
            .map(|user_id| Metadata { user_id }),
    };
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

fn mark_last<'a>(blocks: &mut [Block<'a>], mark: CacheControl<'a>) {
    if let (Some(last), Some(mark)) = (blocks.last_mut(), mark) {
        last.mark(mark);
    }
}

/// Text Anthropic refuses in a text block: empty or whitespace only.
fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// The blocks of a string or of parts; blank text is left out (Anthropic refuses it).
fn blocks_of(raw: Option<&RawValue>) -> Result<Vec<Block<'_>>, String> {
    match read_content::<Part>(raw)? {
        Content::Text(t) if is_blank(&t) => Ok(Vec::new()),
        Content::Text(t) => Ok(vec![Block::text(t, None)]),
        Content::Parts(parts) => parts
            .into_iter()
            .filter_map(|p| block(p).transpose())
            .collect(),
    }
}

fn block(part: Part<'_>) -> Result<Option<Block<'_>>, String> {
    match part.kind.as_str() {
        "text" | "refusal" => {
            let text = part.text.or(part.refusal).unwrap_or_default();
            Ok((!is_blank(&text)).then(|| Block::text(text, part.cache_control)))
        }
        "image_url" => {
            let url = match part.image_url {
                Some(ImageUrl::Plain(url) | ImageUrl::Object { url }) => url,
                None => return Err("an `image_url` part needs `image_url.url`".into()),
            };
            Ok(Some(Block::Image {
                source: image_source(url)?,
                cache_control: part.cache_control,
            }))
        }
        other => Err(format!("unsupported content part type `{other}`")),
    }
}

fn image_source(url: String) -> Result<ImageSource, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(ImageSource::Url { url });
    };
    match rest.split_once(',') {
        Some((meta, data)) if meta.ends_with(";base64") => Ok(ImageSource::Base64 {
            media_type: meta.trim_end_matches(";base64").to_string(),
            data: data.to_string(),
        }),
        _ => Err("image data URLs must be base64 (`data:image/png;base64,...`)".into()),
    }
}

/// Assistant text first, then one `tool_use` per tool call.
fn assistant_blocks(
    raw: Option<&RawValue>,
    calls: Option<Vec<ToolCall>>,
) -> Result<Vec<Block<'_>>, String> {
    let mut blocks = blocks_of(raw)?;
    blocks.extend(
        calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| Block::ToolUse {
                id: c.id,
                input: RawObject::parse(c.function.arguments.as_deref().unwrap_or("")),
                name: c.function.name,
                cache_control: None,
            }),
    );
    Ok(blocks)
}

fn tool(t: ChatTool<'_>) -> Result<Tool<'_>, String> {
    match (t.kind.as_str(), t.function) {
        ("function", Some(f)) => Ok(Tool {
            name: f.name,
            description: f.description,
            input_schema: f.parameters.map_or(Schema::Empty, Schema::Given),
            cache_control: t.cache_control,
        }),
        ("function", None) => Err("a function tool needs `function`".into()),
        (other, _) => Err(format!("unsupported tool type `{other}`")),
    }
}

fn tool_choice(
    raw: Option<&RawValue>,
    parallel: Option<bool>,
    has_tools: bool,
) -> Result<Option<ToolChoice>, String> {
    let no_parallel = (parallel == Some(false)).then_some(true);
    let choice = |kind, name| ToolChoice {
        kind,
        name,
        disable_parallel_tool_use: no_parallel,
    };
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok((has_tools && no_parallel.is_some()).then(|| choice("auto", None)));
    };
    if let Ok(mode) = serde_json::from_str::<String>(raw.get()) {
        return match mode.as_str() {
            // With no tools these change nothing, and Anthropic refuses a `tool_choice` alone.
            "auto" | "none" if !has_tools => Ok(None),
            "auto" => Ok(Some(choice("auto", None))),
            "required" => Ok(Some(choice("any", None))),
            "none" => Ok(Some(ToolChoice {
                kind: "none",
                name: None,
                disable_parallel_tool_use: None,
            })),
            other => Err(format!("unsupported tool_choice `{other}`")),
        };
    }
    match serde_json::from_str::<NamedChoice>(raw.get()) {
        Ok(NamedChoice {
            kind,
            function: Some(f),
        }) if kind == "function" => Ok(Some(choice("tool", Some(f.name)))),
        _ => Err("unsupported tool_choice".into()),
    }
}

/// `stop` as Anthropic's `stop_sequences`. Empty sequences stop nothing (OpenAI ignores them,
/// Anthropic refuses them), so they are dropped; a whitespace-only one is refused, since
/// Anthropic refuses it and dropping it would change where the answer ends.
fn stop(raw: Option<&RawValue>) -> Result<Option<Vec<String>>, String> {
    let bad = |_| "`stop` must be a string or an array of strings".to_string();
    let mut list: Vec<String> = match raw.map(|r| r.get()) {
        None | Some("null") => return Ok(None),
        Some(text) if text.starts_with('"') => serde_json::from_str(text)
            .map(|s: String| vec![s])
            .map_err(bad)?,
        Some(text) => serde_json::from_str(text).map_err(bad)?,
    };
    list.retain(|s| !s.is_empty());
    if let Some(s) = list.iter().find(|s| is_blank(s)) {
        return Err(format!(
            "`stop` sequence {s:?} is whitespace only, which this model's provider does not \
             support; give stop sequences with a visible character"
        ));
    }
    Ok((!list.is_empty()).then_some(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn translate(body: Value) -> Value {
        let out = chat_to_messages(body.to_string().as_bytes(), "claude-x", 4096).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn conversation_with_system_images_tools_and_cache_control() {
        let cc = json!({"type": "ephemeral"});
        let out = translate(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [
                    {"type": "text", "text": "Rules.", "cache_control": cc}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}, "cache_control": cc}
                ]},
                {"role": "assistant", "content": "Calling tools.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{\"z\": 1, \"a\": [2]}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": ""}},
                    {"id": "call_3", "type": "function", "function": {"name": "c", "arguments": "{not json"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "two"}]},
                {"role": "tool", "tool_call_id": "call_3", "content": "three"},
                {"role": "user", "content": "thanks"},
                {"role": "user", "content": "again", "cache_control": cc},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": [{"type": "text", "text": "Sure"}]}
            ]
        }));
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["max_tokens"], 4096);
        assert_eq!(
            out["system"],
            json!([
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Rules.", "cache_control": cc}
            ])
        );
        let msgs = out["messages"].as_array().unwrap();
        let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
        assert_eq!(
            msgs[0]["content"],
            json!([
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}, "cache_control": cc}
            ])
        );
        assert_eq!(
            msgs[1]["content"],
            json!([
                {"type": "text", "text": "Calling tools."},
                {"type": "tool_use", "id": "call_1", "name": "a", "input": {"z": 1, "a": [2]}},
                {"type": "tool_use", "id": "call_2", "name": "b", "input": {}},
                {"type": "tool_use", "id": "call_3", "name": "c", "input": {}}
            ])
        );
        assert_eq!(
            msgs[2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "two"}]},
                {"type": "tool_result", "tool_use_id": "call_3", "content": "three"},
                {"type": "text", "text": "thanks"},
                {"type": "text", "text": "again", "cache_control": cc}
            ])
        );
        assert_eq!(
            msgs[3]["content"],
            json!([{"type": "text", "text": "Sure"}])
        );
    }

    #[test]
    fn tool_arguments_keep_their_key_order() {
        let body = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"z\":1,\"a\":2}"}}
        ]}]});
        let out = chat_to_messages(body.to_string().as_bytes(), "m", 1).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"input\":{\"z\":1,\"a\":2}"), "{text}");
    }

    #[test]
    fn tool_results_go_first_in_a_user_turn() {
        let out = translate(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "note"},
            {"role": "tool", "tool_call_id": "c", "content": "r"}
        ]}));
        let blocks = &out["messages"][1]["content"];
        assert_eq!(blocks[0]["type"], "tool_result");
        assert_eq!(blocks[1]["type"], "text");
    }

    #[test]
    fn tools_and_tool_choice() {
        let cc = json!({"type": "ephemeral"});
        let tools = json!([
            {"type": "function", "function": {"name": "get", "description": "Get it",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": true}},
            {"type": "function", "function": {"name": "bare"}, "cache_control": cc}
        ]);
        let out =
            translate(json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools}));
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get", "description": "Get it",
                    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
                {"name": "bare", "input_schema": {"type": "object", "properties": {}}, "cache_control": cc}
            ])
        );
        assert!(out.get("tool_choice").is_none());
        let cases = [
            (json!("auto"), json!(null), json!({"type": "auto"})),
            (json!("required"), json!(null), json!({"type": "any"})),
            (json!("none"), json!(false), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "get"}}),
                json!(null),
                json!({"type": "tool", "name": "get"}),
            ),
            (
                json!("auto"),
                json!(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (
                json!(null),
                json!(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (json!("required"), json!(true), json!({"type": "any"})),
        ];
        for (choice, parallel, want) in cases {
            let out = translate(json!({
                "messages": [{"role": "user", "content": "hi"}],
                "tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel
            }));
            assert_eq!(out["tool_choice"], want, "{choice} {parallel}");
        }
        for bad in [json!("sometimes"), json!({"type": "function"})] {
            let body = json!({"messages": [], "tools": tools, "tool_choice": bad});
            assert!(chat_to_messages(body.to_string().as_bytes(), "m", 1).is_err());
        }
        let body = json!({"messages": [], "tools": [{"type": "code_interpreter"}]});
        assert!(chat_to_messages(body.to_string().as_bytes(), "m", 1).is_err());
    }

    #[test]
    fn sampling_limits_and_dropped_fields() {
        let out = translate(json!({
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100, "temperature": 1.7, "top_p": 0.9, "stop": "END", "stream": true,
            "user": "u-1", "n": 1, "presence_penalty": 0.5, "frequency_penalty": 0.1,
            "logit_bias": {"1": 2}, "seed": 7, "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"}, "logprobs": false
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-x", "max_tokens": 100,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "temperature": 1.0, "top_p": 0.9, "stop_sequences": ["END"], "stream": true,
                "metadata": {"user_id": "u-1"}
            })
        );
        let out = translate(json!({
            "messages": [], "max_tokens": 100, "max_completion_tokens": 50, "stop": ["a", "b"]
        }));
        assert_eq!(out["max_tokens"], 50);
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        assert!(out.get("stream").is_none());
    }

    #[test]
    fn empty_messages_are_refused_unless_nothing_is_lost() {
        let user = |c: Value| json!({"role": "user", "content": c});
        let assistant = |c: Value| json!({"role": "assistant", "content": c});
        let empties = [
            json!(""),
            json!("  \n"),
            json!([]),
            json!(null),
            json!([{"type": "text", "text": ""}]),
            json!([{"type": "text", "text": " "}, {"type": "text", "text": ""}]),
        ];
        for empty in &empties {
            // Between two turns of the other role: dropping it would merge them. Refused.
            for messages in [
                json!([user(json!("a")), assistant(empty.clone()), user(json!("b"))]),
                json!([user(empty.clone()), assistant(json!("a")), user(json!("b"))]),
                json!([user(json!("a")), assistant(json!("b")), user(empty.clone())]),
                json!([user(empty.clone())]),
            ] {
                let body = json!({"messages": messages});
                let err = chat_to_messages(body.to_string().as_bytes(), "m", 1).unwrap_err();
                assert!(err.contains("no content"), "{body}: {err}");
            }
            // Next to a message of its role, it joins that turn and nothing is lost.
            let out = translate(json!({"messages": [
                user(json!("a")), user(empty.clone()), assistant(empty.clone()),
                assistant(json!("b")), user(json!("c"))
            ]}));
            assert_eq!(
                out["messages"],
                json!([
                    {"role": "user", "content": [{"type": "text", "text": "a"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                    {"role": "user", "content": [{"type": "text", "text": "c"}]}
                ]),
                "{empty}"
            );
            // A final empty assistant message (an empty prefill) asks for what no message does.
            let out = translate(json!({"messages": [user(json!("a")), assistant(empty.clone())]}));
            assert_eq!(
                out["messages"],
                json!([{"role": "user", "content": [{"type": "text", "text": "a"}]}])
            );
        }
        // An assistant message with tool calls and no text is not empty.
        let out = translate(json!({"messages": [
            user(json!("a")),
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}
        ]}));
        assert_eq!(out["messages"][1]["content"][0]["type"], "tool_use");
    }

    #[test]
    fn blank_text_blocks_tool_results_and_prefill_whitespace() {
        let out = translate(json!({"messages": [
            {"role": "system", "content": "  "},
            {"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "\n"}, {"type": "text", "text": "b"}
            ]},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": ""},
            {"role": "tool", "tool_call_id": "c2", "content": []},
            {"role": "tool", "tool_call_id": "c3", "content": [{"type": "text", "text": " "}]},
            {"role": "assistant", "content": "Sure, "}
        ]}));
        assert!(out.get("system").is_none());
        let msgs = &out["messages"];
        assert_eq!(
            msgs[0]["content"],
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        );
        assert_eq!(
            msgs[2]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "c1"},
                {"type": "tool_result", "tool_use_id": "c2"},
                {"type": "tool_result", "tool_use_id": "c3"}
            ])
        );
        // Anthropic refuses a final assistant message that ends in whitespace.
        assert_eq!(
            msgs[3]["content"],
            json!([{"type": "text", "text": "Sure,"}])
        );
    }

    #[test]
    fn empty_stop_sequences_are_dropped() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        for (stop, want) in [
            (json!(""), None),
            (json!([""]), None),
            (json!([]), None),
            (json!(["", "END", ""]), Some(json!(["END"]))),
            (json!(" END "), Some(json!([" END "]))),
        ] {
            let out = translate(json!({"messages": hi, "stop": stop}));
            assert_eq!(out.get("stop_sequences"), want.as_ref(), "{stop}");
        }
        // A stop sequence of whitespace only: Anthropic refuses it, and dropping it would change
        // where the answer ends.
        for stop in [json!("\n"), json!(["END", " \t"])] {
            let body = json!({"messages": hi, "stop": stop});
            let err = chat_to_messages(body.to_string().as_bytes(), "m", 1).unwrap_err();
            assert!(err.contains("whitespace"), "{err}");
        }
    }

    #[test]
    fn tool_choice_without_tools_and_empty_user() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        for choice in [json!("auto"), json!("none")] {
            let out = translate(json!({"messages": hi, "tool_choice": choice, "tools": []}));
            assert!(out.get("tool_choice").is_none(), "{choice}");
        }
        let out = translate(json!({"messages": hi, "user": ""}));
        assert!(out.get("metadata").is_none());
    }

    #[test]
    fn refused_requests() {
        for body in [
            json!({"messages": [], "n": 2}),
            json!({"messages": [{"role": "function", "content": "x"}]}),
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}
            ]}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [], "stop": 5}),
            json!({"nothing": true}),
        ] {
            assert!(
                chat_to_messages(body.to_string().as_bytes(), "m", 1).is_err(),
                "{body}"
            );
        }
        assert!(chat_to_messages(b"not json", "m", 1).is_err());
    }
}
