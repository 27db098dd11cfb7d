//! Pieces shared by the OpenAI and Anthropic handlers: knobs, faults, replies, text, tools.

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::history::Record;
use super::SimConfig;

/// Model used when neither the body nor the path names one.
pub(crate) const DEFAULT_MODEL: &str = "sim-model";

/// Most chunks a request may ask for.
const MAX_CHUNKS: u64 = 100_000;
/// Most parallel tool calls a request may ask for.
const MAX_PARALLEL: u64 = 1_000;

/// A simulated failure, chosen by `x-sim-fault` or a model name containing `fault-NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Unprocessable,
    RateLimit,
    Internal,
    BadGateway,
    Unavailable,
    Html,
    Reset,
    Stall,
    Midstream,
    Trickle,
}

impl Fault {
    pub(crate) const ALL: [Fault; 14] = [
        Fault::BadRequest,
        Fault::Unauthorized,
        Fault::Forbidden,
        Fault::NotFound,
        Fault::Unprocessable,
        Fault::RateLimit,
        Fault::Internal,
        Fault::BadGateway,
        Fault::Unavailable,
        Fault::Html,
        Fault::Reset,
        Fault::Stall,
        Fault::Midstream,
        Fault::Trickle,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::BadRequest => "400",
            Fault::Unauthorized => "401",
            Fault::Forbidden => "403",
            Fault::NotFound => "404",
            Fault::Unprocessable => "422",
            Fault::RateLimit => "429",
            Fault::Internal => "500",
            Fault::BadGateway => "502",
            Fault::Unavailable => "503",
            Fault::Html => "html",
            Fault::Reset => "reset",
            Fault::Stall => "stall",
            Fault::Midstream => "midstream",
            Fault::Trickle => "trickle",
        }
    }

    /// The `outcome` string recorded in `/sim/requests`.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Fault::BadRequest => "fault:400",
            Fault::Unauthorized => "fault:401",
            Fault::Forbidden => "fault:403",
            Fault::NotFound => "fault:404",
            Fault::Unprocessable => "fault:422",
            Fault::RateLimit => "fault:429",
            Fault::Internal => "fault:500",
            Fault::BadGateway => "fault:502",
            Fault::Unavailable => "fault:503",
            Fault::Html => "fault:html",
            Fault::Reset => "fault:reset",
            Fault::Stall => "fault:stall",
            Fault::Midstream => "fault:midstream",
            Fault::Trickle => "fault:trickle",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Faults that replace the answer without looking at the body.
    pub(crate) fn immediate(self) -> bool {
        !matches!(self, Fault::Midstream | Fault::Trickle)
    }
}

/// Finds `fault-NAME` in the credential the client sent (`Authorization`, `x-api-key` or
/// `api-key`), so that one key of several can be made to fail.
pub(crate) fn key_fault(headers: &HeaderMap) -> Option<Fault> {
    ["authorization", "x-api-key", "api-key"]
        .iter()
        .filter_map(|h| headers.get(*h)?.to_str().ok())
        .find_map(|v| model_fault(v.rsplit(' ').next().unwrap_or(v)))
}

/// Finds `fault-NAME` in a model name, at the start or after a separator.
pub(crate) fn model_fault(model: &str) -> Option<Fault> {
    let bytes = model.as_bytes();
    model.match_indices("fault-").find_map(|(i, _)| {
        let boundary = i == 0 || matches!(bytes[i - 1], b'-' | b'_' | b'/' | b':' | b'.');
        let name = model[i + "fault-".len()..].split('-').next()?;
        Fault::parse(name).filter(|_| boundary)
    })
}

/// Per-request settings: config defaults overridden by `x-sim-*` headers.
#[derive(Debug)]
pub(crate) struct Knobs {
    pub latency: Duration,
    pub ttft: Duration,
    pub chunks: usize,
    pub gap: Duration,
    pub cached: u64,
    pub parallel: usize,
    pub fault: Option<Fault>,
}

