//! Configuration: `gateway.yaml` (static: listener, providers, model catalog, limits) and
//! `rules.yaml` (live: routing rules, hot-reloaded through arc-swap by `server`).
//!
//! Every list item and map entry is deserialized on its own, so one run reports every error,
//! each with its YAML path and line.

mod lines;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "."
        } else {
            &self.path
        };
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                line,
                path,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), path, self.message),
        }
    }
}

/// Collects errors for one file, locating each path on a line of its text.
pub struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    pub errors: Vec<ConfigError>,
}

impl<'a> Report<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Report {
            file,
            text,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            path: path.to_string(),
            line: lines::line_of(self.text, path),
            message: message.into(),
        });
    }

    /// Parses the whole text as YAML; a syntax error is reported with its own line.
    pub fn parse_yaml(&mut self) -> Option<Value> {
        match serde_yaml::from_str::<Value>(self.text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(ConfigError {
                    file: self.file.to_path_buf(),
                    path: String::new(),
                    line: e.location().map(|l| l.line()),
                    message: format!("invalid YAML: {e}"),
                });
                None
            }
        }
    }

    /// Deserializes `value` (found at `base`) into `T`, reporting a failure at its exact path.
    pub fn de<T: DeserializeOwned>(&mut self, base: &str, value: &Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = join(base, &e.path().to_string());
                let inner = e.into_inner().to_string();
                let message = inner
                    .split(" at line ")
                    .next()
                    .unwrap_or(&inner)
                    .to_string();
                self.error(&path, message);
                None
            }
        }
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => base.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

/// Reads a file, turning an I/O failure into a config error.
pub fn read(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            path: String::new(),
            line: None,
            message: format!("cannot read: {e}"),
        }]
    })
}

// ---------- gateway.yaml ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, Groq, Together, OpenRouter, ...).
    Openai,
    /// Azure OpenAI: deployment paths, `api-version`, `api-key` header.
    Azure,
    /// Anthropic's Messages API: `x-api-key`, `anthropic-version`; OpenAI-format chat requests
    /// are translated both ways.
    Anthropic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// `env:VAR` (read at start), or a literal key.
    pub key: String,
    /// A name for rules to pin a target to this key.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    #[serde(default)]
    pub connect_ms: Option<u64>,
    #[serde(default)]
    pub first_byte_ms: Option<u64>,
    #[serde(default)]
    pub idle_ms: Option<u64>,
    #[serde(default)]
    pub write_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Azure only.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure only: model name to deployment name; the model name is used when absent.
    #[serde(default)]
    pub deployments: IndexMap<String, String>,
    #[serde(default)]
    pub timeouts: Option<TimeoutSpec>,
    /// Anthropic only: `max_tokens` for translated requests that give none (default 4096).
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `provider/model`.
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The top level of `gateway.yaml`; each field is read on its own so that one bad field does not
/// hide the others.
#[derive(Default)]
struct Top {
    listen: Option<String>,
    rules: Option<String>,
    limits: Option<LimitsSpec>,
    timeouts: Option<TimeoutSpec>,
    retry: Option<RetryPolicy>,
    shutdown_grace_secs: Option<u64>,
    simulator: Option<SimulatorSpec>,
    access_log: Option<String>,
    threads: Option<usize>,
    providers: IndexMap<String, Value>,
    models: Vec<Value>,
    governance: Option<GovernanceSpec>,
    cache: Option<crate::cache::CacheSpec>,
}

