//! Anthropic Messages API shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    call_tokens, last_user_text, prefix, split_chars, split_words, tokens, tool_calls, word_count,
    ApiError, Call, Content, Cx, Message, Reply, Sse, ToolSpec,
};
use super::Endpoint;

const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
const MESSAGE_STOP: &[u8] = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

#[derive(Deserialize)]
pub(crate) struct MessagesRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Tool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct Tool {
    name: String,
    #[serde(default)]
    input_schema: Option<Value>,
}

impl MessagesRequest {
    fn input_tokens(&self) -> u64 {
        let messages = self.messages.as_deref().unwrap_or_default();
        let system = self.system.as_ref().map_or(0, Content::chars);
        tokens(system + messages.iter().map(Message::chars).sum::<usize>())
    }
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: (),
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    content_block: Block<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: DeltaBody<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaBody<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageOut<'a>,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: Usage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: (),
}

impl Endpoint for MessagesRequest {
    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn streaming(&self) -> bool {
        self.stream == Some(true)
    }

    fn respond(&self, model: &str, cx: &Cx) -> Result<Reply, ApiError> {
        let messages = self.messages.as_deref().unwrap_or_default();
        let tool_result = messages
            .last()
            .filter(|m| m.role == "user")
            .and_then(|m| m.content.as_ref())
            .and_then(Content::tool_result);
        let calls = match &tool_result {
            Some(_) => Vec::new(),
            None => {
                let specs: Vec<ToolSpec> = self
                    .tools
                    .iter()
                    .flatten()
                    .map(|t| ToolSpec {
                        name: &t.name,
                        schema: t.input_schema.as_ref(),
                    })
                    .collect();
                let choice = self.tool_choice.as_ref();
                tool_calls(&specs, choice, cx.knobs.parallel, &cx.rec.body, "toolu_")
            }
        };
        let text = match &tool_result {
            Some(r) => format!("sim saw tool result: {}", prefix(r, 100)),
            None => format!("sim reply to: {}", prefix(&last_user_text(messages), 100)),
        };
        let (output, stop_reason) = if calls.is_empty() {
            (word_count(&text), "end_turn")
        } else {
            (call_tokens(&calls), "tool_use")
        };
        let input = self.input_tokens();
        let usage = |output_tokens| Usage {
            input_tokens: input,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cx.knobs.cached,
            output_tokens,
        };
        let id = format!("msg_sim{}", cx.rec.id);
        if !self.streaming() {
            let content = if calls.is_empty() {
                vec![Block::Text { text: &text }]
            } else {
                calls.iter().map(tool_use).collect()
            };
            return Reply::ok(&MessageOut {
                id: &id,
                kind: "message",
                role: "assistant",
                model,
                content,
                stop_reason: Some(stop_reason),
                stop_sequence: (),
                usage: usage(output),
            });
        }
        let mut sse = Sse::default();
        let start = MessageStart {
            kind: "message_start",
            message: MessageOut {
                id: &id,
                kind: "message",
                role: "assistant",
                model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: (),
                usage: usage(1),
            },
        };
        sse.event("message_start", &start)?;
        let content_start = if calls.is_empty() {
            text_block(&mut sse, &text, cx.knobs.chunks)?
        } else {
            let mut first = 0;
            for (index, call) in calls.iter().enumerate() {
                let at = tool_block(&mut sse, index, call, cx.knobs.chunks)?;
                if index == 0 {
                    first = at;
                }
            }
            first
        };
        let content_end = sse.len();
        let delta = MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason,
                stop_sequence: (),
            },
            usage: usage(output),
        };
        sse.event("message_delta", &delta)?;
        sse.raw(MESSAGE_STOP);
        Ok(sse.finish(content_start..content_end))
    }
}

fn tool_use(call: &Call) -> Block<'_> {
    Block::ToolUse {
        id: &call.id,
        name: &call.name,
        input: &call.input,
    }
}

fn block_start(sse: &mut Sse, index: usize, block: Block) -> Result<(), ApiError> {
    let start = BlockStart {
        kind: "content_block_start",
        index,
        content_block: block,
    };
    sse.event("content_block_start", &start)?;
    if index == 0 {
        sse.raw(PING);
    }
    Ok(())
}

fn block_delta(sse: &mut Sse, index: usize, delta: DeltaBody) -> Result<(), ApiError> {
    let delta = BlockDelta {
        kind: "content_block_delta",
        index,
        delta,
    };
    Ok(sse.event("content_block_delta", &delta)?)
}

fn block_stop(sse: &mut Sse, index: usize) -> Result<(), ApiError> {
    let stop = BlockStop {
        kind: "content_block_stop",
        index,
    };
    Ok(sse.event("content_block_stop", &stop)?)
}

/// Writes a text block; returns the frame index of its first delta.
fn text_block(sse: &mut Sse, text: &str, pieces: usize) -> Result<usize, ApiError> {
    block_start(sse, 0, Block::Text { text: "" })?;
    let first = sse.len();
    for piece in split_words(text, pieces) {
        block_delta(sse, 0, DeltaBody::TextDelta { text: piece })?;
    }
    block_stop(sse, 0)?;
    Ok(first)
}

/// Writes a tool_use block; returns the frame index of its first delta.
fn tool_block(sse: &mut Sse, index: usize, call: &Call, pieces: usize) -> Result<usize, ApiError> {
    let empty = Value::Object(serde_json::Map::new());
    let start = Block::ToolUse {
        id: &call.id,
        name: &call.name,
        input: &empty,
    };
    block_start(sse, index, start)?;
    let first = sse.len();
    block_delta(sse, index, DeltaBody::InputJsonDelta { partial_json: "" })?;
    for piece in split_chars(&call.args, pieces) {
        block_delta(
            sse,
            index,
            DeltaBody::InputJsonDelta {
                partial_json: piece,
            },
        )?;
    }
    block_stop(sse, index)?;
    Ok(first)
}

/// `POST /v1/messages/count_tokens`.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct CountTokensRequest(MessagesRequest);

#[derive(Serialize)]
struct TokenCount {
    input_tokens: u64,
}

impl Endpoint for CountTokensRequest {
    fn model(&self) -> Option<&str> {
        self.0.model()
    }

    fn respond(&self, _model: &str, _cx: &Cx) -> Result<Reply, ApiError> {
        Reply::ok(&TokenCount {
            input_tokens: self.0.input_tokens(),
        })
    }
}
