//! The request pipeline, in Pingora's `ProxyHttp` phases.
//!
//! `request_filter` answers local endpoints, reads and validates the body (any size up to the
//! limit) and resolves the route into an [`Exchange`]. The exchange then runs through the
//! upstream phases: `upstream_peer` picks the target and key, `upstream_request_filter`
//! addresses and authenticates it, `request_body_filter` supplies the rewritten body on every
//! attempt, `fail_to_connect`/`error_while_proxy` move on to the next target, and
//! `response_filter` with `response_body_filter` account tokens.
//!
//! Where the exchange runs depends on the body: Pingora replays a body it has read only from its
//! 64 KiB retry buffer. A body that fits runs the exchange in the client request itself; a larger
//! one runs it in a Pingora subrequest that has no body of its own, whose response tasks are
//! streamed to the client (README's design notes say why).

mod exchange;

use crate::api::{ClientRequest, Endpoint};
use crate::cache::key::Scope;
use crate::cache::{Cache, Control, EmbedUse, Hit, Layer, Lookup, Mode};
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::governance::keys::KeyEntry;
use crate::governance::prices::{PriceTable, Tokens, Usd};
use crate::governance::{Estimate, Governance};
use crate::providers::anthropic::{ChatStreamToMessages, MessagesStreamToChat};
use crate::providers::{anthropic, Provider};
use crate::routing::{Facts, Router};
use crate::sse::SseFilter;
use crate::telemetry::metrics::{Metrics, Sample};
use crate::telemetry::{AccessLog, Record, Usage};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use exchange::{lock, Exchange, Failure, Outcome, ResponseBody, Translation};
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The configuration a request sees from start to end; swapped whole on reload.
pub struct Live {
    pub gateway: Arc<GatewayConfig>,
    pub providers: Arc<Vec<Arc<Provider>>>,
    pub router: Router,
}

pub struct Gateway {
    pub live: Arc<ArcSwap<Live>>,
    pub log: AccessLog,
    pub drain: Arc<Drain>,
    pub accounts: Arc<Accounts>,
    pub cache: Option<Arc<Cache>>,
}

/// What prices, governs and counts requests.
pub struct Accounts {
    /// `None` without a `governance` section: no keys, budgets or limits.
    pub gov: Option<Arc<Governance>>,
    pub prices: PriceTable,
    pub metrics: Arc<Metrics>,
}

/// Requests in flight, and whether the gateway is draining for shutdown.
#[derive(Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    draining: AtomicBool,
}

impl Drain {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// Counts a client request as in flight until it is dropped with its `Ctx`.
struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Headers a client may send that must never reach a provider.
const CLIENT_ONLY: [&str; 6] = [
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "proxy-authorization",
    "expect",
];
/// Anthropic's token counting, answered locally with an estimate.
const COUNT_TOKENS: &str = "/v1/messages/count_tokens";
/// How long an idle client connection is kept open.
const KEEPALIVE_SECS: u64 = 60;
/// Pingora's read bound on relayed connections, past the relay's own deadlines.
const RELAY_SLACK: Duration = Duration::from_secs(5);
/// The first connection-pool group of relayed (stream) connections, apart from plain ones.
const RELAYED: u64 = 1;
/// Largest non-stream response body read for usage accounting; larger ones pass unread.
const ACCOUNTING_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct Ctx {
    /// Set in a subrequest that runs an exchange for its client request.
    subrequest: bool,
    exchange: Option<Box<Exchange>>,
    // The rest belongs to the client request.
    started: Option<Instant>,
    request_id: String,
    method: String,
    path: String,
    model: Option<String>,
    stream: bool,
    error: Option<String>,
    outcome: Option<Arc<Mutex<Outcome>>>,
    in_flight: Option<InFlight>,
    /// Set until the access-log line is written; a request dropped before `logging` (cut off at
    /// shutdown) writes its line when its `Ctx` drops.
    log: Option<AccessLog>,
    accounts: Option<Arc<Accounts>>,
    /// The virtual key, when the client sent one this gateway knows.
    key: Option<Arc<KeyEntry>>,
    /// Headers for a refusal (`retry-after`, `x-ratelimit-*`).
    refusal_headers: Vec<(String, String)>,
    /// What the cache did, when it was asked.
    cache: Option<CacheNote>,
}

/// The cache's part in a request, for its log line and metrics.
struct CacheNote {
    /// The answer's entry, on a hit.
    hit: Option<Hit>,
    /// The model the cache key was made with (the route's), for the miss metric.
    model: String,
    embedding: Option<EmbedUse>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let mut r = record(self);
            r.error = Some("interrupted".into());
            finish(self, &mut r);
            log.write(r);
        }
    }
}