impl Top {
    fn read(r: &mut Report, root: &Value) -> Option<Top> {
        let Some(map) = root.as_mapping() else {
            r.error("", "the file must be a mapping of settings");
            return None;
        };
        let mut top = Top::default();
        let (mut has_providers, mut has_models) = (false, false);
        for (key, v) in map {
            let Some(key) = key.as_str() else {
                r.error("", "setting names must be strings");
                continue;
            };
            match key {
                "listen" => top.listen = r.de(key, v),
                "rules" => top.rules = r.de(key, v),
                "limits" => top.limits = r.de(key, v),
                "timeouts" => top.timeouts = r.de(key, v),
                "retry" => top.retry = r.de(key, v),
                "shutdown_grace_secs" => top.shutdown_grace_secs = r.de(key, v),
                "simulator" => top.simulator = r.de(key, v),
                "access_log" => top.access_log = r.de(key, v),
                "threads" => top.threads = r.de(key, v),
                "governance" => top.governance = r.de(key, v),
                "cache" => top.cache = r.de(key, v),
                "providers" => {
                    has_providers = true;
                    top.providers = r.de(key, v).unwrap_or_default();
                }
                "models" => {
                    has_models = true;
                    top.models = r.de(key, v).unwrap_or_default();
                }
                other => r.error(other, format!("unknown field `{other}`")),
            }
        }
        for (name, present) in [
            ("listen", map.contains_key("listen")),
            ("providers", has_providers),
            ("models", has_models),
        ] {
            if !present {
                r.error(name, format!("missing field `{name}`"));
            }
        }
        Some(top)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    /// The longest a client may take to send its whole request body.
    #[serde(default)]
    body_timeout_ms: Option<u64>,
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY as u64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSpec {
    pub listen: String,
}

fn one() -> f64 {
    1.0
}

const DEFAULT_RULES: &str = "rules.yaml";

pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
/// How long a client may take to send its request body, unless `limits.body_timeout_ms` says.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From the end of the request to the first byte of the answer.
    pub first_byte: Duration,
    /// The longest silence once the answer has begun.
    pub idle: Duration,
    pub write: Duration,
}

impl Timeouts {
    fn merged(&self, spec: Option<&TimeoutSpec>) -> Timeouts {
        let ms = Duration::from_millis;
        match spec {
            None => *self,
            Some(s) => Timeouts {
                connect: s.connect_ms.map_or(self.connect, ms),
                first_byte: s.first_byte_ms.map_or(self.first_byte, ms),
                idle: s.idle_ms.map_or(self.idle, ms),
                write: s.write_ms.map_or(self.write, ms),
            },
        }
    }
}

const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    first_byte: Duration::from_secs(120),
    idle: Duration::from_secs(60),
    write: Duration::from_secs(30),
};

/// How failures are retried, and when a failing target is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries of one target on connect errors, timeouts and 5xx before the next target.
    pub attempts_per_target: u32,
    /// The first backoff; it doubles on each retry, with full jitter, up to 2 s.
    pub backoff_ms: u64,
    /// Consecutive failures that open a provider's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit skips the provider before one request probes it.
    pub breaker_cooldown_ms: u64,
    /// How long a key that answered 401 or 403 is left out.
    pub bad_key_cooldown_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_per_target: 2,
            backoff_ms: 100,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            bad_key_cooldown_ms: 300_000,
        }
    }
}

/// A provider as configured: the raw spec plus its resolved timeouts.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub spec: ProviderSpec,
    pub timeouts: Timeouts,
}

/// The validated `gateway.yaml`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub rules_path: PathBuf,
    pub max_body_bytes: usize,
    /// The longest a client may take to send its request body.
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    pub simulator: Option<SocketAddr>,
    /// `None` writes access-log lines to stdout.
    pub access_log: Option<PathBuf>,
    /// Worker threads for the proxy; the number of cores when absent.
    pub threads: Option<usize>,
    pub retry: RetryPolicy,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelSpec>,
    /// Virtual keys, budgets and limits; `None` runs with no governance.
    pub governance: Option<GovernanceSpec>,
    /// The response cache; `None` caches nothing.
    pub cache: Option<crate::cache::CacheSpec>,
    /// The directory relative paths in the file are read from.
    pub dir: PathBuf,
}

