//! The response cache, consulted in `request_filter` once a request is routed and allowed.
//!
//! The exact layer hashes the normalized request ([`key`]) and answers from [`store`]. On an
//! exact miss the semantic layer embeds the last user turn ([`embed`]) and searches the
//! [`index`] within the request's scope; a cosine at or above the threshold is a hit. A miss
//! carries a [`Fill`] with the exchange, which stores the answer once it has completed without
//! error ([`entry`] assembles streamed answers and replays entries in either form).

pub mod embed;
pub mod entry;
pub mod index;
pub mod key;
pub mod store;

use crate::api::Endpoint;
use crate::error::ApiError;
use crate::providers::Provider;
use crate::telemetry::Usage;
use embed::Embed;
use entry::Entry;
use http::HeaderMap;
use index::Index;
use key::{Keys, Scope};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use store::Store;

/// `cache:` in `gateway.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// What a request gets when it does not say: `off`, `exact` or `semantic`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// `memory` (this process) or `redis` (shared by replicas).
    #[serde(default)]
    pub store: StoreKind,
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Memory store bound, counting answer bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// The longest TTL a request may ask for.
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
    /// Who may share entries: `team` (the key's team, else the key), `key`, `customer` or
    /// `global`.
    #[serde(default)]
    pub partition: Partition,
    /// Larger answers are not cached.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
    #[serde(default)]
    pub semantic: Option<SemanticSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticSpec {
    pub embedder: EmbedderSpec,
    /// Cosine similarity at or above which a stored question counts as the same; by default
    /// the embedder's own (see [`EmbedderSpec::default_threshold`]).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Vectors kept across all scopes.
    #[serde(default = "default_max_vectors")]
    pub max_entries: usize,
    /// A scope is searched flat below this many entries and through HNSW from it.
    #[serde(default = "default_hnsw_from")]
    pub hnsw_from: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum EmbedderSpec {
    /// A model2vec-style static model (directory relative to the config file).
    Static { path: String },
    /// all-MiniLM-L6-v2 through candle.
    Minilm { path: String },
    /// `/embeddings` of one of the gateway's providers.
    Remote {
        provider: String,
        model: String,
        dims: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Exact,
    Semantic,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    #[default]
    Team,
    Key,
    Customer,
    Global,
}

fn default_mode() -> Mode {
    Mode::Exact
}
fn default_max_bytes() -> u64 {
    256 << 20
}
/// The longest TTL a config or request may give (10 years); Redis refuses far larger ones.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

fn default_ttl() -> u64 {
    3600
}
fn default_max_ttl() -> u64 {
    7 * 24 * 3600
}
fn default_max_entry_bytes() -> usize {
    4 << 20
}
fn default_max_vectors() -> usize {
    1_000_000
}
fn default_hnsw_from() -> usize {
    4096
}

impl EmbedderSpec {
    /// The lowest threshold at which the embedder kept false hits on Banking77 at or under 2%
    /// (`scripts/cache_eval.sh`; README has the table). A remote model is unmeasured: MiniLM's.
    pub fn default_threshold(&self) -> f32 {
        match self {
            EmbedderSpec::Static { .. } => 0.99,
            EmbedderSpec::Minilm { .. } | EmbedderSpec::Remote { .. } => 0.96,
        }
    }
}
/// Candidates fetched from the index per lookup; a removed entry is skipped for the next one.
const CANDIDATES: usize = 4;
/// How often expired vectors leave the index.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);

/// Milliseconds since the Unix epoch (entries outlive processes in Redis).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub enum Embedder {
    /// Fast enough to run on the request path (static models take microseconds).
    Inline(Arc<dyn Embed>),
    /// Milliseconds of CPU: runs on a blocking thread.
    Blocking(Arc<dyn Embed>),
    Remote {
        provider: String,
        model: String,
    },
}

struct Semantic {
    embedder: Embedder,
    index: Arc<Index>,
    threshold: f32,
}

pub struct Cache {
    mode: Mode,
    ttl: Duration,
    max_ttl: Duration,
    partition: Partition,
    max_entry_bytes: usize,
    store: Arc<dyn Store>,
    semantic: Option<Semantic>,
}

/// What a request asked of the cache, from its headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub mode: Mode,
    pub ttl: Duration,
    /// Only entries younger than this serve (the request's TTL, when it gave one).
    pub max_age: Option<Duration>,
    pub threshold: Option<f32>,
    pub no_store: bool,
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Exact,
    Semantic,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Exact => "exact",
            Layer::Semantic => "semantic",
        }
    }
}

