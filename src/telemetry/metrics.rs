//! Prometheus metrics: requests, tokens, cost, latency and refusals, labelled by provider,
//! model, virtual key and team. Served at `/metrics` on the admin listener.

use crate::governance::prices::Usd;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    tokens: IntCounterVec,
    latency: HistogramVec,
    refusals: IntCounterVec,
    unpriced: IntCounterVec,
    /// Spend in exact nano-USD by (provider, model, key, team); shown as decimal USD.
    cost: Mutex<BTreeMap<[String; 4], i64>>,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    /// What cache hits saved, in nano-USD by (layer, model, key).
    cache_saved: Mutex<BTreeMap<[String; 3], i64>>,
}

/// What one finished request adds.
pub struct Sample<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub key: &'a str,
    pub team: &'a str,
    pub status: u16,
    pub seconds: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// `None` when the model has no price.
    pub cost: Option<Usd>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(c.clone()));
    c
}

/// Metric definitions are constants; a bad one is a programming error caught by the tests.
fn unreachable_metric(name: &str) -> ! {
    log::error!("metric {name} is malformed");
    std::process::abort()
}

const LABELS: [&str; 4] = ["provider", "model", "key", "team"];

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "tollgate_requests_total",
            "Requests served, by upstream provider, model, virtual key, team and status.",
            &["provider", "model", "key", "team", "status"],
        );
        let tokens = counter(
            &registry,
            "tollgate_tokens_total",
            "Tokens used; kind is input (cached included), output or cached.",
            &["provider", "model", "key", "team", "kind"],
        );
        let refusals = counter(
            &registry,
            "tollgate_refusals_total",
            "Requests refused before any upstream call, by reason and level.",
            &["reason", "level", "key", "team"],
        );
        let unpriced = counter(
            &registry,
            "tollgate_unpriced_requests_total",
            "Requests whose model has no price, so their cost is unknown.",
            &["provider", "model"],
        );
        let cache_hits = counter(
            &registry,
            "tollgate_cache_hits_total",
            "Requests answered from the cache, by layer (exact or semantic), model and key.",
            &["layer", "model", "key"],
        );
        let cache_misses = counter(
            &registry,
            "tollgate_cache_misses_total",
            "Requests the cache was asked for and could not answer, by model and key.",
            &["model", "key"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request to the end of the response.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &LABELS,
        )
        .unwrap_or_else(|_| unreachable_metric("tollgate_request_duration_seconds"));
        let _ = registry.register(Box::new(latency.clone()));
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tollgate_build_info",
                "Always 1; labelled with the version.",
            ),
            &["version"],
        )
        .unwrap_or_else(|_| unreachable_metric("tollgate_build_info"));
        let _ = registry.register(Box::new(build_info.clone()));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            registry,
            requests,
            tokens,
            latency,
            refusals,
            unpriced,
            cost: Mutex::new(BTreeMap::new()),
            cache_hits,
            cache_misses,
            cache_saved: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn record(&self, s: &Sample) {
        let labels = [s.provider, s.model, s.key, s.team];
        let status = s.status.to_string();
        self.requests
            .with_label_values(&[s.provider, s.model, s.key, s.team, &status])
            .inc();
        self.latency.with_label_values(&labels).observe(s.seconds);
        for (kind, n) in [
            ("input", s.input_tokens),
            ("output", s.output_tokens),
            ("cached", s.cached_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[s.provider, s.model, s.key, s.team, kind])
                    .inc_by(n);
            }
        }
        match s.cost {
            Some(c) => {
                let mut cost = self.cost.lock().unwrap_or_else(|e| e.into_inner());
                let k = labels.map(str::to_string);
                let v = cost.entry(k).or_default();
                *v = v.saturating_add(c.0);
            }
            None if s.input_tokens + s.output_tokens > 0 => {
                self.unpriced
                    .with_label_values(&[s.provider, s.model])
                    .inc();
            }
            None => {}
        }
    }

    /// A cache hit; `saved` is what the answer cost when it was made (`None`: unpriced).
    pub fn cache_hit(&self, layer: &str, model: &str, key: &str, saved: Option<Usd>) {
        self.cache_hits
            .with_label_values(&[layer, model, key])
            .inc();
        let mut all = self.cache_saved.lock().unwrap_or_else(|e| e.into_inner());
        let v = all
            .entry([layer.to_string(), model.to_string(), key.to_string()])
            .or_default();
        *v = v.saturating_add(saved.map_or(0, |s| s.0));
    }

    pub fn cache_miss(&self, model: &str, key: &str) {
        self.cache_misses.with_label_values(&[model, key]).inc();
    }

    pub fn refused(&self, reason: &str, level: &str, key: &str, team: &str) {
        self.refusals
            .with_label_values(&[reason, level, key, team])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        let mut out = String::from_utf8(buf).unwrap_or_default();
        out.push_str("# HELP tollgate_cost_usd_total Spend in USD, from exact integer nano-USD.\n");
        out.push_str("# TYPE tollgate_cost_usd_total counter\n");
        let cost = self.cost.lock().unwrap_or_else(|e| e.into_inner());
        for ([provider, model, key, team], v) in cost.iter() {
            out.push_str(&format!(
                "tollgate_cost_usd_total{{provider=\"{}\",model=\"{}\",key=\"{}\",team=\"{}\"}} {}\n",
                escape(provider),
                escape(model),
                escape(key),
                escape(team),
                Usd(*v)
            ));
        }
        drop(cost);
        out.push_str(
            "# HELP tollgate_cache_saved_usd_total Upstream cost that cache hits saved, in USD.\n",
        );
        out.push_str("# TYPE tollgate_cache_saved_usd_total counter\n");
        let saved = self.cache_saved.lock().unwrap_or_else(|e| e.into_inner());
        for ([layer, model, key], v) in saved.iter() {
            out.push_str(&format!(
                "tollgate_cache_saved_usd_total{{layer=\"{}\",model=\"{}\",key=\"{}\"}} {}\n",
                escape(layer),
                escape(model),
                escape(key),
                Usd(*v)
            ));
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_and_unpriced_models_are_counted() {
        let m = Metrics::default();
        let mut s = Sample {
            provider: "openai",
            model: "gpt-4o",
            key: "bot",
            team: "search",
            status: 200,
            seconds: 0.2,
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 0,
            cost: Some(Usd(100_000_001)),
        };
        for _ in 0..3 {
            m.record(&s);
        }
        s.cost = None;
        s.model = "mystery";
        m.record(&s);
        let text = m.render();
        assert!(text.contains("tollgate_cost_usd_total{provider=\"openai\",model=\"gpt-4o\",key=\"bot\",team=\"search\"} 0.300000003\n"), "{text}");
        assert!(
            text.contains(
                "tollgate_unpriced_requests_total{model=\"mystery\",provider=\"openai\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("tollgate_requests_total{key=\"bot\",model=\"gpt-4o\",provider=\"openai\",status=\"200\",team=\"search\"} 3"), "{text}");
        assert!(
            text.contains("tollgate_tokens_total{key=\"bot\",kind=\"output\""),
            "{text}"
        );
        m.cache_hit("exact", "gpt-4o", "bot", Some(Usd(1_500)));
        m.cache_hit("exact", "gpt-4o", "bot", Some(Usd(1_500)));
        m.cache_miss("gpt-4o", "bot");
        let text = m.render();
        assert!(text.contains("tollgate_cache_saved_usd_total{layer=\"exact\",model=\"gpt-4o\",key=\"bot\"} 0.000003\n"), "{text}");
        assert!(
            text.contains(
                "tollgate_cache_hits_total{key=\"bot\",layer=\"exact\",model=\"gpt-4o\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_cache_misses_total{key=\"bot\",model=\"gpt-4o\"} 1"),
            "{text}"
        );
    }
}