/// `governance:` in `gateway.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSpec {
    /// `required` (default): every request needs a known key. `off`: keys are optional.
    #[serde(default)]
    pub auth: AuthMode,
    /// Where budgets, limits and counters live: `embedded` (memory and SQLite) or `redis`.
    #[serde(default)]
    pub state: StateKind,
    /// SQLite file for spend and admin changes, relative to this file.
    #[serde(default = "default_store")]
    pub store: String,
    /// `redis://host:port/db`, for `state: redis`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// How often spend is written to SQLite; a crash loses at most this much.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Completion tokens reserved for a request without `max_tokens`.
    #[serde(default = "default_reserve_tokens")]
    pub default_max_tokens: u64,
    #[serde(default)]
    pub alerts: Option<AlertsSpec>,
    #[serde(default)]
    pub admin: Option<AdminSpec>,
    /// Prices per million tokens that replace or add to the embedded table.
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, crate::governance::prices::PriceSpec>,
    #[serde(default)]
    pub customers: Vec<crate::governance::keys::CustomerSpec>,
    #[serde(default)]
    pub teams: Vec<crate::governance::keys::TeamSpec>,
    #[serde(default)]
    pub keys: Vec<crate::governance::keys::KeySpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSpec {
    /// Budget alerts are POSTed here as JSON.
    pub webhook: String,
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    pub listen: String,
    /// The admin key (`env:VAR` reads it from the environment); without one only `/metrics`
    /// is served.
    #[serde(default)]
    pub key: Option<String>,
}

fn default_store() -> String {
    "tollgate.db".into()
}

fn default_flush_ms() -> u64 {
    1000
}

fn default_reserve_tokens() -> u64 {
    1024
}

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<GatewayConfig, Vec<ConfigError>> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<GatewayConfig, Vec<ConfigError>> {
        let mut r = Report::new(path, text);
        let Some(root) = r.parse_yaml() else {
            return Err(r.errors);
        };
        let Some(top) = Top::read(&mut r, &root) else {
            return Err(r.errors);
        };

        let listen = top
            .listen
            .as_ref()
            .and_then(|l| parse_addr(&mut r, "listen", l));
        let simulator = top
            .simulator
            .as_ref()
            .and_then(|s| parse_addr(&mut r, "simulator.listen", &s.listen));
        let max_body_bytes = match top.limits.as_ref().map(|l| l.max_body_bytes) {
            None => DEFAULT_MAX_BODY,
            Some(0) => {
                r.error("limits.max_body_bytes", "must be greater than 0");
                DEFAULT_MAX_BODY
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let body_timeout = match top.limits.as_ref().and_then(|l| l.body_timeout_ms) {
            Some(0) => {
                r.error("limits.body_timeout_ms", "must be greater than 0");
                DEFAULT_BODY_TIMEOUT
            }
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_BODY_TIMEOUT,
        };
        if top.threads == Some(0) {
            r.error("threads", "must be at least 1");
        }
        if top.shutdown_grace_secs.is_some_and(|g| g > 3600) {
            r.error("shutdown_grace_secs", "must be at most 3600");
        }
        check_timeouts(&mut r, "timeouts", top.timeouts.as_ref());
        if let Some(retry) = top.retry {
            if retry.attempts_per_target == 0 || retry.attempts_per_target > 10 {
                r.error("retry.attempts_per_target", "must be from 1 to 10");
            }
            if retry.breaker_failures == 0 {
                r.error("retry.breaker_failures", "must be at least 1");
            }
        }
        let timeouts = DEFAULT_TIMEOUTS.merged(top.timeouts.as_ref());

        let mut providers = Vec::new();
        for (name, value) in &top.providers {
            let base = format!("providers.{name}");
            if name.is_empty() || name.contains('/') {
                r.error(
                    &base,
                    "a provider name must be non-empty and contain no '/'",
                );
            }
            let Some(spec) = r.de::<ProviderSpec>(&base, value) else {
                continue;
            };
            validate_provider(&mut r, &base, &spec);
            let timeouts = timeouts.merged(spec.timeouts.as_ref());
            providers.push(ProviderConfig {
                name: name.clone(),
                spec,
                timeouts,
            });
        }

        let mut models: Vec<ModelSpec> = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, value) in top.models.iter().enumerate() {
            let base = format!("models[{i}]");
            let Some(model) = r.de::<ModelSpec>(&base, value) else {
                continue;
            };
            match model.id.split_once('/') {
                Some((p, m)) if !m.is_empty() => {
                    if !top.providers.contains_key(p) {
                        r.error(&format!("{base}.id"), format!("unknown provider `{p}`"));
                    }
                }
                _ => r.error(&format!("{base}.id"), "a model id must be `provider/model`"),
            }
            if let Some((p, m)) = model.id.split_once('/') {
                let azure = top
                    .providers
                    .get(p)
                    .and_then(|v| v.get("kind"))
                    .and_then(Value::as_str)
                    == Some("azure");
                let deployment = providers
                    .iter()
                    .find(|c: &&ProviderConfig| c.name == p)
                    .and_then(|c| c.spec.deployments.get(m))
                    .map_or(m, String::as_str);
                if azure && !url_safe(deployment) {
                    r.error(
                        &format!("{base}.id"),
                        format!("azure deployment `{deployment}` may hold only letters, digits, '.', '_' and '-'"),
                    );
                }
            }
            if !names.insert(model.id.clone()) {
                r.error(
                    &format!("{base}.id"),
                    format!("`{}` is defined twice", model.id),
                );
            }
            for (j, alias) in model.aliases.iter().enumerate() {
                if alias.is_empty() || !names.insert(alias.clone()) {
                    r.error(
                        &format!("{base}.aliases[{j}]"),
                        format!("alias `{alias}` is empty or already used"),
                    );
                }
            }
            models.push(model);
        }

        if let Some(g) = &top.governance {
            if g.flush_ms == 0 {
                r.error("governance.flush_ms", "must be greater than 0");
            }
            if g.default_max_tokens == 0 {
                r.error("governance.default_max_tokens", "must be greater than 0");
            }
            if g.state == StateKind::Redis && g.redis_url.is_none() {
                r.error("governance.redis_url", "`state: redis` needs `redis_url`");
            }
            if let Some(a) = &g.alerts {
                if !(a.webhook.starts_with("http://") || a.webhook.starts_with("https://")) {
                    r.error(
                        "governance.alerts.webhook",
                        "must be an http:// or https:// URL",
                    );
                }
                if a.thresholds.iter().any(|t| !(1..=1000).contains(t)) {
                    r.error("governance.alerts.thresholds", "percentages from 1 to 1000");
                }
            }
            if let Some(a) = &g.admin {
                parse_addr(&mut r, "governance.admin.listen", &a.listen);
            }
        }
        if !r.errors.is_empty() {
            return Err(r.errors);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(GatewayConfig {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            rules_path: dir.join(top.rules.as_deref().unwrap_or(DEFAULT_RULES)),
            max_body_bytes,
            body_timeout,
            shutdown_grace: Duration::from_secs(top.shutdown_grace_secs.unwrap_or(10)),
            simulator,
            access_log: top.access_log.map(|p| dir.join(p)),
            threads: top.threads,
            retry: top.retry.unwrap_or_default(),
            providers,
            models,
            governance: top.governance,
            cache: top.cache,
            dir: dir.to_path_buf(),
        })
    }
}

fn parse_addr(r: &mut Report, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.error(path, format!("`{s}` is not an address like 127.0.0.1:8080"));
            None
        }
    }
}

