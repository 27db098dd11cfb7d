//! The request pipeline, in Pingora's `ProxyHttp` phases.
//!
//! A client request runs twice through these phases:
//! 1. As the *client* request: `request_filter` answers local endpoints, reads and validates the
//!    body (any size up to the limit), resolves the route, then runs the upstream exchange as a
//!    Pingora subrequest and streams its response tasks to the client.
//! 2. As the *upstream exchange* (the subrequest, whose `CTX` carries an [`Exchange`]):
//!    `upstream_peer` picks the target and key, `upstream_request_filter` addresses and
//!    authenticates it, `request_body_filter` supplies the rewritten body on every attempt,
//!    `fail_to_connect`/`error_while_proxy` move on to the next target, and `response_filter`
//!    with `response_body_filter` account tokens.
//!
//! The subrequest has no body of its own, so Pingora asks `request_body_filter` for it on each
//! attempt: the body is never held in Pingora's 64 KiB retry buffer. README's design notes say why.

use crate::api::{ClientRequest, Endpoint};
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::providers::Provider;
use crate::routing::{Route, Router};
use crate::sse::SseFilter;
use crate::telemetry::{AccessLog, Record, Usage};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
const CLIENT_ONLY: [&str; 5] = [
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "proxy-authorization",
];
/// How long an idle client connection is kept open.
const KEEPALIVE_SECS: u64 = 60;
/// Largest non-stream response body read for usage accounting; larger ones pass unread.
const ACCOUNTING_LIMIT: usize = 16 * 1024 * 1024;

/// What the exchange learned, shared with the client request for its access-log line.
#[derive(Debug, Default)]
struct Outcome {
    provider: Option<String>,
    upstream_model: Option<String>,
    attempts: u32,
    ttfb: Option<Duration>,
    usage: Option<Usage>,
    error: Option<String>,
    /// The JSON error that replaces a non-JSON upstream error, for when the upstream sent no
    /// body at all (then `response_body_filter` never runs and the client request adds it).
    error_body: Option<Bytes>,
}

/// How the response body is handled.
enum ResponseBody {
    /// JSON, kept (up to a limit) to read usage at the end.
    Json(BytesMut),
    Sse(SseFilter),
    /// A non-JSON error body, replaced by an OpenAI-style error.
    Rewrite(BytesMut, u16),
    Pass,
}

/// The upstream exchange: one client request's journey through its targets.
pub struct Exchange {
    live: Arc<Live>,
    route: Arc<Route>,
    request: ClientRequest,
    request_id: String,
    plan: Vec<usize>,
    pos: usize,
    tried_keys: u64,
    key: Option<usize>,
    body: Bytes,
    body_model: String,
    started: Instant,
    response_started: bool,
    reuse_retried: bool,
    mode: ResponseBody,
    outcome: Arc<Mutex<Outcome>>,
}

impl Exchange {
    fn target(&self) -> Option<(&crate::routing::Target, &Arc<Provider>)> {
        let t = self.route.targets.get(*self.plan.get(self.pos)?)?;
        Some((t, self.live.providers.get(t.provider)?))
    }

    /// Moves to the next untried key of the current target, or to the next target.
    fn next_attempt(&mut self) -> bool {
        while let Some((_, p)) = self.target() {
            let pick = if p.keys.is_empty() {
                (self.tried_keys == 0).then_some(0)
            } else {
                p.pick_key(self.tried_keys, rand::random::<f64>())
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

    fn skip_target(&mut self) {
        self.pos += 1;
        self.tried_keys = 0;
    }

    fn has_next_target(&self) -> bool {
        self.pos + 1 < self.plan.len()
    }

    fn outcome(&self) -> MutexGuard<'_, Outcome> {
        lock(&self.outcome)
    }
}

#[derive(Default)]
pub struct Ctx {
    started: Option<Instant>,
    request_id: String,
    model: Option<String>,
    stream: bool,
    error: Option<String>,
    outcome: Option<Arc<Mutex<Outcome>>>,
    /// Set in the subrequest only.
    exchange: Option<Box<Exchange>>,
    in_flight: Option<InFlight>,
    /// Whether the access-log line was written; a request dropped before `logging` (at
    /// shutdown) writes its line when its `Ctx` drops.
    logged: bool,
    log: Option<AccessLog>,
    method: String,
    path: String,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let (false, Some(log)) = (self.logged, self.log.take()) {
            let mut r = record_base(self);
            r.error = Some("interrupted".into());
            log.write(r);
        }
    }
}

fn record_base(ctx: &Ctx) -> Record {
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

/// The outcome lock is per request and never held across an await; a poisoned one is still usable.
fn lock(outcome: &Mutex<Outcome>) -> MutexGuard<'_, Outcome> {
    outcome.lock().unwrap_or_else(|e| e.into_inner())
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
    ctx: &Ctx,
    status: u16,
    body: Bytes,
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + extra.len()))?;
    h.insert_header(header::CONTENT_TYPE, "application/json")?;
    h.insert_header(header::CONTENT_LENGTH, body.len())?;
    h.insert_header("x-request-id", &ctx.request_id)?;
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

