//! Anthropic Messages response and errors → OpenAI chat completion and errors.

use super::{
    compact_json, error_kind_for_status, finish_reason, openai_code, standard_error_status,
    unix_now, AnthropicUsage, ChatUsage, ErrorBody, Tokens,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default)]
    id: String,
    /// Required: a body without it is not a message, whatever its status.
    #[serde(borrow)]
    content: Vec<ResponseBlock<'a>>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
struct ResponseBlock<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: ChatUsage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    arguments: String,
}

/// Translates an Anthropic `/v1/messages` response into an OpenAI `chat.completion`. Text blocks
/// are joined into `content`; `tool_use` blocks become `tool_calls`; server-side tool blocks
/// (web search, code execution) and thinking blocks are left out.
pub fn messages_to_chat(anthropic_body: &[u8], model_id: &str) -> Result<Vec<u8>, String> {
    let msg: Message = serde_json::from_slice(anthropic_body)
        .map_err(|e| format!("invalid Anthropic response: {e}"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in &msg.content {
        match b.kind.as_str() {
            "text" => text.push_str(b.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(ToolCall {
                id: &b.id,
                kind: "function",
                function: Function {
                    name: &b.name,
                    arguments: b.input.map_or("{}".into(), |i| compact_json(i.get())),
                },
            }),
            _ => {}
        }
    }
    let mut tokens = Tokens::default();
    tokens.merge(&msg.usage);
    let out = Completion {
        id: &msg.id,
        object: "chat.completion",
        created: unix_now(),
        model: model_id,
        choices: [Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason(msg.stop_reason.as_deref().unwrap_or("end_turn")),
        }],
        usage: tokens.chat_usage(),
    };
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// Translates an Anthropic error answer into OpenAI's `{"error":{"message","type","code"}}`,
/// with the status the client should get. Registered statuses are kept; Anthropic's 529
/// (overloaded) becomes 503, which OpenAI clients retry as an overload, and other unregistered
/// statuses become standard ones (see `standard_error_status`). The type is Anthropic's (from
/// the body, else from the status); the code is OpenAI's word for it.
pub fn error_to_openai(status: u16, anthropic_body: &[u8]) -> (u16, Vec<u8>) {
    let client_status = standard_error_status(status, false);
    let error = serde_json::from_slice::<ErrorEnvelope>(anthropic_body)
        .map(|e| e.error)
        .unwrap_or(ErrorBody {
            kind: String::new(),
            message: String::new(),
        });
    let kind = if error.kind.is_empty() {
        // A 529 is an overload whatever status the client gets.
        error_kind_for_status(standard_error_status(status, true)).to_string()
    } else {
        error.kind
    };
    let message = if error.message.is_empty() {
        format!("the upstream provider answered HTTP {status}")
    } else {
        error.message
    };
    (client_status, openai_error_json(&kind, &message))
}

/// OpenAI's error body for an Anthropic error type and message.
pub(super) fn openai_error_json(kind: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "code": openai_code(kind)}
    });
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::shapes;
    use super::*;
    use serde_json::{json, Value};

    fn translate(body: &Value) -> Value {
        let out = messages_to_chat(body.to_string().as_bytes(), "my-model").unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn recorded_responses() {
        for (name, bytes) in shapes("anthropic/messages_json", "", "_200.json") {
            let src: Value = serde_json::from_slice(&bytes).unwrap();
            let out: Value =
                serde_json::from_slice(&messages_to_chat(&bytes, "my-model").unwrap()).unwrap();
            assert_eq!(out["id"], src["id"], "{name}");
            assert_eq!(out["object"], "chat.completion");
            assert_eq!(out["model"], "my-model");
            assert!(out["created"].as_u64().unwrap() > 1_700_000_000);
            let choice = &out["choices"][0];
            assert_eq!(choice["message"]["role"], "assistant");
            let blocks = src["content"].as_array().unwrap();
            let text: String = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .map(|b| b["text"].as_str().unwrap())
                .collect();
            let uses: Vec<&Value> = blocks.iter().filter(|b| b["type"] == "tool_use").collect();
            if text.is_empty() && !uses.is_empty() {
                assert_eq!(choice["message"]["content"], Value::Null, "{name}");
            } else {
                assert_eq!(choice["message"]["content"], text.as_str(), "{name}");
            }
            let calls = choice["message"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(calls.len(), uses.len(), "{name}");
            for (call, used) in calls.iter().zip(&uses) {
                assert_eq!(call["id"], used["id"]);
                assert_eq!(call["type"], "function");
                assert_eq!(call["function"]["name"], used["name"]);
                let args: Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                assert_eq!(args, used["input"]);
            }
            let want = match src["stop_reason"].as_str().unwrap() {
                "tool_use" => "tool_calls",
                "max_tokens" => "length",
                _ => "stop",
            };
            assert_eq!(choice["finish_reason"], want, "{name}");
            let u = &src["usage"];
            let n = |v: &Value| v.as_u64().unwrap_or(0);
            let prompt = n(&u["input_tokens"])
                + n(&u["cache_read_input_tokens"])
                + n(&u["cache_creation_input_tokens"]);
            assert_eq!(out["usage"]["prompt_tokens"], prompt, "{name}");
            assert_eq!(out["usage"]["completion_tokens"], n(&u["output_tokens"]));
            assert_eq!(
                out["usage"]["total_tokens"],
                prompt + n(&u["output_tokens"])
            );
        }
    }

    #[test]
    fn text_and_tool_calls_with_cache_usage() {
        let out = translate(&json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {"z": 1, "b": {"c": [1, 2]}}},
                {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20, "output_tokens": 5}
        }));
        let m = &out["choices"][0]["message"];
        assert_eq!(m["content"], "Let me check.");
        assert_eq!(
            m["tool_calls"],
            json!([
                {"id": "toolu_1", "type": "function", "function": {"name": "a", "arguments": "{\"b\":{\"c\":[1,2]},\"z\":1}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}
            ])
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_input_tokens": 20}})
        );
    }

    #[test]
    fn arguments_keep_their_key_order() {
        let body = r#"{"id": "m", "content": [{"type": "tool_use", "id": "t", "name": "f",
            "input": { "z": 1, "a": "x y" }}], "stop_reason": "tool_use", "usage": {}}"#;
        let out = String::from_utf8(messages_to_chat(body.as_bytes(), "m").unwrap()).unwrap();
        assert!(
            out.contains(r#""arguments":"{\"z\":1,\"a\":\"x y\"}""#),
            "{out}"
        );
    }

    #[test]
    fn stop_reasons_and_empty_content() {
        for (stop, want) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            let out = translate(&json!({"id": "m", "content": [], "stop_reason": stop,
                "usage": {"input_tokens": 1, "output_tokens": 0}}));
            assert_eq!(out["choices"][0]["finish_reason"], want);
            assert_eq!(out["choices"][0]["message"]["content"], "");
        }
        assert!(messages_to_chat(b"[]", "m").is_err());
    }

    #[test]
    fn recorded_errors() {
        for (name, bytes) in shapes("anthropic/messages_json", "", ".json") {
            let status: u16 = name[name.len() - 8..name.len() - 5].parse().unwrap();
            if status < 400 {
                continue;
            }
            let src: Value = serde_json::from_slice(&bytes).unwrap();
            let (out_status, out) = error_to_openai(status, &bytes);
            let out: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(out_status, status, "{name}");
            assert_eq!(out["error"]["message"], src["error"]["message"], "{name}");
            assert_eq!(out["error"]["type"], src["error"]["type"]);
            let code = match status {
                429 => "rate_limit_exceeded",
                _ => "invalid_request",
            };
            assert_eq!(out["error"]["code"], code, "{name}");
        }
    }

    #[test]
    fn error_codes() {
        let err = |status, kind: &str| {
            let body = json!({"type": "error", "error": {"type": kind, "message": "boom"}});
            let (s, b) = error_to_openai(status, body.to_string().as_bytes());
            (s, serde_json::from_slice::<Value>(&b).unwrap())
        };
        for (status, kind, code) in [
            (400, "invalid_request_error", "invalid_request"),
            (401, "authentication_error", "invalid_api_key"),
            (403, "permission_error", "permission_denied"),
            (404, "not_found_error", "not_found"),
            (429, "rate_limit_error", "rate_limit_exceeded"),
            (500, "api_error", "server_error"),
        ] {
            let (s, v) = err(status, kind);
            assert_eq!(s, status);
            assert_eq!(
                v,
                json!({"error": {"message": "boom", "type": kind, "code": code}})
            );
        }
        let (s, v) = err(529, "overloaded_error");
        assert_eq!((s, &v["error"]["code"]), (503, &json!("overloaded")));
        let (s, b) = error_to_openai(502, b"<html>Bad gateway</html>");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s, 502);
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "server_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("502"));
    }

    #[test]
    fn statuses_become_ones_openai_clients_know() {
        let cases = [
            // (Anthropic status, body type or "" for a non-JSON body, OpenAI status, type, code)
            (
                529,
                "overloaded_error",
                503,
                "overloaded_error",
                "overloaded",
            ),
            (529, "", 503, "overloaded_error", "overloaded"),
            (
                402,
                "billing_error",
                402,
                "billing_error",
                "insufficient_quota",
            ),
            (504, "timeout_error", 504, "timeout_error", "timeout"),
            (
                413,
                "request_too_large",
                413,
                "request_too_large",
                "request_too_large",
            ),
            (409, "", 409, "invalid_request_error", "invalid_request"),
            (499, "", 400, "invalid_request_error", "invalid_request"),
            (520, "", 502, "api_error", "server_error"),
            (522, "", 504, "timeout_error", "timeout"),
            (524, "", 504, "timeout_error", "timeout"),
            (599, "", 504, "timeout_error", "timeout"),
            (302, "", 502, "api_error", "server_error"),
        ];
        for (status, kind, want_status, want_kind, want_code) in cases {
            let body = if kind.is_empty() {
                b"<html>oops</html>".to_vec()
            } else {
                json!({"type": "error", "error": {"type": kind, "message": "boom"}})
                    .to_string()
                    .into_bytes()
            };
            let (s, b) = error_to_openai(status, &body);
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(s, want_status, "{status}");
            assert_eq!(v["error"]["type"], want_kind, "{status}");
            assert_eq!(v["error"]["code"], want_code, "{status}");
        }
        // A type with no message keeps its type.
        let body = json!({"type": "error", "error": {"type": "overloaded_error", "message": ""}});
        let (s, b) = error_to_openai(529, body.to_string().as_bytes());
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!((s, &v["error"]["type"]), (503, &json!("overloaded_error")));
        assert!(v["error"]["message"].as_str().unwrap().contains("529"));
    }
}
