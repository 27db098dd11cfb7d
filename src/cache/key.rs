//! Cache keys. The exact key hashes the whole normalized request; the semantic scope hashes the
//! same request less the last user turn, whose text is what gets embedded.
//!
//! Normalized means: object keys sorted, whitespace dropped, numbers written one way (`1.0` and
//! `1` are one number), and the fields that cannot change an answer left out.

use crate::api::Endpoint;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Top-level fields that change how an answer is delivered or attributed, not what it says.
const IGNORED: [&str; 9] = [
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
];

/// Where an entry belongs: the tenant partition and the namespace the client chose.
pub struct Scope<'a> {
    pub partition: &'a str,
    pub namespace: &'a str,
    pub endpoint: Endpoint,
    /// The model as resolved by routing (rule or catalog id), not as the client spelled it.
    pub model: &'a str,
    /// Forwarded headers that change the answer (`anthropic-beta`, `anthropic-version`,
    /// `openai-beta`), joined.
    pub variant: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Keys {
    pub exact: u128,
    /// `None` when the request has no plain-text last user turn to compare.
    pub semantic: Option<SemanticKey>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SemanticKey {
    /// Everything but the last user turn: only entries with the same scope are compared.
    pub scope: u128,
    pub text: String,
}

/// The keys for a request body, or `None` if the body is not a JSON object.
pub fn keys(scope: &Scope, body: &[u8], semantic: bool) -> Option<Keys> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    for f in IGNORED {
        fields.remove(f);
    }
    let mut v = Value::Object(fields);
    let exact = digest(scope, b"exact", &v);
    let semantic = if semantic {
        take_last_user_text(scope.endpoint, &mut v).map(|text| SemanticKey {
            scope: digest(scope, b"semantic", &v),
            text,
        })
    } else {
        None
    };
    Some(Keys { exact, semantic })
}

fn digest(scope: &Scope, layer: &[u8], v: &Value) -> u128 {
    let mut buf = Vec::with_capacity(256);
    for part in [
        layer,
        scope.partition.as_bytes(),
        scope.namespace.as_bytes(),
        scope.endpoint.name().as_bytes(),
        scope.model.as_bytes(),
        scope.variant.as_bytes(),
    ] {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part);
    }
    canonical(v, &mut buf);
    let h = Sha256::digest(&buf);
    let mut first = [0u8; 16];
    first.copy_from_slice(&h[..16]);
    u128::from_be_bytes(first)
}

/// Writes `v` as canonical JSON: sorted keys, no whitespace, integral numbers as integers.
pub fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            let text = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i.to_string(),
                (_, Some(u), _) => u.to_string(),
                (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => (f as i64).to_string(),
                _ => n.to_string(),
            };
            out.extend_from_slice(text.as_bytes());
        }
        Value::String(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Removes the last user turn's text from `v` and returns it, when the request ends with a user
/// turn made only of text. The completions API's prompt counts as one.
fn take_last_user_text(endpoint: Endpoint, v: &mut Value) -> Option<String> {
    let slot = match endpoint {
        Endpoint::Chat | Endpoint::Messages => {
            let last = v.get_mut("messages")?.as_array_mut()?.last_mut()?;
            if last.get("role")?.as_str()? != "user" {
                return None;
            }
            last.get_mut("content")?
        }
        Endpoint::Completions => v.get_mut("prompt")?,
        Endpoint::Embeddings => return None,
    };
    let text = match &*slot {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                if p.get("type")?.as_str()? != "text" || p.as_object()?.len() != 2 {
                    return None;
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(p.get("text")?.as_str()?);
            }
            text
        }
        _ => return None,
    };
    if text.trim().is_empty() {
        return None;
    }
    *slot = Value::Null;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope<'static> {
        Scope {
            partition: "team:a",
            namespace: "default",
            endpoint: Endpoint::Chat,
            model: "sim/gpt-4o",
            variant: "",
        }
    }

    fn exact(body: &str) -> u128 {
        keys(&scope(), body.as_bytes(), false).unwrap().exact
    }

    const BASE: &str =
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;

    #[test]
    fn key_order_whitespace_and_number_spelling_do_not_change_the_key() {
        let same = [
            r#"{ "temperature" : 0.50, "messages":[{"content":"hi","role":"user"}], "model":"gpt-4o" }"#,
            r#"{"model":"other-alias","messages":[{"role":"user","content":"hi"}],"temperature":5e-1,"stream":true,"stream_options":{"include_usage":true},"user":"u1"}"#,
        ];
        for s in same {
            assert_eq!(exact(BASE), exact(s), "{s}");
        }
        let a = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":10}"#;
        let b = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":10.0}"#;
        assert_eq!(exact(a), exact(b));
    }

    #[test]
    fn every_output_parameter_splits_the_key() {
        let variants = [
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.6}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"max_tokens":5}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"top_p":0.9}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"seed":1}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"stop":["x"]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"n":2}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"tool_choice":"none"}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"response_format":{"type":"json_object"}}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"logit_bias":{"1":5}}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"logprobs":true}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"presence_penalty":1}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"frequency_penalty":1}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"reasoning_effort":"low"}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"some_new_parameter":1}"#,
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"temperature":0.5}"#,
            r#"{"messages":[{"role":"user","content":"Hi"}],"temperature":0.5}"#,
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(exact(BASE));
        for v in variants {
            assert!(seen.insert(exact(v)), "{v} shares a key");
        }
    }

    #[test]
    fn the_scope_splits_the_key() {
        let base = keys(&scope(), BASE.as_bytes(), true).unwrap();
        for s in [
            Scope {
                partition: "team:b",
                ..scope()
            },
            Scope {
                namespace: "other",
                ..scope()
            },
            Scope {
                model: "sim/gpt-4o-mini",
                ..scope()
            },
            Scope {
                endpoint: Endpoint::Messages,
                ..scope()
            },
            Scope {
                variant: "anthropic-beta=output-128k",
                ..scope()
            },
        ] {
            let k = keys(&s, BASE.as_bytes(), true).unwrap();
            assert_ne!(k.exact, base.exact);
            assert_ne!(
                k.semantic.unwrap().scope,
                base.semantic.clone().unwrap().scope
            );
        }
    }

    #[test]
    fn the_semantic_scope_is_the_request_less_the_last_user_text() {
        let a = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"How do I reset my password?"}]}"#;
        let b = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"password reset steps"}]}]}"#;
        let c = r#"{"messages":[{"role":"system","content":"t"},{"role":"user","content":"How do I reset my password?"}]}"#;
        let ka = keys(&scope(), a.as_bytes(), true).unwrap();
        let kb = keys(&scope(), b.as_bytes(), true).unwrap();
        let kc = keys(&scope(), c.as_bytes(), true).unwrap();
        let (sa, sb, sc) = (
            ka.semantic.unwrap(),
            kb.semantic.unwrap(),
            kc.semantic.unwrap(),
        );
        assert_eq!(sa.scope, sb.scope);
        assert_ne!(sa.scope, sc.scope, "the system prompt is in the scope");
        assert_eq!(sa.text, "How do I reset my password?");
        assert_eq!(sb.text, "password reset steps");
        assert_ne!(ka.exact, kb.exact);
    }

    #[test]
    fn no_semantic_key_without_a_plain_text_user_turn() {
        for body in [
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":"   "}]}"#,
            r#"{"messages":[]}"#,
        ] {
            assert!(
                keys(&scope(), body.as_bytes(), true)
                    .unwrap()
                    .semantic
                    .is_none(),
                "{body}"
            );
        }
        assert!(keys(&scope(), b"[1]", true).is_none());
    }
}
