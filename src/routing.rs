//! Routing: the model a client names (alias, catalog id or rule name) becomes a route, an ordered
//! plan of upstream targets. Built once per `rules.yaml` load; a request costs one map lookup and
//! one weighted roll.

use crate::config::{GatewayConfig, Report, RuleSpec};
use crate::providers::Provider;
use bytes::Bytes;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// A catalog model on a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The catalog id, `provider/model`.
    pub id: String,
    pub provider: usize,
    /// The model name the provider knows.
    pub model: String,
}

#[derive(Debug)]
pub struct Route {
    pub targets: Vec<Target>,
    /// Indexes into `targets` with their weights; only targets whose provider is available.
    weighted: Vec<(usize, f64)>,
    /// Indexes into `targets`, tried in order after the weighted ones.
    fallback: Vec<usize>,
    /// Why targets were left out (a provider whose key is not set).
    pub unavailable: Vec<String>,
}

impl Route {
    /// The order in which targets are tried: one weighted pick first (`roll` in [0, 1)), then the
    /// other weighted targets, then the fallback chain; each target once.
    pub fn plan(&self, roll: f64) -> Vec<usize> {
        let total: f64 = self.weighted.iter().map(|(_, w)| w).sum();
        let mut point = roll * total;
        let first = self
            .weighted
            .iter()
            .find(|(_, w)| {
                point -= w;
                point < 0.0
            })
            .or(self.weighted.last())
            .map(|(i, _)| *i);
        let mut order: Vec<usize> = first.into_iter().collect();
        for i in self
            .weighted
            .iter()
            .map(|(i, _)| *i)
            .chain(self.fallback.iter().copied())
        {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        order
    }
}

#[derive(Debug)]
pub struct Router {
    routes: HashMap<String, Arc<Route>>,
    /// The `/v1/models` answer, built once.
    pub models_json: Bytes,
}

impl Router {
    pub fn lookup(&self, model: &str) -> Option<&Arc<Route>> {
        self.routes.get(model)
    }

    /// Compiles the catalog and the rules. Problems in the rules are reported, and `None` returned.
    pub fn build(
        gw: &GatewayConfig,
        providers: &[Arc<Provider>],
        rules: &[RuleSpec],
        r: &mut Report,
    ) -> Option<Router> {
        let provider_index: HashMap<&str, usize> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let catalog: HashMap<&str, Target> = gw
            .models
            .iter()
            .filter_map(|m| {
                let (p, model) = m.id.split_once('/')?;
                let provider = *provider_index.get(p)?;
                Some((
                    m.id.as_str(),
                    Target {
                        id: m.id.clone(),
                        provider,
                        model: model.to_string(),
                    },
                ))
            })
            .collect();
        let errors_before = r.errors.len();

        let make_route = |targets: Vec<Target>, weights: Vec<f64>, fallback_from: usize| {
            let mut unavailable = Vec::new();
            let mut weighted = Vec::new();
            let mut fallback = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                let p = &providers[t.provider];
                if !p.available() {
                    unavailable.push(format!(
                        "{} ({})",
                        t.id,
                        p.unavailable.as_deref().unwrap_or_default()
                    ));
                } else if i < fallback_from {
                    weighted.push((i, weights[i]));
                } else {
                    fallback.push(i);
                }
            }
            Arc::new(Route {
                targets,
                weighted,
                fallback,
                unavailable,
            })
        };

        let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
        for m in &gw.models {
            if let Some(t) = catalog.get(m.id.as_str()) {
                let route = make_route(vec![t.clone()], vec![1.0], 1);
                for name in std::iter::once(&m.id).chain(&m.aliases) {
                    routes.insert(name.clone(), route.clone());
                }
            }
        }

