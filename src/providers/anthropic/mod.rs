//! Anthropic Messages <-> OpenAI chat completions, both ways, as bytes in and bytes out.
//!
//! Direction A: a client speaks OpenAI and the upstream is Anthropic (`chat_to_messages`,
//! `messages_to_chat`, `MessagesStreamToChat`, `error_to_openai`). Direction B: a client speaks
//! Anthropic and the upstream is OpenAI-compatible (`messages_request_to_chat`,
//! `chat_to_messages_response`, `ChatStreamToMessages`, `count_tokens`,
//! `openai_error_to_anthropic`).

mod ingress;
mod ingress_stream;
mod request;
mod response;
mod stream;

pub use ingress::{
    chat_to_messages_response, count_tokens, messages_request_to_chat, openai_error_to_anthropic,
};
pub use ingress_stream::ChatStreamToMessages;
pub use request::chat_to_messages;
pub use response::{error_to_openai, messages_to_chat};
pub use stream::MessagesStreamToChat;

/// A stream translated chunk by chunk: both directions have the same shape.
pub trait StreamTranslator: Send + Sync {
    /// Upstream SSE bytes in, in any split; the client's SSE bytes to send now out.
    fn push(&mut self, chunk: &[u8]) -> Vec<u8>;
    /// What is left when the upstream stream ends.
    fn finish(&mut self) -> Vec<u8>;
    /// (prompt, completion, cached) tokens, once known.
    fn usage(&self) -> Option<(u64, u64, u64)>;
    /// An error event arrived in the stream.
    fn error(&self) -> bool;
    /// The stream ended with its closing event.
    fn complete(&self) -> bool;
}

macro_rules! stream_translator {
    ($t:ty) => {
        impl StreamTranslator for $t {
            fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
                <$t>::push(self, chunk)
            }
            fn finish(&mut self) -> Vec<u8> {
                <$t>::finish(self)
            }
            fn usage(&self) -> Option<(u64, u64, u64)> {
                <$t>::usage(self)
            }
            fn error(&self) -> bool {
                <$t>::error(self)
            }
            fn complete(&self) -> bool {
                <$t>::complete(self)
            }
        }
    };
}

stream_translator!(MessagesStreamToChat);
stream_translator!(ChatStreamToMessages);

/// The header that carries an Anthropic key.
pub const AUTH_HEADER: http::HeaderName = http::HeaderName::from_static("x-api-key");
/// The `anthropic-version` sent when the client did not choose one.
pub const VERSION: &str = "2023-06-01";

use serde::de::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// The Anthropic error type an HTTP status stands for. Anthropic uses `invalid_request_error` for
/// the 4xx statuses it has no type for.
fn error_kind_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An error status as one HTTP clients and SDKs know. Registered statuses are kept. Anthropic's
/// 529 (overloaded) is kept for Anthropic clients (`keep_529`) and becomes 503 for OpenAI ones,
/// which retry it as a server overload. Unregistered 4xx become 400; CDN timeouts (522, 524)
/// and 598/599 become 504; other unregistered statuses (Cloudflare's 52x, 3xx where an error was
/// expected) become 502.
fn standard_error_status(status: u16, keep_529: bool) -> u16 {
    match status {
        529 if keep_529 => 529,
        529 => 503,
        400..=418 | 421..=426 | 428 | 429 | 431 | 451 => status,
        500..=508 | 510 | 511 => status,
        400..=499 => 400,
        522 | 524 | 598 | 599 => 504,
        _ => 502,
    }
}

/// The OpenAI error code for an Anthropic error type.
fn openai_code(kind: &str) -> &str {
    match kind {
        "invalid_request_error" => "invalid_request",
        "authentication_error" => "invalid_api_key",
        "billing_error" => "insufficient_quota",
        "permission_error" => "permission_denied",
        "not_found_error" => "not_found",
        "rate_limit_error" => "rate_limit_exceeded",
        "overloaded_error" => "overloaded",
        "timeout_error" => "timeout",
        "api_error" => "server_error",
        other => other,
    }
}