impl Knobs {
    pub(crate) fn defaults(cfg: &SimConfig) -> Knobs {
        Knobs {
            latency: Duration::from_millis(cfg.latency_ms),
            ttft: Duration::from_millis(cfg.ttft_ms),
            chunks: cfg.chunks.clamp(1, MAX_CHUNKS as usize),
            gap: Duration::from_millis(cfg.chunk_gap_ms),
            cached: 0,
            parallel: 1,
            fault: None,
        }
    }

    pub(crate) fn from_headers(cfg: &SimConfig, headers: &HeaderMap) -> Result<Knobs, String> {
        let mut k = Knobs::defaults(cfg);
        for (name, value) in headers {
            let Some(knob) = name.as_str().strip_prefix("x-sim-") else {
                continue;
            };
            let text = value
                .to_str()
                .map_err(|_| format!("invalid header {name}"))?
                .trim();
            let num = || {
                text.parse::<u64>()
                    .map_err(|_| format!("invalid header {name}: {text:?}"))
            };
            match knob {
                "latency-ms" => k.latency = Duration::from_millis(num()?),
                "ttft-ms" => k.ttft = Duration::from_millis(num()?),
                "chunk-gap-ms" => k.gap = Duration::from_millis(num()?),
                "chunks" => k.chunks = num()?.clamp(1, MAX_CHUNKS) as usize,
                "cached-tokens" => k.cached = num()?,
                "parallel-tools" => k.parallel = num()?.clamp(1, MAX_PARALLEL) as usize,
                "fault" => {
                    k.fault =
                        Some(Fault::parse(text).ok_or_else(|| format!("unknown fault {text:?}"))?)
                }
                _ => {}
            }
        }
        Ok(k)
    }
}

/// Which provider's shapes an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Anthropic,
}

/// What a handler wants sent.
pub(crate) enum Reply {
    Json {
        status: StatusCode,
        body: Bytes,
        retry_after: bool,
    },
    /// SSE frames; `content` marks the content frames (a mid-stream fault cuts after two).
    Sse {
        frames: Vec<Bytes>,
        content: Range<usize>,
    },
    Html,
    Reset,
    Stall,
}

impl Reply {
    pub(crate) fn ok<T: Serialize>(value: &T) -> Result<Reply, ApiError> {
        Ok(Reply::Json {
            status: StatusCode::OK,
            body: serde_json::to_vec(value)?.into(),
            retry_after: false,
        })
    }
}

/// An error answer in both providers' shapes.
pub(crate) struct ApiError {
    status: StatusCode,
    openai_type: &'static str,
    code: &'static str,
    anthropic_type: &'static str,
    message: Cow<'static, str>,
}