/// Prices what the request used, counts it in the metrics and settles its reservation.
fn finish(ctx: &mut Ctx, r: &mut Record) {
    let Some(acc) = ctx.accounts.take() else {
        return;
    };
    let tokens = r.usage.tokens();
    let used = tokens != Tokens::default();
    let mut cost = match &r.upstream_model {
        Some(m) if used => acc.prices.lookup(m).map(|p| p.cost(&tokens)),
        _ => None,
    };
    // A hit costs nothing upstream; an embedding call costs what it used.
    let note = ctx.cache.take();
    if let Some(hit) = note.as_ref().and_then(|n| n.hit.as_ref()) {
        cost = Some(Usd(0));
        r.provider = Some(hit.entry.provider.clone());
        r.upstream_model = Some(hit.entry.model.clone());
    }
    if let Some(e) = note.as_ref().and_then(|n| n.embedding.as_ref()) {
        let t = Tokens {
            prompt: e.tokens,
            ..Tokens::default()
        };
        if let Some(c) = acc.prices.lookup(&e.model).map(|p| p.cost(&t)) {
            cost = Some(Usd(cost.map_or(0, |x| x.0).saturating_add(c.0)));
        }
    }
    r.cost_usd = cost.map(|c| c.to_string());
    r.unpriced = used && cost.is_none();
    if r.unpriced {
        log::warn!(
            "model `{}` has no price: the cost of request {} is unknown",
            r.upstream_model.as_deref().unwrap_or_default(),
            r.request_id
        );
    }
    if let Some(k) = &ctx.key {
        r.key = Some(k.id.clone());
        r.team = k.team.clone();
    }
    if let Some(note) = &note {
        let key = r.key.as_deref().unwrap_or("");
        match &note.hit {
            Some(hit) => {
                let e = &hit.entry;
                let saved = acc
                    .prices
                    .lookup(&e.model)
                    .map(|p| p.cost(&e.usage.tokens()));
                r.cache = Some(match hit.layer {
                    Layer::Exact => "hit-exact",
                    Layer::Semantic => "hit-semantic",
                });
                r.cache_similarity = hit.similarity;
                r.cache_saved_usd = saved.map(|s| s.to_string());
                acc.metrics
                    .cache_hit(hit.layer.name(), &e.model, key, saved);
            }
            None => {
                r.cache = Some("miss");
                let model = r.upstream_model.as_deref().unwrap_or(&note.model);
                acc.metrics.cache_miss(model, key);
            }
        }
    }
    // Local endpoints (/health, /metrics) are not API traffic.
    let api = r.path.starts_with("/v1/");
    if !api {
        return;
    }
    acc.metrics.record(&Sample {
        provider: r.provider.as_deref().unwrap_or(""),
        model: r.upstream_model.as_deref().unwrap_or(""),
        key: r.key.as_deref().unwrap_or(""),
        team: r.team.as_deref().unwrap_or(""),
        status: r.status,
        seconds: r.latency_ms / 1000.0,
        input_tokens: r.usage.prompt_tokens,
        output_tokens: r.usage.completion_tokens,
        cached_tokens: r.usage.cached_tokens,
        cost,
    });
}

/// The access-log line for a client request, from its `Ctx` and its exchange's outcome.
fn record(ctx: &Ctx) -> Record {
    let mut r = Record {
        ts_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        request_id: ctx.request_id.clone(),
        method: ctx.method.clone(),
        path: ctx.path.clone(),
        model: ctx.model.clone(),
        latency_ms: ctx
            .started
            .map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0),
        stream: ctx.stream,
        error: ctx.error.clone(),
        ..Default::default()
    };
    if let Some(o) = &ctx.outcome {
        let o = lock(o);
        r.provider = o.provider.clone();
        r.upstream_model = o.upstream_model.clone();
        r.attempts = o.attempts;
        r.ttfb_ms = o.ttfb.map(|t| t.as_secs_f64() * 1000.0);
        r.usage = o.usage.unwrap_or_default();
        r.usage_seen = o.usage.is_some();
        if r.error.is_none() {
            r.error = o.error.clone();
        }
    }
    r
}

/// The forwarded headers that change an answer, for the cache key.
fn answer_headers(h: &http::HeaderMap) -> String {
    let mut out = String::new();
    for name in ["anthropic-beta", "anthropic-version", "openai-beta"] {
        for v in h.get_all(name) {
            out.push_str(name);
            out.push('=');
            out.push_str(&String::from_utf8_lossy(v.as_bytes()));
            out.push('\n');
        }
    }
    out
}

/// The weighted roll: random, or fixed by the `x-tollgate-session` header so that one
/// conversation stays on one target.
fn roll(session: &Session) -> f64 {
    match session.req_header().headers.get("x-tollgate-session") {
        Some(id) => {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_bytes());
            (h >> 11) as f64 / (1u64 << 53) as f64
        }
        None => rand::random::<f64>(),
    }
}

fn internal(msg: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, msg)
}

fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