/// Anthropic's `{"type","message"}` inside an error body or event.
#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Anthropic's usage counters; any of them may be absent or null.
#[derive(serde::Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

/// Token counts of one Anthropic answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tokens {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl Tokens {
    /// Takes in a usage report. A counter repeated by a later event is kept once, never added.
    fn merge(&mut self, u: &AnthropicUsage) {
        let max = |a: &mut u64, b: Option<u64>| *a = (*a).max(b.unwrap_or(0));
        max(&mut self.input, u.input_tokens);
        max(&mut self.output, u.output_tokens);
        max(&mut self.cache_read, u.cache_read_input_tokens);
        max(&mut self.cache_creation, u.cache_creation_input_tokens);
    }

    fn prompt(&self) -> u64 {
        self.input + self.cache_read + self.cache_creation
    }

    fn chat_usage(&self) -> ChatUsage {
        ChatUsage {
            prompt_tokens: self.prompt(),
            completion_tokens: self.output,
            total_tokens: self.prompt() + self.output,
            prompt_tokens_details: PromptDetails {
                cached_tokens: self.cache_read,
                cache_creation_input_tokens: self.cache_creation,
            },
        }
    }
}

/// OpenAI's `usage` object.
#[derive(serde::Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
}

#[derive(serde::Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    cache_creation_input_tokens: u64,
}

/// OpenAI's `usage` as read from an upstream answer.
#[derive(serde::Deserialize, Default)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<OpenAiPromptDetails>,
}

#[derive(serde::Deserialize, Default)]
struct OpenAiPromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl OpenAiUsage {
    /// (prompt, completion, cached).
    fn counts(&self) -> (u64, u64, u64) {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        (
            self.prompt_tokens.unwrap_or(0),
            self.completion_tokens.unwrap_or(0),
            cached,
        )
    }
}

/// A JSON object kept as its text, so key order survives; `None` stands for `{}`.
struct RawObject(Option<Box<RawValue>>);

impl RawObject {
    /// Tool arguments as the model wrote them; anything but a JSON object becomes `{}`.
    fn parse(text: &str) -> RawObject {
        RawObject(
            serde_json::from_str::<Box<RawValue>>(text)
                .ok()
                .filter(|r| r.get().trim_start().starts_with('{')),
        )
    }
}

impl Serialize for RawObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(s),
            None => s.serialize_map(Some(0))?.end(),
        }
    }
}

/// A tool's JSON schema: the one given, or an object schema with no properties.
enum Schema<'a> {
    Given(&'a RawValue),
    Empty,
}

impl Serialize for Schema<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Schema::Given(raw) => raw.serialize(s),
            Schema::Empty => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "object")?;
                m.serialize_entry("properties", &serde_json::Map::new())?;
                m.end()
            }
        }
    }
}

/// JSON text without the whitespace outside strings.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// Message content that is either a string or an array of parts.
enum Content<T> {
    Text(String),
    Parts(Vec<T>),
}

/// Reads content given as a string, an array of parts, or null (no parts).
fn read_content<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Result<Content<T>, String> {
    let Some(raw) = raw else {
        return Ok(Content::Parts(Vec::new()));
    };
    let text = raw.get();
    let bad = |e: serde_json::Error| format!("invalid message content: {e}");
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str(text).map(Content::Text).map_err(bad),
        Some(b'[') => serde_json::from_str(text).map(Content::Parts).map_err(bad),
        _ if text == "null" => Ok(Content::Parts(Vec::new())),
        _ => Err("message content must be a string or an array".into()),
    }
}

/// Appends one server-sent event: an optional `event:` line and a `data:` line.
fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &impl Serialize) {
    let Ok(json) = serde_json::to_vec(data) else {
        return;
    };
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
}