/// Tokens an embedding call used, to be priced with the request.
#[derive(Debug, Clone)]
pub struct EmbedUse {
    pub model: String,
    pub tokens: u64,
}

pub struct Hit {
    pub entry: Arc<Entry>,
    pub layer: Layer,
    pub similarity: Option<f32>,
    pub key: u128,
    pub embedding: Option<EmbedUse>,
}

/// A miss: how to store the answer once it is complete.
pub struct Fill {
    cache: Arc<Cache>,
    keys: Keys,
    vector: Option<Vec<f32>>,
    ttl: Duration,
    namespace: String,
    endpoint: Endpoint,
    stream: bool,
    captured: Vec<u8>,
    pub embedding: Option<EmbedUse>,
    /// `false` once the answer outgrew the entry bound.
    fits: bool,
}

pub enum Lookup {
    Hit(Hit),
    /// A miss; `None` when the answer must not be stored (`no-store`).
    Miss(Option<Fill>, Option<EmbedUse>),
    /// Not cacheable (not a JSON object).
    Skip,
}

/// A cache header's trimmed value; an empty one counts as absent, one not visible ASCII is refused.
fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match h.get(name).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v.trim()).filter(|v| !v.is_empty())),
        Some(Err(_)) => Err(bad_header(name, "not plain ASCII")),
    }
}

fn bad_header(name: &str, why: &str) -> ApiError {
    ApiError::bad_request("invalid_cache_header", format!("Header {name}: {why}."))
}