        let mut seen = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let base = format!("rules[{i}]");
            if let Some(prev) = seen.insert(rule.model.as_str(), i) {
                r.error(
                    &format!("{base}.model"),
                    format!("`{}` already has a rule (rules[{prev}])", rule.model),
                );
            }
            if rule.model.is_empty() {
                r.error(&format!("{base}.model"), "must not be empty");
            }
            if rule.targets.is_empty() {
                r.error(
                    &format!("{base}.targets"),
                    "a rule needs at least one target",
                );
            }
            let mut targets = Vec::new();
            let mut weights = Vec::new();
            let named = rule
                .targets
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    (
                        format!("{base}.targets[{j}].to"),
                        t.to.as_str(),
                        Some(t.weight),
                    )
                })
                .chain(
                    rule.fallback
                        .iter()
                        .enumerate()
                        .map(|(j, to)| (format!("{base}.fallback[{j}]"), to.as_str(), None)),
                );
            for (path, to, weight) in named {
                match catalog.get(to) {
                    Some(t) => targets.push(t.clone()),
                    None => {
                        let why = match to.split_once('/') {
                            Some((p, _)) if !provider_index.contains_key(p) => format!("unknown provider `{p}` in `{to}`"),
                            _ => format!("`{to}` is not a model id in the catalog (`models` in gateway.yaml)"),
                        };
                        r.error(&path, why);
                    }
                }
                if let Some(w) = weight {
                    if !(w.is_finite() && w > 0.0) {
                        r.error(
                            &path.replace(".to", ".weight"),
                            "a weight must be a positive number",
                        );
                    }
                    weights.push(w);
                }
            }
            if r.errors.len() == errors_before {
                let route = make_route(targets, weights, rule.targets.len());
                routes.insert(rule.model.clone(), route);
            }
        }
        if r.errors.len() > errors_before {
            return None;
        }

        let mut names: Vec<(&String, String)> = Vec::new();
        for m in &gw.models {
            let owner = m.id.split('/').next().unwrap_or_default().to_string();
            names.extend(
                std::iter::once(&m.id)
                    .chain(&m.aliases)
                    .map(|n| (n, owner.clone())),
            );
        }
        for rule in rules {
            if !names.iter().any(|(n, _)| *n == &rule.model) {
                names.push((&rule.model, "tollgate".to_string()));
            }
        }
        let data: Vec<_> = names
            .iter()
            .map(
                |(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}),
            )
            .collect();
        let models_json = Bytes::from(json!({"object": "list", "data": data}).to_string());
        Some(Router {
            routes,
            models_json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_rules, GatewayConfig, ProviderKind};
    use std::path::Path;

    const GW: &str = "\
listen: 127.0.0.1:8080
providers:
  openai:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    keys: [{key: env:TG_TEST_NEVER_SET}]
  sim:
    kind: openai
    base_url: http://127.0.0.1:8089/v1
models:
  - id: openai/gpt-4o-mini
    aliases: [gpt-4o-mini]
  - id: sim/gpt-4o-mini
  - id: sim/small
";

    fn router(rules: &str) -> Result<Router, Vec<String>> {
        let gw = GatewayConfig::parse(Path::new("gateway.yaml"), GW).unwrap();
        let providers: Vec<_> = gw
            .providers
            .iter()
            .map(|p| Arc::new(Provider::resolve(p, &|_| None, true).unwrap()))
            .collect();
        assert_eq!(providers[0].kind, ProviderKind::Openai);
        let rules = parse_rules(Path::new("rules.yaml"), rules).unwrap();
        let mut r = Report::new(Path::new("rules.yaml"), "");
        Router::build(&gw, &providers, &rules, &mut r)
            .ok_or_else(|| r.errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn aliases_and_ids_route_directly() {
        let r = router("rules: []\n").unwrap();
        let sim = r.lookup("sim/small").unwrap();
        assert_eq!(sim.plan(0.5), vec![0]);
        assert_eq!(sim.targets[0].model, "small");
        let alias = r.lookup("gpt-4o-mini").unwrap();
        assert!(alias.plan(0.5).is_empty(), "openai has no key set");
        assert_eq!(
            alias.unavailable,
            vec!["openai/gpt-4o-mini (set TG_TEST_NEVER_SET)".to_string()]
        );
        assert!(r.lookup("nope").is_none());
    }

    #[test]
    fn rules_give_weighted_targets_then_fallback() {
        let r = router(
            "rules:\n  - model: gpt-4o-mini\n    targets:\n      - to: openai/gpt-4o-mini\n      - to: sim/small\n        weight: 3\n    fallback: [sim/gpt-4o-mini]\n  - model: mix\n    targets:\n      - {to: sim/small, weight: 1}\n      - {to: sim/gpt-4o-mini, weight: 1}\n",
        )
        .unwrap();
        let route = r.lookup("gpt-4o-mini").unwrap();
        assert_eq!(
            route.plan(0.99),
            vec![1, 2],
            "the unavailable openai target is skipped"
        );
        let mix = r.lookup("mix").unwrap();
        assert_eq!(mix.plan(0.25), vec![0, 1]);
        assert_eq!(mix.plan(0.75), vec![1, 0]);
        let v: serde_json::Value = serde_json::from_slice(&r.models_json).unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "openai/gpt-4o-mini",
                "gpt-4o-mini",
                "sim/gpt-4o-mini",
                "sim/small",
                "mix"
            ]
        );
    }

    #[test]
    fn bad_rules_are_reported() {
        let e = router(
            "rules:\n  - model: a\n    targets:\n      - to: nowhere/x\n      - to: sim/unknown\n        weight: 0\n  - model: a\n    targets: []\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].contains("unknown provider `nowhere`"));
        assert!(e[1].contains("not a model id"));
        assert!(e[2].contains("rules[0].targets[1].weight"));
        assert!(e[3].contains("already has a rule"));
        assert!(e[4].contains("at least one target"));
    }
}
