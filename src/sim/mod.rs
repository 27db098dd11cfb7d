//! tollgate-sim: a fast, deterministic fake LLM provider for tests, benchmarks and demos.
//!
//! Speaks the OpenAI API (chat completions, completions, embeddings, models, and Azure's
//! deployment paths) and the Anthropic Messages API, plain and SSE, in the real wire shapes.
//! Per-request knobs and faults come from `x-sim-*` headers; `/sim/requests` shows what arrived.

mod anthropic;
mod body;
mod common;
mod conn;
mod history;
mod openai;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};

use body::SimBody;
use common::{key_fault, model_fault, Api, ApiError, Cx, Fault, Knobs, Reply, DEFAULT_MODEL};
use conn::{ConnCtl, SimIo};
use history::{History, Outcome, Record};

/// Simulator settings; the delays and chunk count are defaults that `x-sim-*` headers override.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// Delay before response headers.
    pub latency_ms: u64,
    /// Streams: delay before the first chunk.
    pub ttft_ms: u64,
    /// Streams: number of content chunks.
    pub chunks: usize,
    /// Streams: delay between chunks.
    pub chunk_gap_ms: u64,
    /// Requests kept for `/sim/requests`.
    pub history: usize,
    /// Tokio worker threads (for `spawn_thread` and the binary).
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8089)),
            latency_ms: 0,
            ttft_ms: 0,
            chunks: 4,
            chunk_gap_ms: 0,
            history: 256,
            threads: 1,
        }
    }
}

/// Bytes of a trickled piece and the pause between pieces.
const TRICKLE_PIECE: usize = 16;
const TRICKLE_GAP: Duration = Duration::from_millis(20);

const HTML_502: &str = "<html><body><h1>502 Bad Gateway</h1></body></html>";
const OPENAI_MIDSTREAM: &[u8] = b"data: {\"error\":{\"message\":\"simulated mid-stream failure\",\"type\":\"server_error\",\"code\":\"midstream\"}}\n\n";
const ANTHROPIC_MIDSTREAM: &[u8] = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"simulated mid-stream failure\"}}\n\n";

struct State {
    cfg: SimConfig,
    history: History,
}

/// Serves on `listener` until `shutdown` resolves. Needs a tokio runtime.
pub async fn serve(
    cfg: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let state = Arc::new(State {
        history: History::new(cfg.history),
        cfg,
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(state.clone(), stream));
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                log::warn!("sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Binds `cfg.listen` now, then serves forever on a new thread with its own runtime.
pub fn spawn_thread(cfg: SimConfig) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(cfg.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = if cfg.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads)
            .thread_name("tollgate-sim")
            .enable_all()
            .build()?
    };
    std::thread::Builder::new()
        .name("tollgate-sim".into())
        .spawn(move || {
            runtime.block_on(async move {
                let result = match TcpListener::from_std(listener) {
                    Ok(l) => serve(cfg, l, std::future::pending()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    log::error!("sim: server stopped: {e}");
                }
            })
        })?;
    Ok(addr)
}

async fn serve_conn(state: Arc<State>, stream: TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("sim: TCP_NODELAY failed: {e}");
    }
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(SimIo::new(stream, ctl.clone()));
    let service = service_fn(move |req| handle(state.clone(), ctl.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        log::debug!("sim: connection ended: {e}");
    }
}

/// A parsed request body for one endpoint.
trait Endpoint: DeserializeOwned {
    fn model(&self) -> Option<&str>;

    fn streaming(&self) -> bool {
        false
    }

    fn respond(&self, model: &str, cx: &Cx) -> Result<Reply, ApiError>;
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completions,
    Embeddings,
    Messages,
    CountTokens,
    Models,
}

/// The endpoint for a path, with the Azure deployment name if any.
fn find_endpoint(path: &str) -> Option<(Kind, Option<&str>)> {
    let kind = match path {
        "/v1/chat/completions" => Kind::Chat,
        "/v1/completions" => Kind::Completions,
        "/v1/embeddings" => Kind::Embeddings,
        "/v1/messages" => Kind::Messages,
        "/v1/messages/count_tokens" => Kind::CountTokens,
        "/v1/models" => Kind::Models,
        _ => {
            let rest = path.strip_prefix("/openai/deployments/")?;
            let (deployment, op) = rest.split_once('/')?;
            let kind = match op {
                "chat/completions" => Kind::Chat,
                "completions" => Kind::Completions,
                "embeddings" => Kind::Embeddings,
                _ => return None,
            };
            return (!deployment.is_empty()).then_some((kind, Some(deployment)));
        }
    };
    Some((kind, None))
}

/// A reply plus the fault behind it.
struct Routed {
    api: Api,
    reply: Reply,
    fault: Option<Fault>,
}

impl Routed {
    fn error(api: Api, e: ApiError) -> Routed {
        Routed {
            api,
            reply: e.reply(api),
            fault: None,
        }
    }
}

/// Sets the outcome to `cancelled` if the handler is dropped before it answers.
struct PendingGuard<'a>(&'a Record);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.0.outcome() == Outcome::Pending {
            self.0.set_outcome(Outcome::Cancelled);
        }
    }
}

