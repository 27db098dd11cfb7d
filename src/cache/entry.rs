//! A cached answer, kept as the whole (non-stream) body in the client's dialect, and how it is
//! replayed: as that body, or as the stream the client asked for. A streamed answer is assembled
//! into the same whole body before it is stored.

use crate::api::Endpoint;
use crate::telemetry::Usage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The answer: a chat completion, completion, embedding list or Anthropic message.
    pub body: String,
    pub provider: String,
    /// The upstream model that answered; its price is what a hit saves.
    pub model: String,
    /// The catalog id of the target that answered.
    #[serde(default)]
    pub target: String,
    pub usage: Usage,
    pub namespace: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

impl Entry {
    /// The bytes the entry takes in memory, for the cache's byte bound.
    pub fn weight(&self) -> u64 {
        (self.body.len() + self.provider.len() + self.model.len() + self.namespace.len() + 128)
            as u64
    }
}

/// The response body for a hit: the stored answer, or with `stream`, its events. Usage says the
/// prompt was served from cache.
pub fn replay(
    entry: &Entry,
    endpoint: Endpoint,
    stream: bool,
    wants_usage: bool,
) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_str(&entry.body).ok()?;
    if !storable(endpoint, &v) {
        return None;
    }
    mark_cached(&mut v, endpoint);
    if !stream {
        return serde_json::to_vec(&v).ok();
    }
    match endpoint {
        Endpoint::Chat | Endpoint::Completions => Some(openai_events(&v, endpoint, wants_usage)),
        Endpoint::Messages => Some(anthropic_events(&v)),
        Endpoint::Embeddings => None,
    }
}

/// Whether `v` is a whole successful answer of the endpoint's shape, fit to store and replay.
pub fn storable(endpoint: Endpoint, v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    if o.contains_key("error") {
        return false;
    }
    let list = |k: &str| o.get(k).and_then(Value::as_array);
    let objects = |l: &Vec<Value>| !l.is_empty() && l.iter().all(Value::is_object);
    match endpoint {
        Endpoint::Chat => list("choices").is_some_and(|c| {
            objects(c)
                && c.iter().all(|c| {
                    c.get("message").is_some_and(|m| {
                        m.is_object()
                            && m.get("tool_calls").is_none_or(|t| {
                                t.is_null()
                                    || t.as_array().is_some_and(|t| t.iter().all(Value::is_object))
                            })
                    })
                })
        }),
        Endpoint::Completions => list("choices").is_some_and(objects),
        Endpoint::Messages => list("content").is_some_and(|c| c.iter().all(Value::is_object)),
        Endpoint::Embeddings => list("data").is_some_and(objects),
    }
}

fn mark_cached(v: &mut Value, endpoint: Endpoint) {
    let Some(usage) = v.get_mut("usage").and_then(Value::as_object_mut) else {
        return;
    };
    if endpoint == Endpoint::Messages {
        let n = |u: &Map<String, Value>, k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let all = n(usage, "input_tokens")
            + n(usage, "cache_read_input_tokens")
            + n(usage, "cache_creation_input_tokens");
        usage.insert("input_tokens".into(), json!(0));
        usage.insert("cache_creation_input_tokens".into(), json!(0));
        usage.insert("cache_read_input_tokens".into(), json!(all));
    } else if let Some(prompt) = usage.get("prompt_tokens").and_then(Value::as_u64) {
        usage.insert(
            "prompt_tokens_details".into(),
            json!({ "cached_tokens": prompt }),
        );
    }
}

