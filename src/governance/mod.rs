//! Governance, run in `request_filter` before any cost: virtual keys, the Customer → Team →
//! Key → Provider hierarchy with budgets, rate limits and model rules, and the reservation each
//! admitted request holds until it is settled with its real usage and cost.

pub mod admin;
pub mod alerts;
pub mod keys;
pub mod period;
pub mod persist;
pub mod prices;
pub mod redis;
pub mod setup;
pub mod store;

use crate::error::ApiError;
use arc_swap::ArcSwap;
use http::HeaderMap;
use keys::{hash_key, Directory, KeyEntry, Level, LevelKind};
use period::{format_utc, Clock};
use prices::{PriceTable, Tokens, Usd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use store::{Charge, Check, Store};

/// The most tokens one request may reserve on each side, and the most it may reserve in cost
/// ($1M): far past any real request, and far below what a counter holds.
const MAX_EST_TOKENS: u64 = 100_000_000;
const MAX_EST_COST: i64 = 1_000_000_000_000_000;

/// What a request is expected to use, for reservations made before it is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub prompt_tokens: u64,
    /// The request's `max_tokens`, or the configured default.
    pub completion_tokens: u64,
}

/// What a request used, known when it ends.
#[derive(Debug, Clone, Default)]
pub struct Actual {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub tokens: Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Budget,
    Requests,
    Tokens,
    Concurrent,
}

/// One reserved charge and what it is for.
#[derive(Debug, Clone)]
struct Held {
    kind: Kind,
    level: LevelKind,
    /// The level's id (a team's, or the provider's name).
    id: String,
    /// The counter's period and window start; none for concurrency.
    window: Option<(period::Period, i64)>,
    charge: Charge,
}

/// An admitted request's reservation, settled when the request ends.
#[derive(Debug)]
pub struct Admission {
    pub key: Arc<KeyEntry>,
    /// What was reserved, in tokens.
    pub est: Estimate,
    /// The provider whose level was charged.
    provider: Option<String>,
    held: Vec<Held>,
    est_cost: Usd,
    est_tokens: i64,
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(String, String)>,
}

/// A refusal, with the headers that go with it.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub headers: Vec<(String, String)>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal {
            error,
            headers: Vec::new(),
        }
    }
}

/// Where an alert goes: a budget crossed a threshold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Alert {
    pub level: &'static str,
    pub id: String,
    pub period: &'static str,
    pub threshold_percent: u32,
    pub used_usd: String,
    pub budget_usd: String,
    pub window_start: String,
    pub window_end: String,
}

pub struct Settings {
    /// Refuse requests without a known key.
    pub auth_required: bool,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// Budget alert thresholds, in percent.
    pub alert_thresholds: Vec<u32>,
}

enum Job {
    Settle(Box<Admission>, Actual),
    Sync(mpsc::Sender<()>),
}

pub struct Governance {
    pub directory: ArcSwap<Directory>,
    pub prices: PriceTable,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    alerts: Mutex<Option<mpsc::Sender<Alert>>>,
}

/// The secret a client sent: `Authorization: Bearer <key>` or `x-api-key`.
fn secret(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(401, "invalid_request_error", code, message.to_string())
}

