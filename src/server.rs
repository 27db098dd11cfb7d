//! Starting and running the gateway: load config, start the Pingora server with the proxy
//! service, watch `rules.yaml` (file changes and SIGHUP), drain on SIGTERM, flush the log.

use crate::config::{self, ConfigError, GatewayConfig, Report};
use crate::governance::prices::PriceTable;
use crate::governance::setup;
use crate::providers::Provider;
use crate::proxy::{Accounts, Drain, Gateway, Live};
use crate::routing::Router;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::AccessLog;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Loads both files. With `lookup` off (for `check`), provider hosts are not resolved.
pub fn load(path: &Path, lookup: bool) -> Result<Live, Vec<ConfigError>> {
    let gateway = match GatewayConfig::load(path) {
        Ok(g) => Arc::new(g),
        Err(mut errors) => {
            // Still report what can be checked in the rules file on its own.
            let rules = config::rules_path_hint(path);
            if let Ok(text) = config::read(&rules) {
                errors.extend(config::parse_rules(&rules, &text).1);
            }
            return Err(errors);
        }
    };
    let env = |var: &str| std::env::var(var).ok();
    let mut errors = Vec::new();
    let mut providers = Vec::new();
    for p in &gateway.providers {
        match Provider::resolve(p, &env, lookup) {
            Ok(p) => providers.push(Arc::new(p)),
            Err(message) => errors.push(ConfigError {
                file: path.to_path_buf(),
                path: format!("providers.{}", p.name),
                line: None,
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if let Some(c) = &gateway.cache {
        let names: Vec<&str> = gateway.providers.iter().map(|p| p.name.as_str()).collect();
        errors.extend(
            crate::cache::Cache::check(c, &gateway.dir, &names)
                .into_iter()
                .map(|message| ConfigError {
                    file: path.to_path_buf(),
                    path: "cache".into(),
                    line: None,
                    message,
                }),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    if let Some(g) = &gateway.governance {
        errors.extend(
            crate::governance::setup::check(
                g,
                &gateway
                    .providers
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .into_iter()
            .map(|message| ConfigError {
                file: path.to_path_buf(),
                path: "governance".into(),
                line: None,
                message,
            }),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    let providers = Arc::new(providers);
    let router = load_rules(&gateway, &providers)?;
    Ok(Live {
        gateway,
        providers,
        router,
    })
}

fn load_rules(
    gateway: &GatewayConfig,
    providers: &[Arc<Provider>],
) -> Result<Router, Vec<ConfigError>> {
    let path = &gateway.rules_path;
    let text = config::read(path)?;
    let (rules, errors) = config::parse_rules(path, &text);
    let mut report = Report::new(path, &text);
    report.errors = errors;
    // Rules that were read are checked even when others were not, so one run shows every error.
    match Router::build(gateway, providers, &rules, &mut report) {
        Some(router) if report.errors.is_empty() => Ok(router),
        _ => Err(report.errors),
    }
}

/// Re-reads `rules.yaml` and swaps it in; an invalid file is refused and the old rules stay.
/// A fault in the reload itself is logged, and the watcher goes on.
pub fn reload(live: &ArcSwap<Live>, why: &str) -> bool {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| try_reload(live, why)));
    attempt.unwrap_or_else(|_| {
        log::error!("rules reload ({why}) failed inside the gateway; keeping the previous rules");
        false
    })
}

fn try_reload(live: &ArcSwap<Live>, why: &str) -> bool {
    let current = live.load_full();
    match load_rules(&current.gateway, &current.providers) {
        Ok(router) => {
            live.store(Arc::new(Live {
                gateway: current.gateway.clone(),
                providers: current.providers.clone(),
                router,
            }));
            log::info!(
                "rules reloaded ({why}) from {}",
                current.gateway.rules_path.display()
            );
            true
        }
        Err(errors) => {
            for e in &errors {
                log::error!("rules reload refused ({why}), keeping the previous rules: {e}");
            }
            false
        }
    }
}

/// Watches `rules.yaml` for changes (polled, so editors' rename-on-save works) and SIGHUP.
struct Reloader {
    live: Arc<ArcSwap<Live>>,
    path: PathBuf,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot watch SIGHUP: {e}");
                None
            }
        };
        let mut last = stamp(&self.path);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    last = stamp(&self.path);
                    reload(&self.live, "SIGHUP");
                }
                _ = tick.tick() => {
                    let now = stamp(&self.path);
                    if now != last {
                        last = now;
                        reload(&self.live, "file changed");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// SIGTERM: mark the gateway draining (`/ready` answers 503), wait until no request is in
/// flight or the grace period ends, then let Pingora stop. SIGINT stops at once.
struct DrainOnTerm {
    drain: Arc<Drain>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot watch SIGTERM/SIGINT");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        log::info!(
            "SIGTERM: draining {} in-flight request(s), up to {:?}",
            self.drain.in_flight(),
            self.grace
        );
        self.drain.start();
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.drain.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        if self.drain.in_flight() > 0 {
            log::warn!(
                "grace period over with {} request(s) still in flight",
                self.drain.in_flight()
            );
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Runs the gateway until SIGTERM (drain, then exit) or SIGINT.
pub fn run(config_path: &Path, listen: Option<SocketAddr>) -> Result<(), String> {
    let live = load(config_path, true).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let gw = live.gateway.clone();
    let addr = listen.unwrap_or(gw.listen);
    // Pingora retries a busy port for a while and then fails inside a service thread; check first.
    std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    for p in live.providers.iter() {
        if let Some(why) = &p.unavailable {
            log::warn!("provider `{}` is unavailable: {why}", p.name);
        }
    }
    if let Some(addr) = gw.simulator {
        let sim = crate::sim::SimConfig {
            listen: addr,
            ..Default::default()
        };
        let bound = crate::sim::spawn_thread(sim)
            .map_err(|e| format!("cannot start the simulator on {addr}: {e}"))?;
        log::info!("bundled simulator listening on {bound}");
    }
    let (access_log, log_thread) = AccessLog::start(gw.access_log.as_deref())
        .map_err(|e| format!("cannot open the access log: {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let cache = match &gw.cache {
        Some(spec) => Some(crate::cache::Cache::start(spec, &gw.dir)?),
        None => None,
    };
    let governance = match &gw.governance {
        Some(spec) => Some(setup::start(spec, &gw.dir, metrics.clone(), cache.clone())?),
        None => None,
    };
    if let Some(addr) = governance.as_ref().and_then(|g| g.admin_addr) {
        log::info!("admin API listening on {addr}");
    }
    let prices = match &governance {
        Some(g) => g.gov.prices.clone(),
        None => PriceTable::embedded(),
    };
    let accounts = Arc::new(Accounts {
        gov: governance.as_ref().map(|g| g.gov.clone()),
        prices,
        metrics,
    });

    // Draining happens before Pingora is told to stop (see `DrainOnTerm`), so its own grace
    // period, which always sleeps in full, is zero.
    let conf = ServerConf {
        threads: gw
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // Attempts are bounded by each request's plan (targets, keys, tries), not by Pingora's 16.
        max_retries: 1024,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let live = Arc::new(ArcSwap::from_pointee(live));
    let drain = Arc::new(Drain::default());
    let gateway = Gateway {
        live: live.clone(),
        log: access_log.clone(),
        drain: drain.clone(),
        accounts,
        cache,
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&addr.to_string());
    server.add_service(proxy);
    server.add_service(background_service(
        "rules reloader",
        Reloader {
            live,
            path: gw.rules_path.clone(),
        },
    ));
    log::info!("tollgate listening on {addr}");
    println!("tollgate listening on {addr}");
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnTerm {
            drain,
            grace: gw.shutdown_grace,
        }),
    });
    // Requests cut off at shutdown settled as their contexts dropped; write the spend out.
    if let Some(g) = governance {
        g.stop();
    }
    access_log.flush();
    drop(log_thread);
    log::info!("tollgate stopped");
    Ok(())
}
