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

/// A validated client request body. Top-level fields are kept as raw JSON text (ranges into the
/// body as received), so everything the gateway does not rewrite reaches the upstream exactly as
/// the client sent it, and parsing allocates little.
#[derive(Debug)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub wants_usage: bool,
    body: Bytes,
    /// The top-level fields in order; a repeated key keeps its first place and its last value.
    fields: Vec<Field>,
}

#[derive(Debug)]
struct Field {
    key: Key,
    value: std::ops::Range<usize>,
}

#[derive(Debug)]
enum Key {
    /// The key's text in the body (it has no escapes).
    Raw(std::ops::Range<usize>),
    /// A key written with escapes, decoded.
    Decoded(Box<str>),
}

/// A JSON object key, borrowed from the input unless it has escapes.
struct ObjectKey<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for ObjectKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ObjectKey<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ObjectKey(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ObjectKey(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top level of a body: its fields in order, borrowed from the input.
struct TopLevel<'de>(Vec<(ObjectKey<'de>, &'de RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some(key) = map.next_key::<ObjectKey<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// What the gateway checks in each message: that it is an object with a string `role`.
struct RoleProbe(bool);

impl<'de> Deserialize<'de> for RoleProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RoleProbe;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut ok = false;
                while let Some(key) = map.next_key::<ObjectKey<'de>>()? {
                    if key.0 == "role" {
                        let role: &'de RawValue = map.next_value()?;
                        ok = role.get().starts_with('"');
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(RoleProbe(ok))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RoleProbe(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RoleProbe(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RoleProbe(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RoleProbe(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RoleProbe(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RoleProbe(false))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(RoleProbe(false))
            }
        }
        d.deserialize_any(V)
    }
}

/// The index of the first message that is not an object with a string `role`, if any, and how
/// many messages there are.
fn check_messages(raw: &str) -> Option<(Option<usize>, usize)> {
    struct Messages(Option<usize>, usize);
    impl<'de> Deserialize<'de> for Messages {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Messages;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an array")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Self::Value, A::Error> {
                    let (mut bad, mut n) = (None, 0);
                    while let Some(RoleProbe(ok)) = seq.next_element()? {
                        if !ok && bad.is_none() {
                            bad = Some(n);
                        }
                        n += 1;
                    }
                    Ok(Messages(bad, n))
                }
            }
            d.deserialize_seq(V)
        }
    }
    let m: Messages = serde_json::from_str(raw).ok()?;
    Some((m.0, m.1))
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

/// The type of a field the gateway relies on or that clients commonly get wrong. `null` is allowed
/// for every optional field, as OpenAI allows it.
fn kind_of(field: &str) -> Option<Kind> {
    Some(match field {
        "model" | "user" | "encoding_format" => Kind::Str,
        "stream" => Kind::Bool,
        "stream_options" => Kind::Object,
        "temperature" | "top_p" | "frequency_penalty" | "presence_penalty" => Kind::Number,
        "max_tokens" | "max_completion_tokens" | "n" | "seed" | "dimensions" => Kind::Integer,
        "stop" | "prompt" | "input" => Kind::StrOrArray,
        "tools" | "messages" => Kind::Array,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct StreamOptions<'a> {
    #[serde(default, borrow)]
    include_usage: Option<&'a RawValue>,
}

fn is_null(raw: &str) -> bool {
    raw == "null"
}

/// Past this many fields, repeated keys are found through a map rather than a scan.
const SCAN_FIELDS: usize = 32;

impl ClientRequest {
    pub fn parse(endpoint: Endpoint, body: Bytes) -> Result<ClientRequest, ApiError> {
        let required: &[&str] = match endpoint {
            Endpoint::Chat => &["messages"],
            Endpoint::Completions => &["prompt"],
            Endpoint::Embeddings => &["input"],
            Endpoint::Messages => &["messages", "max_tokens"],
        };
        Self::parse_requiring(endpoint, body, required)
    }

    /// A body for Anthropic's `count_tokens`: a message without `max_tokens`.
    pub fn parse_count_tokens(body: Bytes) -> Result<ClientRequest, ApiError> {
        Self::parse_requiring(Endpoint::Messages, body, &["messages"])
    }

    fn parse_requiring(
        endpoint: Endpoint,
        body: Bytes,
        required: &[&str],
    ) -> Result<ClientRequest, ApiError> {
        let top: TopLevel = serde_json::from_slice(&body).map_err(|e| {
            if e.classify() == Category::Data {
                ApiError::bad_request("invalid_type", "The request body must be a JSON object.")
            } else {
                ApiError::bad_request(
                    "invalid_json",
                    format!("The request body is not valid JSON: {e}"),
                )
            }
        })?;
        let base = body.as_ptr() as usize;
        let range = |s: &str| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let mut fields: Vec<Field> = Vec::with_capacity(top.0.len());
        let mut index: Option<std::collections::HashMap<String, usize>> = None;
        for (key, value) in top.0 {
            let raw = value.get();
            if let Some(kind) = kind_of(&key.0) {
                if !is_null(raw) && !kind.accepts(raw) {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!(
                            "`{}` must be {}, got {}.",
                            key.0,
                            kind.describe(),
                            type_name(raw)
                        ),
                    ));
                }
            }
            let value = range(raw);
            let existing = match index.as_mut() {
                Some(map) => map.get(key.0.as_ref()).copied(),
                None => fields.iter().position(|f| key_text(&body, &f.key) == key.0),
            };
            if let Some(at) = existing {
                fields[at].value = value;
                continue;
            }
            if let Some(map) = index.as_mut() {
                map.insert(key.0.to_string(), fields.len());
            }
            fields.push(Field {
                key: match key.0 {
                    std::borrow::Cow::Borrowed(k) => Key::Raw(range(k)),
                    std::borrow::Cow::Owned(k) => Key::Decoded(k.into_boxed_str()),
                },
                value,
            });
            if index.is_none() && fields.len() > SCAN_FIELDS {
                index = Some(
                    fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (key_text(&body, &f.key).to_string(), i))
                        .collect(),
                );
            }
        }
        let mut request = ClientRequest {
            endpoint,
            model: String::new(),
            stream: false,
            wants_usage: false,
            body,
            fields,
        };
        for field in std::iter::once(&"model").chain(required) {
            if request.field(field).is_none_or(is_null) {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("`{field}` is required."),
                ));
            }
        }
        if let Some(messages) = request.field("messages").filter(|v| !is_null(v)) {
            match check_messages(messages) {
                None => {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        "`messages` must be an array.",
                    ))
                }
                Some((_, 0)) => {
                    return Err(ApiError::bad_request(
                        "invalid_value",
                        "`messages` must not be empty.",
                    ))
                }
                Some((Some(i), _)) => {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!("`messages[{i}]` must be an object with a string `role`."),
                    ))
                }
                Some((None, _)) => {}
            }
        }
        let stream = request.field("stream") == Some("true");
        if stream && endpoint == Endpoint::Embeddings {
            return Err(ApiError::bad_request(
                "invalid_value",
                "Embeddings cannot be streamed.",
            ));
        }
        let include_usage = request
            .field("stream_options")
            .filter(|v| !is_null(v))
            .and_then(|v| serde_json::from_str::<StreamOptions>(v).ok())
            .and_then(|o| o.include_usage)
            .map(RawValue::get)
            .filter(|v| !is_null(v));
        if include_usage.is_some_and(|v| !Kind::Bool.accepts(v)) {
            return Err(ApiError::bad_request(
                "invalid_type",
                "`stream_options.include_usage` must be a boolean.",
            ));
        }
        request.wants_usage = include_usage == Some("true");
        request.stream = stream;
        request.model = request
            .field("model")
            .and_then(|v| serde_json::from_str::<String>(v).ok())
            .unwrap_or_default();
        Ok(request)
    }

    /// The raw JSON text of a top-level field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| key_text(&self.body, &f.key) == name)
            .map(|f| text(&self.body, &f.value))
    }

    /// A cheap estimate of the prompt's tokens (a quarter of the bytes of the fields that carry
    /// input), and the request's own cap on output tokens, if it sets one.
    pub fn token_estimate(&self) -> (u64, Option<u64>) {
        let input: usize = [
            "messages",
            "prompt",
            "input",
            "system",
            "tools",
            "functions",
        ]
        .iter()
        .filter_map(|f| self.field(f))
        .map(str::len)
        .sum();
        let max = match self.endpoint {
            Endpoint::Embeddings => Some(0),
            _ => ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                .iter()
                .find_map(|f| self.field(f)?.trim().parse::<u64>().ok()),
        };
        (input.div_ceil(4) as u64, max)
    }

    /// The top-level fields in order: each key and its raw JSON text.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|f| (key_text(&self.body, &f.key), text(&self.body, &f.value)))
    }

    /// The body as the client sent it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body for an upstream that serves `model`: the client's fields as sent, with `model`
    /// replaced. Streams always ask for usage, so that every request is accounted for; `proxy`
    /// removes the usage chunk if the client did not ask for it.
    pub fn upstream_body(&self, model: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.body.len() + model.len() + 48);
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
        for (key, value) in self.fields() {
            match key {
                "model" => field(
                    &mut out,
                    key,
                    &serde_json::to_vec(model).unwrap_or_default(),
                ),
                "stream_options" if usage_options.is_some() => {}
                _ => field(&mut out, key, value.as_bytes()),
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
            .field("stream_options")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        if let Ok(t) = RawValue::from_string("true".into()) {
            options.insert("include_usage".into(), t);
        }
        serde_json::to_vec(&options).unwrap_or_default()
    }
}

