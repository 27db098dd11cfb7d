//! What each request used and how it went: token usage read from bodies and streams, and the
//! JSON access log, written by a background thread so the request path never does I/O.

pub mod metrics;

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Every input token, cached and cache writes included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// OpenAI's `usage` object, as it appears in a response body or a stream chunk.
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<OpenAiUsage> for Usage {
    fn from(u: OpenAiUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

/// Anthropic's `usage` object. Prompt tokens count cache reads and writes too, as OpenAI's do.
#[derive(Debug, Default, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Folds this report into `usage`: a stream reports in parts (`message_start`, then
    /// `message_delta`), and a part may repeat an earlier count, so each is kept at its maximum.
    pub fn fold_into(&self, usage: &mut Usage) {
        let n = |v: Option<u64>| v.unwrap_or(0);
        let prompt = n(self.input_tokens)
            + n(self.cache_read_input_tokens)
            + n(self.cache_creation_input_tokens);
        usage.prompt_tokens = usage.prompt_tokens.max(prompt);
        usage.completion_tokens = usage.completion_tokens.max(n(self.output_tokens));
        usage.cached_tokens = usage.cached_tokens.max(n(self.cache_read_input_tokens));
        usage.cache_write_tokens = usage
            .cache_write_tokens
            .max(n(self.cache_creation_input_tokens));
    }
}

impl Usage {
    /// Reads `usage` from a whole OpenAI response body.
    pub fn from_body(body: &[u8]) -> Option<Usage> {
        let usage = top_level_value(body, b"usage")?;
        serde_json::from_slice::<Option<OpenAiUsage>>(usage)
            .ok()?
            .map(Usage::from)
    }

    /// Reads `usage` from a whole Anthropic response body.
    pub fn from_anthropic_body(body: &[u8]) -> Option<Usage> {
        let usage = top_level_value(body, b"usage")?;
        let u = serde_json::from_slice::<Option<AnthropicUsage>>(usage).ok()??;
        let mut usage = Usage::default();
        u.fold_into(&mut usage);
        Some(usage)
    }

    /// The counts prices are applied to.
    pub fn tokens(&self) -> crate::governance::prices::Tokens {
        crate::governance::prices::Tokens {
            prompt: self.prompt_tokens,
            completion: self.completion_tokens,
            cached: self.cached_tokens,
            cache_write: self.cache_write_tokens,
        }
    }

    /// From a translator's (prompt, completion, cached) counts.
    pub fn from_counts(
        (prompt_tokens, completion_tokens, cached_tokens): (u64, u64, u64),
    ) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            cache_write_tokens: 0,
        }
    }
}

/// The raw text of the value of top-level `key` in a JSON object (the last, if repeated). Values
/// are skipped by scanning for quotes and brackets, not parsed: response bodies can be megabytes
/// (embeddings) and only their usage is wanted. `None` if `json` is not an object or lacks `key`.
fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let ws = |mut i: usize| {
        while json.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    let mut found = None;
    if json.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(json, i)?;
        let name = &json[i + 1..key_end - 1];
        i = ws(key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let start = ws(i + 1);
        let end = value_end(json, start)?;
        if name == key {
            found = Some(&json[start..end]);
        }
        i = ws(end);
        match json.get(i) {
            Some(b',') => i = ws(i + 1),
            Some(b'}') => return found,
            _ => return None,
        }
    }
}

/// The index just past the string that opens at `json[at]` (a quote).
fn string_end(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[i] == b'\\' {
            i += 2;
        } else {
            return Some(i + 1);
        }
    }
}

/// The index just past the value that starts at `json[at]`.
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    match json.get(at)? {
        b'"' => string_end(json, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                i += json
                    .get(i..)?
                    .iter()
                    .position(|b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))?;
                match json[i] {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                }
                i += 1;
            }
        }
        _ => {
            let rest = &json[at..];
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            (len > 0).then_some(at + len)
        }
    }
}