impl Governance {
    pub fn new(
        directory: Directory,
        prices: PriceTable,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Arc<Governance> {
        let (tx, rx) = mpsc::channel::<Job>();
        let gov = Arc::new(Governance {
            directory: ArcSwap::from_pointee(directory),
            prices,
            store,
            clock,
            settings,
            jobs: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            alerts: Mutex::new(None),
        });
        // The worker holds only a weak handle, so dropping the last `Arc` ends it.
        let weak = Arc::downgrade(&gov);
        let worker = std::thread::Builder::new()
            .name("tollgate-settle".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Settle(a, actual) => {
                            if let Some(g) = weak.upgrade() {
                                g.settle_now(*a, &actual);
                            }
                        }
                        Job::Sync(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        match worker {
            Ok(w) => *lock(&gov.worker) = Some(w),
            Err(e) => log::error!("cannot start the settle worker: {e}"),
        }
        gov
    }

    /// Sends budget alerts to `tx` from now on.
    pub fn set_alerts(&self, tx: mpsc::Sender<Alert>) {
        *lock(&self.alerts) = Some(tx);
    }

    /// Who is asking. `Ok(None)` is an anonymous request, allowed when auth is off.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Arc<KeyEntry>>, ApiError> {
        let required = self.settings.auth_required;
        let Some(secret) = secret(headers) else {
            if required {
                return Err(unauthorized(
                    "missing_api_key",
                    "No API key: send `Authorization: Bearer <key>` or `x-api-key`.",
                ));
            }
            return Ok(None);
        };
        let dir = self.directory.load();
        let Some(key) = dir.by_hash.get(&hash_key(secret)) else {
            if required {
                return Err(unauthorized("invalid_api_key", "The API key is not valid."));
            }
            // With auth off, a key this gateway does not know is the client's own business.
            return Ok(None);
        };
        if key.revoked {
            return Err(unauthorized("revoked_api_key", "The API key was revoked."));
        }
        if key.expires_ms.is_some_and(|e| self.clock.now_ms() >= e) {
            return Err(unauthorized("expired_api_key", "The API key has expired."));
        }
        Ok(Some(key.clone()))
    }

    /// Whether the key may use `model` (a requested name or a target's `provider/model`); the
    /// error names the level that refused it.
    pub fn check_model(&self, key: &KeyEntry, model: &str) -> Result<(), ApiError> {
        match key.levels.iter().find(|l| !l.policy.allows(model)) {
            None => Ok(()),
            Some(l) => Err(ApiError::new(
                403,
                "permission_error",
                code(l.kind, "model_not_allowed"),
                format!(
                    "The {} `{}` may not use the model `{model}`.",
                    l.kind.as_str(),
                    l.id
                ),
            )),
        }
    }

    /// Whether a target (`provider`, `provider/model`) is open to the key.
    pub fn target_allowed(&self, key: &KeyEntry, provider: &str, model_id: &str) -> bool {
        key.levels.iter().all(|l| l.policy.allows(model_id))
            && key
                .providers
                .get(provider)
                .is_none_or(|l| l.policy.allows(model_id))
    }

    /// The highest share of any budget used, in percent, across the key's levels.
    pub async fn budget_used_percent(&self, key: &KeyEntry) -> f64 {
        let now = self.clock.now_ms();
        let mut names = Vec::new();
        let mut limits = Vec::new();
        for l in &key.levels {
            for b in &l.policy.budgets {
                names.push(budget_counter(l, b, now).0);
                limits.push(b.limit.0);
            }
        }
        if names.is_empty() {
            return 0.0;
        }
        let values = self.store.get(&names, now).await.unwrap_or_default();
        values
            .iter()
            .zip(&limits)
            .map(|(&v, &l)| {
                if l > 0 {
                    v as f64 * 100.0 / l as f64
                } else {
                    100.0
                }
            })
            .fold(0.0, f64::max)
    }

    /// The cost of an estimate for `model`, or `None` when the model has no price.
    pub fn estimate_cost(&self, model: &str, est: &Estimate) -> Option<Usd> {
        let t = Tokens {
            prompt: est.prompt_tokens,
            completion: est.completion_tokens,
            cached: 0,
            cache_write: 0,
        };
        self.prices.lookup(model).map(|p| p.cost(&t))
    }

    /// Reserves what the request may use at every level, or refuses it. `provider` is the one
    /// the request goes to first; `model` prices the estimate.
    pub async fn admit(
        &self,
        key: &Arc<KeyEntry>,
        provider: &str,
        model: &str,
        est: &Estimate,
    ) -> Result<Admission, Refusal> {
        let now = self.clock.now_ms();
        // Bounded, so that no reservation can push a counter to its limits and lose what it held.
        let est = Estimate {
            prompt_tokens: est.prompt_tokens.min(MAX_EST_TOKENS),
            completion_tokens: est.completion_tokens.min(MAX_EST_TOKENS),
        };
        let priced = self.estimate_cost(model, &est);
        let est_cost = Usd(priced.map_or(0, |c| c.0.min(MAX_EST_COST)));
        let est_tokens = i64::try_from(est.prompt_tokens + est.completion_tokens).unwrap_or(0);
        let provider_level = key.providers.get(provider);
        let mut held = Vec::new();
        for l in key.levels.iter().chain(provider_level) {
            let p = &l.policy;
            for b in &p.budgets {
                let (counter, end) = budget_counter(l, b, now);
                held.push(Held {
                    kind: Kind::Budget,
                    level: l.kind,
                    id: l.id.clone(),
                    window: Some((b.period, b.period.window(b.reset, b.anchor_ms, now).0)),
                    charge: Charge {
                        counter,
                        amount: est_cost.0,
                        hold: est_cost.0,
                        limit: b.limit.0,
                        check: Check::Below,
                        expires_ms: end,
                    },
                });
            }
            for (kind, list, amount) in [
                (Kind::Requests, &p.requests, 1),
                (Kind::Tokens, &p.tokens, est_tokens),
            ] {
                for w in list {
                    let (start, end) = w.per.window(period::Reset::Calendar, 0, now);
                    let tag = if kind == Kind::Requests { "req" } else { "tok" };
                    held.push(Held {
                        kind,
                        level: l.kind,
                        id: l.id.clone(),
                        window: Some((w.per, start)),
                        charge: Charge {
                            counter: format!("{}|{tag}|{}|{start}", l.scope, w.per.as_str()),
                            amount,
                            // A request counts once admitted; its tokens are held until settled.
                            hold: if kind == Kind::Tokens { amount } else { 0 },
                            limit: i64::try_from(w.max).unwrap_or(i64::MAX),
                            check: Check::Fits,
                            expires_ms: end,
                        },
                    });
                }
            }
            if let Some(max) = p.concurrent {
                held.push(Held {
                    kind: Kind::Concurrent,
                    level: l.kind,
                    id: l.id.clone(),
                    window: None,
                    charge: Charge {
                        counter: format!("{}|inflight", l.scope),
                        amount: 1,
                        hold: 1,
                        limit: i64::from(max),
                        check: Check::Fits,
                        // Settled requests give their slot back; this only bounds a leak.
                        expires_ms: now + 3_600_000,
                    },
                });
            }
        }
        if priced.is_none() {
            // A budget cannot hold back spend it cannot price.
            if let Some(h) = held.iter().find(|h| h.kind == Kind::Budget) {
                let level = h.level.as_str();
                return Err(Refusal::from(ApiError::new(
                    403,
                    "permission_error",
                    code(h.level, "model_unpriced"),
                    format!(
                        "The model `{model}` has no price, so the {level} budget cannot be enforced; add it under `governance.prices`."
                    ),
                )));
            }
        }
        let charges: Vec<Charge> = held.iter().map(|h| h.charge.clone()).collect();
        let reserved = self.store.reserve(&charges, now).await.map_err(|e| {
            log::error!("governance store: {e}");
            ApiError::new(
                503,
                "service_unavailable",
                "governance_unavailable",
                "The gateway cannot check limits right now.",
            )
        })?;
        match reserved {
            Ok(values) => Ok(Admission {
                key: key.clone(),
                est,
                provider: provider_level.map(|_| provider.to_string()),
                headers: rate_headers(&held, &values, now),
                held,
                est_cost,
                est_tokens,
            }),
            Err((i, seen)) => Err(refusal(&held[i], seen[i], now)),
        }
    }

    /// Settles an admission with what the request used: at once with a local store (a few
    /// microseconds, after the response), through the worker thread with a remote one.
    pub fn settle(&self, admission: Admission, actual: Actual) {
        if self.store.local() {
            return self.settle_now(admission, &actual);
        }
        let tx = lock(&self.jobs).clone();
        let job = Job::Settle(Box::new(admission), actual);
        if let Some(Err(mpsc::SendError(Job::Settle(a, actual)))) = tx.map(|tx| tx.send(job)) {
            // The worker is gone (shutting down): settle here.
            self.settle_now(*a, &actual);
        }
    }

    /// Waits until every settlement queued so far is applied.
    pub fn sync(&self) {
        let tx = lock(&self.jobs).clone();
        let (done, wait) = mpsc::channel();
        if tx.is_some_and(|tx| tx.send(Job::Sync(done)).is_ok()) {
            let _ = wait.recv();
        }
    }

    /// Applies every queued settlement and stops the worker; later settlements run inline.
    pub fn shutdown(&self) {
        lock(&self.jobs).take();
        if let Some(w) = lock(&self.worker).take() {
            let _ = w.join();
        }
    }

    /// The real cost of what a request used; `None` when its model has no price.
    pub fn cost(&self, actual: &Actual) -> Option<Usd> {
        let model = actual.model.as_deref()?;
        self.prices.lookup(model).map(|p| p.cost(&actual.tokens))
    }

    fn settle_now(&self, a: Admission, actual: &Actual) {
        let now = self.clock.now_ms();
        let cost = if actual.tokens == Tokens::default() {
            Usd(0)
        } else {
            self.cost(actual).unwrap_or_default()
        };
        let tokens = i64::try_from(
            actual
                .tokens
                .prompt
                .saturating_add(actual.tokens.completion),
        )
        .unwrap_or(i64::MAX);
        let moved = a.provider.is_some() && actual.provider != a.provider;
        let mut adjust = Vec::new();
        let mut budgets = Vec::new();
        for h in &a.held {
            // (the change to the counter, the change to what is held)
            let (amount, hold) = match h.kind {
                Kind::Requests => continue,
                Kind::Concurrent => (-1, -1),
                // The provider level of a provider the request did not end on gets it all back.
                Kind::Budget if moved && h.level == LevelKind::Provider => {
                    (-a.est_cost.0, -a.est_cost.0)
                }
                Kind::Tokens if moved && h.level == LevelKind::Provider => {
                    (-a.est_tokens, -a.est_tokens)
                }
                Kind::Budget => (cost.0 - a.est_cost.0, -a.est_cost.0),
                Kind::Tokens => (tokens - a.est_tokens, -a.est_tokens),
            };
            if h.kind == Kind::Budget {
                // Alerts look at the settled spend: the counter less this request's cost, then
                // with it.
                let charged = if amount == -a.est_cost.0 { 0 } else { cost.0 };
                budgets.push((adjust.len(), h, charged));
            } else if amount == 0 && hold == 0 {
                continue;
            }
            adjust.push(Charge {
                amount,
                hold,
                ..h.charge.clone()
            });
        }
        // A fallback to a provider with its own level is charged there.
        if moved {
            if let Some(l) = actual
                .provider
                .as_ref()
                .and_then(|p| a.key.providers.get(p))
            {
                for b in &l.policy.budgets {
                    let (counter, end) = budget_counter(l, b, now);
                    adjust.push(Charge {
                        counter,
                        amount: cost.0,
                        hold: 0,
                        limit: b.limit.0,
                        check: Check::None,
                        expires_ms: end,
                    });
                }
                for w in &l.policy.tokens {
                    let (start, end) = w.per.window(period::Reset::Calendar, 0, now);
                    adjust.push(Charge {
                        counter: format!("{}|tok|{}|{start}", l.scope, w.per.as_str()),
                        amount: tokens,
                        hold: 0,
                        limit: 0,
                        check: Check::None,
                        expires_ms: end,
                    });
                }
            }
        }
        if adjust.is_empty() {
            return;
        }
        match self.store.adjust(&adjust, now) {
            Ok(values) => {
                for (i, h, amount) in budgets {
                    self.alert_crossings(h, values[i] - amount, values[i], now);
                }
            }
            Err(e) => log::error!("governance store: cannot settle a request: {e}"),
        }
    }

    /// Fires an alert for each threshold a budget counter crossed upward, once per window.
    fn alert_crossings(&self, h: &Held, before: i64, after: i64, now: i64) {
        let limit = h.charge.limit;
        if after <= before || limit <= 0 {
            return;
        }
        let tx = lock(&self.alerts).clone();
        let Some(tx) = tx else { return };
        for &t in &self.settings.alert_thresholds {
            let mark = i128::from(limit) * i128::from(t) / 100;
            if !(i128::from(before) < mark && i128::from(after) >= mark) {
                continue;
            }
            let name = format!("alert|{}|{t}", h.charge.counter);
            if !self
                .store
                .first_time(&name, h.charge.expires_ms, now)
                .unwrap_or(false)
            {
                continue;
            }
            let Some((period, start)) = h.window else {
                continue;
            };
            let _ = tx.send(Alert {
                level: h.level.as_str(),
                id: h.id.clone(),
                period: period.as_str(),
                threshold_percent: t,
                used_usd: Usd(after).to_string(),
                budget_usd: Usd(limit).to_string(),
                window_start: format_utc(start),
                window_end: format_utc(h.charge.expires_ms),
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A level's budget counter for the window holding `now`, and the window's end.
pub fn budget_counter(l: &Level, b: &keys::Budget, now: i64) -> (String, i64) {
    let (start, end) = b.period.window(b.reset, b.anchor_ms, now);
    let reset = match b.reset {
        period::Reset::Calendar => "",
        period::Reset::Rolling => "~",
    };
    (
        format!("{}|usd|{}{reset}|{start}", l.scope, b.period.as_str()),
        end,
    )
}

fn code(level: LevelKind, what: &str) -> String {
    format!("{}_{what}", level.as_str())
}

/// The refusal for the charge that did not pass, with `retry-after` where waiting helps.
fn refusal(h: &Held, seen: i64, now: i64) -> Refusal {
    let (level, id) = (h.level.as_str(), &h.id);
    let c = &h.charge;
    let retry_secs = ((c.expires_ms - now).max(0) + 999) / 1000;
    let window = h.window.map_or("", |(p, _)| p.as_str());
    let (status, kind, what, message) = match h.kind {
        Kind::Budget => (
            402,
            "insufficient_quota",
            "budget_exceeded",
            format!(
                "The {level} `{id}` has used its {window} budget of ${} (${} used or reserved); it resets at {}.",
                Usd(c.limit),
                Usd(seen),
                format_utc(c.expires_ms)
            ),
        ),
        Kind::Requests => (
            429,
            "rate_limit_error",
            "request_limit_exceeded",
            format!(
                "The {level} `{id}` is limited to {} requests per {window}; try again in {retry_secs} s.",
                c.limit
            ),
        ),
        Kind::Tokens => (
            429,
            "rate_limit_error",
            "token_limit_exceeded",
            format!(
                "The {level} `{id}` is limited to {} tokens per {window}; {seen} are used or reserved and this request may use {}.",
                c.limit, c.amount
            ),
        ),
        Kind::Concurrent => (
            429,
            "rate_limit_error",
            "concurrency_limit_exceeded",
            format!(
                "The {level} `{id}` may have {} requests in flight at once.",
                c.limit
            ),
        ),
    };
    let mut headers = Vec::new();
    match h.kind {
        Kind::Concurrent => headers.push(("retry-after".to_string(), "1".to_string())),
        _ => headers.push(("retry-after".to_string(), retry_secs.to_string())),
    }
    if matches!(h.kind, Kind::Requests | Kind::Tokens) {
        let n = if h.kind == Kind::Requests {
            "requests"
        } else {
            "tokens"
        };
        headers.push((format!("x-ratelimit-limit-{n}"), c.limit.to_string()));
        headers.push((
            format!("x-ratelimit-remaining-{n}"),
            (c.limit - seen).max(0).to_string(),
        ));
        headers.push((format!("x-ratelimit-reset-{n}"), format!("{retry_secs}s")));
    }
    Refusal {
        error: ApiError::new(status, kind, code(h.level, what), message),
        headers,
    }
}

/// `x-ratelimit-*` for requests and tokens: the tightest limit of each.
fn rate_headers(held: &[Held], values: &[i64], now: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (kind, n) in [(Kind::Requests, "requests"), (Kind::Tokens, "tokens")] {
        let tightest = held
            .iter()
            .zip(values)
            .filter(|(h, _)| h.kind == kind)
            .min_by_key(|(h, &v)| h.charge.limit - v);
        if let Some((h, &v)) = tightest {
            let secs = ((h.charge.expires_ms - now).max(0) + 999) / 1000;
            out.push((format!("x-ratelimit-limit-{n}"), h.charge.limit.to_string()));
            out.push((
                format!("x-ratelimit-remaining-{n}"),
                (h.charge.limit - v).max(0).to_string(),
            ));
            out.push((format!("x-ratelimit-reset-{n}"), format!("{secs}s")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::period::{parse_utc, ManualClock};
    use super::store::MemoryStore;
    use super::*;

    struct Fixture {
        gov: Arc<Governance>,
        clock: Arc<ManualClock>,
        alerts: mpsc::Receiver<Alert>,
    }

    /// Model `m` costs $1 per million input tokens and $1,000 per million output tokens, so
    /// one output token is $0.001.
    fn fixture(yaml: &str, now: &str) -> Fixture {
        let dir = keys::directory_from_yaml(yaml, &|s| Ok(s.to_string())).unwrap();
        let overrides = serde_yaml::from_str("{m: {input: 1, output: 1000}}").unwrap();
        let prices = PriceTable::embedded().with_overrides(&overrides).unwrap();
        let clock = Arc::new(ManualClock::new(parse_utc(now).unwrap()));
        let settings = Settings {
            auth_required: true,
            default_max_tokens: 100,
            alert_thresholds: vec![50, 80, 100],
        };
        let gov = Governance::new(
            dir,
            prices,
            Arc::new(MemoryStore::default()),
            clock.clone(),
            settings,
        );
        let (tx, alerts) = mpsc::channel();
        gov.set_alerts(tx);
        Fixture { gov, clock, alerts }
    }

    fn key(f: &Fixture, secret: &str) -> Arc<KeyEntry> {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        f.gov.identify(&h).unwrap().unwrap()
    }

    fn est(completion: u64) -> Estimate {
        Estimate {
            prompt_tokens: 0,
            completion_tokens: completion,
        }
    }

    fn used(completion: u64) -> Actual {
        Actual {
            provider: Some("p".into()),
            model: Some("m".into()),
            tokens: Tokens {
                completion,
                ..Default::default()
            },
        }
    }

    async fn code(f: &Fixture, k: &Arc<KeyEntry>, e: Estimate) -> Result<Admission, String> {
        f.gov
            .admit(k, "p", "m", &e)
            .await
            .map_err(|r| format!("{} {}", r.error.status, r.error.code))
    }

    const DAILY: &str = "
teams: [{id: t, budgets: [{usd: '0.01', period: day}]}]
keys: [{id: k, key: s, team: t}]
";

    #[tokio::test]
    async fn a_daily_budget_resets_exactly_at_utc_midnight() {
        let f = fixture(DAILY, "2026-12-04T12:00:00Z");
        let k = key(&f, "s");
        // Spend the whole $0.01: ten output tokens.
        let a = code(&f, &k, est(10)).await.unwrap();
        f.gov.settle(a, used(10));
        f.gov.sync();
        f.clock.set(parse_utc("2026-12-04T23:59:59.999Z").unwrap());
        assert_eq!(
            code(&f, &k, est(1)).await.err().as_deref(),
            Some("402 team_budget_exceeded")
        );
        f.clock.set(parse_utc("2026-12-05T00:00:00Z").unwrap());
        assert!(code(&f, &k, est(1)).await.is_ok());
    }

    #[tokio::test]
    async fn a_monthly_budget_resets_on_the_first_and_a_weekly_one_on_monday() {
        let yaml = "
keys:
  - {id: k, key: s, budgets: [{usd: '0.001', period: month}]}
  - {id: w, key: w, budgets: [{usd: '0.001', period: week}]}
";
        let f = fixture(yaml, "2026-11-30T10:00:00Z");
        for secret in ["s", "w"] {
            let k = key(&f, secret);
            let a = code(&f, &k, est(1)).await.unwrap();
            f.gov.settle(a, used(1));
        }
        f.gov.sync();
        // Monday 30 November: the week began today, the month continues until tomorrow.
        f.clock.set(parse_utc("2026-11-30T23:59:59Z").unwrap());
        assert!(code(&f, &key(&f, "s"), est(1)).await.is_err());
        assert!(code(&f, &key(&f, "w"), est(1)).await.is_err());
        f.clock.set(parse_utc("2026-12-01T00:00:00Z").unwrap());
        assert!(code(&f, &key(&f, "s"), est(1)).await.is_ok(), "a new month");
        assert!(
            code(&f, &key(&f, "w"), est(1)).await.is_err(),
            "the same week"
        );
        f.clock.set(parse_utc("2026-12-07T00:00:00Z").unwrap());
        assert!(code(&f, &key(&f, "w"), est(1)).await.is_ok(), "a new week");
    }

    #[tokio::test]
    async fn cost_is_charged_to_every_level_and_unused_reservations_come_back() {
        let yaml = "
customers: [{id: c, budgets: [{usd: 1, period: month}]}]
teams: [{id: t, customer: c, budgets: [{usd: 1, period: month}]}]
keys: [{id: k, key: s, team: t, budgets: [{usd: 1, period: month}], limits: {tokens: [{max: 1000, per: minute}], concurrent: 1}}]
";
        let f = fixture(yaml, "2026-12-04T12:00:00Z");
        let k = key(&f, "s");
        let a = code(&f, &k, est(100)).await.unwrap();
        // Reserved: $0.10 at each level, 100 tokens, one slot.
        assert_eq!(f.gov.budget_used_percent(&k).await, 10.0);
        assert_eq!(
            code(&f, &k, est(1)).await.err().as_deref(),
            Some("429 key_concurrency_limit_exceeded")
        );
        f.gov.settle(a, used(30));
        f.gov.sync();
        assert_eq!(f.gov.budget_used_percent(&k).await, 3.0);
        // A request that used nothing (it failed) gives everything back.
        let a = code(&f, &k, est(100)).await.unwrap();
        f.gov.settle(a, Actual::default());
        f.gov.sync();
        let now = f.clock.now_ms();
        let d = f.gov.directory.load();
        let names: Vec<String> = ["customer:c", "team:t", "key:k"]
            .iter()
            .map(|s| budget_counter(&d.levels[*s], &d.levels[*s].policy.budgets[0], now).0)
            .collect();
        let values = f.gov.store.get(&names, now).await.unwrap();
        assert_eq!(values, vec![30_000_000; 3], "$0.03 at each level");
    }

    #[tokio::test]
    async fn the_tightest_level_refuses_and_names_itself() {
        let yaml = "
customers: [{id: c, limits: {requests: [{max: 2, per: hour}]}}]
teams: [{id: t, customer: c, limits: {requests: [{max: 5, per: hour}]}}]
keys: [{id: k, key: s, team: t, limits: {tokens: [{max: 150, per: minute}]}}]
";
        let f = fixture(yaml, "2026-12-04T12:00:00Z");
        let k = key(&f, "s");
        let a = code(&f, &k, est(100)).await.unwrap();
        let h: std::collections::HashMap<_, _> = a.headers.iter().cloned().collect();
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "50");
        assert_eq!(h["x-ratelimit-reset-tokens"], "60s");
        // 100 more tokens do not fit beside the 100 reserved.
        let e = f.gov.admit(&k, "p", "m", &est(100)).await.unwrap_err();
        assert_eq!(e.error.code, "key_token_limit_exceeded");
        assert!(e.headers.contains(&("retry-after".into(), "60".into())));
        f.gov.settle(a, used(10));
        f.gov.sync();
        code(&f, &k, est(100)).await.unwrap();
        assert_eq!(
            code(&f, &k, est(1)).await.err().as_deref(),
            Some("429 customer_request_limit_exceeded")
        );
    }

    #[tokio::test]
    async fn alerts_fire_once_per_threshold_per_window() {
        let f = fixture(DAILY, "2026-12-04T12:00:00Z");
        let k = key(&f, "s");
        for n in [4, 1, 2, 1, 1, 1] {
            if let Ok(a) = code(&f, &k, est(n)).await {
                f.gov.settle(a, used(n));
                f.gov.sync();
            }
        }
        f.gov.sync();
        let got: Vec<u32> = f.alerts.try_iter().map(|a| a.threshold_percent).collect();
        assert_eq!(got, vec![50, 80, 100]);
        f.clock.set(parse_utc("2026-12-05T00:00:01Z").unwrap());
        let a = code(&f, &k, est(6)).await.unwrap();
        f.gov.settle(a, used(6));
        f.gov.sync();
        let next: Vec<Alert> = f.alerts.try_iter().collect();
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].level, next[0].id.as_str(), next[0].period),
            ("team", "t", "day")
        );
        assert_eq!(next[0].window_start, "2026-12-05T00:00:00Z");
        assert_eq!(
            (next[0].used_usd.as_str(), next[0].budget_usd.as_str()),
            ("0.006", "0.01")
        );
    }

    #[tokio::test]
    async fn keys_are_refused_when_unknown_revoked_or_expired() {
        let yaml = "
keys:
  - {id: a, key: s1}
  - {id: b, key: s2, revoked: true}
  - {id: c, key: s3, expires: '2026-12-05T00:00:00Z'}
";
        let f = fixture(yaml, "2026-12-04T12:00:00Z");
        let try_key = |h: &str, v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                http::HeaderName::from_bytes(h.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
            f.gov
                .identify(&m)
                .map(|k| k.map(|k| k.id.clone()))
                .map_err(|e| e.code.to_string())
        };
        assert_eq!(try_key("authorization", "Bearer s1"), Ok(Some("a".into())));
        assert_eq!(try_key("x-api-key", "s1"), Ok(Some("a".into())));
        assert_eq!(try_key("x-api-key", "nope"), Err("invalid_api_key".into()));
        assert_eq!(
            try_key("authorization", "Bearer s2"),
            Err("revoked_api_key".into())
        );
        assert_eq!(try_key("authorization", "Bearer s3"), Ok(Some("c".into())));
        f.clock.set(parse_utc("2026-12-05T00:00:00Z").unwrap());
        assert_eq!(
            try_key("authorization", "Bearer s3"),
            Err("expired_api_key".into())
        );
        assert_eq!(try_key("x-other", "s1"), Err("missing_api_key".into()));
    }
}