/// Letters, digits, `.`, `_`, `-`: safe in a URL path segment or query value as they are.
fn url_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn check_timeouts(r: &mut Report, base: &str, spec: Option<&TimeoutSpec>) {
    let Some(t) = spec else { return };
    for (name, v) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("idle_ms", t.idle_ms),
        ("write_ms", t.write_ms),
    ] {
        if v == Some(0) {
            r.error(&format!("{base}.{name}"), "must be greater than 0");
        }
    }
}

fn validate_provider(r: &mut Report, base: &str, spec: &ProviderSpec) {
    check_timeouts(r, &format!("{base}.timeouts"), spec.timeouts.as_ref());
    if let Some(v) = &spec.api_version {
        if !url_safe(v) {
            r.error(
                &format!("{base}.api_version"),
                "may hold only letters, digits, '.', '_' and '-'",
            );
        }
    }
    if let Err(e) = crate::providers::BaseUrl::parse(&spec.base_url) {
        r.error(&format!("{base}.base_url"), e);
    }
    if spec.keys.len() > 64 {
        r.error(&format!("{base}.keys"), "at most 64 keys per provider");
    }
    if spec.default_max_tokens == Some(0) {
        r.error(
            &format!("{base}.default_max_tokens"),
            "must be greater than 0",
        );
    }
    for (i, key) in spec.keys.iter().enumerate() {
        if !(key.weight.is_finite() && key.weight > 0.0) {
            r.error(
                &format!("{base}.keys[{i}].weight"),
                "a weight must be a positive number",
            );
        }
        if key.key.trim().is_empty() || key.key == "env:" {
            r.error(
                &format!("{base}.keys[{i}].key"),
                "a key must be `env:VAR` or a literal key",
            );
        }
    }
    match spec.kind {
        ProviderKind::Azure if spec.api_version.is_none() => {
            r.error(
                &format!("{base}.api_version"),
                "an azure provider needs `api_version`",
            );
        }
        ProviderKind::Openai | ProviderKind::Anthropic
            if spec.api_version.is_some() || !spec.deployments.is_empty() =>
        {
            r.error(
                base,
                "`api_version` and `deployments` apply to azure providers only",
            );
        }
        _ => {}
    }
}