async fn handle(
    state: Arc<State>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> io::Result<Response<SimBody>> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/sim/requests" {
        return Ok(sim_requests(&state.history, &parts.method));
    }
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let rec = state
        .history
        .record(parts.method, parts.uri, parts.headers, body);
    let _guard = PendingGuard(&rec);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (knobs, routed) = match Knobs::from_headers(&state.cfg, &rec.headers) {
        Ok(knobs) => {
            let cx = Cx {
                knobs: &knobs,
                rec: &rec,
                created,
            };
            let routed = route(&cx);
            (knobs, routed)
        }
        Err(msg) => {
            let api = match find_endpoint(rec.uri.path()) {
                Some((Kind::Messages | Kind::CountTokens, _)) => Api::Anthropic,
                _ => Api::OpenAi,
            };
            let routed = Routed::error(api, ApiError::bad_request(msg));
            (Knobs::defaults(&state.cfg), routed)
        }
    };
    if !knobs.latency.is_zero() {
        tokio::time::sleep(knobs.latency).await;
    }
    respond(routed, &knobs, &rec, &ctl)
}

fn route(cx: &Cx) -> Routed {
    let path = cx.rec.uri.path();
    let Some((kind, deployment)) = find_endpoint(path) else {
        return Routed::error(Api::OpenAi, ApiError::not_found(path));
    };
    let (api, method) = match kind {
        Kind::Messages | Kind::CountTokens => (Api::Anthropic, Method::POST),
        Kind::Models => (Api::OpenAi, Method::GET),
        _ => (Api::OpenAi, Method::POST),
    };
    if cx.rec.method != method {
        return Routed::error(api, ApiError::method_not_allowed(path));
    }
    if let Some(fault) = cx.knobs.fault.filter(|f| f.immediate()) {
        return Routed {
            api,
            reply: fault_reply(fault, api),
            fault: Some(fault),
        };
    }
    match kind {
        Kind::Chat => run::<openai::ChatRequest>(api, deployment, cx),
        Kind::Completions => run::<openai::CompletionRequest>(api, deployment, cx),
        Kind::Embeddings => run::<openai::EmbeddingRequest>(api, deployment, cx),
        Kind::Messages => run::<anthropic::MessagesRequest>(api, deployment, cx),
        Kind::CountTokens => run::<anthropic::CountTokensRequest>(api, deployment, cx),
        Kind::Models => Routed {
            api,
            reply: match cx.knobs.fault {
                Some(Fault::Midstream) => fault_reply(Fault::Midstream, api),
                _ => Reply::Json {
                    status: StatusCode::OK,
                    body: Bytes::from_static(openai::MODELS.as_bytes()),
                    retry_after: false,
                },
            },
            fault: cx.knobs.fault,
        },
    }
}

/// The answer for a fault that replaces the response (`midstream` outside a stream is a 500).
fn fault_reply(fault: Fault, api: Api) -> Reply {
    match fault {
        Fault::Reset => Reply::Reset,
        Fault::Stall => Reply::Stall,
        Fault::Html => Reply::Html,
        f => ApiError::fault(f).reply(api),
    }
}

