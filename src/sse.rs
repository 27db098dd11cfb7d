//! Server-sent events passing through the gateway: complete events are forwarded as soon as they
//! arrive, usage is read from them, and the usage-only chunk the gateway asked for is dropped when
//! the client did not ask for it.

use crate::telemetry::{AnthropicUsage, OpenAiUsage, Usage};
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Debug, Default)]
pub struct SseFilter {
    /// An incomplete event carried over from the previous chunk.
    partial: BytesMut,
    strip_usage_chunk: bool,
    /// The stream is Anthropic's (usage arrives in parts; nothing is dropped).
    anthropic: bool,
    pub usage: Option<Usage>,
    /// Characters of generated text seen (see [`generated_chars`]).
    pub generated: u64,
    pub done: bool,
    /// An `error` object arrived inside the stream.
    pub error: bool,
}

/// The length of the generated text in an SSE event's data, in either dialect: the string
/// values of `content`, `text`, `arguments`, `partial_json` and `thinking`, an escape counting
/// as one. An estimate for streams that end before their usage report.
pub fn generated_chars(data: &[u8]) -> u64 {
    const KEYS: [&[u8]; 5] = [
        b"\"content\":\"",
        b"\"text\":\"",
        b"\"arguments\":\"",
        b"\"partial_json\":\"",
        b"\"thinking\":\"",
    ];
    let mut n = 0;
    for key in KEYS {
        for at in memmem::find_iter(data, key) {
            let mut i = at + key.len();
            while let Some(&b) = data.get(i) {
                match b {
                    b'"' => break,
                    b'\\' => i += 2,
                    _ => i += 1,
                }
                n += 1;
            }
        }
    }
    n
}

/// The end of the first event in `buf`: the index just past its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + i + 1;
        match buf.get(at) {
            Some(b'\n') => return Some(at + 1),
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return Some(at + 2),
            _ => from = at,
        }
    }
    None
}

/// Whether `key` appears followed by `:` and an object.
fn has_object(data: &[u8], key: &[u8]) -> bool {
    memmem::find_iter(data, key).any(|at| {
        let rest = data[at + key.len()..].trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|r| r.trim_ascii_start().starts_with(b"{"))
    })
}

impl SseFilter {
    pub fn new(strip_usage_chunk: bool) -> Self {
        SseFilter {
            strip_usage_chunk,
            ..Default::default()
        }
    }

    /// For an Anthropic stream passed through as it is: reads its usage and errors.
    pub fn anthropic() -> Self {
        SseFilter {
            anthropic: true,
            ..Default::default()
        }
    }

    /// Takes the next chunk from upstream and returns what to send on now.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let whole = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        let mut keep: Option<BytesMut> = None; // built only once something is dropped
        let mut start = 0;
        while let Some(len) = event_end(&whole[start..]) {
            let event = &whole[start..start + len];
            if self.inspect(event) {
                keep.get_or_insert_with(|| BytesMut::from(&whole[..start]));
            } else if let Some(k) = keep.as_mut() {
                k.extend_from_slice(event);
            }
            start += len;
        }
        self.partial.extend_from_slice(&whole[start..]);
        match keep {
            Some(k) => k.freeze(),
            None => whole.slice(..start),
        }
    }

    /// Whatever is left when the stream ends.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.partial.split().freeze();
        if !rest.is_empty() && self.inspect(&rest) {
            return Bytes::new();
        }
        rest
    }

    /// Reads one event; returns whether to drop it.
    fn inspect(&mut self, event: &[u8]) -> bool {
        // The data lines joined; borrowed in the usual case of a single line.
        let mut data: Cow<[u8]> = Cow::Borrowed(b"");
        let mut lines = 0;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                lines += 1;
                if lines == 1 {
                    data = Cow::Borrowed(rest);
                } else {
                    let joined = data.to_mut();
                    joined.push(b'\n');
                    joined.extend_from_slice(rest);
                }
            }
        }
        self.generated += generated_chars(&data);
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return false;
        }
        if self.anthropic && memmem::find(&data, b"\"message_stop\"").is_some() {
            self.done = true;
        }
        // Most chunks carry `"usage":null`; parse only those with a usage or error object.
        if !has_object(&data, b"\"usage\"") && !has_object(&data, b"\"error\"") {
            return false;
        }
        if self.anthropic {
            if let Ok(event) = serde_json::from_slice::<AnthropicProbe>(&data) {
                self.error |= event.kind == "error";
                let usage = event.usage.or(event.message.and_then(|m| m.usage));
                if let Some(u) = usage {
                    u.fold_into(self.usage.get_or_insert_with(Usage::default));
                }
            }
            return false;
        }
        let Ok(chunk) = serde_json::from_slice::<ChunkProbe>(&data) else {
            return false;
        };
        if chunk.error.is_some() {
            self.error = true;
        }
        match chunk.usage {
            Some(u) => {
                self.usage = Some(u.into());
                self.strip_usage_chunk && chunk.choices.is_some_and(|c| c.is_empty())
            }
            None => false,
        }
    }
}