// ---------- rules.yaml ----------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesTop {
    rules: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// Rules are tried from the highest priority down; equal priorities in file order.
    #[serde(default)]
    pub priority: i64,
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    pub targets: Vec<TargetSpec>,
    /// Catalog ids tried in order after the weighted targets.
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// What a rule matches. Every condition given must hold; a list matches any of its values; `*`
/// and `?` are wildcards in names and header values.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The model name the client asked for.
    #[serde(default, deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// `chat`, `completions` or `embeddings`.
    #[serde(default, rename = "type", deserialize_with = "one_or_many")]
    pub kind: Vec<String>,
    /// Header name to value pattern.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// The `x-tollgate-tier` header.
    #[serde(default, deserialize_with = "one_or_many")]
    pub tier: Vec<String>,
    /// The virtual key, team and customer (set by governance).
    #[serde(default, deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub team: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub customer: Vec<String>,
    /// A comparison such as `>= 80` on the highest budget use across the request's levels.
    #[serde(default)]
    pub budget_used_percent: Option<String>,
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<String>()? {
                out.push(v);
            }
            if out.is_empty() {
                return Err(serde::de::Error::custom(
                    "an empty list matches nothing; leave the condition out to match anything",
                ));
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// A catalog id, `provider/model`.
    pub to: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// Use only this key of the provider (a key's `name`).
    #[serde(default)]
    pub key: Option<String>,
}

/// Where the rules file of `gateway` is, read leniently from a config that may be invalid.
pub fn rules_path_hint(gateway: &Path) -> PathBuf {
    let named = std::fs::read_to_string(gateway)
        .ok()
        .and_then(|t| serde_yaml::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("rules").and_then(Value::as_str).map(str::to_string));
    gateway
        .parent()
        .unwrap_or(Path::new("."))
        .join(named.as_deref().unwrap_or(DEFAULT_RULES))
}