fn event(out: &mut Vec<u8>, name: Option<&str>, data: &Value) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// An OpenAI chat completion or completion as its stream of chunks.
fn openai_events(v: &Value, endpoint: Endpoint, wants_usage: bool) -> Vec<u8> {
    let chat = endpoint == Endpoint::Chat;
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": v.get("id").cloned().unwrap_or(Value::Null),
            "object": object,
            "created": v.get("created").cloned().unwrap_or(json!(0)),
            "model": v.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        });
        if let Some(fp) = v.get("system_fingerprint") {
            c["system_fingerprint"] = fp.clone();
        }
        c
    };
    let mut out = Vec::with_capacity(512);
    let empty = Vec::new();
    let choices = v.get("choices").and_then(Value::as_array).unwrap_or(&empty);
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(i));
        if chat {
            // Every field of the message goes in one delta (content, tool calls, a legacy
            // function call, annotations, reasoning, ...).
            let mut delta: Map<String, Value> = choice
                .get("message")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            delta.insert("role".into(), json!("assistant"));
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (n, c) in calls.iter_mut().enumerate() {
                    if let Some(c) = c.as_object_mut() {
                        c.insert("index".into(), json!(n));
                    }
                }
            }
            let mut first = json!({"index": index, "delta": delta, "finish_reason": null});
            if let Some(lp) = choice.get("logprobs").filter(|l| !l.is_null()) {
                first["logprobs"] = lp.clone();
            }
            event(&mut out, None, &chunk(json!([first])));
            let finish =
                json!({"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")});
            event(&mut out, None, &chunk(json!([finish])));
        } else {
            let text = choice.get("text").cloned().unwrap_or(json!(""));
            let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
            let first =
                json!({"index": index, "text": text, "finish_reason": null, "logprobs": logprobs});
            event(&mut out, None, &chunk(json!([first])));
            let finish = json!({"index": index, "text": "", "finish_reason": choice.get("finish_reason"), "logprobs": null});
            event(&mut out, None, &chunk(json!([finish])));
        }
    }
    if wants_usage {
        let mut last = chunk(json!([]));
        last["usage"] = v.get("usage").cloned().unwrap_or(Value::Null);
        event(&mut out, None, &last);
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// An Anthropic message as its stream of events.
fn anthropic_events(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let usage = v
        .get("usage")
        .filter(|u| u.is_object())
        .cloned()
        .unwrap_or(json!({}));
    let mut start = v.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(0);
    start["usage"] = start_usage;
    event(
        &mut out,
        Some("message_start"),
        &json!({"type": "message_start", "message": start}),
    );
    let empty = Vec::new();
    let blocks = v.get("content").and_then(Value::as_array).unwrap_or(&empty);
    for (i, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("text");
        let (open, delta) = match kind {
            "text" => (
                if block.get("citations").is_some() {
                    json!({"type": "text", "text": "", "citations": []})
                } else {
                    json!({"type": "text", "text": ""})
                },
                json!({"type": "text_delta", "text": block.get("text").cloned().unwrap_or(json!(""))}),
            ),
            "tool_use" | "server_tool_use" => {
                let mut open = block.clone();
                if let Some(o) = open.as_object_mut() {
                    o.insert("input".into(), json!({}));
                }
                let input = block.get("input").cloned().unwrap_or(json!({}));
                let partial = serde_json::to_string(&input).unwrap_or_else(|_| "{}".into());
                (
                    open,
                    json!({"type": "input_json_delta", "partial_json": partial}),
                )
            }
            "thinking" => (
                json!({"type": "thinking", "thinking": ""}),
                json!({"type": "thinking_delta", "thinking": block.get("thinking").cloned().unwrap_or(json!(""))}),
            ),
            _ => (block.clone(), Value::Null),
        };
        event(
            &mut out,
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": i, "content_block": open}),
        );
        if !delta.is_null() {
            event(
                &mut out,
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": i, "delta": delta}),
            );
        }
        for citation in block
            .get("citations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = json!({"type": "citations_delta", "citation": citation});
            event(
                &mut out,
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        if let Some(sig) = block.get("signature") {
            let d = json!({"type": "signature_delta", "signature": sig});
            event(
                &mut out,
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        event(
            &mut out,
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": i}),
        );
    }
    let delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": v.get("stop_reason"), "stop_sequence": v.get("stop_sequence")},
        "usage": usage,
    });
    event(&mut out, Some("message_delta"), &delta);
    event(
        &mut out,
        Some("message_stop"),
        &json!({"type": "message_stop"}),
    );
    out
}

/// The JSON payloads of an SSE body, in order.
fn payloads(sse: &[u8]) -> impl Iterator<Item = Value> + '_ {
    sse.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        serde_json::from_slice(data.trim_ascii()).ok()
    })
}

/// The whole answer a completed stream in the client's dialect adds up to; `usage` is the
/// gateway's count (the client may not have seen a usage chunk).
pub fn assemble(endpoint: Endpoint, sse: &[u8], usage: &Usage) -> Option<String> {
    let v = match endpoint {
        Endpoint::Chat | Endpoint::Completions => assemble_openai(endpoint, sse, usage)?,
        Endpoint::Messages => assemble_anthropic(sse)?,
        Endpoint::Embeddings => return None,
    };
    if !storable(endpoint, &v) {
        return None;
    }
    serde_json::to_string(&v).ok()
}