async fn respond(
    session: &mut Session,
    request_id: &str,
    status: u16,
    body: Bytes,
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + extra.len()))?;
    h.insert_header(header::CONTENT_TYPE, "application/json")?;
    h.insert_header(header::CONTENT_LENGTH, body.len())?;
    h.insert_header("x-request-id", request_id)?;
    for (k, v) in extra {
        h.insert_header(k.to_string(), *v)?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

async fn respond_error(
    session: &mut Session,
    request_id: &str,
    e: &ApiError,
    extra: &[(&str, &str)],
) -> Result<()> {
    let path = session.req_header().uri.path();
    let anthropic = path.starts_with("/v1/messages");
    let allow = match Endpoint::from_path(path) {
        Some(_) => "POST",
        None if path == COUNT_TOKENS => "POST",
        None => "GET, HEAD",
    };
    let mut headers = extra.to_vec();
    if e.status == 405 {
        headers.push(("allow", allow));
    }
    respond(
        session,
        request_id,
        e.status,
        e.body_for(anthropic),
        &headers,
    )
    .await
}

fn method_not_allowed(path: &str) -> ApiError {
    ApiError::new(
        405,
        "invalid_request_error",
        "method_not_allowed",
        format!("Method not allowed for {path}."),
    )
}

/// What `request_filter` decided.
enum Next {
    /// The response was written.
    Done,
    /// Proxy upstream with the exchange now in `ctx`.
    Proxy,
}

impl Gateway {
    /// Serves the client request; an `ApiError` is the client's fault or a refusal.
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<std::result::Result<Next, ApiError>> {
        let live = self.live.load_full();
        let method = &session.req_header().method;
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        let local: Option<Bytes> = match ctx.path.as_str() {
            "/ready" if self.drain.draining.load(Ordering::Acquire) => {
                return Ok(Err(ApiError::new(
                    503,
                    "service_unavailable",
                    "draining",
                    "The gateway is shutting down.",
                )));
            }
            "/health" | "/ready" => Some(Bytes::from_static(b"{\"status\":\"ok\"}")),
            "/v1/models" => Some(live.router.models_json.clone()),
            _ => None,
        };
        if let Some(body) = local {
            if !get {
                return Ok(Err(method_not_allowed(&ctx.path)));
            }
            respond(session, &ctx.request_id, 200, body, &[]).await?;
            return Ok(Ok(Next::Done));
        }
        if ctx.path == "/metrics" {
            if !get {
                return Ok(Err(method_not_allowed(&ctx.path)));
            }
            let text = Bytes::from(self.accounts.metrics.render());
            let content = [("content-type", "text/plain; version=0.0.4")];
            respond(session, &ctx.request_id, 200, text, &content).await?;
            return Ok(Ok(Next::Done));
        }
        // Who is asking, before anything is read.
        if let Some(gov) = &self.accounts.gov {
            match gov.identify(&session.req_header().headers) {
                Ok(key) => ctx.key = key,
                Err(e) => {
                    self.accounts.metrics.refused(&e.code, "key", "", "");
                    return Ok(Err(e));
                }
            }
        }
        if ctx.path == COUNT_TOKENS {
            if !post {
                return Ok(Err(method_not_allowed(&ctx.path)));
            }
            let body = match read_body(session, &live.gateway).await? {
                Ok(b) => b,
                Err(e) => return Ok(Err(e)),
            };
            // The same checks as a message, less `max_tokens`; the model must be one we route.
            let checked = ClientRequest::parse_count_tokens(body.clone());
            let request = match checked {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            let facts = Facts::new(
                &request.model,
                Endpoint::Messages,
                &session.req_header().headers,
            );
            if live.router.route(&facts).is_none() {
                return Ok(Err(ApiError::model_not_found(&request.model)));
            }
            if let (Some(gov), Some(key)) = (&self.accounts.gov, &ctx.key) {
                if let Err(e) = gov.check_model(key, &request.model) {
                    return Ok(Err(self.refused(ctx, e)));
                }
            }
            return match anthropic::count_tokens(&body) {
                Ok(n) => {
                    let answer = Bytes::from(format!("{{\"input_tokens\":{n}}}"));
                    respond(session, &ctx.request_id, 200, answer, &[]).await?;
                    Ok(Ok(Next::Done))
                }
                Err(why) => Ok(Err(ApiError::bad_request("invalid_request", why))),
            };
        }
        let Some(endpoint) = Endpoint::from_path(&ctx.path) else {
            return Ok(Err(ApiError::not_found(format!(
                "Unknown path {}.",
                ctx.path
            ))));
        };
        if !post {
            return Ok(Err(method_not_allowed(&ctx.path)));
        }

        let body = match read_body(session, &live.gateway).await? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let request = match ClientRequest::parse(endpoint, body) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        ctx.model = Some(request.model.clone());
        ctx.stream = request.stream;
        let gov = self.accounts.gov.as_ref().zip(ctx.key.clone());
        let mut used_percent = None;
        if let Some((gov, key)) = &gov {
            if let Err(e) = gov.check_model(key, &request.model) {
                return Ok(Err(self.refused(ctx, e)));
            }
            if live.router.uses_budget {
                used_percent = Some(gov.budget_used_percent(key).await);
            }
        }
        let mut facts = Facts::new(&request.model, endpoint, &session.req_header().headers);
        if let Some((_, key)) = &gov {
            facts.key = Some(&key.id);
            facts.team = key.team.as_deref();
            facts.customer = key.customer.as_deref();
            facts.budget_used_percent = used_percent;
        }
        let Some(route) = live.router.route(&facts).cloned() else {
            return Ok(Err(ApiError::model_not_found(&request.model)));
        };
        let mut plan = route.plan(roll(session));
        if let Some((gov, key)) = &gov {
            let before = plan.len();
            plan.retain(|&i| {
                let t = &route.targets[i];
                let provider = &live.providers[t.provider].name;
                gov.target_allowed(key, provider, &t.id)
            });
            if before > 0 && plan.is_empty() {
                let e = ApiError::new(
                    403,
                    "permission_error",
                    "key_model_not_allowed",
                    format!(
                        "The key `{}` may not use any target `{}` routes to.",
                        key.id, request.model
                    ),
                );
                return Ok(Err(self.refused(ctx, e)));
            }
        }
        let mut fill = None;
        if let Some(cache) = &self.cache {
            let ctl = match cache.control(&session.req_header().headers) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            if ctl.mode != Mode::Off && !plan.is_empty() {
                let partition = cache.partition(ctx.key.as_deref());
                // Aliases of one catalog model share entries; a rule's depend on the name asked.
                let model = match (&route.rule, route.targets.first()) {
                    (Some(rule), _) => format!("rule:{rule}:{}", request.model),
                    (None, Some(t)) => t.id.clone(),
                    (None, None) => request.model.clone(),
                };
                let variant = answer_headers(&session.req_header().headers);
                let scope = Scope {
                    partition: &partition,
                    namespace: &ctl.namespace,
                    endpoint,
                    model: &model,
                    variant: &variant,
                };
                let body = request.body().clone();
                let accept = route.accepted_ids(&plan);
                let found = cache
                    .lookup(
                        &ctl,
                        &scope,
                        &body,
                        request.stream,
                        &accept,
                        &live.providers,
                    )
                    .await;
                let found = match found {
                    Lookup::Hit(hit) => {
                        match self.serve_hit(session, ctx, &request, hit, &model).await? {
                            true => return Ok(Ok(Next::Done)),
                            // An entry that cannot be replayed is a miss, and is replaced.
                            false => {
                                cache
                                    .lookup(
                                        &Control {
                                            mode: Mode::Exact,
                                            max_age: Some(Duration::ZERO),
                                            ..ctl.clone()
                                        },
                                        &scope,
                                        &body,
                                        request.stream,
                                        &accept,
                                        &live.providers,
                                    )
                                    .await
                            }
                        }
                    }
                    other => other,
                };
                match found {
                    Lookup::Hit(_) => {}
                    Lookup::Miss(f, embedding) => {
                        fill = f;
                        ctx.cache = Some(CacheNote {
                            hit: None,
                            model,
                            embedding,
                        });
                    }
                    Lookup::Skip => {}
                }
            }
        }
        let mut rate_headers = Vec::new();
        let mut admission = None;
        if let (Some((gov, key)), Some(&first)) = (&gov, plan.first()) {
            let t = &route.targets[first];
            let (prompt_tokens, max) = request.token_estimate();
            let choices = request
                .field("n")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 128);
            let completion = match max {
                Some(0) if endpoint == Endpoint::Embeddings => 0,
                // Nothing is free: at least one token per choice is held.
                m => m.unwrap_or(gov.settings.default_max_tokens).max(1) * choices,
            };
            let est = Estimate {
                prompt_tokens: prompt_tokens.max(1),
                completion_tokens: completion,
            };
            let provider = &live.providers[t.provider].name;
            match gov.admit(key, provider, &t.model, &est).await {
                Ok(mut a) => {
                    rate_headers = std::mem::take(&mut a.headers);
                    admission = Some((Arc::clone(gov), a));
                }
                Err(r) => {
                    // Refused, not a cache miss.
                    ctx.cache = None;
                    ctx.refusal_headers = r.headers;
                    return Ok(Err(self.refused(ctx, r.error)));
                }
            }
        }
        if plan.is_empty() {
            return Ok(Err(ApiError::new(
                503,
                "service_unavailable",
                "no_available_provider",
                format!(
                    "No provider is available for `{}`: {}.",
                    request.model,
                    route.unavailable.join(", ")
                ),
            )));
        }
        let started = ctx.started.unwrap_or_else(Instant::now);
        let mut exchange = Exchange::new(
            live.clone(),
            route,
            plan,
            request,
            ctx.request_id.clone(),
            started,
        );
        exchange.headers = rate_headers;
        if ctx.cache.is_some() {
            exchange
                .headers
                .push(("x-tollgate-cache".into(), "miss".into()));
        }
        if let Some(f) = &fill {
            exchange
                .headers
                .push(("x-tollgate-cache-key".into(), f.id()));
        }
        exchange.fill = fill;
        exchange.admission = admission;
        ctx.outcome = Some(exchange.outcome.clone());
        // A whole answer translated from the other dialect is held until it is complete, so that
        // one that cannot be translated gets an error status rather than a 200.
        let hold = !exchange.request.stream && exchange.may_translate();
        if hold || session.as_ref().retry_buffer_truncated() {
            self.run_subrequest(session, exchange, hold).await?;
            return Ok(Ok(Next::Done));
        }
        ctx.exchange = Some(Box::new(exchange));
        Ok(Ok(Next::Proxy))
    }

    /// Answers from a cache entry, in the form the client asked for; false (nothing written)
    /// if the entry cannot be replayed.
    async fn serve_hit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        request: &ClientRequest,
        hit: Hit,
        model: &str,
    ) -> Result<bool> {
        let Some(body) = crate::cache::entry::replay(
            &hit.entry,
            request.endpoint,
            request.stream,
            request.wants_usage,
        ) else {
            return Ok(false);
        };
        let status = match hit.layer {
            Layer::Exact => "hit-exact",
            Layer::Semantic => "hit-semantic",
        };
        let similarity = hit.similarity.map(|s| format!("{s:.4}"));
        let id = format!("{:032x}", hit.key);
        let mut extra = vec![
            ("x-tollgate-cache", status),
            ("x-tollgate-cache-key", id.as_str()),
            ("x-tollgate-provider", hit.entry.provider.as_str()),
            ("x-tollgate-model", hit.entry.target.as_str()),
        ];
        if let Some(s) = &similarity {
            extra.push(("x-tollgate-cache-similarity", s));
        }
        if request.stream {
            extra.push(("content-type", "text/event-stream"));
            extra.push(("cache-control", "no-cache"));
        }
        respond(session, &ctx.request_id, 200, Bytes::from(body), &extra).await?;
        ctx.cache = Some(CacheNote {
            embedding: hit.embedding.clone(),
            hit: Some(hit),
            model: model.to_string(),
        });
        Ok(true)
    }

    /// Counts a refusal in the metrics and passes it on.
    fn refused(&self, ctx: &Ctx, e: ApiError) -> ApiError {
        let (key, team) = ctx.key.as_ref().map_or(("", ""), |k| {
            (k.id.as_str(), k.team.as_deref().unwrap_or(""))
        });
        let (level, reason) = e.code.split_once('_').unwrap_or(("", &e.code));
        self.accounts.metrics.refused(reason, level, key, team);
        e
    }

    /// Runs the exchange as a subrequest and streams its response to the client, or with `hold`,
    /// writes it once it is whole. If the client goes away, the subrequest is dropped, which
    /// closes the upstream connection.
    ///
    /// Pingora does not mark the end of a response that the subrequest's own phases wrote (an
    /// error from `fail_to_proxy`), so the end is also taken to be the subrequest finishing.
    async fn run_subrequest(
        &self,
        session: &mut Session,
        exchange: Exchange,
        hold: bool,
    ) -> Result<()> {
        let outcome = exchange.outcome.clone();
        let spawner = session
            .subrequest_spawner
            .as_ref()
            .ok_or_else(|| internal("subrequests are not enabled"))?;
        let sub_ctx = SubrequestCtx::builder()
            .body_mode(BodyMode::NoBody)
            .user_ctx(Box::new(exchange))
            .build();
        let (prepared, mut handle) =
            spawner.create_subrequest(session.downstream_session.as_ref(), sub_ctx);
        let run = prepared.run();
        tokio::pin!(run);
        let mut running = true;
        let mut held = Held::default();
        let mut header_sent = false;
        loop {
            let task = tokio::select! {
                task = handle.rx.recv() => task,
                _ = &mut run, if running => {
                    running = false;
                    continue;
                }
                _ = session.downstream_session.read_body_or_idle(true) => {
                    return Err(Error::explain(ErrorType::ConnectionClosed, "client went away"));
                }
            };
            let Some(task) = task else { break };
            if hold {
                if held.take(task) {
                    break;
                }
                continue;
            }
            header_sent |= matches!(task, HttpTask::Header(..));
            if session.write_response_tasks(vec![task]).await? {
                if running {
                    run.await;
                }
                return Ok(());
            }
        }
        if hold {
            let (status, failed) = {
                let mut o = lock(&outcome);
                (o.status, o.failed.take())
            };
            if let Some((status, body)) = failed {
                held.header = ResponseHeader::build(status, Some(2)).ok().map(Box::new);
                held.body = BytesMut::from(&body[..]);
                if let Some(h) = held.header.as_mut() {
                    h.insert_header(header::CONTENT_TYPE, "application/json")?;
                }
                return held.write(session, None).await;
            }
            return held.write(session, status).await;
        }
        if !header_sent {
            return Err(internal("the upstream exchange ended without an answer"));
        }
        // The subrequest ended its answer itself (an error event at the end of a stream): end
        // the body. If it was cut short, closing the connection tells the client.
        session.set_keepalive(None);
        session
            .downstream_session
            .write_response_body(Bytes::new(), true)
            .await
    }
}