/// Parses `rules.yaml`; checks against the catalog happen in `routing::Router::build`.
/// Parses `rules.yaml` rule by rule: a rule that cannot be read is `None` in its place, so the
/// others can still be checked. Problems with the whole file give no rules at all.
pub fn parse_rules(path: &Path, text: &str) -> (Vec<Option<RuleSpec>>, Vec<ConfigError>) {
    let mut r = Report::new(path, text);
    let Some(root) = r.parse_yaml() else {
        return (Vec::new(), r.errors);
    };
    // An empty file is refused: an editor that truncates before writing must not drop every rule.
    if !root.get("rules").is_some_and(Value::is_sequence) {
        r.error(
            "rules",
            "the file needs a `rules:` list (write `rules: []` for none)",
        );
        return (Vec::new(), r.errors);
    }
    let Some(top) = r.de::<RulesTop>("", &root) else {
        return (Vec::new(), r.errors);
    };
    let rules = top
        .rules
        .iter()
        .enumerate()
        .map(|(i, value)| r.de::<RuleSpec>(&format!("rules[{i}]"), value))
        .collect();
    (rules, r.errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
listen: 127.0.0.1:8080
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    keys:
      - key: env:OPENAI_API_KEY
models:
  - id: openai/gpt-4o-mini
    aliases: [gpt-4o-mini]
";

    fn errors(text: &str) -> Vec<ConfigError> {
        GatewayConfig::parse(Path::new("conf/gateway.yaml"), text).unwrap_err()
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = GatewayConfig::parse(Path::new("conf/gateway.yaml"), GOOD).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY);
        assert_eq!(c.rules_path, Path::new("conf/rules.yaml"));
        assert_eq!(c.providers[0].timeouts, DEFAULT_TIMEOUTS);
        assert_eq!(c.models[0].aliases, vec!["gpt-4o-mini".to_string()]);
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = GOOD.replace("    kind: openai\n", "    kind: openai\n    colour: blue\n");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "providers.openai.colour");
        assert_eq!(e[0].line, Some(5));
        assert!(
            e[0].message.contains("unknown field `colour`"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = GOOD.replace(
            "      - key: env:OPENAI_API_KEY\n",
            "      - key: env:OPENAI_API_KEY\n        weight: heavy\n",
        );
        let e = errors(&text);
        assert_eq!(e[0].path, "providers.openai.keys[0].weight");
        assert_eq!(e[0].line, Some(8));
        assert!(e[0].message.contains("invalid type"), "{}", e[0].message);
    }

    #[test]
    fn every_error_is_reported() {
        let text = "\
listen: nowhere
providers:
  a:
    kind: openai
    base_url: ftp://x
  b:
    kind: martian
    base_url: http://x
models:
  - id: c/m
  - id: a/m
    aliases: [m, m]
";
        let e = errors(text);
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listen",
                "providers.a.base_url",
                "providers.b.kind",
                "models[0].id",
                "models[1].aliases[1]"
            ],
            "{e:?}"
        );
        let lines: Vec<Option<usize>> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(1), Some(5), Some(7), Some(10), Some(12)]);
    }

    #[test]
    fn top_level_errors_do_not_hide_each_other() {
        let text = GOOD.replace("listen: 127.0.0.1:8080\n", "listen: 127.0.0.1:8080\nlimits: {}\nthreads: two\nshutdown_grace_secs: -1\ncolour: red\n");
        let e = errors(&text);
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["threads", "shutdown_grace_secs", "colour"], "{e:?}");
        assert_eq!(e[2].line, Some(5));
        let e = errors("providers: {}\nmodels: []\n");
        assert_eq!(e[0].path, "listen");
        assert!(e[0].message.contains("missing field `listen`"));
    }

    #[test]
    fn yaml_syntax_error_has_a_line() {
        let e = errors("listen: [\nproviders: {}\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].line.is_some());
    }

    #[test]
    fn rules_parse_and_report() {
        let (ok, e) = parse_rules(
            Path::new("r.yaml"),
            "rules:\n  - name: m\n    match: {model: [m, 'n*'], type: chat}\n    targets:\n      - to: a/m\n",
        );
        assert!(e.is_empty());
        let ok = ok[0].as_ref().unwrap();
        assert_eq!(ok.matches.model, ["m", "n*"]);
        assert_eq!(ok.matches.kind, ["chat"]);
        assert_eq!(ok.targets[0].weight, 1.0);
        // A rule that cannot be read leaves a gap; the one after it is still read.
        let (rules, e) = parse_rules(
            Path::new("r.yaml"),
            "rules:\n  - name: m\n    targets:\n      - to: a/m\n        weight: x\n  - name: n\n    targets: [{to: a/n}]\n",
        );
        assert_eq!(e[0].path, "rules[0].targets[0].weight");
        assert_eq!(e[0].line, Some(5));
        assert!(rules[0].is_none());
        assert_eq!(rules[1].as_ref().unwrap().name, "n");
        let (rules, e) = parse_rules(Path::new("r.yaml"), "rules: []\n");
        assert!(rules.is_empty() && e.is_empty());
        for empty in ["", "# only a comment\n", "rules:\n"] {
            let (_, e) = parse_rules(Path::new("r.yaml"), empty);
            assert_eq!(e[0].path, "rules", "{empty:?}");
        }
    }
}