async fn respond_error(session: &mut Session, ctx: &mut Ctx, e: ApiError) -> Result<()> {
    ctx.error = Some(e.code.to_string());
    let allow = match Endpoint::from_path(session.req_header().uri.path()) {
        Some(_) => "POST",
        None => "GET, HEAD",
    };
    let extra: &[(&str, &str)] = if e.status == 405 {
        &[("allow", allow)]
    } else {
        &[]
    };
    respond(session, ctx, e.status, e.body(), extra).await
}

fn method_not_allowed(path: &str) -> ApiError {
    ApiError::new(
        405,
        "invalid_request_error",
        "method_not_allowed",
        format!("Method not allowed for {path}."),
    )
}

impl Gateway {
    /// Serves the client request; an `ApiError` is the client's fault or a refusal.
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<std::result::Result<(), ApiError>> {
        let live = self.live.load_full();
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let get = method == Method::GET || method == Method::HEAD;
        let local: Option<Bytes> = match path.as_str() {
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
                return Ok(Err(method_not_allowed(&path)));
            }
            respond(session, ctx, 200, body, &[]).await?;
            return Ok(Ok(()));
        }
        let Some(endpoint) = Endpoint::from_path(&path) else {
            return Ok(Err(ApiError::not_found(format!("Unknown path {path}."))));
        };
        if method != Method::POST {
            return Ok(Err(method_not_allowed(&path)));
        }

        let body = match read_body(session, live.gateway.max_body_bytes).await? {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let request = match ClientRequest::parse(endpoint, &body) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        drop(body);
        ctx.model = Some(request.model.clone());
        ctx.stream = request.stream;
        let Some(route) = live.router.lookup(&request.model).cloned() else {
            return Ok(Err(ApiError::model_not_found(&request.model)));
        };
        let plan = route.plan(rand::random::<f64>());
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
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        ctx.outcome = Some(outcome.clone());
        let exchange = Exchange {
            live: live.clone(),
            route,
            request,
            request_id: ctx.request_id.clone(),
            plan,
            pos: 0,
            tried_keys: 0,
            key: None,
            body: Bytes::new(),
            body_model: String::new(),
            started: ctx.started.unwrap_or_else(Instant::now),
            response_started: false,
            reuse_retried: false,
            mode: ResponseBody::Pass,
            outcome,
        };
        let outcome = exchange.outcome.clone();
        self.exchange(session, exchange, &outcome).await?;
        Ok(Ok(()))
    }

    /// Runs the upstream exchange as a subrequest and streams its response to the client. If the
    /// client goes away, the subrequest is dropped, which closes the upstream connection.
    async fn exchange(
        &self,
        session: &mut Session,
        exchange: Exchange,
        outcome: &Mutex<Outcome>,
    ) -> Result<()> {
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
        let mut finished = false;
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
            let tasks = match task {
                HttpTask::Header(mut h, true) => {
                    let body = lock(outcome).error_body.take();
                    match body {
                        Some(body) => {
                            h.insert_header(header::CONTENT_LENGTH, body.len())?;
                            vec![HttpTask::Header(h, false), HttpTask::Body(Some(body), true)]
                        }
                        None => vec![HttpTask::Header(h, true)],
                    }
                }
                HttpTask::Done => match lock(outcome).error_body.take() {
                    Some(body) => vec![HttpTask::Body(Some(body), true)],
                    None => vec![HttpTask::Done],
                },
                task => vec![task],
            };
            if session.write_response_tasks(tasks).await? {
                finished = true;
                break;
            }
        }
        if running {
            run.await;
        }
        if finished {
            return Ok(());
        }
        // The exchange broke off mid-response. A stream ends with an error event; anything else
        // is closed so that it cannot look complete.
        let code = lock(outcome)
            .error
            .get_or_insert_with(|| "upstream_ended_early".into())
            .clone();
        let is_sse = session.response_written().is_some_and(|r| {
            r.headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        });
        if is_sse {
            let e = ApiError::upstream(
                502,
                "upstream_stream_error",
                format!("The upstream stream broke off ({code})."),
            );
            let mut event = BytesMut::from(&b"data: "[..]);
            event.extend_from_slice(&e.body());
            event.extend_from_slice(b"\n\n");
            session
                .write_response_body(Some(event.freeze()), true)
                .await?;
            return Ok(());
        }
        session.set_keepalive(None);
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "the upstream response ended early",
        ))
    }

    fn record(&self, session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
        let mut r = record_base(ctx);
        r.status = session.response_written().map_or(0, |r| r.status.as_u16());
        if r.error.is_none() {
            r.error = e.map(|e| e.etype().as_str().to_string());
        }
        ctx.logged = true;
        self.log.write(r);
    }
}