/// A whole answer gathered from a subrequest before anything is sent.
#[derive(Default)]
struct Held {
    header: Option<Box<ResponseHeader>>,
    body: BytesMut,
}

impl Held {
    /// Takes the next task; true at the end of the answer.
    fn take(&mut self, task: HttpTask) -> bool {
        let end = task.is_end();
        match task {
            HttpTask::Header(h, _) => self.header = Some(h),
            HttpTask::Body(Some(b), _) => self.body.extend_from_slice(&b),
            _ => {}
        }
        end
    }

    /// Writes the answer, framed by its real length; with `status`, under that status. A
    /// success with no body is no answer at all.
    async fn write(self, session: &mut Session, status: Option<u16>) -> Result<()> {
        let Some(mut header) = self.header else {
            return Err(internal("the upstream exchange ended without an answer"));
        };
        let mut body = self.body.freeze();
        if let Some(status) = status {
            header.set_status(status)?;
        } else if header.status.is_success() && body.is_empty() {
            header.set_status(502)?;
            body = Bytes::from(untranslatable(
                "the answer is empty",
                session.req_header().uri.path().starts_with("/v1/messages"),
            ));
            header.insert_header(header::CONTENT_TYPE, "application/json")?;
        }
        header.remove_header(&header::TRANSFER_ENCODING);
        header.insert_header(header::CONTENT_LENGTH, body.len())?;
        session.write_response_header(header, false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Reads the whole request body, refusing one over `max_body_bytes` or slower than
/// `body_timeout`. Pingora keeps a copy for replay on retries while the body fits its retry
/// buffer.
async fn read_body(
    session: &mut Session,
    gw: &GatewayConfig,
) -> Result<std::result::Result<Bytes, ApiError>> {
    let limit = gw.max_body_bytes;
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than {limit} bytes."),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        session.set_keepalive(None);
        return Ok(Err(too_large()));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.downstream_session.write_continue_response().await?;
    }
    session.enable_retry_buffering();
    let mut body = BytesMut::with_capacity(declared.unwrap_or(16 * 1024));
    let slow = || {
        ApiError::new(
            408,
            "invalid_request_error",
            "request_timeout",
            "The request body did not arrive in time.",
        )
    };
    let deadline = tokio::time::Instant::now() + gw.body_timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, session.read_request_body()).await;
        let Ok(read) = read else {
            session.set_keepalive(None);
            return Ok(Err(slow()));
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return match e.etype() {
                    ErrorType::ReadTimedout => Ok(Err(slow())),
                    ErrorType::ConnectionClosed | ErrorType::ReadError => Err(e),
                    _ => Ok(Err(ApiError::bad_request(
                        "invalid_body",
                        format!("The request body could not be read: {}", e.etype().as_str()),
                    ))),
                };
            }
        };
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(Err(too_large()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body.freeze()))
}