fn assemble_openai(endpoint: Endpoint, sse: &[u8], usage: &Usage) -> Option<Value> {
    let chat = endpoint == Endpoint::Chat;
    let mut head: Option<Value> = None;
    // The parts of each choice, by its index.
    let mut choices: std::collections::BTreeMap<u64, ChoiceParts> = Default::default();
    for chunk in payloads(sse) {
        if head.is_none() {
            head = Some(chunk.clone());
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let parts = choices.entry(index).or_default();
            if let Some(r) = c.get("finish_reason").filter(|r| !r.is_null()) {
                parts.finish = r.clone();
            }
            if c.get("logprobs").is_some_and(|l| !l.is_null()) {
                // Token logprobs are not reassembled: such a stream is not cached.
                return None;
            }
            if !chat {
                parts
                    .text
                    .push_str(c.get("text").and_then(Value::as_str).unwrap_or(""));
                continue;
            }
            let Some(delta) = c.get("delta").and_then(Value::as_object) else {
                continue;
            };
            for (k, d) in delta {
                match (k.as_str(), d) {
                    (_, Value::Null) | ("role", _) => {}
                    ("tool_calls", Value::Array(calls)) => {
                        for call in calls {
                            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                            let slot = parts.calls.entry(i).or_insert_with(|| json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
                            if let Some(id) = call.get("id").and_then(Value::as_str) {
                                slot["id"] = json!(id);
                            }
                            if let Some(f) = call.get("function").and_then(Value::as_object) {
                                merge(&mut slot["function"], f);
                            }
                        }
                    }
                    (_, d) => merge_field(&mut parts.message, k, d),
                }
            }
        }
    }
    let head = head?;
    if choices.is_empty() {
        return None;
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(index, p)| {
            if !chat {
                return json!({"index": index, "text": p.text, "finish_reason": p.finish, "logprobs": null});
            }
            let mut msg = p.message;
            msg.insert("role".into(), json!("assistant"));
            // A message of calls only has null content, as a whole answer does, even when its
            // stream sent empty text.
            let calls = !p.calls.is_empty() || msg.contains_key("function_call");
            let text = msg.get("content").and_then(Value::as_str);
            if text.is_none_or(|t| t.is_empty()) && !msg.get("content").is_some_and(Value::is_array) {
                msg.insert("content".into(), if calls { Value::Null } else { json!("") });
            }
            if !p.calls.is_empty() {
                msg.insert("tool_calls".into(), Value::Array(p.calls.into_values().collect()));
            }
            json!({"index": index, "message": msg, "finish_reason": p.finish, "logprobs": null})
        })
        .collect();
    let mut v = json!({
        "id": head.get("id"),
        "object": if chat { "chat.completion" } else { "text_completion" },
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        },
    });
    if let Some(fp) = head.get("system_fingerprint") {
        v["system_fingerprint"] = fp.clone();
    }
    Some(v)
}

#[derive(Default)]
struct ChoiceParts {
    /// Completions: the text so far.
    text: String,
    /// Chat: the message's fields so far.
    message: Map<String, Value>,
    calls: std::collections::BTreeMap<u64, Value>,
    finish: Value,
}

/// Adds a streamed fragment to a field: strings are joined, arrays extended, objects merged,
/// anything else replaced.
fn merge_field(into: &mut Map<String, Value>, k: &str, d: &Value) {
    match (into.get_mut(k), d) {
        (Some(Value::String(s)), Value::String(more)) => s.push_str(more),
        (Some(Value::Array(a)), Value::Array(more)) => a.extend(more.iter().cloned()),
        (Some(Value::Object(o)), Value::Object(more)) => {
            for (k2, d2) in more {
                merge_field(o, k2, d2);
            }
        }
        _ => {
            into.insert(k.to_string(), d.clone());
        }
    }
}

fn merge(into: &mut Value, fragment: &Map<String, Value>) {
    if let Some(o) = into.as_object_mut() {
        for (k, d) in fragment {
            merge_field(o, k, d);
        }
    }
}

