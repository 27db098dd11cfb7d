//! The client-facing API: which endpoint a path is, and the client's JSON body, parsed once and
//! validated, then rewritten for each upstream target.

use crate::error::ApiError;
use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// Anthropic's Messages API.
    Messages,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/messages" => Some(Endpoint::Messages),
            _ => None,
        }
    }

    /// The path under a provider's base URL.
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/messages",
        }
    }

    /// Whether the client speaks Anthropic's dialect here (errors take its shape).
    pub fn anthropic(self) -> bool {
        self == Endpoint::Messages
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
        }
    }
}

/// A validated client request body. Top-level fields are kept as raw JSON text, so everything
/// the gateway does not rewrite reaches the upstream exactly as the client sent it.
#[derive(Debug)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub wants_usage: bool,
    fields: IndexMap<String, Box<RawValue>>,
    size: usize,
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Number,
    Integer,
    Array,
    Object,
    StrOrArray,
}

impl Kind {
    fn accepts(self, raw: &str) -> bool {
        let first = raw.as_bytes().first().copied().unwrap_or(b' ');
        let number = first == b'-' || first.is_ascii_digit();
        match self {
            Kind::Str => first == b'"',
            Kind::Bool => raw == "true" || raw == "false",
            Kind::Number => number,
            Kind::Integer => number && (raw.parse::<i64>().is_ok() || raw.parse::<u64>().is_ok()),
            Kind::Array => first == b'[',
            Kind::Object => first == b'{',
            Kind::StrOrArray => first == b'"' || first == b'[',
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Array => "an array",
            Kind::Object => "an object",
            Kind::StrOrArray => "a string or an array",
        }
    }
}

/// Types of the fields a gateway relies on or that clients commonly get wrong. `null` is allowed
/// for every optional field, as OpenAI allows it.
const FIELDS: &[(&str, Kind)] = &[
    ("model", Kind::Str),
    ("stream", Kind::Bool),
    ("stream_options", Kind::Object),
    ("temperature", Kind::Number),
    ("top_p", Kind::Number),
    ("frequency_penalty", Kind::Number),
    ("presence_penalty", Kind::Number),
    ("max_tokens", Kind::Integer),
    ("max_completion_tokens", Kind::Integer),
    ("n", Kind::Integer),
    ("seed", Kind::Integer),
    ("user", Kind::Str),
    ("stop", Kind::StrOrArray),
    ("tools", Kind::Array),
    ("messages", Kind::Array),
    ("prompt", Kind::StrOrArray),
    ("input", Kind::StrOrArray),
    ("dimensions", Kind::Integer),
    ("encoding_format", Kind::Str),
];

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct MessageRole<'a> {
    #[serde(borrow, default)]
    role: Option<&'a RawValue>,
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

impl ClientRequest {
    pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<ClientRequest, ApiError> {
        let required: &[&str] = match endpoint {
            Endpoint::Chat => &["messages"],
            Endpoint::Completions => &["prompt"],
            Endpoint::Embeddings => &["input"],
            Endpoint::Messages => &["messages", "max_tokens"],
        };
        Self::parse_requiring(endpoint, bytes, required)
    }

    /// A body for Anthropic's `count_tokens`: a message without `max_tokens`.
    pub fn parse_count_tokens(bytes: &[u8]) -> Result<ClientRequest, ApiError> {
        Self::parse_requiring(Endpoint::Messages, bytes, &["messages"])
    }

    fn parse_requiring(
        endpoint: Endpoint,
        bytes: &[u8],
        required: &[&str],
    ) -> Result<ClientRequest, ApiError> {
        let fields: IndexMap<String, Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(|e| {
                if e.classify() == Category::Data {
                    ApiError::bad_request("invalid_type", "The request body must be a JSON object.")
                } else {
                    ApiError::bad_request(
                        "invalid_json",
                        format!("The request body is not valid JSON: {e}"),
                    )
                }
            })?;
        for (field, kind) in FIELDS {
            if let Some(v) = fields.get(*field) {
                if !is_null(v) && !kind.accepts(v.get()) {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!(
                            "`{field}` must be {}, got {}.",
                            kind.describe(),
                            type_name(v.get())
                        ),
                    ));
                }
            }
        }
        for field in std::iter::once(&"model").chain(required) {
            if fields.get(*field).is_none_or(|v| is_null(v)) {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("`{field}` is required."),
                ));
            }
        }
        if let Some(messages) = fields.get("messages").filter(|v| !is_null(v)) {
            let messages: Vec<&RawValue> = serde_json::from_str(messages.get()).map_err(|_| {
                ApiError::bad_request("invalid_type", "`messages` must be an array.")
            })?;
            if messages.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    "`messages` must not be empty.",
                ));
            }
            for (i, m) in messages.iter().enumerate() {
                let role = serde_json::from_str::<MessageRole>(m.get())
                    .ok()
                    .and_then(|m| m.role);
                if !role.is_some_and(|r| r.get().starts_with('"')) {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!("`messages[{i}]` must be an object with a string `role`."),
                    ));
                }
            }
        }
        let stream = fields.get("stream").is_some_and(|v| v.get() == "true");
        if stream && endpoint == Endpoint::Embeddings {
            return Err(ApiError::bad_request(
                "invalid_value",
                "Embeddings cannot be streamed.",
            ));
        }
        let include_usage = fields
            .get("stream_options")
            .filter(|v| !is_null(v))
            .and_then(|v| serde_json::from_str::<StreamOptions>(v.get()).ok())
            .and_then(|o| o.include_usage)
            .filter(|v| !is_null(v));
        if include_usage
            .as_ref()
            .is_some_and(|v| !Kind::Bool.accepts(v.get()))
        {
            return Err(ApiError::bad_request(
                "invalid_type",
                "`stream_options.include_usage` must be a boolean.",
            ));
        }
        let wants_usage = include_usage.is_some_and(|v| v.get() == "true");
        let model = fields
            .get("model")
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .unwrap_or_default();
        Ok(ClientRequest {
            endpoint,
            model,
            stream,
            wants_usage,
            fields,
            size: bytes.len(),
        })
    }

    /// The body for an upstream that serves `model`: the client's fields as sent, with `model`
    /// replaced. Streams always ask for usage, so that every request is accounted for; `proxy`
    /// removes the usage chunk if the client did not ask for it.
    pub fn upstream_body(&self, model: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.size + model.len() + 48);
        out.push(b'{');
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            out.extend_from_slice(value);
        };
        let usage_options =
            (self.stream && !self.endpoint.anthropic()).then(|| self.stream_options_with_usage());
        for (key, value) in &self.fields {
            match key.as_str() {
                "model" => field(
                    &mut out,
                    key,
                    &serde_json::to_vec(model).unwrap_or_default(),
                ),
                "stream_options" if usage_options.is_some() => {}
                _ => field(&mut out, key, value.get().as_bytes()),
            }
        }
        if let Some(options) = usage_options {
            field(&mut out, "stream_options", &options);
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// The client's `stream_options` with `include_usage` set to true.
    fn stream_options_with_usage(&self) -> Vec<u8> {
        let mut options: IndexMap<String, Box<RawValue>> = self
            .fields
            .get("stream_options")
            .and_then(|v| serde_json::from_str(v.get()).ok())
            .unwrap_or_default();
        if let Ok(t) = RawValue::from_string("true".into()) {
            options.insert("include_usage".into(), t);
        }
        serde_json::to_vec(&options).unwrap_or_default()
    }
}