/// The SSE event that ends a stream which broke off, in the client's dialect.
fn stream_error_event(message: &str, anthropic: bool) -> Bytes {
    let e = ApiError::upstream(502, "upstream_stream_error", message);
    let mut event = BytesMut::from(if anthropic {
        &b"event: error\ndata: "[..]
    } else {
        &b"data: "[..]
    });
    event.extend_from_slice(&e.body_for(anthropic));
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

/// The body that replaces an upstream answer that could not be translated.
fn untranslatable(why: &str, anthropic: bool) -> Vec<u8> {
    let e = ApiError::upstream(
        502,
        "untranslatable_response",
        format!("The upstream answer could not be translated: {why}"),
    );
    e.body_for(anthropic).to_vec()
}

/// The status a transport failure counts as.
fn transport_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        ErrorType::HTTPStatus(s) => *s,
        _ => 502,
    }
}

/// What went wrong with `e`, in a few words.
fn describe(e: &Error) -> String {
    match (&e.context, &e.cause) {
        (Some(context), _) => context.as_str().to_string(),
        (None, Some(cause)) => format!("{} ({cause})", e.etype().as_str()),
        (None, None) => e.etype().as_str().to_string(),
    }
}

/// The error for a client whose every attempt failed: the first attempt's status, and a list of
/// what each attempt met.
fn upstream_failure(e: &Error, ex: &Exchange) -> ApiError {
    let attempted = !ex.failures.is_empty();
    // Every target was passed over (circuit open, keys cooling, no such API).
    let all_skipped = !attempted && !ex.skipped.is_empty();
    let unsupported = all_skipped && ex.unsuitable == ex.skipped.len();
    let (status, code) = match ex.primary_status {
        Some(s) if ex.primary_http => (s, "upstream_error"),
        _ if unsupported => (400, "unsupported_by_provider"),
        _ if all_skipped => (503, "no_available_target"),
        Some(s) => (
            s,
            if s == 504 {
                "upstream_timeout"
            } else {
                "upstream_unavailable"
            },
        ),
        None if ex.expired().is_some() => (504, "upstream_timeout"),
        None => match transport_status(e) {
            504 => (504, "upstream_timeout"),
            s => (s, "upstream_unavailable"),
        },
    };
    let mut lines = ex.failures.clone();
    lines.extend(ex.skipped.iter().cloned());
    let message = match (attempted, lines.is_empty()) {
        (_, true) => format!(
            "The upstream failed: {}.",
            ex.expired().unwrap_or_else(|| describe(e))
        ),
        (false, false) => format!("No target could be tried: {}.", lines.join("; ")),
        (true, false) => {
            let n = ex.failures.len();
            let plural = if n == 1 { "" } else { "s" };
            format!("{n} attempt{plural} failed: {}.", lines.join("; "))
        }
    };
    ApiError::upstream(status, code, message)
}