/// Splits server-sent events into their `data` payloads. Accepts `\n` and `\r\n` line ends and
/// input cut at any byte.
#[derive(Debug, Default)]
struct SseReader {
    /// A line not ended yet.
    line: Vec<u8>,
    /// The data lines of the event being read, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
}

impl SseReader {
    /// Takes bytes; returns the data of each event they complete.
    fn push(&mut self, mut chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        while let Some(i) = memchr::memchr(b'\n', chunk) {
            if self.line.is_empty() {
                self.take_line(&chunk[..i], &mut events);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..i]);
                self.take_line(&line, &mut events);
                line.clear();
                self.line = line;
            }
            chunk = &chunk[i + 1..];
        }
        self.line.extend_from_slice(chunk);
        events
    }

    /// The end of input: a last line or event without its blank line still counts.
    fn finish(&mut self) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.take_line(&line, &mut events);
        }
        self.take_line(b"", &mut events);
        events
    }

    fn take_line(&mut self, line: &[u8], events: &mut Vec<Vec<u8>>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
        } else if let Some(value) = line.strip_prefix(b"data:") {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data
                .extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
            self.has_data = true;
        }
    }
}

/// The recorded API shapes shared by the tests: `(file name, bytes)` of each file in `dir` ending
/// in `ext`, sorted by name.
#[cfg(test)]
fn shapes(dir: &str, prefix: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let path = format!(
        "{}/../shared/data/api-shapes/{dir}",
        env!("CARGO_MANIFEST_DIR")
    );
    let entries = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("the recorded API shapes are missing: cannot read {path}: {e}"));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            (name.starts_with(prefix) && name.ends_with(ext))
                .then(|| (name, std::fs::read(&p).unwrap()))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {prefix}*{ext} files in {path}");
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut r = SseReader::default();
        let mut events = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            events.extend(r.push(&input[from..cut]));
            from = cut;
        }
        events.extend(r.finish());
        events
            .into_iter()
            .map(|e| String::from_utf8(e).unwrap())
            .collect()
    }

    #[test]
    fn sse_reader_handles_crlf_multiline_comments_and_cuts() {
        let input = b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\n\ndata: last";
        for cut in 0..=input.len() {
            assert_eq!(
                read_all(input, &[cut]),
                ["one\ntwo", "x", "last"],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn compact_json_keeps_strings() {
        assert_eq!(
            compact_json("{ \"a b\" : [1, \"x \\\" y\"],\n \"c\": {} }"),
            "{\"a b\":[1,\"x \\\" y\"],\"c\":{}}"
        );
    }

    #[test]
    fn raw_object_keeps_order_and_rejects_non_objects() {
        let to = |s: &str| serde_json::to_string(&RawObject::parse(s)).unwrap();
        assert_eq!(to("{\"z\":1,\"a\":2}"), "{\"z\":1,\"a\":2}");
        assert_eq!(to(""), "{}");
        assert_eq!(to("[1]"), "{}");
        assert_eq!(to("{bad"), "{}");
        assert_eq!(
            serde_json::to_string(&Schema::Empty).unwrap(),
            "{\"type\":\"object\",\"properties\":{}}"
        );
    }

    #[test]
    fn reason_tables() {
        for (anthropic, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(anthropic), openai);
        }
        for (openai, anthropic) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
        ] {
            assert_eq!(stop_reason(openai), anthropic);
        }
    }

    #[test]
    fn tokens_are_kept_once() {
        let mut t = Tokens::default();
        let start = AnthropicUsage {
            input_tokens: Some(10),
            output_tokens: Some(1),
            cache_read_input_tokens: Some(4),
            cache_creation_input_tokens: Some(2),
        };
        t.merge(&start);
        t.merge(&AnthropicUsage {
            output_tokens: Some(7),
            ..start
        });
        assert_eq!((t.prompt(), t.output, t.cache_read), (16, 7, 4));
    }
}