fn assemble_anthropic(sse: &[u8]) -> Option<Value> {
    let mut message: Option<Value> = None;
    let mut blocks: Vec<Value> = Vec::new();
    let mut json_parts: Vec<String> = Vec::new();
    let mut stopped = false;
    for e in payloads(sse) {
        match e.get("type").and_then(Value::as_str)? {
            "message_start" => {
                let m = e.get("message").filter(|m| m.is_object())?;
                if m.get("usage").is_some_and(|u| !u.is_object()) {
                    return None;
                }
                message = Some(m.clone());
            }
            "content_block_start" => {
                blocks.push(e.get("content_block").filter(|b| b.is_object())?.clone());
                json_parts.push(String::new());
            }
            "content_block_delta" => {
                let i = e.get("index").and_then(Value::as_u64)? as usize;
                let block = blocks.get_mut(i)?;
                let d = e.get("delta")?;
                match d.get("type").and_then(Value::as_str)? {
                    "text_delta" => append(block, "text", d.get("text")?),
                    "thinking_delta" => append(block, "thinking", d.get("thinking")?),
                    "signature_delta" => block["signature"] = d.get("signature")?.clone(),
                    "citations_delta" => {
                        let list = block
                            .as_object_mut()?
                            .entry("citations")
                            .or_insert(json!([]));
                        list.as_array_mut()?.push(d.get("citation")?.clone());
                    }
                    "input_json_delta" => json_parts
                        .get_mut(i)?
                        .push_str(d.get("partial_json")?.as_str()?),
                    _ => {}
                }
            }
            "message_delta" => {
                let m = message.as_mut()?;
                for k in ["stop_reason", "stop_sequence"] {
                    if let Some(x) = e.get("delta").and_then(|d| d.get(k)) {
                        m[k] = x.clone();
                    }
                }
                if let Some(u) = e.get("usage").and_then(Value::as_object) {
                    for (k, x) in u {
                        if !x.is_null() {
                            m["usage"][k] = x.clone();
                        }
                    }
                }
            }
            "message_stop" => stopped = true,
            "error" => return None,
            _ => {}
        }
    }
    let mut m = message?;
    if !stopped {
        return None;
    }
    for (block, partial) in blocks.iter_mut().zip(json_parts) {
        if !partial.is_empty() {
            block["input"] = serde_json::from_str(&partial).ok()?;
        }
    }
    m["content"] = Value::Array(blocks);
    Some(m)
}

