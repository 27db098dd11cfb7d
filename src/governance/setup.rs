//! Building governance from `gateway.yaml` at start, and stopping it without losing spend.

use super::admin::{Admin, Fixed};
use super::keys::{env_secret, hash_key};
use super::period::SystemClock;
use super::persist::{Db, Flusher};
use super::prices::PriceTable;
use super::store::{MemoryStore, Store};
use super::{Governance, Settings};
use crate::config::{AuthMode, GovernanceSpec, StateKind};
use crate::telemetry::metrics::Metrics;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What `tollgate check` can find without starting anything; `providers` are the names
/// `gateway.yaml` defines.
pub fn check(spec: &GovernanceSpec, providers: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    for k in &spec.keys {
        for p in k.providers.keys() {
            if !providers.contains(&p.as_str()) {
                errors.push(format!(
                    "key `{}`: providers.{p}: unknown provider `{p}`",
                    k.id
                ));
            }
        }
    }
    if let Some(url) = &spec.redis_url {
        if let Err(e) = redis::Client::open(url.as_str()) {
            errors.push(format!("redis_url: {e}"));
        }
    }
    if let Some(k) = spec.admin.as_ref().and_then(|a| a.key.as_deref()) {
        if let Err(e) = env_secret(k) {
            errors.push(format!("admin.key: {e}"));
        }
    }
    if let Err(e) = PriceTable::embedded().with_overrides(&spec.prices) {
        errors.push(format!("prices: {e}"));
    }
    let fixed = fixed(spec);
    if let Err(e) =
        super::keys::Directory::build(fixed.customers, fixed.teams, fixed.keys, &env_secret)
    {
        errors.extend(e);
    }
    errors
}

fn fixed(spec: &GovernanceSpec) -> Fixed {
    Fixed {
        customers: spec.customers.clone(),
        teams: spec.teams.clone(),
        keys: spec.keys.clone(),
    }
}

/// Governance while the gateway runs.
pub struct Running {
    pub gov: Arc<Governance>,
    pub admin_addr: Option<SocketAddr>,
    flusher: Option<Flusher>,
}

pub fn start(
    spec: &GovernanceSpec,
    dir: &Path,
    metrics: Arc<Metrics>,
    cache: Option<Arc<crate::cache::Cache>>,
) -> Result<Running, String> {
    let prices = PriceTable::embedded()
        .with_overrides(&spec.prices)
        .map_err(|e| format!("governance.prices: {e}"))?;
    // Admin-made entities live in SQLite in both states; counters move to Redis with `redis`.
    let db = Some(Arc::new(Db::open(&dir.join(&spec.store))?));
    let (store, memory): (Arc<dyn Store>, Option<Arc<MemoryStore>>) = match spec.state {
        StateKind::Embedded => {
            let m = Arc::new(MemoryStore::default());
            (m.clone(), Some(m))
        }
        StateKind::Redis => {
            let url = spec.redis_url.as_deref().unwrap_or_default();
            (Arc::new(super::redis::RedisStore::connect(url)?), None)
        }
    };
    let clock = Arc::new(SystemClock);
    if let (Some(db), Some(m)) = (&db, &memory) {
        // Only the embedded state keeps counters here.
        let n = db.restore(m, super::period::Clock::now_ms(&SystemClock))?;
        log::info!("restored {n} spend and limit counters from {}", spec.store);
    }
    let settings = Settings {
        auth_required: spec.auth == AuthMode::Required,
        default_max_tokens: spec.default_max_tokens,
        alert_thresholds: spec
            .alerts
            .as_ref()
            .map(|a| a.thresholds.clone())
            .unwrap_or_default(),
    };
    let gov = Governance::new(Default::default(), prices, store, clock, settings);
    let admin_key = match spec.admin.as_ref().and_then(|a| a.key.as_deref()) {
        Some(k) => Some(hash_key(
            &env_secret(k).map_err(|e| format!("governance.admin.key: {e}"))?,
        )),
        None => None,
    };
    let metrics_for_admin = metrics.clone();
    let admin = Arc::new(Admin::new(
        gov.clone(),
        fixed(spec),
        db.clone(),
        admin_key,
        Box::new(move || metrics_for_admin.render()),
        cache,
    ));
    let directory = admin.build(None).map_err(|e| e.join("\n"))?;
    gov.directory.store(Arc::new(directory));
    if let Some(a) = &spec.alerts {
        let (tx, _thread) = super::alerts::start(a.webhook.clone());
        gov.set_alerts(tx);
    }
    let admin_addr = match &spec.admin {
        Some(a) => {
            let addr: SocketAddr = a.listen.parse().map_err(|_| {
                format!("governance.admin.listen: `{}` is not an address", a.listen)
            })?;
            Some(
                super::admin::spawn(admin, addr)
                    .map_err(|e| format!("cannot serve the admin API on {addr}: {e}"))?,
            )
        }
        None => None,
    };
    let flusher = match (db, memory) {
        (Some(db), Some(m)) => Some(Flusher::start(db, m, Duration::from_millis(spec.flush_ms))),
        _ => None,
    };
    Ok(Running {
        gov,
        admin_addr,
        flusher,
    })
}

impl Running {
    /// Settles every request still queued, then writes the spend out.
    pub fn stop(self) {
        self.gov.shutdown();
        if let Some(f) = self.flusher {
            f.stop();
        }
    }
}