/// One access-log line.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Record {
    pub ts_ms: u128,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub status: u16,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub stream: bool,
    pub attempts: u32,
    #[serde(flatten)]
    pub usage: Usage,
    /// Whether usage was read from the response; `false` means the counts are unknown.
    pub usage_seen: bool,
    /// The virtual key's name (never its secret) and its team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Exact, in USD; absent when nothing was used or the model has no price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<String>,
    /// Tokens were used on a model with no price: the cost is unknown, not zero.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unpriced: bool,
    /// `hit-exact`, `hit-semantic` or `miss`; absent when the cache was not asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_similarity: Option<f32>,
    /// What a hit would have cost upstream, in USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_saved_usd: Option<String>,
    pub error: Option<String>,
}

const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

enum Msg {
    Line(Box<Record>),
    Flush(mpsc::SyncSender<()>),
}

/// The access log. Lines are queued and written by one thread; `flush` waits for the queue.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
}

impl AccessLog {
    /// Starts the writer. `None` writes to stdout.
    pub fn start(path: Option<&Path>) -> std::io::Result<(AccessLog, JoinHandle<()>)> {
        let mut out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(msg) = rx.recv() {
                    // Let lines gather: one write per batch, and senders rarely find this
                    // thread parked, so they rarely pay for waking it.
                    std::thread::sleep(BATCH_WAIT);
                    let mut acks = Vec::new();
                    // Drain whatever is queued, then write it in one go.
                    for msg in std::iter::once(msg).chain(rx.try_iter()) {
                        match msg {
                            Msg::Line(record) => {
                                if serde_json::to_writer(&mut buf, &record).is_ok() {
                                    buf.push(b'\n');
                                }
                            }
                            Msg::Flush(ack) => acks.push(ack),
                        }
                    }
                    if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
                        log::error!("access log write failed: {e}");
                    }
                    buf.clear();
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
            })?;
        Ok((AccessLog { tx }, handle))
    }

    pub fn write(&self, record: Record) {
        let _ = self.tx.send(Msg::Line(Box::new(record)));
    }

    /// Blocks until every line queued before this call is written.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_openai_shape() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(
            Usage::from_body(body),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                cached_tokens: 4,
                cache_write_tokens: 0,
            })
        );
        let no_details =
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":null}}"#;
        assert_eq!(
            Usage::from_body(no_details).map(|u| u.cached_tokens),
            Some(0)
        );
        assert_eq!(Usage::from_body(br#"{"usage":null}"#), None);
        assert_eq!(Usage::from_body(b"not json"), None);
        // Strings that look like usage, nested usage objects, whitespace and escapes are skipped.
        let tricky = br#" { "choices" : [ {"message": {"content": "\"usage\":{\"prompt_tokens\":99} [{"}, "usage": {"prompt_tokens": 98}} ] ,
            "x\\": "}", "usage" : {"prompt_tokens": 7, "completion_tokens": 2} , "n": -1.5e3 } "#;
        assert_eq!(
            Usage::from_body(tricky),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2,
                cached_tokens: 0,
                cache_write_tokens: 0,
            })
        );
        for broken in [
            &br#"{"usage":{"prompt_tokens":1}"#[..],
            br#"{"a":"#,
            br#"{"a" 1}"#,
            b"[]",
            b"",
            br#"{"a":"\"#,
        ] {
            assert_eq!(
                Usage::from_body(broken),
                None,
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
        let anthropic = br#"{"usage":{"input_tokens":10,"cache_read_input_tokens":30,"cache_creation_input_tokens":5,"output_tokens":7}}"#;
        assert_eq!(
            Usage::from_anthropic_body(anthropic),
            Some(Usage {
                prompt_tokens: 45,
                completion_tokens: 7,
                cached_tokens: 30,
                cache_write_tokens: 5,
            })
        );
    }

    #[test]
    fn access_log_writes_every_line_before_flush_returns() {
        let dir = std::env::temp_dir().join(format!("tollgate-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let (log, _thread) = AccessLog::start(Some(&path)).unwrap();
        for i in 0..1000 {
            log.write(Record {
                request_id: format!("r{i}"),
                status: 200,
                ..Default::default()
            });
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999]["request_id"], "r999");
        assert_eq!(lines[0]["prompt_tokens"], 0);
    }
}
