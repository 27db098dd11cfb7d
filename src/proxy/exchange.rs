//! The upstream exchange: one client request's way through its targets, and what it learned.

use super::Live;
use crate::api::ClientRequest;
use crate::providers::Provider;
use crate::routing::{Route, Target};
use crate::sse::SseFilter;
use crate::telemetry::Usage;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the exchange learned, shared with the client request for its access-log line.
#[derive(Debug, Default)]
pub struct Outcome {
    pub provider: Option<String>,
    pub upstream_model: Option<String>,
    pub attempts: u32,
    pub ttfb: Option<Duration>,
    pub usage: Option<Usage>,
    pub error: Option<String>,
}

/// The lock is per request and never held across an await; a poisoned one is still usable.
pub fn lock(outcome: &Mutex<Outcome>) -> MutexGuard<'_, Outcome> {
    outcome.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the response body is read on its way to the client.
pub enum ResponseBody {
    /// JSON, kept (up to a limit) to read usage at the end.
    Json(BytesMut),
    Sse(SseFilter),
    Pass,
}

pub struct Exchange {
    pub live: Arc<Live>,
    pub route: Arc<Route>,
    pub request: ClientRequest,
    pub request_id: String,
    /// Indexes into `route.targets`, in the order they are tried.
    plan: Vec<usize>,
    pos: usize,
    /// Bit i set: key i of the current target was tried.
    tried_keys: u64,
    pub key: Option<usize>,
    /// The upstream body, serialized for `body_model`.
    pub body: Bytes,
    body_model: String,
    pub started: Instant,
    pub response_started: bool,
    reuse_retried: bool,
    pub mode: ResponseBody,
    pub outcome: Arc<Mutex<Outcome>>,
}

impl Exchange {
    pub fn new(
        live: Arc<Live>,
        route: Arc<Route>,
        plan: Vec<usize>,
        request: ClientRequest,
        request_id: String,
        started: Instant,
    ) -> Self {
        Exchange {
            live,
            route,
            request,
            request_id,
            plan,
            pos: 0,
            tried_keys: 0,
            key: None,
            body: Bytes::new(),
            body_model: String::new(),
            started,
            response_started: false,
            reuse_retried: false,
            mode: ResponseBody::Pass,
            outcome: Arc::default(),
        }
    }

    pub fn target(&self) -> Option<(&Target, &Arc<Provider>)> {
        let t = self.route.targets.get(*self.plan.get(self.pos)?)?;
        Some((t, self.live.providers.get(t.provider)?))
    }

    /// Moves to the next untried key of the current target, or to the next target; resets the
    /// per-attempt state. False when nothing is left to try.
    pub fn next_attempt(&mut self) -> bool {
        self.response_started = false;
        self.mode = ResponseBody::Pass;
        while let Some((t, p)) = self.target() {
            let pick = match t.key {
                _ if p.keys.is_empty() => (self.tried_keys == 0).then_some(0),
                Some(pinned) => (self.tried_keys & (1 << pinned) == 0).then_some(pinned),
                None => p.pick_key(self.tried_keys, rand::random::<f64>()),
            };
            let has_keys = !p.keys.is_empty();
            if let Some(k) = pick {
                self.tried_keys |= 1 << k;
                self.key = has_keys.then_some(k);
                return true;
            }
            self.skip_target();
        }
        false
    }

    pub fn skip_target(&mut self) {
        self.pos += 1;
        self.tried_keys = 0;
    }

    pub fn has_next_target(&self) -> bool {
        self.pos + 1 < self.plan.len()
    }

    /// A pooled connection the upstream had closed: the same target may be tried once more.
    pub fn retry_same_once(&mut self) -> bool {
        if self.reuse_retried {
            return false;
        }
        self.reuse_retried = true;
        self.tried_keys = 0;
        true
    }

    /// The body for the current target, re-serialized only when its model name differs.
    pub fn prepare_body(&mut self, model: &str) {
        if self.body.is_empty() || self.body_model != model {
            self.body = self.request.upstream_body(model);
            self.body_model = model.to_string();
        }
    }

    pub fn outcome(&self) -> MutexGuard<'_, Outcome> {
        lock(&self.outcome)
    }
}
