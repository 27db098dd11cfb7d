//! OpenAI shapes: chat completions, completions, embeddings, models.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    call_tokens, fnv, last_user_text, mix, prefix, split_chars, split_words, tokens, tool_calls,
    word_count, ApiError, Call, Cx, Message, Reply, Sse, ToolSpec,
};
use super::Endpoint;

const FINGERPRINT: &str = "fp_sim";
const DONE: &[u8] = b"data: [DONE]\n\n";
const DEFAULT_DIMENSIONS: usize = 64;
const MAX_DIMENSIONS: usize = 65_536;

/// The `GET /v1/models` answer.
pub(crate) const MODELS: &str = concat!(
    r#"{"object":"list","data":["#,
    r#"{"id":"sim-model","object":"model","created":1700000000,"owned_by":"tollgate-sim"},"#,
    r#"{"id":"gpt-4o-mini","object":"model","created":1700000000,"owned_by":"tollgate-sim"},"#,
    r#"{"id":"gpt-4o","object":"model","created":1700000000,"owned_by":"tollgate-sim"},"#,
    r#"{"id":"gpt-3.5-turbo-instruct","object":"model","created":1700000000,"owned_by":"tollgate-sim"},"#,
    r#"{"id":"text-embedding-3-small","object":"model","created":1700000000,"owned_by":"tollgate-sim"}"#,
    r#"]}"#
);

#[derive(Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct Tool {
    #[serde(default)]
    function: Option<Function>,
}

#[derive(Deserialize)]
pub(crate) struct Function {
    name: String,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, completion: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails {
                cached_tokens: cached,
            },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: 0,
            },
        }
    }
}

/// One streamed chunk. `usage`: absent, `null` (include_usage on) or the totals.
#[derive(Serialize)]
struct Chunk<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

/// Writes the chunks of one stream.
struct Chunks<'a> {
    sse: Sse,
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    include_usage: bool,
}

impl Chunks<'_> {
    fn choice<C: Serialize>(&mut self, choice: C) -> serde_json::Result<()> {
        let chunk = Chunk {
            id: self.id,
            object: self.object,
            created: self.created,
            model: self.model,
            system_fingerprint: FINGERPRINT,
            choices: [choice],
            usage: self.include_usage.then_some(None),
        };
        self.sse.data(&chunk)
    }

    /// The usage chunk (only with include_usage), then `[DONE]`.
    fn end(mut self, usage: &Usage) -> serde_json::Result<Sse> {
        if self.include_usage {
            let chunk = Chunk {
                id: self.id,
                object: self.object,
                created: self.created,
                model: self.model,
                system_fingerprint: FINGERPRINT,
                choices: [(); 0],
                usage: Some(Some(usage)),
            };
            // Sent with the last chunk, as providers do, not after a gap of its own.
            self.sse.data(&chunk)?;
            self.sse.join_last();
        }
        self.sse.raw(DONE);
        Ok(self.sse)
    }
}

#[derive(Deserialize)]
pub(crate) struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    tools: Option<Vec<Tool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    usage: Usage,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [ToolCall<'a>],
    refusal: (),
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct DeltaChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

fn delta<'a>(delta: Delta<'a>, finish_reason: Option<&'static str>) -> DeltaChoice<'a> {
    DeltaChoice {
        index: 0,
        delta,
        logprobs: (),
        finish_reason,
    }
}

impl Endpoint for ChatRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn streaming(&self) -> bool {
        self.stream == Some(true)
    }

    fn respond(&self, model: &str, cx: &Cx) -> Result<Reply, ApiError> {
        let messages = self.messages.as_deref().unwrap_or_default();
        let prompt = tokens(messages.iter().map(Message::chars).sum());
        let tool_result = messages
            .last()
            .filter(|m| m.role == "tool")
            .map(Message::text);
        let calls = match &tool_result {
            Some(_) => Vec::new(),
            None => {
                let specs: Vec<ToolSpec> = self
                    .tools
                    .iter()
                    .flatten()
                    .filter_map(|t| t.function.as_ref())
                    .map(|f| ToolSpec {
                        name: &f.name,
                        schema: f.parameters.as_ref(),
                    })
                    .collect();
                let choice = self.tool_choice.as_ref();
                tool_calls(&specs, choice, cx.knobs.parallel, &cx.rec.body, "call_")
            }
        };
        let text = match &tool_result {
            Some(r) => format!("sim saw tool result: {}", prefix(r, 100)),
            None => format!("sim reply to: {}", prefix(&last_user_text(messages), 100)),
        };
        let completion = if calls.is_empty() {
            word_count(&text)
        } else {
            call_tokens(&calls)
        };
        let usage = Usage::new(prompt, completion, cx.knobs.cached);
        let id = format!("chatcmpl-sim{}", cx.rec.id);
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        if self.streaming() {
            let chunks = Chunks {
                sse: Sse::default(),
                id: &id,
                object: "chat.completion.chunk",
                created: cx.created,
                model,
                include_usage,
            };
            return chat_stream(chunks, &text, &calls, cx.knobs.chunks, &usage);
        }
        let tool_calls: Vec<ToolCall> = calls
            .iter()
            .map(|c| ToolCall {
                id: &c.id,
                kind: "function",
                function: FunctionCall {
                    name: &c.name,
                    arguments: &c.args,
                },
            })
            .collect();
        Reply::ok(&ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: cx.created,
            model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: calls.is_empty().then_some(text.as_str()),
                    tool_calls: &tool_calls,
                    refusal: (),
                },
                logprobs: (),
                finish_reason: if calls.is_empty() {
                    "stop"
                } else {
                    "tool_calls"
                },
            }],
            usage,
            system_fingerprint: FINGERPRINT,
        })
    }
}

