//! The admin API, on its own listener behind the admin key: customers, teams and keys (CRUD),
//! usage and remaining budget at each level, usage resets, the price table; and `/metrics`.
//! Changes are checked by rebuilding the whole directory, stored in SQLite, then swapped in.

use super::keys::{env_secret, hash_key, valid_id, CustomerSpec, Directory, KeySpec, TeamSpec};
use super::persist::Db;
use super::{budget_counter, period::format_utc, prices::Usd, Governance};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Customers, teams and keys from `gateway.yaml`: read-only through the API.
#[derive(Default, Clone)]
pub struct Fixed {
    pub customers: Vec<CustomerSpec>,
    pub teams: Vec<TeamSpec>,
    pub keys: Vec<KeySpec>,
}

pub struct Admin {
    pub gov: Arc<Governance>,
    pub fixed: Fixed,
    pub db: Option<Arc<Db>>,
    /// SHA-256 of the admin key; `None` refuses every admin call (only `/metrics` is served).
    pub key: Option<[u8; 32]>,
    /// Renders `/metrics`.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// The response cache, cleared by namespace or entry.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// One change at a time.
    writing: Mutex<()>,
}

type Answer = Response<Full<Bytes>>;

fn answer(status: u16, body: serde_json::Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: u16, code: &str, message: impl std::fmt::Display) -> Answer {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    answer(
        status,
        json!({"error": {"message": message.to_string(), "type": kind, "code": code}}),
    )
}

/// Stored entities are read by this name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Customer,
    Team,
    Key,
}

impl Kind {
    fn from_plural(s: &str) -> Option<Kind> {
        match s {
            "customers" => Some(Kind::Customer),
            "teams" => Some(Kind::Team),
            "keys" => Some(Kind::Key),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Team => "team",
            Kind::Key => "key",
        }
    }
}

/// A change to the stored entities.
pub enum Change {
    Put(Kind, String, String),
    Delete(Kind, String),
}

impl Admin {
    pub fn new(
        gov: Arc<Governance>,
        fixed: Fixed,
        db: Option<Arc<Db>>,
        key: Option<[u8; 32]>,
        metrics: Box<dyn Fn() -> String + Send + Sync>,
        cache: Option<Arc<crate::cache::Cache>>,
    ) -> Admin {
        Admin {
            cache,
            gov,
            fixed,
            db,
            key,
            metrics,
            writing: Mutex::new(()),
        }
    }

    /// The directory from config and the stored entities, with `change` applied.
    pub fn build(&self, change: Option<&Change>) -> Result<Directory, Vec<String>> {
        let mut stored: [Vec<String>; 3] = Default::default();
        if let Some(db) = &self.db {
            for (i, k) in ["customer", "team", "key"].iter().enumerate() {
                stored[i] = db.entities(k).map_err(|e| vec![e])?;
            }
        }
        fn read<T: DeserializeOwned + Clone>(
            fixed: &[T],
            stored: &[String],
            id: impl Fn(&T) -> &str,
            kind: Kind,
            change: Option<&Change>,
        ) -> Result<Vec<T>, Vec<String>> {
            let mut out = fixed.to_vec();
            for s in stored {
                let t: T = serde_json::from_str(s)
                    .map_err(|e| vec![format!("stored {}: {e}", kind.name())])?;
                if fixed.iter().any(|f| id(f) == id(&t)) {
                    log::warn!(
                        "ignoring the {} `{}` made through the admin API: gateway.yaml now defines it",
                        kind.name(),
                        id(&t)
                    );
                    continue;
                }
                let gone = matches!(change, Some(Change::Delete(k, i) | Change::Put(k, i, _)) if *k == kind && i == id(&t));
                if !gone {
                    out.push(t);
                }
            }
            if let Some(Change::Put(k, _, spec)) = change {
                if *k == kind {
                    out.push(serde_json::from_str(spec).map_err(|e| vec![e.to_string()])?);
                }
            }
            Ok(out)
        }
        let customers = read(
            &self.fixed.customers,
            &stored[0],
            |c: &CustomerSpec| &c.id,
            Kind::Customer,
            change,
        )?;
        let teams = read(
            &self.fixed.teams,
            &stored[1],
            |t: &TeamSpec| &t.id,
            Kind::Team,
            change,
        )?;
        let keys = read(
            &self.fixed.keys,
            &stored[2],
            |k: &KeySpec| &k.id,
            Kind::Key,
            change,
        )?;
        Directory::build(customers, teams, keys, &env_secret)
    }