impl ApiError {
    pub(crate) fn bad_request(message: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            openai_type: "invalid_request_error",
            code: "invalid_request",
            anthropic_type: "invalid_request_error",
            message: message.into(),
        }
    }

    pub(crate) fn not_found(path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            openai_type: "invalid_request_error",
            code: "not_found",
            anthropic_type: "not_found_error",
            message: format!("unknown path {path}").into(),
        }
    }

    pub(crate) fn method_not_allowed(path: &str) -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            openai_type: "invalid_request_error",
            code: "method_not_allowed",
            anthropic_type: "invalid_request_error",
            message: format!("method not allowed on {path}").into(),
        }
    }

    pub(crate) fn internal(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            openai_type: "server_error",
            code: "internal_error",
            anthropic_type: "api_error",
            message: message.into(),
        }
    }

    /// The error for a status fault (`midstream` outside a stream counts as 500).
    pub(crate) fn fault(fault: Fault) -> ApiError {
        let (status, openai_type, code, anthropic_type, message) = match fault {
            Fault::BadRequest => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                "invalid_request_error",
                "Invalid request (simulated).",
            ),
            Fault::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "authentication_error",
                "Incorrect API key provided (simulated).",
            ),
            Fault::Forbidden => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "permission_denied",
                "permission_error",
                "This key may not use this model (simulated).",
            ),
            Fault::NotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                "not_found_error",
                "The model does not exist (simulated).",
            ),
            Fault::Unprocessable => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "unprocessable",
                "invalid_request_error",
                "The request could not be processed (simulated).",
            ),
            Fault::RateLimit => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                "rate_limit_error",
                "Rate limit reached (simulated). Please try again in 1s.",
            ),
            Fault::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                "bad_gateway",
                "api_error",
                "Bad gateway (simulated).",
            ),
            Fault::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "service_unavailable",
                "overloaded_error",
                "The server is overloaded (simulated).",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "api_error",
                "The server had an error while processing your request (simulated).",
            ),
        };
        ApiError {
            status,
            openai_type,
            code,
            anthropic_type,
            message: message.into(),
        }
    }

    pub(crate) fn body(&self, api: Api) -> String {
        let message = &*self.message;
        let body = match api {
            Api::OpenAi => serde_json::to_string(&OpenAiError {
                error: OpenAiErrorBody {
                    message,
                    kind: self.openai_type,
                    param: (),
                    code: self.code,
                },
            }),
            Api::Anthropic => serde_json::to_string(&AnthropicError {
                kind: "error",
                error: AnthropicErrorBody {
                    kind: self.anthropic_type,
                    message,
                },
            }),
        };
        body.unwrap_or_default()
    }

    pub(crate) fn reply(&self, api: Api) -> Reply {
        Reply::Json {
            status: self.status,
            body: self.body(api).into(),
            retry_after: self.status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorBody<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: (),
    code: &'a str,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    error: AnthropicErrorBody<'a>,
}

#[derive(Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> ApiError {
        ApiError::internal(format!("sim could not encode its answer: {e}"))
    }
}

/// Builds SSE frames.
#[derive(Default)]
pub(crate) struct Sse {
    pub frames: Vec<Bytes>,
}

impl Sse {
    /// `data: JSON\n\n`
    pub(crate) fn data<T: Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut buf, value)?;
        buf.extend_from_slice(b"\n\n");
        self.frames.push(buf.into());
        Ok(())
    }

    /// Makes the last frame part of the one before it, so that both are sent together.
    pub(crate) fn join_last(&mut self) {
        if self.frames.len() >= 2 {
            if let Some(last) = self.frames.pop() {
                if let Some(prev) = self.frames.last_mut() {
                    let mut joined = Vec::with_capacity(prev.len() + last.len());
                    joined.extend_from_slice(prev);
                    joined.extend_from_slice(&last);
                    *prev = joined.into();
                }
            }
        }
    }

    /// `event: NAME\ndata: JSON\n\n`
    pub(crate) fn event<T: Serialize>(&mut self, name: &str, value: &T) -> serde_json::Result<()> {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
        serde_json::to_writer(&mut buf, value)?;
        buf.extend_from_slice(b"\n\n");
        self.frames.push(buf.into());
        Ok(())
    }

    pub(crate) fn raw(&mut self, frame: &'static [u8]) {
        self.frames.push(Bytes::from_static(frame));
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn finish(self, content: Range<usize>) -> Reply {
        Reply::Sse {
            frames: self.frames,
            content,
        }
    }
}

/// What a handler sees besides its parsed body.
pub(crate) struct Cx<'a> {
    pub knobs: &'a Knobs,
    pub rec: &'a Record,
    pub created: u64,
}

/// A chat message in either dialect (only what the simulator reads).
#[derive(Deserialize)]
pub(crate) struct Message {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

impl Message {
    pub(crate) fn text(&self) -> Cow<'_, str> {
        self.content.as_ref().map(Content::text).unwrap_or_default()
    }

    pub(crate) fn chars(&self) -> usize {
        self.content.as_ref().map_or(0, Content::chars)
    }
}

/// Message content: a string or a list of parts.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    /// A tool result's own content.
    #[serde(default)]
    pub content: Option<Content>,
}

