//! The client-facing API: which endpoint a path is, and the client's JSON body, parsed once and
//! validated, then rewritten for each upstream target.

use crate::error::ApiError;
use bytes::Bytes;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    /// The path under an OpenAI-style base URL.
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// A validated client request body.
#[derive(Debug)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub wants_usage: bool,
    body: Map<String, Value>,
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
    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Number => v.is_number(),
            Kind::Integer => v.is_i64() || v.is_u64(),
            Kind::Array => v.is_array(),
            Kind::Object => v.is_object(),
            Kind::StrOrArray => v.is_string() || v.is_array(),
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

impl ClientRequest {
    pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<ClientRequest, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("The request body is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(body) = value else {
            return Err(ApiError::bad_request(
                "invalid_type",
                "The request body must be a JSON object.",
            ));
        };
        for (field, kind) in FIELDS {
            if let Some(v) = body.get(*field) {
                if !v.is_null() && !kind.accepts(v) {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!(
                            "`{field}` must be {}, got {}.",
                            kind.describe(),
                            type_name(v)
                        ),
                    ));
                }
            }
        }
        let required = match endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
        };
        for field in ["model", required] {
            if body.get(field).is_none_or(Value::is_null) {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("`{field}` is required."),
                ));
            }
        }
        if let Some(messages) = body.get("messages").and_then(Value::as_array) {
            if messages.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    "`messages` must not be empty.",
                ));
            }
            for (i, m) in messages.iter().enumerate() {
                if !m.get("role").is_some_and(Value::is_string) {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!("`messages[{i}]` must be an object with a string `role`."),
                    ));
                }
            }
        }
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        if stream && endpoint == Endpoint::Embeddings {
            return Err(ApiError::bad_request(
                "invalid_value",
                "Embeddings cannot be streamed.",
            ));
        }
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"));
        if include_usage.is_some_and(|v| !v.is_null() && !v.is_boolean()) {
            return Err(ApiError::bad_request(
                "invalid_type",
                "`stream_options.include_usage` must be a boolean.",
            ));
        }
        let wants_usage = include_usage.and_then(Value::as_bool).unwrap_or(false);
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(ClientRequest {
            endpoint,
            model,
            stream,
            wants_usage,
            body,
        })
    }

    /// The body for an upstream that serves `model`. Streams always ask for usage, so that
    /// every request is accounted for; `proxy` removes the usage chunk if the client did not ask.
    pub fn upstream_body(&mut self, model: &str) -> Bytes {
        self.body
            .insert("model".into(), Value::String(model.to_string()));
        if self.stream {
            let options = self
                .body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        // Serializing a map of JSON values cannot fail.
        Bytes::from(serde_json::to_vec(&self.body).unwrap_or_default())
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = ClientRequest::parse(
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

        let mut r = ClientRequest::parse(
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
}
