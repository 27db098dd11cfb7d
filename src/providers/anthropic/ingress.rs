//! A client speaking Anthropic Messages, an OpenAI-compatible upstream: the request, the
//! response, errors and a local token count.

use super::{
    compact_json, error_kind_for_status, read_content, standard_error_status, stop_reason, Content,
    OpenAiUsage, RawObject, Schema,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Vec<InMessage<'a>>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop_sequences: Option<Vec<String>>,
    stream: Option<bool>,
    #[serde(default, borrow)]
    tools: Option<Vec<InTool<'a>>>,
    tool_choice: Option<InToolChoice>,
    metadata: Option<InMetadata>,
}

#[derive(Deserialize)]
struct InMessage<'a> {
    role: String,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Deserialize)]
struct InBlock<'a> {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    source: Option<InImageSource>,
    id: Option<String>,
    name: Option<String>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    tool_use_id: Option<String>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: bool,
}

#[derive(Deserialize)]
struct InImageSource {
    #[serde(rename = "type")]
    kind: String,
    media_type: Option<String>,
    data: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct InTool<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    description: Option<String>,
    #[serde(default, borrow)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: bool,
}

#[derive(Deserialize)]
struct InMetadata {
    user_id: Option<String>,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct OutMessage {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<OutContent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
}

impl OutMessage {
    fn new(role: &'static str, content: OutContent) -> OutMessage {
        OutMessage {
            role,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutContent {
    Text(String),
    Parts(Vec<OutPart>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutPart {
    Text { text: String },
    ImageUrl { image_url: OutImageUrl },
}

#[derive(Serialize)]
struct OutImageUrl {
    url: String,
}

#[derive(Serialize)]
struct OutToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunction,
}

#[derive(Serialize)]
struct OutFunction {
    name: String,
    arguments: String,
}

#[derive(Serialize)]
struct OutTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunctionDef<'a>,
}

#[derive(Serialize)]
struct OutFunctionDef<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    parameters: Schema<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutToolChoice {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        function: FunctionName,
    },
}

#[derive(Serialize)]
struct FunctionName {
    name: String,
}

/// Translates an Anthropic `/v1/messages` request into an OpenAI `/v1/chat/completions` one.
/// System blocks are joined into one system message; each `tool_result` becomes a `tool`
/// message (images in it follow in a user message); thinking blocks and `top_k` are dropped.
pub fn messages_request_to_chat(
    anthropic_body: &[u8],
    upstream_model: &str,
) -> Result<Vec<u8>, String> {
    let req: MessagesRequest =
        serde_json::from_slice(anthropic_body).map_err(|e| format!("invalid request body: {e}"))?;
    let mut messages = Vec::new();
    let system = match read_content::<InBlock>(req.system)? {
        Content::Text(t) => t,
        Content::Parts(blocks) => blocks
            .into_iter()
            .filter_map(|b| b.text)
            .collect::<Vec<_>>()
            .join("\n\n"),
    };
    if !system.is_empty() {
        messages.push(OutMessage::new("system", OutContent::Text(system)));
    }
    for m in req.messages {
        let role = match m.role.as_str() {
            "user" => "user",
            "assistant" => "assistant",
            other => return Err(format!("unsupported message role `{other}`")),
        };
        match read_content::<InBlock>(Some(m.content))? {
            Content::Text(t) => messages.push(OutMessage::new(role, OutContent::Text(t))),
            Content::Parts(blocks) if role == "user" => user_messages(blocks, &mut messages)?,
            Content::Parts(blocks) => messages.push(assistant_message(blocks)?),
        }
    }
    let tools = req
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|t| match t.kind.as_deref() {
            None | Some("custom") => Ok(OutTool {
                kind: "function",
                function: OutFunctionDef {
                    name: t.name,
                    description: t.description,
                    parameters: t.input_schema.map_or(Schema::Empty, Schema::Given),
                },
            }),
            Some(other) => Err(format!("unsupported tool type `{other}`")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (tool_choice, parallel_tool_calls) = match req.tool_choice {
        Some(c) => {
            let choice = match (c.kind.as_str(), c.name) {
                ("auto", _) => OutToolChoice::Mode("auto"),
                ("any", _) => OutToolChoice::Mode("required"),
                ("none", _) => OutToolChoice::Mode("none"),
                ("tool", Some(name)) => OutToolChoice::Named {
                    kind: "function",
                    function: FunctionName { name },
                },
                _ => return Err("unsupported tool_choice".into()),
            };
            let parallel = (c.disable_parallel_tool_use && !tools.is_empty()).then_some(false);
            (Some(choice), parallel)
        }
        None => (None, None),
    };
    let stream = req.stream.filter(|s| *s);
    let out = ChatRequest {
        model: upstream_model,
        messages,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop_sequences.filter(|s| !s.is_empty()),
        stream,
        stream_options: stream.map(|_| StreamOptions {
            include_usage: true,
        }),
        tools,
        tool_choice,
        parallel_tool_calls,
        user: req.metadata.and_then(|m| m.user_id),
    };
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// A user turn: its tool results as `tool` messages, in order, then the rest as a user message.
fn user_messages(blocks: Vec<InBlock>, messages: &mut Vec<OutMessage>) -> Result<(), String> {
    let mut parts = Vec::new();
    for b in blocks {
        if b.kind != "tool_result" {
            parts.extend(part(b)?);
            continue;
        }
        let mut text = match read_content::<InBlock>(b.content)? {
            Content::Text(t) => t,
            Content::Parts(inner) => {
                let mut texts = Vec::new();
                for p in inner {
                    match part(p)? {
                        Some(OutPart::Text { text }) => texts.push(text),
                        // OpenAI tool messages hold text only; images go to the user message.
                        Some(image) => parts.push(image),
                        None => {}
                    }
                }
                texts.join("\n")
            }
        };
        if b.is_error {
            text.insert_str(0, "Error: ");
        }
        messages.push(OutMessage {
            tool_call_id: Some(b.tool_use_id.ok_or("a `tool_result` needs `tool_use_id`")?),
            ..OutMessage::new("tool", OutContent::Text(text))
        });
    }
    match parts.as_slice() {
        [] => {}
        [OutPart::Text { text }] => {
            let text = text.clone();
            messages.push(OutMessage::new("user", OutContent::Text(text)));
        }
        _ => messages.push(OutMessage::new("user", OutContent::Parts(parts))),
    }
    Ok(())
}

/// A text or image block as an OpenAI content part; thinking blocks give nothing.
fn part(b: InBlock) -> Result<Option<OutPart>, String> {
    match b.kind.as_str() {
        "text" => Ok(Some(OutPart::Text {
            text: b.text.unwrap_or_default(),
        })),
        "image" => {
            let s = b.source.ok_or("an image block needs `source`")?;
            let url = match (s.kind.as_str(), s.url, s.media_type, s.data) {
                ("url", Some(url), _, _) => url,
                ("base64", _, Some(media), Some(data)) => format!("data:{media};base64,{data}"),
                _ => return Err("unsupported image source".into()),
            };
            Ok(Some(OutPart::ImageUrl {
                image_url: OutImageUrl { url },
            }))
        }
        "thinking" | "redacted_thinking" => Ok(None),
        other => Err(format!("unsupported content block type `{other}`")),
    }
}

/// An assistant turn: its text joined as `content`, its `tool_use` blocks as `tool_calls`.
fn assistant_message(blocks: Vec<InBlock>) -> Result<OutMessage, String> {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.kind.as_str() {
            "text" => text.push_str(b.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(OutToolCall {
                id: b.id.ok_or("a `tool_use` block needs `id`")?,
                kind: "function",
                function: OutFunction {
                    name: b.name.ok_or("a `tool_use` block needs `name`")?,
                    arguments: b.input.map_or("{}".into(), |i| compact_json(i.get())),
                },
            }),
            // Thinking and server-side tool blocks (web search, code execution) stay behind.
            "thinking" | "redacted_thinking" | "server_tool_use" => {}
            other if other.ends_with("_tool_result") => {}
            other => return Err(format!("unsupported assistant block type `{other}`")),
        }
    }
    Ok(OutMessage {
        role: "assistant",
        content: (!text.is_empty() || tool_calls.is_empty()).then_some(OutContent::Text(text)),
        tool_calls,
        tool_call_id: None,
    })
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    id: String,
    #[serde(default)]
    choices: Vec<InChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct InChoice {
    message: InChatMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct InChatMessage {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<InToolCall>>,
}

#[derive(Deserialize)]
struct InToolCall {
    id: String,
    function: InFunction,
}

#[derive(Deserialize)]
struct InFunction {
    name: String,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Serialize)]
struct AnthropicMessage<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<OutBlock>,
    stop_reason: &'static str,
    stop_sequence: Option<()>,
    usage: OutUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: RawObject,
    },
}

#[derive(Serialize)]
pub(super) struct OutUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

impl OutUsage {
    /// From OpenAI's (prompt, completion, cached): Anthropic counts cached tokens apart.
    pub(super) fn new((prompt, completion, cached): (u64, u64, u64)) -> OutUsage {
        OutUsage {
            input_tokens: prompt.saturating_sub(cached),
            output_tokens: completion,
            cache_read_input_tokens: cached,
            cache_creation_input_tokens: 0,
        }
    }
}

/// Anthropic message ids start with `msg_`.
pub(super) fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_string()
    } else {
        format!("msg_{id}")
    }
}

/// Translates an OpenAI `chat.completion` into an Anthropic message (from the first choice).
/// A refusal becomes a text block with `stop_reason: "refusal"`.
pub fn chat_to_messages_response(openai_body: &[u8], model_id: &str) -> Result<Vec<u8>, String> {
    let c: Completion =
        serde_json::from_slice(openai_body).map_err(|e| format!("invalid OpenAI response: {e}"))?;
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or("the upstream response has no choices")?;
    let m = choice.message;
    let mut content = Vec::new();
    let refused = m.refusal.as_ref().is_some_and(|r| !r.is_empty());
    for text in [m.content, m.refusal].into_iter().flatten() {
        if !text.is_empty() {
            content.push(OutBlock::Text { text });
        }
    }
    for call in m.tool_calls.unwrap_or_default() {
        content.push(OutBlock::ToolUse {
            id: call.id,
            name: call.function.name,
            input: RawObject::parse(call.function.arguments.as_deref().unwrap_or("")),
        });
    }
    let stop = match choice.finish_reason.as_deref() {
        _ if refused => "refusal",
        Some(f) => stop_reason(f),
        None => "end_turn",
    };
    let out = AnthropicMessage {
        id: message_id(&c.id),
        kind: "message",
        role: "assistant",
        model: model_id,
        content,
        stop_reason: stop,
        stop_sequence: None,
        usage: OutUsage::new(c.usage.unwrap_or_default().counts()),
    };
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// A local estimate for `/v1/messages/count_tokens`, not a tokenizer: a quarter of the
/// characters of all text in the system prompt, the messages (text, tool inputs and results)
/// and the tool definitions, at least 1. Images are not counted.
pub fn count_tokens(anthropic_body: &[u8]) -> Result<u64, String> {
    let req: Value =
        serde_json::from_slice(anthropic_body).map_err(|e| format!("invalid request body: {e}"))?;
    let mut chars = text_chars(&req["system"]);
    for m in req["messages"].as_array().into_iter().flatten() {
        chars += text_chars(&m["content"]);
    }
    for t in req["tools"].as_array().into_iter().flatten() {
        chars += text_chars(&t["name"]) + text_chars(&t["description"]);
        if !t["input_schema"].is_null() {
            chars += t["input_schema"].to_string().chars().count();
        }
    }
    Ok((chars as u64).div_ceil(4).max(1))
}

/// Characters of text in content: a string, or blocks (text, tool input, tool result).
fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => text_chars(&b["text"]),
                Some("tool_use") => text_chars(&b["name"]) + b["input"].to_string().chars().count(),
                Some("tool_result") => text_chars(&b["content"]),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Translates an OpenAI error answer (or any error status) into Anthropic's
/// `{"type":"error","error":{"type","message"}}`; the type follows the status (400
/// `invalid_request_error`, 401 `authentication_error`, 402 `billing_error`, 403
/// `permission_error`, 404 `not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`,
/// 503 and 529 `overloaded_error`, 504 `timeout_error`, other 4xx `invalid_request_error`, other
/// 5xx `api_error`). Registered statuses and 529 are kept; others become standard ones (see
/// `standard_error_status`).
pub fn openai_error_to_anthropic(status: u16, openai_body: &[u8]) -> (u16, Vec<u8>) {
    let body: Value = serde_json::from_slice(openai_body).unwrap_or(Value::Null);
    let message = match &body["error"] {
        Value::String(s) => Some(s.as_str()),
        e => e["message"].as_str(),
    }
    .filter(|m| !m.is_empty())
    .map_or_else(
        || format!("the upstream provider answered HTTP {status}"),
        str::to_string,
    );
    let status = standard_error_status(status, true);
    let out = serde_json::json!({
        "type": "error",
        "error": {"type": error_kind_for_status(status), "message": message}
    });
    (status, out.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::{chat_to_messages, shapes};
    use super::*;
    use serde_json::json;

    fn translate(body: &Value) -> Value {
        let out = messages_request_to_chat(body.to_string().as_bytes(), "gpt-x").unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn request_with_system_images_tools_and_results() {
        let out = translate(&json!({
            "model": "claude-sonnet-4-5", "max_tokens": 1024,
            "system": [
                {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Answer in English."}
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/b.png"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"z": 1, "a": "b"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": [
                        {"type": "text", "text": "camera"}, {"type": "text", "text": "offline"},
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/err.png"}}
                    ]},
                    {"type": "text", "text": "Go on."}
                ]},
                {"role": "assistant", "content": "Prefill"}
            ],
            "tools": [
                {"name": "look", "description": "Look", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
                {"name": "shot", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["###"], "temperature": 0.2, "top_p": 0.9, "top_k": 5,
            "stream": true, "metadata": {"user_id": "u-7"},
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        }));
        assert_eq!(
            out,
            json!({
                "model": "gpt-x",
                "messages": [
                    {"role": "system", "content": "You are terse.\n\nAnswer in English."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/b.png"}}
                    ]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"a\":\"b\",\"z\":1}"}},
                        {"id": "toolu_2", "type": "function", "function": {"name": "shot", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "content": "a cat", "tool_call_id": "toolu_1"},
                    {"role": "tool", "content": "Error: camera\noffline", "tool_call_id": "toolu_2"},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "https://x.test/err.png"}},
                        {"type": "text", "text": "Go on."}
                    ]},
                    {"role": "assistant", "content": "Prefill"}
                ],
                "max_tokens": 1024, "temperature": 0.2, "top_p": 0.9, "stop": ["###"],
                "stream": true, "stream_options": {"include_usage": true},
                "tools": [
                    {"type": "function", "function": {"name": "look", "description": "Look",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "shot", "parameters": {"type": "object"}}}
                ],
                "tool_choice": "required", "parallel_tool_calls": false, "user": "u-7"
            })
        );
    }

    #[test]
    fn tool_input_keeps_its_key_order() {
        let body = r#"{"max_tokens": 5, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"z": 1, "a": {"y": 2, "b": 3}}}
        ]}]}"#;
        let out =
            String::from_utf8(messages_request_to_chat(body.as_bytes(), "m").unwrap()).unwrap();
        assert!(
            out.contains(r#""arguments":"{\"z\":1,\"a\":{\"y\":2,\"b\":3}}""#),
            "{out}"
        );
    }

    #[test]
    fn tool_choice_forms_and_refusals() {
        let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        for (choice, want) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "f"}),
                json!({"type": "function", "function": {"name": "f"}}),
            ),
        ] {
            let out = translate(
                &json!({"max_tokens": 5, "messages": [], "tools": tools, "tool_choice": choice}),
            );
            assert_eq!(out["tool_choice"], want);
            assert!(out.get("parallel_tool_calls").is_none());
        }
        for bad in [
            json!({"messages": [{"role": "system", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}),
            json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            json!({"messages": [], "tool_choice": {"type": "tool"}}),
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
            json!({"max_tokens": 5}),
        ] {
            assert!(
                messages_request_to_chat(bad.to_string().as_bytes(), "m").is_err(),
                "{bad}"
            );
        }
        let out =
            translate(&json!({"messages": [{"role": "user", "content": "hi"}], "stream": false}));
        assert_eq!(
            out,
            json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    /// Every recorded Anthropic request translates, and going back gives the same conversation.
    #[test]
    fn recorded_requests_round_trip() {
        let mut requests = 0;
        for (name, bytes) in shapes("anthropic/recorded_exchanges", "", ".json") {
            if name == "index.json" {
                continue;
            }
            let exchanges: Value = serde_json::from_slice(&bytes).unwrap();
            for ex in exchanges.as_array().into_iter().flatten() {
                let body = &ex["request"]["body"];
                // The recorded invalid request (two user turns in a row) is not a conversation.
                if ex["response"]["status_code"] == 400 {
                    continue;
                }
                let src = body.to_string();
                let server_tool = |t: &Value| t["type"].as_str().is_some_and(|k| k != "custom");
                if body["tools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(server_tool)
                {
                    let err = messages_request_to_chat(src.as_bytes(), "gpt-x").unwrap_err();
                    assert!(err.contains("unsupported tool type"), "{name}: {err}");
                    continue;
                }
                let chat = messages_request_to_chat(src.as_bytes(), "gpt-x")
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let chat_v: Value = serde_json::from_slice(&chat).unwrap();
                assert_eq!(chat_v["max_tokens"], body["max_tokens"], "{name}");
                assert_eq!(
                    chat_v["tools"].as_array().map_or(0, |t| t.len()),
                    body["tools"].as_array().map_or(0, |t| t.len())
                );
                let back = chat_to_messages(&chat, "claude-x", 1).unwrap();
                let back: Value = serde_json::from_slice(&back).unwrap();
                // The source turns as blocks, consecutive same-role turns merged (as Anthropic does).
                let mut turns: Vec<(Value, Vec<Value>)> = Vec::new();
                for m in body["messages"].as_array().unwrap() {
                    let blocks = match &m["content"] {
                        Value::String(t) => vec![json!({"type": "text", "text": t})],
                        v => v
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|b| b["type"] != "server_tool_use")
                            .cloned()
                            .collect(),
                    };
                    match turns.last_mut() {
                        Some((role, b)) if *role == m["role"] => b.extend(blocks),
                        _ => turns.push((m["role"].clone(), blocks)),
                    }
                }
                let back = back["messages"].as_array().unwrap();
                assert_eq!(turns.len(), back.len(), "{name}");
                for ((role, blocks), y) in turns.iter().zip(back) {
                    assert_eq!(*role, y["role"], "{name}");
                    let y = y["content"].as_array().unwrap();
                    assert_eq!(blocks.len(), y.len(), "{name}");
                    for (bx, by) in blocks.iter().zip(y) {
                        assert_eq!(bx["type"], by["type"], "{name}");
                        for key in ["id", "name", "input", "text", "tool_use_id"] {
                            assert_eq!(bx[key], by[key], "{name} {key}");
                        }
                        if bx["type"] == "tool_result" {
                            let prefix = if bx["is_error"] == true {
                                "Error: "
                            } else {
                                ""
                            };
                            let want = format!("{prefix}{}", bx["content"].as_str().unwrap());
                            assert_eq!(by["content"], want.as_str(), "{name}");
                        }
                    }
                }
                assert!(count_tokens(src.as_bytes()).unwrap() > 10);
                requests += 1;
            }
        }
        assert!(requests > 20, "{requests}");
    }

    #[test]
    fn recorded_completions() {
        for (name, bytes) in shapes("openai/chat_completions", "nonstream_", ".json") {
            let src: Value = serde_json::from_slice(&bytes).unwrap();
            let out = chat_to_messages_response(&bytes, "claude-alias").unwrap();
            let out: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(out["type"], "message");
            assert_eq!(out["role"], "assistant");
            assert_eq!(out["model"], "claude-alias");
            assert_eq!(out["id"], format!("msg_{}", src["id"].as_str().unwrap()));
            let m = &src["choices"][0]["message"];
            let calls = m["tool_calls"].as_array().cloned().unwrap_or_default();
            let blocks = out["content"].as_array().unwrap();
            let uses: Vec<&Value> = blocks.iter().filter(|b| b["type"] == "tool_use").collect();
            assert_eq!(uses.len(), calls.len(), "{name}");
            for (u, c) in uses.iter().zip(&calls) {
                assert_eq!(u["id"], c["id"]);
                assert_eq!(u["name"], c["function"]["name"]);
                let args: Value =
                    serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
                assert_eq!(u["input"], args, "{name}");
            }
            let text = m["content"]
                .as_str()
                .or(m["refusal"].as_str())
                .unwrap_or("");
            if !text.is_empty() {
                assert_eq!(blocks[0], json!({"type": "text", "text": text}), "{name}");
            }
            let want = if !m["refusal"].is_null() {
                "refusal"
            } else {
                match src["choices"][0]["finish_reason"].as_str().unwrap() {
                    "tool_calls" => "tool_use",
                    "length" => "max_tokens",
                    _ => "end_turn",
                }
            };
            assert_eq!(out["stop_reason"], want, "{name}");
            assert_eq!(out["usage"]["input_tokens"], src["usage"]["prompt_tokens"]);
            assert_eq!(
                out["usage"]["output_tokens"],
                src["usage"]["completion_tokens"]
            );
        }
        let multi = shapes(
            "openai/chat_completions",
            "nonstream_parse_multiple_pydantic_tools",
            ".json",
        );
        let out: Value =
            serde_json::from_slice(&chat_to_messages_response(&multi[0].1, "c").unwrap()).unwrap();
        assert_eq!(out["content"].as_array().unwrap().len(), 2);
        assert_eq!(
            out["content"][1]["input"],
            json!({"ticker": "AAPL", "exchange": "NASDAQ"})
        );
    }

    #[test]
    fn completion_with_cached_tokens_and_content_filter() {
        let body = json!({
            "id": "msg_abc", "choices": [{"index": 0, "finish_reason": "content_filter",
                "message": {"role": "assistant", "content": "partial", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "oops"}}
                ]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60}}
        });
        let out: Value = serde_json::from_slice(
            &chat_to_messages_response(body.to_string().as_bytes(), "c").unwrap(),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "id": "msg_abc", "type": "message", "role": "assistant", "model": "c",
                "content": [
                    {"type": "text", "text": "partial"},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
                ],
                "stop_reason": "refusal", "stop_sequence": null,
                "usage": {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60,
                    "cache_creation_input_tokens": 0}
            })
        );
        assert!(chat_to_messages_response(b"{\"choices\":[]}", "c").is_err());
        assert!(chat_to_messages_response(b"nope", "c").is_err());
    }

    #[test]
    fn token_estimate() {
        let body = json!({
            "system": "12345678",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "1234"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAAAAAAAAAAAAAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "ab", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "xy"}]}
            ],
            "tools": [{"name": "ab", "description": "cd", "input_schema": {}}]
        });
        // 8 + 4 + (2 + 2) + 2 + (2 + 2 + 2) = 24 characters.
        assert_eq!(count_tokens(body.to_string().as_bytes()), Ok(6));
        assert_eq!(count_tokens(b"{\"messages\":[]}"), Ok(1));
        assert!(count_tokens(b"[").is_err());
    }

    #[test]
    fn error_mapping() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (402, "billing_error"),
            (504, "timeout_error"),
            (409, "invalid_request_error"),
            (422, "invalid_request_error"),
            (502, "api_error"),
        ] {
            let body = json!({"error": {"message": "boom", "type": "x", "code": "y"}});
            let (s, out) = openai_error_to_anthropic(status, body.to_string().as_bytes());
            assert_eq!(s, status);
            let out: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                out,
                json!({"type": "error", "error": {"type": kind, "message": "boom"}})
            );
        }
        let (_, out) = openai_error_to_anthropic(502, b"<html>");
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["error"]["type"], "api_error");
        assert!(out["error"]["message"].as_str().unwrap().contains("502"));
        // Statuses no HTTP client knows become standard ones; 529 is Anthropic's own.
        for (status, want, kind) in [
            (520, 502, "api_error"),
            (524, 504, "timeout_error"),
            (499, 400, "invalid_request_error"),
            (302, 502, "api_error"),
        ] {
            let (s, out) = openai_error_to_anthropic(status, b"{}");
            let out: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!((s, &out["error"]["type"]), (want, &json!(kind)), "{status}");
        }
        let (_, out) = openai_error_to_anthropic(400, b"{\"error\":\"plain\"}");
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["error"]["message"], "plain");
    }
}