/// The text at `range`, which came from a `&str` borrowed from this body (so it is UTF-8).
fn text<'a>(body: &'a [u8], range: &std::ops::Range<usize>) -> &'a str {
    std::str::from_utf8(&body[range.clone()]).unwrap_or_default()
}

fn key_text<'a>(body: &'a [u8], key: &'a Key) -> &'a str {
    match key {
        Key::Raw(range) => text(body, range),
        Key::Decoded(k) => k,
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

    fn bytes(b: &[u8]) -> Bytes {
        Bytes::copy_from_slice(b)
    }

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        ClientRequest::parse(endpoint, Bytes::copy_from_slice(body.as_bytes())).unwrap_err()
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
        assert_eq!((e.status, e.code.as_ref()), (400, "invalid_type"));
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
        let r = ClientRequest::parse(Endpoint::Chat, bytes(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":null,"stop":null}"#));
        assert!(r.is_ok());
    }

    #[test]
    fn upstream_body_rewrites_model_and_asks_for_usage() {
        let r = ClientRequest::parse(
            Endpoint::Chat,
            bytes(br#"{"model":"alias","stream":true,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#),
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
            bytes(br#"{"model":"m","messages":[{"role":"user"}]}"#),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
        assert!(
            v.get("stream_options").is_none(),
            "non-stream bodies are not given stream_options"
        );
        let r = ClientRequest::parse(
            Endpoint::Chat,
            bytes(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user"}]}"#),
        )
        .unwrap();
        assert!(r.wants_usage);
    }

    #[test]
    fn fields_pass_through_exactly() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9"}],"metadata":{"big":123456789012345678901234567890},"temperature":0.70,"stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let r = ClientRequest::parse(Endpoint::Chat, bytes(body)).unwrap();
        let out = String::from_utf8(r.upstream_body("up").to_vec()).unwrap();
        assert_eq!(
            out,
            r#"{"model":"up","messages":[{"role":"user","content":"caf\u00e9"}],"metadata":{"big":123456789012345678901234567890},"temperature":0.70,"stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        assert!(!r.wants_usage);
    }

    #[test]
    fn model_names_are_escaped() {
        let r = ClientRequest::parse(Endpoint::Embeddings, bytes(br#"{"model":"m","input":"x"}"#))
            .unwrap();
        let v: Value = serde_json::from_slice(&r.upstream_body("we\"ird")).unwrap();
        assert_eq!(v["model"], "we\"ird");
    }

    #[test]
    fn repeated_and_escaped_keys_count_once() {
        // A key spelt with escapes is the same key; the last value wins, in the first place.
        let r = ClientRequest::parse(
            Endpoint::Chat,
            bytes(br#"{"model":"cheap","messages":[{"role":"user"}],"mod\u0065l":"dear","n":1}"#),
        )
        .unwrap();
        assert_eq!(r.model, "dear");
        let out = String::from_utf8(r.upstream_body("up").to_vec()).unwrap();
        assert_eq!(out, r#"{"model":"up","messages":[{"role":"user"}],"n":1}"#);
        // Many fields take the map path.
        let mut body = String::from(r#"{"model":"a","messages":[{"role":"user"}]"#);
        for i in 0..100 {
            body.push_str(&format!(r#","f{i}":{i}"#));
        }
        body.push_str(r#","model":"b","f7":"seven"}"#);
        let r = ClientRequest::parse(Endpoint::Chat, bytes(body.as_bytes())).unwrap();
        assert_eq!(r.model, "b");
        assert_eq!(r.field("f7"), Some("\"seven\""));
        assert_eq!(r.fields().count(), 102);
        assert_eq!(r.fields().next(), Some(("model", "\"b\"")));
    }

    #[test]
    fn messages_are_checked_one_by_one() {
        let e = err(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user"},{"content":"x","role":5},{"role":"user"}]}"#,
        );
        assert!(e.message.contains("messages[1]"), "{}", e.message);
        let e = err(
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user"},[1]]}"#,
        );
        assert!(e.message.contains("messages[1]"), "{}", e.message);
        assert!(ClientRequest::parse(
            Endpoint::Chat,
            bytes(br#"{"model":"m","messages":[{"content":[{"role":1}],"role":"user","x":{"y":[null]}}]}"#)
        )
        .is_ok());
    }
}