fn run<E: Endpoint>(api: Api, deployment: Option<&str>, cx: &Cx) -> Routed {
    let req: E = match serde_json::from_slice(&cx.rec.body) {
        Ok(req) => req,
        Err(e) => {
            return Routed::error(
                api,
                ApiError::bad_request(format!("invalid JSON body: {e}")),
            )
        }
    };
    let model = req.model().or(deployment).unwrap_or(DEFAULT_MODEL);
    let fault = cx
        .knobs
        .fault
        .or_else(|| key_fault(&cx.rec.headers))
        .or_else(|| model_fault(model));
    let reply = match fault {
        Some(f) if f.immediate() || (f == Fault::Midstream && !req.streaming()) => {
            fault_reply(f, api)
        }
        _ => req.respond(model, cx).unwrap_or_else(|e| e.reply(api)),
    };
    Routed { api, reply, fault }
}

fn response(status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Cuts `frames` into small pieces for the `trickle` fault.
fn trickle(frames: &[Bytes]) -> Vec<Bytes> {
    let all = Bytes::from(frames.concat());
    (0..all.len())
        .step_by(TRICKLE_PIECE)
        .map(|i| all.slice(i..all.len().min(i + TRICKLE_PIECE)))
        .collect()
}

fn respond(
    routed: Routed,
    knobs: &Knobs,
    rec: &Arc<Record>,
    ctl: &ConnCtl,
) -> io::Result<Response<SimBody>> {
    let Routed { api, reply, fault } = routed;
    let done = fault.map_or(Outcome::Ok, Outcome::Fault);
    let trickled = fault == Some(Fault::Trickle);
    match reply {
        Reply::Reset => {
            rec.set_outcome(done);
            ctl.reset();
            Err(io::Error::other("simulated connection reset"))
        }
        Reply::Stall => {
            rec.set_outcome(done);
            ctl.stall();
            Err(io::Error::other("simulated stall"))
        }
        Reply::Html => {
            rec.set_outcome(done);
            let body = SimBody::full(HTML_502);
            Ok(response(StatusCode::BAD_GATEWAY, "text/html", body))
        }
        Reply::Json {
            status,
            body,
            retry_after,
        } => {
            let body = if trickled {
                rec.set_outcome(Outcome::Streaming);
                let len = body.len() as u64;
                let pieces = trickle(&[body]);
                SimBody::paced(
                    pieces,
                    Duration::ZERO,
                    TRICKLE_GAP,
                    Some(len),
                    rec.clone(),
                    done,
                )
            } else {
                rec.set_outcome(done);
                SimBody::full(body)
            };
            let mut resp = response(status, "application/json", body);
            if retry_after {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Ok(resp)
        }
        Reply::Sse {
            mut frames,
            content,
        } => {
            let (frames, delay, gap) = match fault {
                Some(Fault::Midstream) => {
                    frames.truncate(content.end.min(content.start + 2));
                    frames.push(Bytes::from_static(match api {
                        Api::OpenAi => OPENAI_MIDSTREAM,
                        Api::Anthropic => ANTHROPIC_MIDSTREAM,
                    }));
                    (frames, knobs.ttft, knobs.gap)
                }
                Some(Fault::Trickle) => (trickle(&frames), Duration::ZERO, TRICKLE_GAP),
                _ => (frames, knobs.ttft, knobs.gap),
            };
            rec.set_outcome(Outcome::Streaming);
            let body = SimBody::paced(frames, delay, gap, None, rec.clone(), done);
            let content_type = match api {
                Api::OpenAi => "text/event-stream",
                Api::Anthropic => "text/event-stream; charset=utf-8",
            };
            let mut resp = response(StatusCode::OK, content_type, body);
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            Ok(resp)
        }
    }
}

/// `GET /sim/requests` lists the log, `DELETE` clears it.
fn sim_requests(history: &History, method: &Method) -> Response<SimBody> {
    let (status, body) = match *method {
        Method::GET => match history.to_json() {
            Ok(json) => (StatusCode::OK, Bytes::from(json)),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from(ApiError::internal(e.to_string()).body(Api::OpenAi)),
            ),
        },
        Method::DELETE => {
            history.clear();
            (StatusCode::OK, Bytes::from_static(b"{\"cleared\":true}"))
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from(ApiError::method_not_allowed("/sim/requests").body(Api::OpenAi)),
        ),
    };
    response(status, "application/json", SimBody::full(body))
}