fn chat_stream(
    mut out: Chunks,
    text: &str,
    calls: &[Call],
    pieces: usize,
    usage: &Usage,
) -> Result<Reply, ApiError> {
    let first = Delta {
        role: Some("assistant"),
        content: Some(if calls.is_empty() { Some("") } else { None }),
        refusal: Some(()),
        tool_calls: None,
    };
    out.choice(delta(first, None))?;
    let start = out.sse.len();
    if calls.is_empty() {
        for piece in split_words(text, pieces) {
            let d = Delta {
                content: Some(Some(piece)),
                ..Delta::default()
            };
            out.choice(delta(d, None))?;
        }
    }
    for (index, call) in calls.iter().enumerate() {
        let head = ToolCallDelta {
            index,
            id: Some(&call.id),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(&call.name),
                arguments: "",
            },
        };
        let d = Delta {
            tool_calls: Some([head]),
            ..Delta::default()
        };
        out.choice(delta(d, None))?;
        for piece in split_chars(&call.args, pieces) {
            let part = ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: piece,
                },
            };
            let d = Delta {
                tool_calls: Some([part]),
                ..Delta::default()
            };
            out.choice(delta(d, None))?;
        }
    }
    let end = out.sse.len();
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    out.choice(delta(Delta::default(), Some(finish)))?;
    Ok(out.end(usage)?.finish(start..end))
}

#[derive(Deserialize)]
pub(crate) struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [TextChoice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

impl Endpoint for CompletionRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn streaming(&self) -> bool {
        self.stream == Some(true)
    }

    fn respond(&self, model: &str, cx: &Cx) -> Result<Reply, ApiError> {
        let prompts: Vec<&str> = match &self.prompt {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let first = prompts.first().copied().unwrap_or("");
        let text = format!("sim completion: {}", prefix(first, 100));
        let prompt = tokens(prompts.iter().map(|p| p.chars().count()).sum());
        let usage = Usage::new(prompt, word_count(&text), cx.knobs.cached);
        let id = format!("cmpl-sim{}", cx.rec.id);
        let choice = |text, finish_reason| TextChoice {
            text,
            index: 0,
            logprobs: (),
            finish_reason,
        };
        if !self.streaming() {
            return Reply::ok(&Completion {
                id: &id,
                object: "text_completion",
                created: cx.created,
                model,
                system_fingerprint: FINGERPRINT,
                choices: [choice(&text, Some("stop"))],
                usage,
            });
        }
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let mut out = Chunks {
            sse: Sse::default(),
            id: &id,
            object: "text_completion",
            created: cx.created,
            model,
            include_usage,
        };
        for piece in split_words(&text, cx.knobs.chunks) {
            out.choice(choice(piece, None))?;
        }
        let end = out.sse.len();
        out.choice(choice("", Some("stop")))?;
        Ok(out.end(&usage)?.finish(0..end))
    }
}

#[derive(Deserialize)]
pub(crate) struct EmbeddingRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

impl Endpoint for EmbeddingRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn respond(&self, model: &str, _cx: &Cx) -> Result<Reply, ApiError> {
        let dims = self.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
        if dims == 0 || dims > MAX_DIMENSIONS {
            return Err(ApiError::bad_request(format!(
                "dimensions must be 1..={MAX_DIMENSIONS}"
            )));
        }
        // Each input as (hash key, token count).
        let inputs: Vec<(Vec<u8>, u64)> = match &self.input {
            Some(Value::String(s)) => vec![(s.as_bytes().to_vec(), tokens(s.chars().count()))],
            Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
                vec![(
                    Value::Array(items.clone()).to_string().into_bytes(),
                    items.len() as u64,
                )]
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => (s.as_bytes().to_vec(), tokens(s.chars().count())),
                    Value::Array(t) => (item.to_string().into_bytes(), t.len() as u64),
                    other => (other.to_string().into_bytes(), 1),
                })
                .collect(),
            _ => Vec::new(),
        };
        let base64 = self.encoding_format.as_deref() == Some("base64");
        let prompt_tokens = inputs.iter().map(|(_, t)| t).sum();
        let data = inputs
            .iter()
            .enumerate()
            .map(|(index, (key, _))| {
                let v = words_vector(key, dims).unwrap_or_else(|| unit_vector(key, dims));
                Embedding {
                    object: "embedding",
                    index,
                    embedding: if base64 {
                        Vector::Base64(base64_f32(&v))
                    } else {
                        Vector::Floats(v)
                    },
                }
            })
            .collect();
        Reply::ok(&EmbeddingList {
            object: "list",
            data,
            model,
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        })
    }
}

/// A bag-of-words unit vector for text: texts with the same words (in any order, case or
/// punctuation) get the same vector, and sharing words makes vectors similar. `None` for text
/// without words.
fn words_vector(text: &[u8], dims: usize) -> Option<Vec<f32>> {
    let mut v = vec![0f32; dims];
    let mut any = false;
    for word in text
        .split(|b| !b.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = fnv(&word.to_ascii_lowercase());
        for j in 0..4 {
            let bits = h >> (j * 16);
            let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
            v[(bits & 0x7fff) as usize % dims] += sign;
        }
        any = true;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !any || norm == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

/// A deterministic unit vector for `key`.
fn unit_vector(key: &[u8], dims: usize) -> Vec<f32> {
    let mut state = fnv(key);
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            state = mix(state);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Little-endian f32s in standard base64, as `encoding_format: "base64"` returns them.
fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_reference() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 1.0, 1.0]), "AACAPwAAgD8AAIA/");
    }

    #[test]
    fn unit_vectors_are_unit_and_stable() {
        let a = unit_vector(b"hello", 64);
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(a, unit_vector(b"hello", 64));
        assert_ne!(a, unit_vector(b"world", 64));
    }
}