fn append(block: &mut Value, key: &str, more: &Value) {
    let joined = format!(
        "{}{}",
        block.get(key).and_then(Value::as_str).unwrap_or(""),
        more.as_str().unwrap_or("")
    );
    block[key] = json!(joined);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: Value) -> Entry {
        Entry {
            body: body.to_string(),
            provider: "sim".into(),
            model: "gpt-4o".into(),
            target: "sim/gpt-4o".into(),
            usage: Usage::default(),
            namespace: "default".into(),
            created_ms: 0,
            expires_ms: u64::MAX,
        }
    }

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 12,
            completion_tokens: 7,
            cached_tokens: 0,
            cache_write_tokens: 0,
        }
    }

    #[test]
    fn a_chat_answer_round_trips_through_its_stream() {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop", "logprobs": null},
                {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]}, "finish_reason": "tool_calls", "logprobs": null}
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 0}}
        });
        let sse = replay(&entry(answer.clone()), Endpoint::Chat, true, true).unwrap();
        let text = String::from_utf8(sse.clone()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(
            text.contains("\"cached_tokens\":12"),
            "usage marks the cache: {text}"
        );
        let back: Value =
            serde_json::from_str(&assemble(Endpoint::Chat, &sse, &usage()).unwrap()).unwrap();
        assert_eq!(back["choices"], answer["choices"]);
        assert_eq!(back["id"], answer["id"]);
        let no_usage =
            String::from_utf8(replay(&entry(answer), Endpoint::Chat, true, false).unwrap())
                .unwrap();
        assert!(!no_usage.contains("\"usage\""), "{no_usage}");
    }

    #[test]
    fn a_completion_round_trips_through_its_stream() {
        let answer = json!({
            "id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "text": "abc", "finish_reason": "length", "logprobs": null}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        });
        let sse = replay(&entry(answer.clone()), Endpoint::Completions, true, false).unwrap();
        let back: Value =
            serde_json::from_str(&assemble(Endpoint::Completions, &sse, &usage()).unwrap())
                .unwrap();
        assert_eq!(back["choices"], answer["choices"]);
    }

    #[test]
    fn an_anthropic_message_round_trips_through_its_stream() {
        let answer = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}
        });
        let sse = replay(&entry(answer.clone()), Endpoint::Messages, true, false).unwrap();
        let back: Value =
            serde_json::from_str(&assemble(Endpoint::Messages, &sse, &usage()).unwrap()).unwrap();
        assert_eq!(back["content"], answer["content"]);
        assert_eq!(back["stop_reason"], "tool_use");
        assert_eq!(back["usage"]["cache_read_input_tokens"], 25, "{back}");
        assert_eq!(back["usage"]["input_tokens"], 0);
        assert_eq!(back["usage"]["output_tokens"], 9);
    }

    fn assemble_chat(sse: &str) -> Value {
        serde_json::from_str(&assemble(Endpoint::Chat, sse.as_bytes(), &usage()).unwrap()).unwrap()
    }

    #[test]
    fn every_message_field_survives_both_ways() {
        let answer = json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": null,
                "function_call": {"name": "f", "arguments": "{\"x\":1}"},
                "annotations": [{"type": "url_citation", "url_citation": {"url": "u"}}],
                "reasoning_content": "because"
            }, "finish_reason": "function_call", "logprobs": null}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        });
        let sse = replay(&entry(answer.clone()), Endpoint::Chat, true, false).unwrap();
        let back: Value =
            serde_json::from_str(&assemble(Endpoint::Chat, &sse, &usage()).unwrap()).unwrap();
        assert_eq!(
            back["choices"][0]["message"],
            answer["choices"][0]["message"]
        );
        // Fragments of each field are joined.
        let frags = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"function_call\":{\"name\":\"f\",\"arguments\":\"{\\\"x\"}}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"function_call\":{\"arguments\":\"\\\":1}\"},\"reasoning_content\":\"b\"},\"finish_reason\":\"function_call\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let v = assemble_chat(frags);
        assert_eq!(
            v["choices"][0]["message"]["function_call"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        // Empty text beside tool calls (as a translated Claude stream sends it) is null too.
        let calls = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let v = assemble_chat(calls);
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null, "{v}");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["id"], "t");
    }

    #[test]
    fn anthropic_citations_survive_both_ways() {
        let answer = json!({
            "id": "msg", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "Paris.", "citations": [{"type": "char_location", "cited_text": "Paris"}]}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 2}
        });
        let sse = replay(&entry(answer.clone()), Endpoint::Messages, true, false).unwrap();
        let back: Value =
            serde_json::from_str(&assemble(Endpoint::Messages, &sse, &usage()).unwrap()).unwrap();
        assert_eq!(back["content"], answer["content"]);
    }

    #[test]
    fn only_whole_answers_of_the_right_shape_are_stored_or_replayed() {
        for (endpoint, bad) in [
            (Endpoint::Chat, json!({"error": {"message": "x"}})),
            (Endpoint::Chat, json!({"choices": []})),
            (
                Endpoint::Chat,
                json!({"choices": [{"message": {"tool_calls": ["weird"]}}]}),
            ),
            (Endpoint::Chat, json!(["not", "an", "object"])),
            (Endpoint::Messages, json!(["not", "an", "object"])),
            (Endpoint::Messages, json!({"content": ["text"]})),
            (Endpoint::Embeddings, json!({"data": 1})),
        ] {
            assert!(!storable(endpoint, &bad), "{bad}");
            for stream in [false, true] {
                assert!(
                    replay(&entry(bad.clone()), endpoint, stream, true).is_none(),
                    "{bad}"
                );
            }
        }
        let bad_usage = json!({"type": "message", "content": [], "usage": 5});
        assert!(
            replay(&entry(bad_usage), Endpoint::Messages, true, true).is_some(),
            "no panic"
        );
    }

    #[test]
    fn an_unfinished_anthropic_stream_is_not_assembled() {
        let sse = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{}}}\n\n";
        assert!(assemble(Endpoint::Messages, sse, &usage()).is_none());
    }

    #[test]
    fn streamed_chat_fragments_are_joined() {
        let sse = concat!(
            "data: {\"id\":\"c\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":1}\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let v: Value =
            serde_json::from_str(&assemble(Endpoint::Chat, sse.as_bytes(), &usage()).unwrap())
                .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(v["usage"]["prompt_tokens"], 12);
    }
}