fn type_name(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        ClientRequest::parse(endpoint, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn bad_bodies_get_400_with_a_reason() {
        assert_eq!(err(Endpoint::Chat, "{not json").code, "invalid_json");
        assert_eq!(err(Endpoint::Chat, "[1]").code, "invalid_type");
        assert_eq!(
            err(Endpoint::Chat, r#"{"messages":[{"role":"user"}]}"#).code,
            "missing_field"
        );
        let e = err(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user"}],"temperature":"hot"}"#,
        );
        assert_eq!((e.status, e.code), (400, "invalid_type"));
        assert!(
            e.message.contains("`temperature` must be a number"),
            "{}",
            e.message
        );
        assert_eq!(
            err(Endpoint::Chat, r#"{"model":5,"messages":[]}"#).code,
            "invalid_type"
        );
        assert_eq!(
            err(Endpoint::Chat, r#"{"model":"m","messages":[]}"#).code,
            "invalid_value"
        );
        assert_eq!(
            err(Endpoint::Chat, r#"{"model":"m","messages":["hi"]}"#).code,
            "invalid_type"
        );
        assert_eq!(
            err(Endpoint::Embeddings, r#"{"model":"m"}"#).code,
            "missing_field"
        );
        assert_eq!(
            err(
                Endpoint::Embeddings,
                r#"{"model":"m","input":"x","stream":true}"#
            )
            .code,
            "invalid_value"
        );
        assert_eq!(
            err(
                Endpoint::Completions,
                r#"{"model":"m","prompt":"x","max_tokens":1.5}"#
            )
            .code,
            "invalid_type"
        );
        let e = err(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":"yes"}}"#,
        );
        assert_eq!(e.code, "invalid_type");
    }

    #[test]
    fn nulls_are_allowed_for_optional_fields() {
        let r = ClientRequest::parse(Endpoint::Chat, br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":null,"stop":null}"#);
        assert!(r.is_ok());
    }

    #[test]
    fn upstream_body_rewrites_model_and_asks_for_usage() {
        let r = ClientRequest::parse(
            Endpoint::Chat,
            br#"{"model":"alias","stream":true,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#,
        )
        .unwrap();
        assert!(r.stream && !r.wants_usage);
        let v: Value = serde_json::from_slice(&r.upstream_body("gpt-4o-mini")).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["user"], "u1");
        let v: Value = serde_json::from_slice(&r.upstream_body("other")).unwrap();
        assert_eq!(v["model"], "other");

        let r = ClientRequest::parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"user"}]}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
        assert!(
            v.get("stream_options").is_none(),
            "non-stream bodies are not given stream_options"
        );
        let r = ClientRequest::parse(
            Endpoint::Chat,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user"}]}"#,
        )
        .unwrap();
        assert!(r.wants_usage);
    }

    #[test]
    fn fields_pass_through_exactly() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9"}],"metadata":{"big":123456789012345678901234567890},"temperature":0.70,"stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let r = ClientRequest::parse(Endpoint::Chat, body).unwrap();
        let out = String::from_utf8(r.upstream_body("up").to_vec()).unwrap();
        assert_eq!(
            out,
            r#"{"model":"up","messages":[{"role":"user","content":"caf\u00e9"}],"metadata":{"big":123456789012345678901234567890},"temperature":0.70,"stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        assert!(!r.wants_usage);
    }

    #[test]
    fn model_names_are_escaped() {
        let r =
            ClientRequest::parse(Endpoint::Embeddings, br#"{"model":"m","input":"x"}"#).unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body("we\"ird")).unwrap();
        assert_eq!(v["model"], "we\"ird");
    }
}
