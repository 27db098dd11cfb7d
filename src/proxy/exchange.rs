//! The upstream exchange: one client request's way through its targets, what each attempt met,
//! and what the request learned for its access-log line.

use super::Live;
use crate::api::{ClientRequest, Endpoint};
use crate::config::RetryPolicy;
use crate::governance::{Actual, Admission, Governance};
use crate::providers::anthropic::{self, StreamTranslator};
use crate::providers::health::now_ms;
use crate::providers::relay::{Expired, RelayState};
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
    /// The status the client must get instead of the upstream's, when the answer could not be
    /// translated; honoured for answers held back until they are whole.
    pub status: Option<u16>,
    /// The error answer for a held answer that failed after it had begun: the status and the
    /// body in the client's dialect.
    pub failed: Option<(u16, bytes::Bytes)>,
}

/// The lock is per request and never held across an await; a poisoned one is still usable.
pub fn lock(outcome: &Mutex<Outcome>) -> MutexGuard<'_, Outcome> {
    outcome.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the response body is read on its way to the client.
pub enum ResponseBody {
    /// JSON in the client's dialect, kept (up to a limit) to read usage at the end.
    Json(BytesMut),
    /// An SSE stream in the client's dialect.
    Sse(SseFilter),
    /// A stream in the other dialect, translated chunk by chunk.
    Translated(Box<dyn StreamTranslator>),
    /// A whole body translated at its end.
    Translate(BytesMut, Translation),
    Pass,
}

#[derive(Debug, Clone, Copy)]
pub enum Translation {
    MessagesToChat,
    ChatToMessages,
    /// An error in the upstream's dialect, with its status.
    AnthropicError(u16),
    OpenAiError(u16),
    /// An error in the client's dialect, checked to be one.
    Error(u16),
}