fn is_sse(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

fn exchange(ctx: &mut Ctx) -> Result<&mut Exchange> {
    ctx.exchange
        .as_deref_mut()
        .ok_or_else(|| internal("no exchange"))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &Ctx) -> bool {
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(sub) = session.subrequest_ctx.as_mut() {
            let slot = sub
                .user_ctx_mut()
                .ok_or_else(|| internal("subrequest without an exchange"))?;
            let taken = std::mem::replace(slot, Box::new(()));
            let exchange = taken
                .downcast::<Exchange>()
                .map_err(|_| internal("subrequest without an exchange"))?;
            ctx.subrequest = true;
            ctx.request_id = exchange.request_id.clone();
            ctx.exchange = Some(exchange);
            return Ok(false);
        }
        ctx.started = Some(Instant::now());
        ctx.in_flight = Some(self.drain.enter());
        ctx.log = Some(self.log.clone());
        ctx.accounts = Some(self.accounts.clone());
        ctx.request_id = request_id(session);
        ctx.method = session.req_header().method.to_string();
        ctx.path = session.req_header().uri.path().to_string();
        session.set_keepalive(Some(KEEPALIVE_SECS));
        match self.serve(session, ctx).await? {
            Ok(Next::Done) => Ok(true),
            Ok(Next::Proxy) => Ok(false),
            Err(e) => {
                ctx.error = Some(e.code.to_string());
                let extra: Vec<(&str, &str)> = ctx
                    .refusal_headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                respond_error(session, &ctx.request_id, &e, &extra).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let ex = exchange(ctx)?;
        if let Some(wait) = ex.backoff.take() {
            tokio::time::sleep(wait).await;
        }
        loop {
            if !ex.next_attempt() {
                return Err(Error::explain(
                    ErrorType::ConnectNoRoute,
                    "no target left to try",
                ));
            }
            match ex.prepare_body() {
                Ok(()) => break,
                Err(why) => {
                    ex.failed(Failure::Unsuitable, 400, true, &why, None);
                }
            }
        }
        let (target, p) = ex.target().ok_or_else(|| internal("no target"))?;
        let addr = if ex.request.stream {
            p.relay.peer_addr()
        } else {
            p.addr
        };
        let addr = addr
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "provider has no address"))?;
        let mut peer = HttpPeer::new(addr, p.base.tls, p.base.host.clone());
        let t = &p.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        peer.options.write_timeout = Some(t.write);
        if ex.request.stream {
            // The relay enforces both deadlines; Pingora's bound only backs it up.
            peer.options.custom_l4 = Some(p.relay.clone());
            peer.options.read_timeout = Some(t.first_byte.max(t.idle) + RELAY_SLACK);
            // Each provider's relayed connections in a pool group of their own.
            peer.group_key = RELAYED + target.provider as u64;
        } else {
            // A whole answer arrives at once: its first byte is what takes time.
            peer.options.read_timeout = Some(t.first_byte);
        }
        let (provider, model) = (p.name.clone(), target.model.clone());
        ex.attempt_started = Instant::now();
        let mut o = lock(&ex.outcome);
        o.attempts += 1;
        o.provider = Some(provider);
        o.upstream_model = Some(model);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ex = exchange(ctx)?;
        if ex.request.stream {
            let (_, p) = ex.target().ok_or_else(|| internal("no target"))?;
            ex.relay = p.relay.state(fd);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ex = exchange(ctx)?;
        let (target, p) = ex.target().ok_or_else(|| internal("no target"))?;
        let (model, p) = (target.model.clone(), p.clone());
        req.set_method(Method::POST);
        let uri = p
            .path(ex.upstream, &model)
            .parse()
            .map_err(|_| internal("bad upstream path"))?;
        req.set_uri(uri);
        for name in CLIENT_ONLY {
            req.remove_header(name);
        }
        let tollgate: Vec<_> = req
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-tollgate-"))
            .cloned()
            .collect();
        for name in tollgate {
            req.remove_header(&name);
        }
        req.remove_header(&header::TRANSFER_ENCODING);
        if let Some(k) = ex.key.and_then(|k| p.keys.get(k)) {
            req.insert_header(p.auth_header(), k.header.clone())?;
        }
        req.insert_header(header::HOST, p.host_header.clone())?;
        req.insert_header(header::CONTENT_TYPE, "application/json")?;
        req.insert_header(header::CONTENT_LENGTH, ex.body.len())?;
        req.insert_header(header::ACCEPT_ENCODING, "identity")?;
        req.insert_header("x-request-id", &ex.request_id)?;
        if ex.upstream == Endpoint::Messages {
            if req.headers.get("anthropic-version").is_none() {
                req.insert_header("anthropic-version", anthropic::VERSION)?;
            }
        } else {
            req.remove_header("anthropic-version");
            req.remove_header("anthropic-beta");
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ex = exchange(ctx)?;
        *body = Some(if end { ex.body.clone() } else { Bytes::new() });
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        log::warn!("{}: cannot connect to {peer}: {e}", ctx.request_id);
        if let Some(ex) = ctx.exchange.as_deref_mut() {
            let what = format!("cannot connect ({})", describe(&e));
            e.set_retry(ex.failed(Failure::Transient, transport_status(&e), false, &what, None));
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let Some(ex) = ctx.exchange.as_deref_mut() else {
            e.set_retry(false);
            return e;
        };
        if e.esource() == &ErrorSource::Downstream {
            // The client left: never retry.
            e.set_retry(false);
        } else if ex.response_started {
            // Bytes may have reached the client: never retry, but say what happened.
            let (status, what) = match ex.expired() {
                Some(what) => (504, what),
                None => (transport_status(&e), describe(&e)),
            };
            ex.failed(Failure::Transient, status, false, &what, None);
            e.set_retry(false);
        } else if std::mem::take(&mut ex.failure_recorded) {
            // `response_filter` refused the answer and recorded why.
            e.set_retry(true);
        } else {
            // A reset on a pooled connection may mean the upstream had closed it, or that it
            // took the request; either way it counts as one of the target's tries.
            log::warn!("{}: upstream {peer} failed: {e}", ctx.request_id);
            let (status, what) = match ex.expired() {
                Some(what) => (504, what),
                None => (transport_status(&e), describe(&e)),
            };
            let retry = ex.failed(Failure::Transient, status, false, &what, None);
            e.set_retry(retry);
        }
        e
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(ex) = ctx.exchange.as_deref_mut() else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        let content_type = resp
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let json = content_type.contains("json");
        let failure = match status {
            429 => Some(Failure::RateLimited),
            401 | 403 => Some(Failure::KeyRejected),
            // A redirect is not an answer; it is never passed on for a client to follow.
            300..=399 | 408 | 500..=599 => Some(Failure::Transient),
            // An HTML page or plain text is not an API answer.
            400.. if !json => Some(Failure::Transient),
            _ => None,
        };
        if let Some(failure) = failure {
            let retry_after = resp
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let what = if (300..400).contains(&status) {
                format!("answered {status}, a redirect")
            } else if json {
                format!("answered {status}")
            } else {
                format!("answered {status} with a non-JSON body ({content_type})")
            };
            let counted = if status < 400 { 502 } else { status };
            ex.failed(failure, counted, true, &what, retry_after);
            ex.failure_recorded = true;
            return Err(Error::explain(ErrorType::HTTPStatus(status), what));
        }
        ex.answered();
        ex.response_started = true;
        let client_anthropic = ex.request.endpoint.anthropic();
        let upstream_anthropic = ex.upstream == Endpoint::Messages;
        let sse = is_sse(resp);
        ex.mode = match (client_anthropic, upstream_anthropic, sse, status < 300) {
            (false, false, true, _) => ResponseBody::Sse(SseFilter::new(!ex.request.wants_usage)),
            (true, true, true, _) => ResponseBody::Sse(SseFilter::anthropic()),
            (false, true, true, _) => ResponseBody::Translated(Box::new(
                MessagesStreamToChat::new(&ex.request.model, ex.request.wants_usage),
            )),
            (true, false, true, _) => {
                ResponseBody::Translated(Box::new(ChatStreamToMessages::new(&ex.request.model)))
            }
            (a, b, false, true) if a == b => ResponseBody::Json(BytesMut::new()),
            (false, true, false, true) => {
                ResponseBody::Translate(BytesMut::new(), Translation::MessagesToChat)
            }
            (true, false, false, true) => {
                ResponseBody::Translate(BytesMut::new(), Translation::ChatToMessages)
            }
            (false, true, false, false) => {
                ResponseBody::Translate(BytesMut::new(), Translation::AnthropicError(status))
            }
            (true, false, false, false) => {
                ResponseBody::Translate(BytesMut::new(), Translation::OpenAiError(status))
            }
            (a, b, false, false) if a == b && status >= 400 => {
                ResponseBody::Translate(BytesMut::new(), Translation::Error(status))
            }
            _ => ResponseBody::Pass,
        };
        let storable = status == 200
            && match &ex.mode {
                ResponseBody::Json(_) | ResponseBody::Sse(_) | ResponseBody::Translated(_) => true,
                ResponseBody::Translate(_, how) => {
                    matches!(
                        how,
                        Translation::MessagesToChat | Translation::ChatToMessages
                    )
                }
                ResponseBody::Pass => false,
            };
        if !storable {
            ex.fill = None;
        }
        if !matches!(ex.mode, ResponseBody::Json(_) | ResponseBody::Pass) {
            // The body changes length: frame it by chunks.
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        if matches!(ex.mode, ResponseBody::Translated(_)) {
            resp.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
        }
        let (target, p) = ex.target().ok_or_else(|| internal("no target"))?;
        let (id, provider) = (target.id.clone(), p.name.clone());
        let attempts = {
            let mut o = ex.outcome();
            o.ttfb = Some(ex.started.elapsed());
            if status >= 400 {
                o.error = Some("upstream_error".into());
            }
            o.attempts
        };
        ex.answered_ok = status < 400;
        resp.insert_header("x-request-id", &ex.request_id)?;
        resp.insert_header("x-tollgate-provider", provider)?;
        resp.insert_header("x-tollgate-model", id)?;
        resp.insert_header("x-tollgate-attempts", attempts)?;
        for (k, v) in &ex.headers {
            resp.insert_header(k.clone(), v)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(ex) = ctx.exchange.as_deref_mut() else {
            return Ok(None);
        };
        if !ex.request.stream && !end {
            let limit = ex.target().map(|(_, p)| p.timeouts.first_byte);
            if limit.is_some_and(|l| ex.attempt_started.elapsed() > l) {
                let ms = limit.map_or(0, |l| l.as_millis());
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    format!("the whole answer did not arrive within {ms} ms"),
                ));
            }
        }
        let usage = match &mut ex.mode {
            ResponseBody::Pass => None,
            ResponseBody::Json(buf) => {
                if let Some(b) = body.as_ref() {
                    if buf.len() + b.len() <= ACCOUNTING_LIMIT {
                        buf.extend_from_slice(b);
                    }
                }
                match (end, ex.request.endpoint.anthropic()) {
                    (false, _) => None,
                    (true, false) => Usage::from_body(buf),
                    (true, true) => Usage::from_anthropic_body(buf),
                }
            }
            ResponseBody::Translated(t) => {
                let mut out = body.take().map(|b| t.push(&b)).unwrap_or_default();
                if end {
                    out.extend(t.finish());
                    if !t.complete() && !t.error() {
                        let anthropic = ex.request.endpoint.anthropic();
                        out.extend_from_slice(&stream_error_event(
                            "the upstream stream ended early",
                            anthropic,
                        ));
                        lock(&ex.outcome).error = Some("upstream_stream_incomplete".into());
                    }
                }
                ex.generated += crate::sse::generated_chars(&out);
                *body = Some(out.into());
                if t.error() {
                    lock(&ex.outcome).error = Some("upstream_stream_error".into());
                }
                t.usage().map(Usage::from_counts)
            }
            ResponseBody::Translate(buf, how) => {
                if let Some(b) = body.take() {
                    buf.extend_from_slice(&b);
                }
                if !end {
                    *body = Some(Bytes::new());
                    None
                } else {
                    let model = &ex.request.model;
                    let (out, usage) = match *how {
                        Translation::MessagesToChat => {
                            match anthropic::messages_to_chat(buf, model) {
                                Ok(out) => {
                                    let usage = Usage::from_body(&out);
                                    (out, usage)
                                }
                                Err(why) => {
                                    lock(&ex.outcome).status = Some(502);
                                    (untranslatable(&why, false), None)
                                }
                            }
                        }
                        Translation::ChatToMessages => {
                            match anthropic::chat_to_messages_response(buf, model) {
                                Ok(out) => (out, Usage::from_body(buf)),
                                Err(why) => {
                                    lock(&ex.outcome).status = Some(502);
                                    (untranslatable(&why, true), None)
                                }
                            }
                        }
                        Translation::AnthropicError(status) => {
                            let (to, out) = anthropic::error_to_openai(status, buf);
                            if to != status {
                                lock(&ex.outcome).status = Some(to);
                            }
                            (out, None)
                        }
                        Translation::OpenAiError(status) => {
                            let (to, out) = anthropic::openai_error_to_anthropic(status, buf);
                            if to != status {
                                lock(&ex.outcome).status = Some(to);
                            }
                            (out, None)
                        }
                        Translation::Error(status) => {
                            // An error in the client's own dialect passes as it is, unless it is
                            // no error body at all.
                            let out = match serde_json::from_slice::<serde::de::IgnoredAny>(buf) {
                                Ok(_) if buf.trim_ascii_start().starts_with(b"{") => buf.to_vec(),
                                _ => ApiError::upstream(
                                    status,
                                    "upstream_error",
                                    format!("The upstream provider answered HTTP {status}."),
                                )
                                .body_for(ex.request.endpoint.anthropic())
                                .to_vec(),
                            };
                            (out, None)
                        }
                    };
                    *body = Some(out.into());
                    usage
                }
            }
            ResponseBody::Sse(filter) => {
                let mut out = body.take().map_or_else(Bytes::new, |b| filter.push(b));
                if end {
                    let rest = filter.finish();
                    let mut joined = BytesMut::from(&out[..]);
                    if filter.done || filter.error {
                        // A last event the upstream did not end with a blank line.
                        if !rest.is_empty() {
                            joined.extend_from_slice(&rest);
                            joined.extend_from_slice(b"\n\n");
                        }
                    } else {
                        // The upstream ended the stream without its closing event: a part of
                        // an event left over is dropped, and the client is told.
                        let anthropic = ex.request.endpoint.anthropic();
                        joined.extend_from_slice(&stream_error_event(
                            "the upstream stream ended early",
                            anthropic,
                        ));
                        lock(&ex.outcome).error = Some("upstream_stream_incomplete".into());
                    }
                    out = joined.freeze();
                }
                *body = Some(out);
                if filter.error {
                    lock(&ex.outcome).error = Some("upstream_stream_error".into());
                }
                ex.generated = filter.generated;
                filter.usage
            }
        };
        if usage.is_some() {
            ex.outcome().usage = usage;
        }
        if let (Some(fill), Some(b)) = (ex.fill.as_mut(), body.as_ref()) {
            fill.capture(b);
        }
        if end {
            if let Some(fill) = ex.fill.take() {
                // Only an answer that completed without error is stored.
                let o = ex.outcome();
                if ex.answered_ok && o.error.is_none() && o.status.is_none() {
                    let provider = o.provider.clone().unwrap_or_default();
                    let model = o.upstream_model.clone().unwrap_or_default();
                    let usage = o.usage.unwrap_or_default();
                    drop(o);
                    let target = ex.target().map(|(t, _)| t.id.clone()).unwrap_or_default();
                    fill.store(usage, &provider, &model, &target);
                }
            }
            ex.settle();
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let client_gone = e.esource() == &ErrorSource::Downstream
            || (matches!(e.etype(), ErrorType::ConnectionClosed)
                && e.esource() != &ErrorSource::Upstream);
        let gone = FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
        if client_gone {
            if !ctx.subrequest {
                ctx.error = Some("client_closed".into());
            }
            return gone;
        }
        let api = match ctx.exchange.as_deref() {
            Some(ex) => {
                let api = upstream_failure(e, ex);
                ex.outcome().error = Some(api.code.to_string());
                api
            }
            None => {
                let api = ApiError::new(
                    500,
                    "server_error",
                    "internal_error",
                    format!("The gateway failed: {e}"),
                );
                ctx.error = Some(api.code.to_string());
                api
            }
        };
        // Settled before the client hears of the failure, so its next request sees the budget.
        if let Some(ex) = ctx.exchange.as_deref_mut() {
            ex.settle();
        }
        let written = match session.response_written() {
            None => {
                // Pingora does not reuse a client connection after a failed upstream exchange:
                // say so in the answer.
                session.set_keepalive(None);
                // The exchange's own headers (rate limits, cache status) go with the error too.
                let mut extra: Vec<(&str, &str)> = ctx
                    .exchange
                    .as_deref()
                    .map(|ex| {
                        ex.headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect()
                    })
                    .unwrap_or_default();
                let retry_after = ctx
                    .exchange
                    .as_deref()
                    .and_then(|ex| ex.retry_after)
                    .map(|d| d.as_secs_f64().ceil().max(1.0).to_string());
                if let Some(secs) = retry_after.as_deref().filter(|_| api.status == 429) {
                    extra.push(("retry-after", secs));
                }
                respond_error(session, &ctx.request_id, &api, &extra).await
            }
            // A stream already under way ends with an error event.
            Some(resp) if is_sse(resp) => {
                let anthropic = ctx
                    .exchange
                    .as_deref()
                    .is_some_and(|ex| ex.request.endpoint.anthropic());
                let event = stream_error_event(&api.message, anthropic);
                session.write_response_body(Some(event), true).await
            }
            Some(_) => {
                // A held answer can still be replaced by the error.
                if let Some(ex) = ctx.exchange.as_deref() {
                    let body = api.body_for(ex.request.endpoint.anthropic());
                    ex.outcome().failed = Some((api.status, body));
                }
                return gone;
            }
        };
        if let Err(w) = written {
            log::debug!("could not send the error response: {w}");
        }
        FailToProxy {
            error_code: api.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(log) = ctx.log.take() else { return };
        let mut r = record(ctx);
        r.status = session.response_written().map_or(0, |r| r.status.as_u16());
        if r.error.is_none() {
            r.error = e.map(|e| e.etype().as_str().to_string());
        }
        finish(ctx, &mut r);
        log.write(r);
    }
}