impl Cache {
    /// Builds the cache; `dir` is the config file's directory.
    pub fn start(spec: &CacheSpec, dir: &Path) -> Result<Arc<Cache>, String> {
        let semantic = match &spec.semantic {
            None => None,
            Some(s) => {
                let (embedder, dims): (Embedder, usize) = match &s.embedder {
                    EmbedderSpec::Static { path } => {
                        let m = embed::static_model::StaticModel::load(&dir.join(path))?;
                        let dims = m.dims();
                        (Embedder::Inline(Arc::new(m)), dims)
                    }
                    EmbedderSpec::Minilm { path } => {
                        let m = embed::minilm::MiniLm::load(&dir.join(path))?;
                        let dims = m.dims();
                        (Embedder::Blocking(Arc::new(m)), dims)
                    }
                    EmbedderSpec::Remote {
                        provider,
                        model,
                        dims,
                    } => (
                        Embedder::Remote {
                            provider: provider.clone(),
                            model: model.clone(),
                        },
                        *dims,
                    ),
                };
                Some(Semantic {
                    embedder,
                    index: Arc::new(Index::new(dims, s.hnsw_from, s.max_entries)),
                    threshold: s
                        .threshold
                        .unwrap_or_else(|| s.embedder.default_threshold()),
                })
            }
        };
        let index = semantic.as_ref().map(|s| s.index.clone());
        let store: Arc<dyn Store> = match spec.store {
            StoreKind::Memory => Arc::new(store::MemoryStore::new(
                spec.max_bytes,
                spec.max_entry_bytes as u64,
                index.clone(),
            )),
            StoreKind::Redis => {
                let url = spec
                    .redis_url
                    .as_deref()
                    .ok_or("cache.redis_url is required with store: redis")?;
                Arc::new(store::redis_store::RedisStore::connect(url, index.clone())?)
            }
        };
        if let Some(index) = index {
            let weak = Arc::downgrade(&index);
            std::thread::Builder::new()
                .name("tollgate-cache-expiry".into())
                .spawn(move || loop {
                    std::thread::sleep(EXPIRE_EVERY);
                    match weak.upgrade() {
                        Some(index) => {
                            index.expire(now_ms());
                        }
                        None => return,
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(Cache {
            mode: spec.mode,
            ttl: Duration::from_secs(spec.ttl_secs.min(MAX_TTL_SECS)),
            max_ttl: Duration::from_secs(spec.max_ttl_secs.min(MAX_TTL_SECS)),
            partition: spec.partition,
            max_entry_bytes: spec.max_entry_bytes,
            store,
            semantic,
        }))
    }

    /// The configuration errors in `spec`, for `tollgate check`.
    pub fn check(spec: &CacheSpec, dir: &Path, providers: &[&str]) -> Vec<String> {
        let mut errors = Vec::new();
        if spec.store == StoreKind::Redis {
            match &spec.redis_url {
                None => errors.push("cache.redis_url is required with store: redis".into()),
                Some(url) => {
                    if let Err(e) = redis::Client::open(url.as_str()) {
                        errors.push(format!("cache.redis_url: {e}"));
                    }
                }
            }
        }
        for (name, v) in [
            ("ttl_secs", spec.ttl_secs),
            ("max_ttl_secs", spec.max_ttl_secs),
            ("max_bytes", spec.max_bytes),
            ("max_entry_bytes", spec.max_entry_bytes as u64),
        ] {
            if v == 0 {
                errors.push(format!("cache.{name} must be greater than 0"));
            }
        }
        for (name, v) in [
            ("ttl_secs", spec.ttl_secs),
            ("max_ttl_secs", spec.max_ttl_secs),
        ] {
            if v > MAX_TTL_SECS {
                errors.push(format!(
                    "cache.{name} must be at most {MAX_TTL_SECS} (10 years), not {v}"
                ));
            }
        }
        if spec.mode == Mode::Semantic && spec.semantic.is_none() {
            errors.push("cache.mode is semantic but cache.semantic is not set".into());
        }
        if let Some(s) = &spec.semantic {
            if let Some(t) = s.threshold.filter(|t| !(*t > 0.0 && *t <= 1.0)) {
                errors.push(format!(
                    "cache.semantic.threshold must be in (0, 1], not {t}"
                ));
            }
            match &s.embedder {
                EmbedderSpec::Static { path } | EmbedderSpec::Minilm { path } => {
                    let p = dir.join(path);
                    if !p.join("model.safetensors").is_file() || !p.join("tokenizer.json").is_file()
                    {
                        errors.push(format!(
                            "cache.semantic.embedder.path: no model in {} (run scripts/fetch-models.sh)",
                            p.display()
                        ));
                    }
                }
                EmbedderSpec::Remote { provider, dims, .. } => {
                    if !providers.contains(&provider.as_str()) {
                        errors.push(format!(
                            "cache.semantic.embedder.provider: unknown provider `{provider}`"
                        ));
                    }
                    if *dims == 0 {
                        errors.push("cache.semantic.embedder.dims must be positive".into());
                    }
                }
            }
        }
        errors
    }

    /// The request's cache settings from its headers.
    pub fn control(&self, h: &HeaderMap) -> Result<Control, ApiError> {
        let mut mode = match header(h, "x-tollgate-cache")? {
            None => self.mode,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "off" | "none" => Mode::Off,
                "exact" => Mode::Exact,
                "semantic" | "on" => Mode::Semantic,
                _ => return Err(bad_header("x-tollgate-cache", "use off, exact or semantic")),
            },
        };
        if mode == Mode::Semantic && self.semantic.is_none() {
            mode = Mode::Exact;
        }
        let ttl_header = match header(h, "x-tollgate-cache-ttl")? {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(s) if s > 0 => Some(Duration::from_secs(s).min(self.max_ttl)),
                _ => {
                    return Err(bad_header(
                        "x-tollgate-cache-ttl",
                        "a positive number of seconds",
                    ))
                }
            },
        };
        let threshold = match header(h, "x-tollgate-cache-threshold")? {
            None => None,
            Some(v) => match v.parse::<f32>() {
                Ok(t) if t > 0.0 && t <= 1.0 => Some(t),
                _ => {
                    return Err(bad_header(
                        "x-tollgate-cache-threshold",
                        "a number in (0, 1]",
                    ))
                }
            },
        };
        let mut no_store = match header(h, "x-tollgate-cache-no-store")? {
            None => false,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad_header("x-tollgate-cache-no-store", "true or false")),
            },
        };
        // HTTP's directives: `no-store` writes nothing; `no-cache` reads nothing; `max-age=N`
        // accepts only entries stored in the last N seconds.
        let mut max_age = ttl_header;
        let directives = header(h, "cache-control")?
            .unwrap_or("")
            .to_ascii_lowercase();
        for d in directives.split(',').map(str::trim) {
            let (name, value) = d.split_once('=').unwrap_or((d, ""));
            let age = match (name.trim(), value.trim().trim_matches('"')) {
                ("no-store", _) => {
                    no_store = true;
                    continue;
                }
                ("no-cache", _) => Duration::ZERO,
                // Past u64 it is simply the longest age allowed.
                ("max-age", v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    Duration::from_secs(v.parse().unwrap_or(u64::MAX).min(MAX_TTL_SECS))
                }
                _ => continue,
            };
            max_age = Some(max_age.map_or(age, |m| m.min(age)));
        }
        let namespace = match header(h, "x-tollgate-cache-namespace")? {
            None => "default".to_string(),
            Some(v) if valid_namespace(v) => v.to_string(),
            Some(_) => {
                return Err(bad_header(
                    "x-tollgate-cache-namespace",
                    "1 to 64 letters, digits, '.', '_' or '-'",
                ))
            }
        };
        Ok(Control {
            mode,
            ttl: ttl_header.unwrap_or(self.ttl),
            max_age,
            threshold,
            no_store,
            namespace,
        })
    }

    /// The tenant partition of a request by `key` (`None` without governance).
    pub fn partition(&self, key: Option<&crate::governance::keys::KeyEntry>) -> String {
        let Some(k) = key else {
            return "anonymous".into();
        };
        match self.partition {
            Partition::Global => "global".into(),
            Partition::Key => format!("key:{}", k.id),
            Partition::Team => match &k.team {
                Some(t) => format!("team:{t}"),
                None => format!("key:{}", k.id),
            },
            Partition::Customer => match (&k.customer, &k.team) {
                (Some(c), _) => format!("customer:{c}"),
                (None, Some(t)) => format!("team:{t}"),
                (None, None) => format!("key:{}", k.id),
            },
        }
    }

    /// Looks the request up: exact first, then, if asked, semantic. `providers` serves a remote
    /// embedder.
    pub async fn lookup(
        self: &Arc<Self>,
        ctl: &Control,
        scope: &Scope<'_>,
        body: &[u8],
        stream: bool,
        accept: &[&str],
        providers: &[Arc<Provider>],
    ) -> Lookup {
        // The semantic key is made whenever there is a semantic layer, so that answers stored by
        // exact-mode requests can serve semantic ones later.
        let Some(keys) = key::keys(scope, body, self.semantic.is_some()) else {
            return Lookup::Skip;
        };
        let now = now_ms();
        let fresh = |e: &Entry| {
            accept.contains(&e.target.as_str())
                && ctl
                    .max_age
                    .is_none_or(|age| e.created_ms + age.as_millis() as u64 > now)
        };
        if let Some(entry) = self
            .store
            .get(&ctl.namespace, keys.exact, now)
            .await
            .filter(|e| fresh(e))
        {
            return Lookup::Hit(Hit {
                entry,
                layer: Layer::Exact,
                similarity: None,
                key: keys.exact,
                embedding: None,
            });
        }
        let mut vector = None;
        let mut embedding = None;
        let semantic = ctl.mode == Mode::Semantic;
        if let (Some(sem), Some(sk), true) = (&self.semantic, &keys.semantic, semantic) {
            match self.embed(sem, &sk.text, providers).await {
                Ok(None) => {}
                Ok(Some((v, used))) => {
                    embedding = used;
                    let threshold = ctl.threshold.unwrap_or(sem.threshold);
                    for (key, cos) in sem.index.search(sk.scope, &v, CANDIDATES) {
                        if cos < threshold {
                            break;
                        }
                        match self.store.get(&ctl.namespace, key, now).await {
                            Some(entry) if fresh(&entry) => {
                                return Lookup::Hit(Hit {
                                    entry,
                                    layer: Layer::Semantic,
                                    similarity: Some(cos),
                                    key,
                                    embedding,
                                })
                            }
                            Some(_) => {}
                            None => {
                                sem.index.remove(sk.scope, key);
                            }
                        }
                    }
                    vector = Some(v);
                }
                Err(e) => log::warn!("cache: embedding failed, exact layer only: {e}"),
            }
        }
        if ctl.no_store {
            return Lookup::Miss(None, embedding);
        }
        Lookup::Miss(
            Some(Fill {
                cache: self.clone(),
                keys,
                vector,
                ttl: ctl.ttl,
                namespace: ctl.namespace.clone(),
                endpoint: scope.endpoint,
                stream,
                captured: Vec::new(),
                embedding: None,
                fits: true,
            }),
            embedding,
        )
    }

    /// The vector of `text`, or `None` when the text is not one to compare by meaning (see
    /// [`Embed::comparable`]; a zero vector counts as none).
    async fn embed(
        &self,
        sem: &Semantic,
        text: &str,
        providers: &[Arc<Provider>],
    ) -> Result<Option<(Vec<f32>, Option<EmbedUse>)>, String> {
        if text.len() > embed::MAX_COMPARABLE_BYTES {
            return Ok(None);
        }
        let nonzero = |v: Vec<f32>| v.iter().any(|x| *x != 0.0).then_some(v);
        match &sem.embedder {
            Embedder::Inline(m) => match m.comparable(text) {
                true => Ok(nonzero(m.embed(text)?).map(|v| (v, None))),
                false => Ok(None),
            },
            Embedder::Blocking(m) => {
                let (m, text) = (m.clone(), text.to_string());
                let v = tokio::task::spawn_blocking(move || match m.comparable(&text) {
                    true => m.embed(&text).map(Some),
                    false => Ok(None),
                })
                .await
                .map_err(|e| e.to_string())??;
                Ok(v.and_then(nonzero).map(|v| (v, None)))
            }
            Embedder::Remote { provider, model } => {
                let p = providers
                    .iter()
                    .find(|p| &p.name == provider)
                    .ok_or_else(|| format!("no provider `{provider}`"))?;
                let (v, tokens) =
                    embed::remote::embed(p.clone(), model.clone(), text.to_string()).await?;
                if v.len() != sem.index.dims() {
                    return Err(format!(
                        "{model} gave {} dimensions, not {}",
                        v.len(),
                        sem.index.dims()
                    ));
                }
                let used = Some(EmbedUse {
                    model: model.clone(),
                    tokens,
                });
                Ok(nonzero(v).map(|v| (v, used)))
            }
        }
    }

    /// Clears entries of `namespace`, or all; for the admin API.
    pub async fn clear(&self, namespace: Option<&str>) -> Result<u64, String> {
        self.store.clear(namespace).await
    }

    /// Removes one entry (see `entry_id`); for the admin API.
    pub async fn remove(&self, key: u128) -> Result<bool, String> {
        self.store.remove(key).await
    }
}