/// Why an attempt failed, which decides what is tried next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect error, timeout, reset, 5xx or a non-JSON error: retry the target with backoff,
    /// then the next target.
    Transient,
    /// The target cannot take this request (no such API, or it cannot be translated): the next
    /// target, with no mark against the provider.
    Unsuitable,
    /// 429: the key cools down; the next key or target at once.
    RateLimited,
    /// 401 or 403: the key is left out; the next key or target at once.
    KeyRejected,
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest a key sits out after a 429, whatever the upstream asks.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

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
    tries_on_target: u32,
    pub key: Option<usize>,
    /// Waited before the next attempt.
    pub backoff: Option<Duration>,
    /// The upstream body, serialized for `body_for`: the model and the API it was made for.
    pub body: Bytes,
    body_for: Option<(String, Endpoint)>,
    /// The API the current target is spoken to in.
    pub upstream: Endpoint,
    /// Headers every answer carries (`x-ratelimit-*`).
    pub headers: Vec<(String, String)>,
    /// Governance's reservation for this request, settled when the answer ends (before its
    /// last bytes reach the client) or when the exchange is dropped.
    pub admission: Option<(Arc<Governance>, Admission)>,
    /// Stores the answer in the cache once it is complete (a cache miss).
    pub fill: Option<crate::cache::Fill>,
    /// The provider accepted the request (its answer began with a success status).
    pub answered_ok: bool,
    /// Characters of generated text streamed so far: what a stream cut before its usage
    /// report is charged by.
    pub generated: u64,
    pub started: Instant,
    /// When the current attempt was sent; a whole (non-stream) answer must arrive within the
    /// provider's `first_byte` of it.
    pub attempt_started: Instant,
    pub response_started: bool,
    /// `response_filter` already recorded why this attempt failed.
    pub failure_recorded: bool,
    /// The relay of this attempt's connection, for stream requests.
    pub relay: Option<Arc<RelayState>>,
    /// The longest Retry-After an upstream gave, for the client if every attempt fails.
    pub retry_after: Option<Duration>,
    pub mode: ResponseBody,
    /// One line per failed attempt, for the error the client gets if all fail.
    pub failures: Vec<String>,
    /// Targets passed over without an attempt (circuit open, keys cooling, no such API).
    pub skipped: Vec<String>,
    /// How many of those could not take this request (no such API, cannot be translated).
    pub unsuitable: usize,
    /// The status the first failed attempt met (a transport failure counts as 502, or 504).
    pub primary_status: Option<u16>,
    /// The first failed attempt got an HTTP answer (rather than a transport failure).
    pub primary_http: bool,
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
            tries_on_target: 0,
            key: None,
            backoff: None,
            body: Bytes::new(),
            body_for: None,
            upstream: Endpoint::Chat,
            headers: Vec::new(),
            admission: None,
            fill: None,
            answered_ok: false,
            generated: 0,
            started,
            attempt_started: started,
            response_started: false,
            failure_recorded: false,
            relay: None,
            retry_after: None,
            mode: ResponseBody::Pass,
            failures: Vec::new(),
            skipped: Vec::new(),
            unsuitable: 0,
            primary_status: None,
            primary_http: false,
            outcome: Arc::default(),
        }
    }

    fn policy(&self) -> RetryPolicy {
        self.live.gateway.retry
    }

    pub fn target(&self) -> Option<(&Target, &Arc<Provider>)> {
        let t = self.route.targets.get(*self.plan.get(self.pos)?)?;
        Some((t, self.live.providers.get(t.provider)?))
    }

    /// Some target of the route speaks the other dialect than the client.
    pub fn may_translate(&self) -> bool {
        let client_anthropic = self.request.endpoint.anthropic();
        matches!(self.request.endpoint, Endpoint::Chat | Endpoint::Messages)
            && self.route.targets.iter().any(|t| {
                self.live.providers.get(t.provider).is_some_and(|p| {
                    (p.kind == crate::config::ProviderKind::Anthropic) != client_anthropic
                })
            })
    }

    /// The deadline this attempt's relay enforced, in words, if one passed.
    pub fn expired(&self) -> Option<String> {
        let why = self.relay.as_ref()?.expired()?;
        let t = &self.target()?.1.timeouts;
        Some(match why {
            Expired::FirstByte => format!("no first byte within {} ms", t.first_byte.as_millis()),
            Expired::Idle => format!("the stream was silent for {} ms", t.idle.as_millis()),
        })
    }

    /// Moves to the next usable key of the current target, or to the next target whose circuit
    /// is closed. The last target is tried even with its circuit open, rather than none.
    /// Resets the per-attempt state; false when nothing is left to try.
    pub fn next_attempt(&mut self) -> bool {
        self.response_started = false;
        self.failure_recorded = false;
        self.relay = None;
        self.mode = ResponseBody::Pass;
        let now = now_ms();
        let policy = self.policy();
        while let Some((t, p)) = self.target() {
            let fresh = self.tried_keys == 0 && self.tries_on_target == 0;
            let last = self.pos + 1 >= self.plan.len();
            if fresh
                && !last
                && !p
                    .breaker
                    .allows(now, policy.breaker_failures, policy.breaker_cooldown_ms)
            {
                self.skipped
                    .push(format!("{}: skipped, circuit open", t.id));
                self.skip_target();
                continue;
            }
            let pick = match t.key {
                _ if p.keys.is_empty() => (self.tried_keys == 0).then_some(0),
                Some(pinned) => (self.tried_keys & (1 << pinned) == 0
                    && p.keys[pinned].cooldown.ready(now))
                .then_some(pinned),
                None => p.pick_key(self.tried_keys, rand::random::<f64>(), now),
            };
            let has_keys = !p.keys.is_empty();
            if let Some(k) = pick {
                self.tried_keys |= 1 << k;
                self.key = has_keys.then_some(k);
                return true;
            }
            if fresh && has_keys {
                let why = "every key is cooling down after 429, 401 or 403";
                self.skipped.push(format!("{}: skipped, {why}", t.id));
            }
            self.skip_target();
        }
        false
    }

    fn skip_target(&mut self) {
        self.pos += 1;
        self.tried_keys = 0;
        self.tries_on_target = 0;
    }

    /// Records a failed attempt and decides whether another one follows.
    pub fn failed(
        &mut self,
        failure: Failure,
        status: u16,
        http: bool,
        what: &str,
        retry_after: Option<Duration>,
    ) -> bool {
        let now = now_ms();
        let policy = self.policy();
        let Some((t, p)) = self.target() else {
            return false;
        };
        let (id, p) = (t.id.clone(), p.clone());
        if failure == Failure::Unsuitable {
            self.unsuitable += 1;
            self.skipped.push(format!("{id}: skipped, {what}"));
            self.skip_target();
            return true;
        }
        if self.primary_status.is_none() {
            self.primary_status = Some(status);
            self.primary_http = http;
        }
        let key_name = self
            .key
            .map(|k| match p.keys.get(k).and_then(|k| k.name.as_deref()) {
                Some(name) => format!(" (key {name})"),
                None => format!(" (key {k})"),
            });
        let line = format!("{id}{}: {what}", key_name.unwrap_or_default());
        self.failures.push(line);
        let key = self.key.and_then(|k| p.keys.get(k));
        match failure {
            Failure::RateLimited => {
                let wait = retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(MAX_RETRY_AFTER);
                self.retry_after = self.retry_after.max(Some(wait));
                if let Some(k) = key {
                    k.cooldown.until(now + wait.as_millis() as u64);
                }
                true
            }
            Failure::KeyRejected => {
                if let Some(k) = key {
                    k.cooldown.until(now + policy.bad_key_cooldown_ms);
                }
                true
            }
            Failure::Unsuitable => true,
            Failure::Transient => {
                p.breaker
                    .failure(now, policy.breaker_failures, policy.breaker_cooldown_ms);
                self.tries_on_target += 1;
                if self.tries_on_target < policy.attempts_per_target {
                    // The same target again, after a backoff; any of its keys.
                    let exp = policy
                        .backoff_ms
                        .saturating_mul(1 << (self.tries_on_target - 1).min(16));
                    let cap = Duration::from_millis(exp).min(MAX_BACKOFF);
                    self.backoff = Some(cap.mul_f64(rand::random::<f64>()));
                    self.tried_keys = 0;
                } else {
                    self.skip_target();
                }
                true
            }
        }
    }

    /// The upstream answered: its circuit closes.
    pub fn answered(&self) {
        if let Some((_, p)) = self.target() {
            p.breaker.success();
        }
    }

    /// The body for the current target: the client's, with its model, translated when the
    /// provider speaks another dialect. Rebuilt only when the model or the API changes.
    pub fn prepare_body(&mut self) -> Result<(), String> {
        let (t, p) = self.target().ok_or("no target")?;
        let endpoint = self.request.endpoint;
        let upstream = p
            .upstream_endpoint(endpoint)
            .ok_or_else(|| format!("provider `{}` has no {} API", p.name, endpoint.name()))?;
        let key = (t.model.clone(), upstream);
        if self.body_for.as_ref() != Some(&key) {
            let raw = self.request.upstream_body(&key.0);
            self.body = match (endpoint, upstream) {
                (Endpoint::Chat, Endpoint::Messages) => {
                    anthropic::chat_to_messages(&raw, &key.0, p.default_max_tokens)?.into()
                }
                (Endpoint::Messages, Endpoint::Chat) => {
                    anthropic::messages_request_to_chat(&raw, &key.0)?.into()
                }
                _ => raw,
            };
            self.body_for = Some(key);
        }
        self.upstream = upstream;
        Ok(())
    }

    pub fn outcome(&self) -> MutexGuard<'_, Outcome> {
        lock(&self.outcome)
    }

    /// Settles the reservation with what the outcome shows was used.
    pub fn settle(&mut self) {
        let Some((gov, admission)) = self.admission.take() else {
            return;
        };
        let actual = {
            let o = self.outcome();
            let u = match o.usage {
                Some(u) => u,
                // No usage report (the client left, the stream broke): the provider still
                // bills the prompt and what it generated, estimated from the text streamed.
                None if self.answered_ok => Usage {
                    prompt_tokens: admission.est.prompt_tokens,
                    completion_tokens: self.generated.div_ceil(4),
                    ..Usage::default()
                },
                None => Usage::default(),
            };
            Actual {
                provider: o.provider.clone(),
                model: o.upstream_model.clone(),
                tokens: u.tokens(),
            }
        };
        gov.settle(admission, actual);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.settle();
    }
}