impl Content {
    /// The text, with text parts joined by a space.
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(s) => Cow::Borrowed(s),
            Content::Parts(parts) => {
                let texts: Vec<&str> = parts.iter().filter_map(|p| p.text.as_deref()).collect();
                match texts.as_slice() {
                    [one] => Cow::Borrowed(one),
                    _ => Cow::Owned(texts.join(" ")),
                }
            }
        }
    }

    /// Characters of all text, tool results included.
    pub(crate) fn chars(&self) -> usize {
        match self {
            Content::Text(s) => s.chars().count(),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| {
                    p.text.as_deref().map_or(0, |t| t.chars().count())
                        + p.content.as_ref().map_or(0, Content::chars)
                })
                .sum(),
        }
    }

    /// The text of the last `tool_result` part (Anthropic).
    pub(crate) fn tool_result(&self) -> Option<Cow<'_, str>> {
        let Content::Parts(parts) = self else {
            return None;
        };
        let part = parts
            .iter()
            .rev()
            .find(|p| p.kind.as_deref() == Some("tool_result"))?;
        Some(part.content.as_ref().map(Content::text).unwrap_or_default())
    }
}

/// The text of the last user message.
pub(crate) fn last_user_text(messages: &[Message]) -> Cow<'_, str> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(Message::text)
        .unwrap_or_default()
}

/// The first `n` characters of `s`.
pub(crate) fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Tokens for a prompt of `chars` characters: ceil(chars / 4), at least 1.
pub(crate) fn tokens(chars: usize) -> u64 {
    (chars.div_ceil(4) as u64).max(1)
}

pub(crate) fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits `text` into exactly `n` pieces at word starts, words spread evenly;
/// pieces after the first begin with their whitespace (" word"), some may be empty.
pub(crate) fn split_words(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let mut ends = Vec::new();
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                ends.push(i);
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    if in_word {
        ends.push(text.len());
    }
    let words = ends.len();
    let cut = |k: usize| match k * words / n {
        _ if k >= n => text.len(),
        0 => 0,
        w => ends[w - 1],
    };
    (0..n).map(|k| &text[cut(k)..cut(k + 1)]).collect()
}

/// Splits `s` into at most `n` non-empty pieces of about equal character counts.
pub(crate) fn split_chars(s: &str, n: usize) -> Vec<&str> {
    let total = s.chars().count();
    let n = n.clamp(1, total.max(1));
    let mut pieces = Vec::with_capacity(n);
    let mut start = 0;
    let mut chars = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()));
    let mut taken = 0;
    for k in 1..=n {
        let want = k * total / n;
        let mut end = start;
        while taken <= want {
            match chars.next() {
                Some(i) => end = i,
                None => break,
            }
            taken += 1;
        }
        if end > start {
            pieces.push(&s[start..end]);
        }
        start = end;
    }
    pieces
}

/// A tool the request offers.
pub(crate) struct ToolSpec<'a> {
    pub name: &'a str,
    pub schema: Option<&'a Value>,
}

/// A tool call the simulator makes.
pub(crate) struct Call {
    pub id: String,
    pub name: String,
    pub input: Value,
    pub args: String,
}

/// Whether `tool_choice` forbids tools (`"none"` or `{"type":"none"}`).
fn choice_is_none(choice: &Value) -> bool {
    choice.as_str() == Some("none") || choice.get("type").and_then(Value::as_str) == Some("none")
}

/// The tool a `tool_choice` names (OpenAI `function.name` or Anthropic `name`).
fn choice_name(choice: &Value) -> Option<&str> {
    choice
        .get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| choice.get("name"))
        .and_then(Value::as_str)
}

