//! The request log behind `/sim/requests`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use serde::Serialize;
use serde_json::Value;

use super::common::Fault;

/// How a request ended (or where it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Received, response headers not sent yet.
    Pending,
    /// Headers sent, body still going.
    Streaming,
    Ok,
    Cancelled,
    Fault(Fault),
}

impl Outcome {
    fn code(self) -> u8 {
        match self {
            Outcome::Pending => 0,
            Outcome::Streaming => 1,
            Outcome::Ok => 2,
            Outcome::Cancelled => 3,
            Outcome::Fault(f) => 10 + f as u8,
        }
    }

    fn from_code(code: u8) -> Outcome {
        match code {
            0 => Outcome::Pending,
            1 => Outcome::Streaming,
            2 => Outcome::Ok,
            3 => Outcome::Cancelled,
            c => Fault::ALL
                .get(usize::from(c.saturating_sub(10)))
                .map_or(Outcome::Pending, |f| Outcome::Fault(*f)),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Streaming => "streaming",
            Outcome::Ok => "ok",
            Outcome::Cancelled => "cancelled",
            Outcome::Fault(f) => f.outcome(),
        }
    }
}

/// One received request.
pub(crate) struct Record {
    pub id: u64,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    outcome: AtomicU8,
}

impl Record {
    pub(crate) fn set_outcome(&self, outcome: Outcome) {
        self.outcome.store(outcome.code(), Ordering::Relaxed);
    }

    pub(crate) fn outcome(&self) -> Outcome {
        Outcome::from_code(self.outcome.load(Ordering::Relaxed))
    }
}

struct Inner {
    next_id: u64,
    items: VecDeque<Arc<Record>>,
}

/// The last `cap` requests, oldest first.
pub(crate) struct History {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Serialize)]
struct Entry<'a> {
    id: u64,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: BTreeMap<&'a str, String>,
    body_len: usize,
    body: Value,
    outcome: &'static str,
}

#[derive(Serialize)]
struct Listing<'a> {
    requests: Vec<Entry<'a>>,
}

impl History {
    pub(crate) fn new(cap: usize) -> History {
        History {
            cap,
            inner: Mutex::new(Inner {
                next_id: 1,
                items: VecDeque::with_capacity(cap.min(4096)),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a request and returns its record.
    pub(crate) fn record(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Arc<Record> {
        let evicted;
        let rec;
        {
            let mut inner = self.lock();
            rec = Arc::new(Record {
                id: inner.next_id,
                method,
                uri,
                headers,
                body,
                outcome: AtomicU8::new(Outcome::Pending.code()),
            });
            inner.next_id += 1;
            if self.cap == 0 {
                return rec;
            }
            evicted = if inner.items.len() >= self.cap {
                inner.items.pop_front()
            } else {
                None
            };
            inner.items.push_back(rec.clone());
        }
        drop(evicted);
        rec
    }

    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut self.lock().items);
        drop(old);
    }

    /// `{"requests":[...]}`, oldest first.
    pub(crate) fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let snapshot: Vec<Arc<Record>> = self.lock().items.iter().cloned().collect();
        let requests = snapshot
            .iter()
            .map(|r| {
                let mut headers: BTreeMap<&str, String> = BTreeMap::new();
                for (name, value) in &r.headers {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    headers
                        .entry(name.as_str())
                        .and_modify(|v| {
                            v.push_str(", ");
                            v.push_str(&value);
                        })
                        .or_insert_with(|| value.into_owned());
                }
                Entry {
                    id: r.id,
                    method: r.method.as_str(),
                    path: r.uri.path(),
                    query: r.uri.query().unwrap_or(""),
                    headers,
                    body_len: r.body.len(),
                    body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                    outcome: r.outcome().as_str(),
                }
            })
            .collect();
        serde_json::to_vec(&Listing { requests })
    }
}