/// The key an entry id (the `x-tollgate-cache-key` header: hex digits) names.
pub fn entry_id(id: &str) -> Option<u128> {
    let hex = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| u128::from_str_radix(id, 16).ok()).flatten()
}

pub fn valid_namespace(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Fill {
    /// The id the entry will have (`x-tollgate-cache-key`).
    pub fn id(&self) -> String {
        format!("{:032x}", self.keys.exact)
    }

    /// Keeps a piece of the answer as the client got it.
    pub fn capture(&mut self, bytes: &[u8]) {
        if !self.fits {
            return;
        }
        if self.captured.len() + bytes.len() > self.cache.max_entry_bytes {
            self.fits = false;
            self.captured = Vec::new();
            return;
        }
        self.captured.extend_from_slice(bytes);
    }

    /// Stores the completed answer, off the request path.
    pub fn store(self, usage: Usage, provider: &str, model: &str, target: &str) {
        if !self.fits || self.captured.is_empty() {
            return;
        }
        let Fill {
            cache,
            keys,
            vector,
            ttl,
            namespace,
            endpoint,
            stream,
            captured,
            ..
        } = self;
        let (provider, model, target) =
            (provider.to_string(), model.to_string(), target.to_string());
        tokio::spawn(async move {
            let body = if stream {
                match entry::assemble(endpoint, &captured, &usage) {
                    Some(b) => b,
                    None => return,
                }
            } else {
                let whole = serde_json::from_slice::<serde_json::Value>(&captured);
                match (whole, String::from_utf8(captured)) {
                    (Ok(v), Ok(b)) if entry::storable(endpoint, &v) => b,
                    _ => return,
                }
            };
            let now = now_ms();
            let entry = Arc::new(Entry {
                body,
                provider,
                model,
                target,
                usage,
                namespace,
                created_ms: now,
                expires_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            });
            // A static embedder (microseconds) gives exact-mode answers their vector too, here,
            // after the answer; slower or paid ones embed only for semantic requests.
            let vector = match (
                vector,
                &keys.semantic,
                cache.semantic.as_ref().map(|s| &s.embedder),
            ) {
                (Some(v), _, _) => Some(v),
                (None, Some(sk), Some(Embedder::Inline(m)))
                    if sk.text.len() <= embed::MAX_COMPARABLE_BYTES && m.comparable(&sk.text) =>
                {
                    m.embed(&sk.text)
                        .ok()
                        .filter(|v| v.iter().any(|x| *x != 0.0))
                }
                _ => None,
            };
            let vector = keys.semantic.map(|s| s.scope).zip(vector);
            cache.store.put(keys.exact, entry, vector).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Arc<Cache> {
        let spec: CacheSpec = serde_yaml::from_str("mode: exact\n").unwrap();
        Cache::start(&spec, Path::new(".")).unwrap()
    }

    #[test]
    fn headers_set_mode_ttl_threshold_no_store_and_namespace() {
        let c = cache();
        let mut h = HeaderMap::new();
        let d = c.control(&h).unwrap();
        assert_eq!(
            (d.mode, d.ttl, d.no_store, d.namespace.as_str()),
            (Mode::Exact, Duration::from_secs(3600), false, "default")
        );
        h.insert("x-tollgate-cache", "off".parse().unwrap());
        h.insert("x-tollgate-cache-ttl", "60".parse().unwrap());
        h.insert("x-tollgate-cache-threshold", "0.9".parse().unwrap());
        h.insert("cache-control", "no-store".parse().unwrap());
        h.insert("x-tollgate-cache-namespace", "team-a.v2".parse().unwrap());
        let c2 = c.control(&h).unwrap();
        assert_eq!(c2.mode, Mode::Off);
        assert_eq!(c2.max_age, Some(Duration::from_secs(60)));
        assert_eq!(c2.threshold, Some(0.9));
        assert!(c2.no_store);
        assert_eq!(c2.namespace, "team-a.v2");
        h.insert("x-tollgate-cache", "semantic".parse().unwrap());
        assert_eq!(
            c.control(&h).unwrap().mode,
            Mode::Exact,
            "no semantic layer configured"
        );
        // Empty values are the defaults; HTTP's directives, spelled loosely, are honoured.
        let mut h = HeaderMap::new();
        for name in [
            "x-tollgate-cache",
            "x-tollgate-cache-ttl",
            "x-tollgate-cache-no-store",
        ] {
            h.insert(name, "".parse().unwrap());
        }
        let d = c.control(&h).unwrap();
        assert_eq!((d.mode, d.max_age, d.no_store), (Mode::Exact, None, false));
        for (cc, age) in [
            ("max-age = 0", Some(0)),
            ("max-age=00", Some(0)),
            ("public, MAX-AGE=120", Some(120)),
            ("max-age=\"30\", no-cache", Some(0)),
            ("max-age=99999999999999999999999", Some(MAX_TTL_SECS)),
            ("max-age=-1, max-age=x", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert("cache-control", cc.parse().unwrap());
            let got = c.control(&h).unwrap().max_age;
            assert_eq!(got, age.map(Duration::from_secs), "{cc}");
        }
        for (name, bad) in [
            ("x-tollgate-cache", "maybe"),
            ("x-tollgate-cache-ttl", "-1"),
            ("x-tollgate-cache-threshold", "1.5"),
            ("x-tollgate-cache-namespace", "a b"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, bad.parse().unwrap());
            assert_eq!(c.control(&h).unwrap_err().status, 400, "{name}: {bad}");
        }
    }

    #[tokio::test]
    async fn a_stored_answer_is_found_by_an_equal_request_only() {
        let c = cache();
        let ctl = c.control(&HeaderMap::new()).unwrap();
        let scope = Scope {
            partition: "p",
            namespace: "default",
            endpoint: Endpoint::Chat,
            model: "m",
            variant: "",
        };
        let body = br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
        let Lookup::Miss(Some(mut fill), _) =
            c.lookup(&ctl, &scope, body, false, &["sim/m"], &[]).await
        else {
            panic!("expected a miss");
        };
        fill.capture(br#"{"id":"1","choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}]}"#);
        fill.store(Usage::default(), "sim", "m", "sim/m");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let reordered = br#"{ "messages":[{"content":"hi","role":"user"}],"model":"x"}"#;
        assert!(
            matches!(c.lookup(&ctl, &scope, reordered, false, &["sim/m"], &[]).await, Lookup::Hit(h) if h.layer == Layer::Exact)
        );
        let other = br#"{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
        assert!(matches!(
            c.lookup(&ctl, &scope, other, false, &["sim/m"], &[]).await,
            Lookup::Miss(..)
        ));
        // An answer from a target the route no longer wants (a fallback that stood in) is not
        // served.
        assert!(matches!(
            c.lookup(&ctl, &scope, reordered, false, &["other/m"], &[])
                .await,
            Lookup::Miss(..)
        ));
    }
}