/// The parts of an Anthropic event the gateway reads.
#[derive(Deserialize)]
struct AnthropicProbe {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(default)]
    message: Option<AnthropicMessageProbe>,
}

#[derive(Deserialize)]
struct AnthropicMessageProbe {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// The parts of a chunk the gateway reads; everything else is skipped.
#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_text_is_counted_in_both_dialects() {
        let openai = br#"{"choices":[{"delta":{"content":"Hel\"lo"}}]}"#;
        assert_eq!(generated_chars(openai), 6);
        let tool = br#"{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}"#;
        assert_eq!(generated_chars(tool), 7);
        let anthropic =
            br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"Paris"}}"#;
        assert_eq!(generated_chars(anthropic), 5);
        assert_eq!(generated_chars(b"[DONE]"), 0);
        assert_eq!(generated_chars(br#"{"content":"unterminated"#), 12);
    }

    const USAGE: &str = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n";
    const CHUNK: &str = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(filter: &mut SseFilter, pieces: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&filter.push(Bytes::copy_from_slice(p)));
        }
        out.extend_from_slice(&filter.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn whole_events_pass_through_and_usage_is_read() {
        let mut f = SseFilter::new(false);
        let all = format!("{CHUNK}{USAGE}{DONE}");
        assert_eq!(run(&mut f, &[all.as_bytes()]), all);
        assert_eq!(
            f.usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 3,
                cached_tokens: 2,
                cache_write_tokens: 0,
            })
        );
        assert!(f.done);
    }

    #[test]
    fn usage_chunk_is_dropped_when_the_client_did_not_ask() {
        let mut f = SseFilter::new(true);
        let all = format!("{CHUNK}{USAGE}{DONE}");
        assert_eq!(run(&mut f, &[all.as_bytes()]), format!("{CHUNK}{DONE}"));
        assert_eq!(f.usage.unwrap().prompt_tokens, 9);
    }

    #[test]
    fn events_split_across_chunks_at_every_byte() {
        let all = format!("{CHUNK}{CHUNK}{USAGE}{DONE}");
        let bytes = all.as_bytes();
        for cut in 1..bytes.len() {
            let mut f = SseFilter::new(true);
            let out = run(&mut f, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(out, format!("{CHUNK}{CHUNK}{DONE}"), "cut at {cut}");
            assert_eq!(f.usage.unwrap().completion_tokens, 3);
        }
    }

    #[test]
    fn crlf_framing_and_errors() {
        let mut f = SseFilter::new(true);
        let text = "data: {\"error\":{\"message\":\"boom\"}}\r\n\r\n";
        assert_eq!(run(&mut f, &[text.as_bytes()]), text);
        assert!(f.error && !f.done);
    }

    #[test]
    fn usage_objects_are_found_with_any_spacing() {
        assert!(has_object(br#"{"usage" : {"a":1}}"#, b"\"usage\""));
        assert!(!has_object(br#"{"usage":null}"#, b"\"usage\""));
        assert!(!has_object(
            br#"{"text":"the \"usage\" word"}"#,
            b"\"usage\""
        ));
    }

    #[test]
    fn anthropic_usage_is_counted_once_across_events() {
        let mut f = SseFilter::anthropic();
        let text = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"output_tokens\":1}}   }\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":12,\"output_tokens\":9}}\n\n";
        assert_eq!(run(&mut f, &[text.as_bytes()]), text);
        assert_eq!(
            f.usage,
            Some(Usage {
                prompt_tokens: 15,
                completion_tokens: 9,
                cached_tokens: 3,
                cache_write_tokens: 0,
            })
        );
    }

    #[test]
    fn complete_chunks_are_not_copied() {
        let mut f = SseFilter::new(true);
        let chunk = Bytes::from_static(CHUNK.as_bytes());
        let out = f.push(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }
}