/// The calls to make: `count` of them, from the named tool (or the first), cycling.
pub(crate) fn tool_calls(
    tools: &[ToolSpec],
    choice: Option<&Value>,
    count: usize,
    body: &[u8],
    id_prefix: &str,
) -> Vec<Call> {
    if tools.is_empty() || choice.is_some_and(choice_is_none) {
        return Vec::new();
    }
    let named = choice.and_then(choice_name);
    let start = named.map(|n| tools.iter().position(|t| t.name == n));
    let seed = fnv(body);
    (0..count)
        .map(|i| {
            let (name, schema) = match (named, start) {
                (Some(n), Some(None)) => (n, None),
                (_, s) => {
                    let t = &tools[(s.flatten().unwrap_or(0) + i) % tools.len()];
                    (t.name, t.schema)
                }
            };
            let input = sample_input(schema);
            Call {
                id: hex_id(id_prefix, seed, i as u64),
                name: name.to_owned(),
                args: input.to_string(),
                input,
            }
        })
        .collect()
}

/// Completion tokens for tool calls: ceil(chars of names and arguments / 4).
pub(crate) fn call_tokens(calls: &[Call]) -> u64 {
    tokens(calls.iter().map(|c| c.name.len() + c.args.len()).sum())
}

/// Arguments with every required property of the schema filled in.
fn sample_input(schema: Option<&Value>) -> Value {
    let mut out = Map::new();
    if let Some(schema) = schema {
        let props = schema.get("properties");
        let required = schema.get("required").and_then(Value::as_array);
        for name in required.into_iter().flatten().filter_map(Value::as_str) {
            out.insert(
                name.to_owned(),
                sample_value(props.and_then(|p| p.get(name))),
            );
        }
    }
    Value::Object(out)
}

fn sample_value(prop: Option<&Value>) -> Value {
    let Some(prop) = prop else {
        return json!("sim");
    };
    if let Some(first) = prop
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return first.clone();
    }
    let ty = match prop.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "",
    };
    match ty {
        "number" | "integer" => json!(1),
        "boolean" => json!(true),
        "array" => json!([]),
        "object" => json!({}),
        "null" => Value::Null,
        _ => json!("sim"),
    }
}

/// FNV-1a, a stable hash for ids and embeddings.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64 step.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `prefix` plus 24 hex digits derived from `seed` and `n`.
fn hex_id(prefix: &str, seed: u64, n: u64) -> String {
    let a = mix(seed ^ mix(n));
    let b = mix(a);
    format!("{prefix}{a:016x}{:08x}", b as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_keeps_text() {
        let text = "sim reply to:  hello\nworld";
        for n in 1..10 {
            let pieces = split_words(text, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text);
        }
        assert_eq!(split_words(text, 5)[1], " reply");
    }

    #[test]
    fn split_chars_keeps_text() {
        let s = "{\"a\":\"é\"}";
        for n in 1..15 {
            let pieces = split_chars(s, n);
            assert!(pieces.len() <= n && !pieces.is_empty());
            assert_eq!(pieces.concat(), s);
        }
        assert!(split_chars("", 3).is_empty());
    }

    #[test]
    fn faults_in_model_names() {
        assert_eq!(model_fault("sim-fault-429"), Some(Fault::RateLimit));
        assert_eq!(model_fault("sk-fault-401"), Some(Fault::Unauthorized));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-fault-403".parse().unwrap());
        assert_eq!(key_fault(&h), Some(Fault::Forbidden));
        assert_eq!(model_fault("gpt-4o-mini-fault-reset"), Some(Fault::Reset));
        assert_eq!(model_fault("fault-html-x"), Some(Fault::Html));
        assert_eq!(model_fault("default-model"), None);
        assert_eq!(model_fault("sim-fault-nope"), None);
    }

    #[test]
    fn sample_arguments() {
        let schema = json!({"type": "object", "properties": {
            "s": {"type": "string"}, "n": {"type": "integer"}, "b": {"type": "boolean"},
            "a": {"type": "array"}, "o": {"type": ["object", "null"]}, "e": {"enum": ["c", "f"]},
            "skip": {"type": "string"}
        }, "required": ["s", "n", "b", "a", "o", "e"]});
        let v = sample_input(Some(&schema));
        assert_eq!(
            v,
            json!({"s": "sim", "n": 1, "b": true, "a": [], "o": {}, "e": "c"})
        );
    }
}