/// Reads the whole request body, refusing one over `limit` bytes.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Bytes, ApiError>> {
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
    let mut body = BytesMut::with_capacity(declared.unwrap_or(16 * 1024));
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return match e.etype() {
                    ErrorType::ReadTimedout => Ok(Err(ApiError::new(
                        408,
                        "invalid_request_error",
                        "request_timeout",
                        "The request body did not arrive in time.",
                    ))),
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

fn upstream_failure(e: &Error, attempts: u32) -> ApiError {
    let (status, code) = match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (504, "upstream_timeout")
        }
        ErrorType::HTTPStatus(s) if *s >= 400 => (*s, "upstream_error"),
        _ => (502, "upstream_unavailable"),
    };
    let plural = if attempts == 1 { "" } else { "s" };
    ApiError::upstream(
        status,
        code,
        format!("The upstream failed after {attempts} attempt{plural}: {e}"),
    )
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
            ctx.request_id = exchange.request_id.clone();
            ctx.exchange = Some(exchange);
            return Ok(false);
        }
        ctx.started = Some(Instant::now());
        ctx.in_flight = Some(self.drain.enter());
        ctx.log = Some(self.log.clone());
        ctx.request_id = request_id(session);
        ctx.method = session.req_header().method.to_string();
        ctx.path = session.req_header().uri.path().to_string();
        session.set_keepalive(Some(KEEPALIVE_SECS));
        if let Err(e) = self.serve(session, ctx).await? {
            respond_error(session, ctx, e).await?;
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let ex = ctx
            .exchange
            .as_mut()
            .ok_or_else(|| internal("no exchange"))?;
        if !ex.next_attempt() {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "no target left to try",
            ));
        }
        ex.response_started = false;
        ex.mode = ResponseBody::Pass;
        let attempts = {
            let mut o = ex.outcome();
            o.attempts += 1;
            o.attempts
        };
        let (target, p) = ex.target().ok_or_else(|| internal("no target"))?;
        {
            let mut o = lock(&ex.outcome);
            o.provider = Some(p.name.clone());
            o.upstream_model = Some(target.model.clone());
        }
        let addr = p
            .addr
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "provider has no address"))?;
        let mut peer = HttpPeer::new(addr, p.base.tls, p.base.host.clone());
        peer.options.connection_timeout = Some(p.timeouts.connect);
        peer.options.total_connection_timeout = Some(p.timeouts.connect);
        peer.options.read_timeout = Some(p.timeouts.read);
        peer.options.write_timeout = Some(p.timeouts.write);
        log::debug!(
            "{} attempt {attempts}: {} via {}",
            ex.request_id,
            target.id,
            p.name
        );
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ex = ctx
            .exchange
            .as_mut()
            .ok_or_else(|| internal("no exchange"))?;
        let (target, p) = ex.target().ok_or_else(|| internal("no target"))?;
        let (model, p) = (target.model.clone(), p.clone());
        if ex.body_model != model || ex.body.is_empty() {
            ex.body = ex.request.upstream_body(&model);
            ex.body_model = model.clone();
        }
        req.set_method(Method::POST);
        let uri = p
            .path(ex.request.endpoint, &model)
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
        // The gateway already has the whole body; the upstream need not confirm first.
        req.remove_header(&header::EXPECT);
        if let Some(k) = ex.key.and_then(|k| p.keys.get(k)) {
            req.insert_header(p.auth_header(), k.header.clone())?;
        }
        req.insert_header(header::HOST, p.host_header.clone())?;
        req.insert_header(header::CONTENT_TYPE, "application/json")?;
        req.insert_header(header::CONTENT_LENGTH, ex.body.len())?;
        req.insert_header(header::ACCEPT_ENCODING, "identity")?;
        req.insert_header("x-request-id", &ex.request_id)?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ex) = ctx.exchange.as_ref() {
            *body = if end {
                Some(ex.body.clone())
            } else {
                Some(Bytes::new())
            };
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(ex) = ctx.exchange.as_mut() {
            // Another key on the same address would fail the same way: go to the next target.
            let retry = ex.has_next_target();
            ex.skip_target();
            e.set_retry(retry);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let Some(ex) = ctx.exchange.as_mut() else {
            e.set_retry(false);
            return e;
        };
        if ex.response_started {
            // Bytes may have reached the client: never retry.
            e.set_retry(false);
        } else if client_reused && matches!(e.retry, RetryType::ReusedOnly) && !ex.reuse_retried {
            // Most likely a pooled connection that the upstream had closed, so the request never
            // arrived: try the same target once more on a fresh connection.
            ex.reuse_retried = true;
            ex.tried_keys = 0;
            e.set_retry(true);
        } else {
            let retry = ex.has_next_target();
            ex.skip_target();
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
        let Some(ex) = ctx.exchange.as_mut() else {
            return Ok(());
        };
        ex.response_started = true;
        let status = resp.status.as_u16();
        let content_type = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if status >= 400 {
            ex.outcome().error = Some("upstream_error".into());
        }
        ex.mode = if status >= 400 && !content_type.contains("json") {
            resp.insert_header(header::CONTENT_TYPE, "application/json")?;
            let e = ApiError::upstream(
                status,
                "upstream_error",
                format!("The upstream answered {status} with an empty non-JSON body."),
            );
            ex.outcome().error_body = Some(e.body());
            ResponseBody::Rewrite(BytesMut::new(), status)
        } else if content_type.starts_with("text/event-stream") {
            ResponseBody::Sse(SseFilter::new(!ex.request.wants_usage))
        } else if status < 300 {
            ResponseBody::Json(BytesMut::new())
        } else {
            ResponseBody::Pass
        };
        if !matches!(ex.mode, ResponseBody::Pass | ResponseBody::Json(_)) {
            resp.remove_header(&header::CONTENT_LENGTH);
        }
        let (target, p) = ex.target().ok_or_else(|| internal("no target"))?;
        let (id, provider) = (target.id.clone(), p.name.clone());
        let attempts = {
            let mut o = ex.outcome();
            o.ttfb = Some(ex.started.elapsed());
            o.attempts
        };
        resp.insert_header("x-request-id", &ex.request_id)?;
        resp.insert_header("x-tollgate-provider", provider)?;
        resp.insert_header("x-tollgate-model", id)?;
        resp.insert_header("x-tollgate-attempts", attempts)?;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(ex) = ctx.exchange.as_mut() else {
            return Ok(None);
        };
        let mut usage = None;
        match &mut ex.mode {
            ResponseBody::Pass => {}
            ResponseBody::Json(buf) => {
                if let Some(b) = body.as_ref() {
                    if buf.len() + b.len() <= ACCOUNTING_LIMIT {
                        buf.extend_from_slice(b);
                    }
                }
                if end {
                    usage = serde_json::from_slice::<serde_json::Value>(buf)
                        .ok()
                        .and_then(|v| v.get("usage").and_then(Usage::from_openai));
                }
            }
            ResponseBody::Sse(filter) => {
                let mut out = match body.take() {
                    Some(b) => filter.push(b),
                    None => Bytes::new(),
                };
                if end {
                    let rest = filter.finish();
                    if !rest.is_empty() {
                        let mut joined = BytesMut::from(&out[..]);
                        joined.extend_from_slice(&rest);
                        out = joined.freeze();
                    }
                }
                *body = Some(out);
                usage = filter.usage;
                if filter.error {
                    ex.outcome().error = Some("upstream_stream_error".into());
                }
            }
            ResponseBody::Rewrite(buf, status) => {
                if let Some(b) = body.as_ref() {
                    if buf.len() < 512 {
                        buf.extend_from_slice(&b[..b.len().min(512 - buf.len())]);
                    }
                }
                *body = Some(if end {
                    let snippet = String::from_utf8_lossy(buf)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    let e = ApiError::upstream(
                        *status,
                        "upstream_error",
                        format!("The upstream answered {status} with a non-JSON body: {snippet}"),
                    );
                    ex.outcome().error_body = None;
                    e.body()
                } else {
                    Bytes::new()
                });
            }
        }
        if usage.is_some() {
            ex.outcome().usage = usage;
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let client_gone = matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        ) && e.esource() != &ErrorSource::Upstream;
        let api = match ctx.exchange.as_ref() {
            Some(ex) => upstream_failure(e, ex.outcome().attempts),
            None if client_gone => {
                ctx.error = Some("client_closed".into());
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            None => ApiError::new(
                500,
                "server_error",
                "internal_error",
                format!("The gateway failed: {e}"),
            ),
        };
        if let Some(ex) = ctx.exchange.as_ref() {
            ex.outcome().error = Some(api.code.to_string());
        }
        let status = api.status;
        if session.response_written().is_none() {
            if let Err(w) = respond_error(session, ctx, api).await {
                log::debug!("could not send the error response: {w}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.exchange.is_none() {
            self.record(session, e, ctx);
        }
    }
}