    fn is_fixed(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Customer => self.fixed.customers.iter().any(|c| c.id == id),
            Kind::Team => self.fixed.teams.iter().any(|t| t.id == id),
            Kind::Key => self.fixed.keys.iter().any(|k| k.id == id),
        }
    }

    /// Checks a change against everything else, stores it and swaps the directory in.
    fn apply(&self, change: Change) -> Result<(), Box<Answer>> {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(db) = &self.db else {
            let why = "Changes need the embedded state's SQLite store.";
            return Err(Box::new(error(409, "no_store", why)));
        };
        let dir = self
            .build(Some(&change))
            .map_err(|e| Box::new(error(400, "invalid_change", e.join("; "))))?;
        let stored = match &change {
            Change::Put(k, id, spec) => db.put_entity(k.name(), id, spec),
            Change::Delete(k, id) => db.delete_entity(k.name(), id).map(|_| ()),
        };
        stored.map_err(|e| Box::new(error(500, "store_error", e)))?;
        self.gov.directory.store(Arc::new(dir));
        Ok(())
    }

    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let method = req.method().clone();
        if path == "/metrics" && method == Method::GET {
            let mut r = Response::new(Full::new(Bytes::from((self.metrics)())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        let Some(want) = self.key else {
            return error(
                403,
                "admin_disabled",
                "Set `governance.admin.key` to use the admin API.",
            );
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(hash_key);
        if given != Some(want) {
            return error(
                401,
                "invalid_admin_key",
                "The admin key is missing or wrong.",
            );
        }
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    413,
                    "body_too_large",
                    "Admin request bodies are at most 1 MiB.",
                )
            }
        };
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        match (method.clone(), parts.as_slice()) {
            (Method::GET, ["admin", "prices"]) => {
                let prices: serde_json::Map<String, serde_json::Value> = self
                    .gov
                    .prices
                    .entries()
                    .map(|(id, p)| (id.to_string(), serde_json::to_value(p).unwrap_or_default()))
                    .collect();
                answer(200, json!({ "prices": prices }))
            }
            (Method::DELETE, ["admin", "cache", rest @ ..]) => {
                let Some(cache) = &self.cache else {
                    return error(404, "cache_disabled", "No `cache` section in gateway.yaml.");
                };
                match rest {
                    [] => match cache.clear(None).await {
                        Ok(n) => answer(200, json!({"cleared": n})),
                        Err(e) => error(500, "store_error", e),
                    },
                    ["namespaces", ns] if crate::cache::valid_namespace(ns) => {
                        match cache.clear(Some(ns)).await {
                            Ok(n) => answer(200, json!({"cleared": n, "namespace": ns})),
                            Err(e) => error(500, "store_error", e),
                        }
                    }
                    ["namespaces", ns] => error(
                        400,
                        "invalid_namespace",
                        format!(
                            "`{ns}` is not a namespace: 1 to 64 letters, digits, '.', '_' or '-'."
                        ),
                    ),
                    ["entries", id] => match crate::cache::entry_id(id) {
                        None => error(
                            400,
                            "invalid_entry",
                            format!("`{id}` is not an entry id (up to 32 hex digits)."),
                        ),
                        Some(key) => match cache.remove(key).await {
                            Ok(true) => answer(200, json!({"deleted": id})),
                            Ok(false) => error(404, "not_found", format!("No cache entry `{id}`.")),
                            Err(e) => error(500, "store_error", e),
                        },
                    },
                    _ => error(404, "not_found", format!("Unknown path {path}.")),
                }
            }
            (Method::GET, ["admin", "usage"]) => {
                answer(200, json!({ "usage": self.usage(None).await }))
            }
            (Method::GET, ["admin", "usage", level, id]) => {
                let scope = format!("{}:{id}", level.trim_end_matches('s'));
                let u = self.usage(Some(&scope)).await;
                if u.is_empty() {
                    return error(404, "not_found", format!("No level `{scope}` has limits."));
                }
                answer(200, json!({ "usage": u }))
            }
            (Method::POST, ["admin", "usage", "reset"]) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Reset {
                    level: String,
                    id: String,
                }
                let r: Reset = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return error(400, "invalid_body", e),
                };
                let level = r.level.trim_end_matches('s');
                if !["customer", "team", "key"].contains(&level) || !valid_id(&r.id) {
                    let why = "`level` is customer, team or key, and `id` one of its ids.";
                    return error(400, "invalid_body", why);
                }
                let scope = format!("{level}:{}|", r.id);
                match self.gov.store.reset(&scope) {
                    Ok(n) => answer(200, json!({"reset": n})),
                    Err(e) => error(500, "store_error", e),
                }
            }
            (m, ["admin", plural]) => {
                let Some(kind) = Kind::from_plural(plural) else {
                    return error(404, "not_found", format!("Unknown path {path}."));
                };
                match m {
                    Method::GET => answer(200, self.list(kind)),
                    Method::POST => self.put(kind, None, &body, true),
                    _ => error(405, "method_not_allowed", "Use GET or POST."),
                }
            }
            (m, ["admin", plural, id]) => {
                let Some(kind) = Kind::from_plural(plural) else {
                    return error(404, "not_found", format!("Unknown path {path}."));
                };
                match m {
                    Method::GET => match self
                        .list(kind)
                        .get(plural)
                        .and_then(|l| l.as_array())
                        .and_then(|l| l.iter().find(|e| e["id"] == *id))
                    {
                        Some(e) => answer(200, e.clone()),
                        None => error(404, "not_found", format!("No {} `{id}`.", kind.name())),
                    },
                    Method::PUT => self.put(kind, Some(id), &body, false),
                    Method::DELETE => {
                        if self.is_fixed(kind, id) {
                            return error(
                                409,
                                "defined_in_config",
                                format!("The {} `{id}` is defined in gateway.yaml.", kind.name()),
                            );
                        }
                        let exists = self
                            .list(kind)
                            .get(plural)
                            .and_then(|l| l.as_array())
                            .is_some_and(|l| l.iter().any(|e| e["id"] == *id));
                        if !exists {
                            return error(404, "not_found", format!("No {} `{id}`.", kind.name()));
                        }
                        match self.apply(Change::Delete(kind, id.to_string())) {
                            Ok(()) => answer(200, json!({"deleted": id})),
                            Err(a) => *a,
                        }
                    }
                    _ => error(405, "method_not_allowed", "Use GET, PUT or DELETE."),
                }
            }
            _ => error(404, "not_found", format!("Unknown path {path}.")),
        }
    }

    fn list(&self, kind: Kind) -> serde_json::Value {
        let d = self.gov.directory.load();
        let fixed = |id: &str| self.is_fixed(kind, id);
        fn rows<T: Serialize>(
            m: &std::collections::BTreeMap<String, T>,
            fixed: impl Fn(&str) -> bool,
        ) -> Vec<serde_json::Value> {
            m.iter()
                .map(|(id, s)| {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["source"] = json!(if fixed(id) { "config" } else { "admin" });
                    v
                })
                .collect()
        }
        match kind {
            Kind::Customer => json!({ "customers": rows(&d.customers, fixed) }),
            Kind::Team => json!({ "teams": rows(&d.teams, fixed) }),
            Kind::Key => json!({ "keys": rows(&d.keys, fixed) }),
        }
    }

    /// Creates (POST) or replaces (PUT) an entity. A new key without a secret gets one, shown
    /// in this answer only.
    fn put(&self, kind: Kind, id: Option<&str>, body: &[u8], create: bool) -> Answer {
        let mut v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => return error(400, "invalid_body", "The body must be a JSON object."),
            Err(e) => return error(400, "invalid_body", e),
        };
        if let Some(id) = id {
            match v.get("id") {
                None => v["id"] = json!(id),
                Some(given) if given != id => {
                    return error(
                        400,
                        "invalid_body",
                        "The body's `id` differs from the path's.",
                    )
                }
                Some(_) => {}
            }
        }
        let Some(id) = v.get("id").and_then(|i| i.as_str()).map(str::to_string) else {
            return error(400, "invalid_body", "`id` is required.");
        };
        if self.is_fixed(kind, &id) {
            return error(
                409,
                "defined_in_config",
                format!("The {} `{id}` is defined in gateway.yaml.", kind.name()),
            );
        }
        let exists = self
            .gov
            .directory
            .load()
            .levels
            .contains_key(&format!("{}:{id}", kind.name()))
            || (kind == Kind::Key && self.gov.directory.load().keys.contains_key(&id));
        if create && exists {
            return error(
                409,
                "already_exists",
                format!("The {} `{id}` exists; PUT replaces it.", kind.name()),
            );
        }
        if !create && !exists {
            return error(
                404,
                "not_found",
                format!("No {} `{id}`; POST creates it.", kind.name()),
            );
        }
        let mut shown = None;
        if kind == Kind::Key {
            let spec: KeySpec = match serde_json::from_value(v.clone()) {
                Ok(s) => s,
                Err(e) => return error(400, "invalid_body", e),
            };
            let hash =
                match (&spec.key, &spec.key_sha256) {
                    (Some(k), None) if k.is_empty() || k.trim() != k => {
                        let why = "`key` must not be empty or begin or end with spaces.";
                        return error(400, "invalid_body", why);
                    }
                    (Some(k), None) if !k.starts_with("env:") => hash_key(k),
                    (Some(_), _) => return error(
                        400,
                        "invalid_body",
                        "Give `key` (the secret itself) or `key_sha256`, not both and not `env:`.",
                    ),
                    (None, Some(_)) => [0; 32],
                    (None, None) if !create => {
                        // A replaced key keeps its secret.
                        let old = self
                            .gov
                            .directory
                            .load()
                            .keys
                            .get(&id)
                            .and_then(|k| k.key_sha256.clone());
                        v["key_sha256"] = json!(old);
                        [0; 32]
                    }
                    (None, None) => {
                        let secret = format!(
                            "tg-{:032x}{:016x}",
                            rand::random::<u128>(),
                            rand::random::<u64>()
                        );
                        let h = hash_key(&secret);
                        shown = Some(secret);
                        h
                    }
                };
            if hash != [0; 32] {
                v["key_sha256"] = json!(super::keys::to_hex(&hash));
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("key");
            }
        }
        // Stored and answered in one canonical form (amounts as decimal strings, defaults left out).
        let canonical = match kind {
            Kind::Customer => {
                serde_json::from_value::<CustomerSpec>(v).and_then(serde_json::to_value)
            }
            Kind::Team => serde_json::from_value::<TeamSpec>(v).and_then(serde_json::to_value),
            Kind::Key => serde_json::from_value::<KeySpec>(v).and_then(serde_json::to_value),
        };
        let v = match canonical {
            Ok(v) => v,
            Err(e) => return error(400, "invalid_body", e),
        };
        let spec = v.to_string();
        match self.apply(Change::Put(kind, id.clone(), spec)) {
            Ok(()) => {
                let mut out = v;
                if let Some(secret) = shown {
                    out["key"] = json!(secret);
                }
                answer(if create { 201 } else { 200 }, out)
            }
            Err(a) => *a,
        }
    }

    /// Usage against every budget and limit, for one level or all.
    async fn usage(&self, only: Option<&str>) -> Vec<serde_json::Value> {
        let d = self.gov.directory.load();
        let now = self.gov.clock.now_ms();
        let mut out = Vec::new();
        for (scope, l) in d
            .levels
            .iter()
            .filter(|(s, _)| only.is_none_or(|o| o == *s))
        {
            let p = &l.policy;
            let mut names = Vec::new();
            for b in &p.budgets {
                names.push(budget_counter(l, b, now).0);
            }
            let values = self.gov.store.get(&names, now).await.unwrap_or_default();
            let budgets: Vec<_> = p
                .budgets
                .iter()
                .zip(values.iter().chain(std::iter::repeat(&0)))
                .map(|(b, &used)| {
                    let (start, end) = b.period.window(b.reset, b.anchor_ms, now);
                    json!({
                        "period": b.period.as_str(),
                        "reset": b.reset,
                        "budget_usd": b.limit.to_string(),
                        "used_usd": Usd(used).to_string(),
                        "remaining_usd": Usd((b.limit.0 - used).max(0)).to_string(),
                        "used_percent": if b.limit.0 > 0 { used as f64 * 100.0 / b.limit.0 as f64 } else { 100.0 },
                        "window_start": format_utc(start),
                        "window_end": format_utc(end),
                    })
                })
                .collect();
            out.push(json!({
                "level": l.kind.as_str(),
                "id": l.id,
                "scope": scope,
                "budgets": budgets,
            }));
        }
        out
    }
}

/// Serves the admin API on `addr` from a thread of its own.
pub fn spawn(admin: Arc<Admin>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return log::error!("admin API: {e}"),
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let admin = admin.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let admin = admin.clone();
                            async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
                        });
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })?;
    Ok(bound)
}
