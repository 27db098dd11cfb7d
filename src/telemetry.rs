//! What each request used and how it went: token usage read from bodies and streams, and the
//! JSON access log, written by a background thread so the request path never does I/O.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
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
    }
}

#[derive(Deserialize)]
struct AnthropicUsageOf {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// Just the `usage` of a response body; everything else is skipped, not built.
#[derive(Deserialize)]
struct UsageOf {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

impl Usage {
    /// Reads `usage` from a whole OpenAI response body.
    pub fn from_body(body: &[u8]) -> Option<Usage> {
        serde_json::from_slice::<UsageOf>(body)
            .ok()?
            .usage
            .map(Usage::from)
    }

    /// Reads `usage` from a whole Anthropic response body.
    pub fn from_anthropic_body(body: &[u8]) -> Option<Usage> {
        let u = serde_json::from_slice::<AnthropicUsageOf>(body)
            .ok()?
            .usage?;
        let mut usage = Usage::default();
        u.fold_into(&mut usage);
        Some(usage)
    }

    /// From a translator's (prompt, completion, cached) counts.
    pub fn from_counts(
        (prompt_tokens, completion_tokens, cached_tokens): (u64, u64, u64),
    ) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
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
                cached_tokens: 4
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
        let anthropic = br#"{"usage":{"input_tokens":10,"cache_read_input_tokens":30,"cache_creation_input_tokens":5,"output_tokens":7}}"#;
        assert_eq!(
            Usage::from_anthropic_body(anthropic),
            Some(Usage {
                prompt_tokens: 45,
                completion_tokens: 7,
                cached_tokens: 30
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
