//! Routing: a request's facts (model, endpoint, headers, and later its key, team, customer and
//! budget use) select a route, an ordered plan of upstream targets. Rules from `rules.yaml` are
//! tried from the highest priority down; the first that matches wins. Without a match, a catalog
//! id or alias routes to its own provider. Built once per load; a request costs a scan of the
//! rules and one weighted roll.

use crate::api::Endpoint;
use crate::config::{GatewayConfig, MatchSpec, Report, RuleSpec};
use crate::providers::Provider;
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
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
    /// Only this key of the provider, when the rule pins one.
    pub key: Option<usize>,
}

#[derive(Debug)]
pub struct Route {
    /// The rule that chose this route; `None` for a catalog default.
    pub rule: Option<String>,
    pub targets: Vec<Target>,
    /// Indexes into `targets` with their weights; only targets whose provider is available.
    weighted: Vec<(usize, f64)>,
    /// Indexes into `targets`, tried in order after the weighted ones.
    fallback: Vec<usize>,
    /// Why targets were left out (a provider whose key is not set).
    pub unavailable: Vec<String>,
}

impl Route {
    /// The ids of the targets whose answers a request with this `plan` wants: the weighted
    /// targets the plan kept, or with none of them, the first of the fallback chain if kept, or
    /// else the plan's first target. A cached answer from any other target (a fallback that stood
    /// in, a target since removed, one the key may not use) is not served.
    pub fn accepted_ids(&self, plan: &[usize]) -> Vec<&str> {
        let id = |i: &usize| self.targets[*i].id.as_str();
        let primary: Vec<usize> = if self.weighted.is_empty() {
            self.fallback.first().copied().into_iter().collect()
        } else {
            self.weighted.iter().map(|(i, _)| *i).collect()
        };
        let kept: Vec<&str> = primary
            .iter()
            .filter(|i| plan.contains(i))
            .map(id)
            .collect();
        if kept.is_empty() {
            plan.first().map(id).into_iter().collect()
        } else {
            kept
        }
    }

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

/// What a rule can look at.
pub struct Facts<'a> {
    pub model: &'a str,
    pub endpoint: Endpoint,
    pub headers: &'a HeaderMap,
    pub key: Option<&'a str>,
    pub team: Option<&'a str>,
    pub customer: Option<&'a str>,
    pub budget_used_percent: Option<f64>,
}

impl<'a> Facts<'a> {
    /// The facts every request has; governance fills in the rest.
    pub fn new(model: &'a str, endpoint: Endpoint, headers: &'a HeaderMap) -> Self {
        Facts {
            model,
            endpoint,
            headers,
            key: None,
            team: None,
            customer: None,
            budget_used_percent: None,
        }
    }
}

/// The header a `tier` condition reads.
pub const TIER_HEADER: &str = "x-tollgate-tier";

/// `*` matches any run of characters, `?` any one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// A parsed `budget_used_percent` condition.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Threshold(Cmp, f64);

impl Threshold {
    fn parse(s: &str) -> Result<Threshold, String> {
        let s = s.trim();
        let (cmp, rest) = [
            ("<=", Cmp::Le),
            (">=", Cmp::Ge),
            ("==", Cmp::Eq),
            ("<", Cmp::Lt),
            (">", Cmp::Gt),
        ]
        .iter()
        .find_map(|(op, cmp)| s.strip_prefix(op).map(|r| (*cmp, r)))
        .ok_or_else(|| format!("`{s}` must be a comparison such as `>= 80`"))?;
        let n: f64 = rest
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("`{s}` must compare with a number, such as `>= 80`"))?;
        if !n.is_finite() {
            return Err(format!("`{s}` must compare with a finite number"));
        }
        Ok(Threshold(cmp, n))
    }

    fn holds(self, v: f64) -> bool {
        match self.0 {
            Cmp::Ge => v >= self.1,
            Cmp::Gt => v > self.1,
            Cmp::Le => v <= self.1,
            Cmp::Lt => v < self.1,
            Cmp::Eq => v == self.1,
        }
    }

    /// Whether any percentage (0 and up) satisfies it.
    fn satisfiable(self) -> bool {
        !matches!((self.0, self.1), (Cmp::Lt, n) if n <= 0.0)
            && !matches!((self.0, self.1), (Cmp::Le | Cmp::Eq, n) if n < 0.0)
    }
}

#[derive(Debug)]
struct Matcher {
    models: Vec<String>,
    kinds: Vec<Endpoint>,
    /// Header name and value pattern; names are unique.
    headers: Vec<(HeaderName, String)>,
    tiers: Vec<String>,
    key: Vec<String>,
    team: Vec<String>,
    customer: Vec<String>,
    budget: Option<Threshold>,
}

fn any_glob(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob(p, v)))
}

/// Every value `narrow` allows is allowed by `wide` (used to find shadowed rules).
fn covers(wide: &[String], narrow: &[String]) -> bool {
    wide.is_empty()
        || (!narrow.is_empty()
            && narrow.iter().all(|n| {
                wide.iter()
                    .any(|w| w == n || (!n.contains(['*', '?']) && glob(w, n)) || w == "*")
            }))
}

impl Matcher {
    fn compile(spec: &MatchSpec, base: &str, r: &mut Report) -> Matcher {
        let kinds = spec
            .kind
            .iter()
            .filter_map(|k| match k.as_str() {
                "chat" => Some(Endpoint::Chat),
                "completions" => Some(Endpoint::Completions),
                "embeddings" => Some(Endpoint::Embeddings),
                "messages" => Some(Endpoint::Messages),
                other => {
                    r.error(
                        &format!("{base}.type"),
                        format!("unknown request type `{other}` (chat, completions, embeddings or messages)"),
                    );
                    None
                }
            })
            .collect();
        let mut headers: Vec<(HeaderName, String)> = Vec::new();
        for (name, value) in &spec.headers {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => headers.push((h, value.clone())),
                Err(_) => r.error(
                    &format!("{base}.headers.{name}"),
                    format!("`{name}` is not a header name"),
                ),
            }
        }
        let budget = spec
            .budget_used_percent
            .as_deref()
            .and_then(|b| match Threshold::parse(b) {
                Ok(t) if !t.satisfiable() => {
                    r.error(
                        &format!("{base}.budget_used_percent"),
                        format!("`{b}` can never hold"),
                    );
                    None
                }
                Ok(t) => Some(t),
                Err(e) => {
                    r.error(&format!("{base}.budget_used_percent"), e);
                    None
                }
            });
        Matcher {
            models: spec.model.clone(),
            kinds,
            headers,
            tiers: spec.tier.clone(),
            key: spec.key.clone(),
            team: spec.team.clone(),
            customer: spec.customer.clone(),
            budget,
        }
    }

    fn matches(&self, f: &Facts) -> bool {
        any_glob(&self.models, Some(f.model))
            && (self.kinds.is_empty() || self.kinds.contains(&f.endpoint))
            && self.headers_match(f.headers)
            && any_glob(&self.key, f.key)
            && any_glob(&self.team, f.team)
            && any_glob(&self.customer, f.customer)
            && self
                .budget
                .is_none_or(|t| f.budget_used_percent.is_some_and(|v| t.holds(v)))
    }

    fn headers_match(&self, headers: &HeaderMap) -> bool {
        let value = |name: &HeaderName| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        self.headers
            .iter()
            .all(|(name, pattern)| value(name).is_some_and(|v| glob(pattern, &v)))
            && (self.tiers.is_empty()
                || any_glob(
                    &self.tiers,
                    value(&HeaderName::from_static(TIER_HEADER)).as_deref(),
                ))
    }

    /// Whether every request this matcher takes is taken by `self` too.
    fn covers(&self, other: &Matcher) -> bool {
        let header_values = |m: &Matcher, name: &HeaderName| -> Vec<String> {
            m.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        covers(&self.models, &other.models)
            && (self.kinds.is_empty()
                || (!other.kinds.is_empty() && other.kinds.iter().all(|k| self.kinds.contains(k))))
            && self
                .headers
                .iter()
                .all(|(n, _)| covers(&header_values(self, n), &header_values(other, n)))
            && covers(&self.tiers, &other.tiers)
            && covers(&self.key, &other.key)
            && covers(&self.team, &other.team)
            && covers(&self.customer, &other.customer)
            && (self.budget.is_none() || self.budget == other.budget)
    }
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    route: Arc<Route>,
    /// Its match compiled without errors (only such rules are compared for shadowing).
    sound: bool,
}

#[derive(Debug)]
pub struct Router {
    /// Highest priority first.
    rules: Vec<Rule>,
    /// Catalog ids and aliases, each routed to its own provider.
    catalog: HashMap<String, Arc<Route>>,
    /// The `/v1/models` answer, built once.
    pub models_json: Bytes,
    /// A rule tests `budget_used_percent`, so requests must read their budgets first.
    pub uses_budget: bool,
}

impl Router {
    pub fn route(&self, facts: &Facts) -> Option<&Arc<Route>> {
        self.rules
            .iter()
            .find(|r| r.matcher.matches(facts))
            .map(|r| &r.route)
            .or_else(|| self.catalog.get(facts.model))
    }

    /// Compiles the catalog and the rules. Problems in the rules are reported, and `None` returned.
    pub fn build(
        gw: &GatewayConfig,
        providers: &[Arc<Provider>],
        rules: &[Option<RuleSpec>],
        r: &mut Report,
    ) -> Option<Router> {
        let provider_index: HashMap<&str, usize> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let catalog_targets: HashMap<&str, Target> = gw
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
                        key: None,
                    },
                ))
            })
            .collect();
        let errors_before = r.errors.len();

        let make_route = |rule: Option<String>,
                          targets: Vec<Target>,
                          weights: Vec<f64>,
                          fallback_from: usize| {
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
                    weighted.push((i, weights.get(i).copied().unwrap_or(1.0)));
                } else {
                    fallback.push(i);
                }
            }
            Arc::new(Route {
                rule,
                targets,
                weighted,
                fallback,
                unavailable,
            })
        };

        let mut catalog: HashMap<String, Arc<Route>> = HashMap::new();
        for m in &gw.models {
            if let Some(t) = catalog_targets.get(m.id.as_str()) {
                let route = make_route(None, vec![t.clone()], vec![1.0], 1);
                for name in std::iter::once(&m.id).chain(&m.aliases) {
                    catalog.insert(name.clone(), route.clone());
                }
            }
        }

        let mut compiled: Vec<(i64, usize, Rule)> = Vec::new();
        let mut names = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            // A rule that could not be read was reported by the parser.
            let Some(rule) = rule else { continue };
            let base = format!("rules[{i}]");
            if rule.name.trim().is_empty() {
                r.error(&format!("{base}.name"), "a rule needs a name");
            }
            if let Some(prev) = names.insert(rule.name.as_str(), i) {
                r.error(
                    &format!("{base}.name"),
                    format!("`{}` is already the name of rules[{prev}]", rule.name),
                );
            }
            if rule.targets.is_empty() {
                r.error(
                    &format!("{base}.targets"),
                    "a rule needs at least one target",
                );
            }
            let before = r.errors.len();
            let matcher = Matcher::compile(&rule.matches, &format!("{base}.match"), r);
            let sound = r.errors.len() == before;
            let mut targets = Vec::new();
            let mut weights = Vec::new();
            let named = rule
                .targets
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    (
                        format!("{base}.targets[{j}]"),
                        t.to.as_str(),
                        Some((t.weight, t.key.as_deref())),
                    )
                })
                .chain(
                    rule.fallback
                        .iter()
                        .enumerate()
                        .map(|(j, to)| (format!("{base}.fallback[{j}]"), to.as_str(), None)),
                );
            for (path, to, weighted) in named {
                let to_path = if weighted.is_some() {
                    format!("{path}.to")
                } else {
                    path.clone()
                };
                let Some(t) = catalog_targets.get(to) else {
                    let why = match to.split_once('/') {
                        Some((p, _)) if !provider_index.contains_key(p) => {
                            format!("unknown provider `{p}` in `{to}`")
                        }
                        _ => format!(
                            "`{to}` is not a model id in the catalog (`models` in gateway.yaml)"
                        ),
                    };
                    r.error(&to_path, why);
                    continue;
                };
                let mut t = t.clone();
                if let Some((w, key)) = weighted {
                    if !(w.is_finite() && w > 0.0) {
                        r.error(
                            &format!("{path}.weight"),
                            "a weight must be a positive number",
                        );
                    }
                    weights.push(w);
                    if let Some(key) = key {
                        match providers[t.provider]
                            .keys
                            .iter()
                            .position(|k| k.name.as_deref() == Some(key))
                        {
                            Some(k) => t.key = Some(k),
                            None => r.error(
                                &format!("{path}.key"),
                                format!(
                                    "provider `{}` has no key named `{key}`",
                                    providers[t.provider].name
                                ),
                            ),
                        }
                    }
                }
                targets.push(t);
            }
            if !weights.iter().sum::<f64>().is_finite() {
                r.error(
                    &format!("{base}.targets"),
                    "the weights add up to more than a number can hold",
                );
            }
            // Targets that were not found are left out of both lists.
            let weighted = weights.len();
            let route = make_route(Some(rule.name.clone()), targets, weights, weighted);
            compiled.push((
                rule.priority,
                i,
                Rule {
                    matcher,
                    route,
                    sound,
                },
            ));
        }
        compiled.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        // A rule wholly covered by one tried before it can never match.
        for (k, (_, i, rule)) in compiled.iter().enumerate() {
            let shadow = compiled[..k].iter().find(|(_, _, earlier)| {
                rule.sound && earlier.sound && earlier.matcher.covers(&rule.matcher)
            });
            if let Some((_, j, _)) = shadow {
                r.error(
                    &format!("rules[{i}].match"),
                    format!(
                        "can never match: rules[{j}] (`{}`) takes every request it would",
                        rules[*j].as_ref().map_or("", |r| r.name.as_str())
                    ),
                );
            }
        }
        if r.errors.len() > errors_before {
            return None;
        }

        let mut listed: Vec<(&String, String)> = Vec::new();
        for m in &gw.models {
            let owner = m.id.split('/').next().unwrap_or_default().to_string();
            listed.extend(
                std::iter::once(&m.id)
                    .chain(&m.aliases)
                    .map(|n| (n, owner.clone())),
            );
        }
        for rule in rules.iter().flatten() {
            for model in rule
                .matches
                .model
                .iter()
                .filter(|m| !m.contains(['*', '?']))
            {
                if !listed.iter().any(|(n, _)| *n == model) {
                    listed.push((model, "tollgate".to_string()));
                }
            }
        }
        let data: Vec<_> = listed
            .iter()
            .map(
                |(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}),
            )
            .collect();
        let uses_budget = compiled.iter().any(|(_, _, r)| r.matcher.budget.is_some());
        let models_json = Bytes::from(json!({"object": "list", "data": data}).to_string());
        Some(Router {
            rules: compiled.into_iter().map(|(_, _, r)| r).collect(),
            catalog,
            models_json,
            uses_budget,
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
    keys: [{key: a, name: first}, {key: b, name: second}]
models:
  - id: openai/gpt-4o-mini
    aliases: [gpt-4o-mini]
  - id: sim/gpt-4o-mini
  - id: sim/small
  - id: sim/big
";

    fn router(rules: &str) -> Result<Router, Vec<String>> {
        let gw = GatewayConfig::parse(Path::new("gateway.yaml"), GW).unwrap();
        let providers: Vec<_> = gw
            .providers
            .iter()
            .map(|p| Arc::new(Provider::resolve(p, &|_| None, true).unwrap()))
            .collect();
        assert_eq!(providers[0].kind, ProviderKind::Openai);
        let (rules, errors) = parse_rules(Path::new("rules.yaml"), rules);
        let mut r = Report::new(Path::new("rules.yaml"), "");
        r.errors = errors;
        match Router::build(&gw, &providers, &rules, &mut r) {
            Some(router) if r.errors.is_empty() => Ok(router),
            _ => Err(r.errors.iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn a_rule_that_cannot_be_read_does_not_hide_the_others_errors() {
        let e = router(
            "rules:\n  - name: broken\n    targets: [{to: sim/m, weight: heavy}]\n  - name: next\n    targets: [{to: nowhere/m}]\n",
        )
        .err()
        .unwrap();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("rules[0].targets[0].weight"), "{e:?}");
        assert!(
            e[1].contains("rules[1].targets[0].to: unknown provider `nowhere`"),
            "{e:?}"
        );
    }

    #[test]
    fn an_unknown_target_beside_known_ones_is_reported_not_fatal() {
        // Unknown weighted targets before and between known ones, with a fallback after them.
        for targets in [
            "[{to: openai/typo}, {to: sim/small}]",
            "[{to: sim/small}, {to: openai/typo, weight: 2}, {to: sim/big}]",
        ] {
            let e = router(&format!(
                "rules:\n  - name: r\n    targets: {targets}\n    fallback: [sim/big, nowhere/x]\n"
            ))
            .err()
            .unwrap();
            assert_eq!(e.len(), 2, "{e:?}");
            assert!(e[0].contains("is not a model id in the catalog"), "{e:?}");
            assert!(
                e[1].contains("fallback[1]: unknown provider `nowhere`"),
                "{e:?}"
            );
        }
    }

    fn facts<'a>(model: &'a str, headers: &'a HeaderMap) -> Facts<'a> {
        Facts::new(model, Endpoint::Chat, headers)
    }

    fn chosen(r: &Router, f: &Facts) -> Option<String> {
        r.route(f)
            .map(|route| route.targets[route.plan(0.0)[0]].id.clone())
    }

    #[test]
    fn accepted_answers_come_from_the_targets_the_plan_kept() {
        let r = router(
            "rules:\n  - name: r\n    match: {model: chat}\n    targets: [{to: sim/big, weight: 1}, {to: sim/small, weight: 1}]\n    fallback: [sim/gpt-4o-mini]\n",
        )
        .unwrap();
        let h = HeaderMap::new();
        let route = r.route(&facts("chat", &h)).unwrap();
        let ids = |plan: &[usize]| route.accepted_ids(plan);
        let idx = |id: &str| route.targets.iter().position(|t| t.id == id).unwrap();
        let (small, mini) = (idx("sim/small"), idx("sim/gpt-4o-mini"));
        let mut both = ids(&route.plan(0.0));
        both.sort();
        assert_eq!(both, ["sim/big", "sim/small"]);
        // A key that may not use sim/big accepts only sim/small's answers.
        assert_eq!(ids(&[small, mini]), ["sim/small"]);
        // One that may use neither weighted target accepts the fallback it will be sent to.
        assert_eq!(ids(&[mini]), ["sim/gpt-4o-mini"]);
        assert!(ids(&[]).is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob("gpt-4o*", "gpt-4o-mini"));
        assert!(glob("*mini", "gpt-4o-mini"));
        assert!(glob("g?t-*", "gpt-4"));
        assert!(glob("*", ""));
        assert!(!glob("gpt-4o", "gpt-4o-mini"));
        assert!(!glob("claude-*", "gpt-4o"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn aliases_and_ids_route_directly_without_rules() {
        let r = router("rules: []\n").unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            chosen(&r, &facts("sim/small", &h)).as_deref(),
            Some("sim/small")
        );
        let alias = r.route(&facts("gpt-4o-mini", &h)).unwrap();
        assert!(alias.plan(0.5).is_empty(), "openai has no key set");
        assert_eq!(
            alias.unavailable,
            vec!["openai/gpt-4o-mini (set TG_TEST_NEVER_SET)".to_string()]
        );
        assert!(r.route(&facts("nope", &h)).is_none());
    }

    const RULES: &str = "\
rules:
  - name: premium
    priority: 10
    match: {model: 'gpt-4o*', tier: premium}
    targets: [{to: sim/big}]
  - name: header-split
    priority: 5
    match: {model: 'gpt-4o*', headers: {x-team: 'research-*'}}
    targets: [{to: sim/small, weight: 3}, {to: sim/gpt-4o-mini}]
    fallback: [sim/big]
  - name: embeddings
    match: {type: embeddings}
    targets: [{to: sim/small}]
  - name: mini
    match: {model: gpt-4o-mini}
    targets: [{to: openai/gpt-4o-mini}, {to: sim/gpt-4o-mini, key: second}]
";

    #[test]
    fn first_matching_rule_by_priority_wins() {
        let r = router(RULES).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            chosen(&r, &facts("gpt-4o-mini", &h)).as_deref(),
            Some("sim/gpt-4o-mini")
        );
        h.insert("x-team", "research-nlp".parse().unwrap());
        assert_eq!(
            chosen(&r, &facts("gpt-4o-mini", &h)).as_deref(),
            Some("sim/small")
        );
        h.insert("x-tollgate-tier", "premium".parse().unwrap());
        assert_eq!(
            chosen(&r, &facts("gpt-4o-mini", &h)).as_deref(),
            Some("sim/big")
        );
        let h = HeaderMap::new();
        let mut f = facts("anything", &h);
        f.endpoint = Endpoint::Embeddings;
        assert_eq!(chosen(&r, &f).as_deref(), Some("sim/small"));
        assert_eq!(
            r.route(&facts("gpt-4o-mini", &h)).unwrap().rule.as_deref(),
            Some("mini")
        );
    }

    #[test]
    fn weighted_targets_then_fallback_and_pinned_keys() {
        let r = router(RULES).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-team", "research-x".parse().unwrap());
        let route = r.route(&facts("gpt-4o", &h)).unwrap();
        assert_eq!(route.plan(0.70), vec![0, 1, 2]);
        assert_eq!(route.plan(0.80), vec![1, 0, 2]);
        let h = HeaderMap::new();
        let mini = r.route(&facts("gpt-4o-mini", &h)).unwrap();
        assert_eq!(mini.plan(0.1), vec![1], "openai is unavailable");
        assert_eq!(mini.targets[1].key, Some(1));
    }

    #[test]
    fn tier_and_header_conditions_must_both_hold() {
        let r = router(
            "rules:\n  - name: t\n    match: {tier: gold, headers: {x-region: 'é*'}}\n    targets: [{to: sim/small}]\n",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-tollgate-tier", "gold".parse().unwrap());
        assert_eq!(
            chosen(&r, &facts("sim/big", &h)).as_deref(),
            Some("sim/big")
        );
        h.insert(
            "x-region",
            http::HeaderValue::from_bytes("été".as_bytes()).unwrap(),
        );
        assert_eq!(
            chosen(&r, &facts("sim/big", &h)).as_deref(),
            Some("sim/small")
        );
        h.insert("x-tollgate-tier", "silver".parse().unwrap());
        assert_eq!(
            chosen(&r, &facts("sim/big", &h)).as_deref(),
            Some("sim/big")
        );
    }

    #[test]
    fn governance_hooks_match_when_set() {
        let r = router(
            "rules:\n  - name: cheap\n    match: {team: ml, budget_used_percent: '>= 80'}\n    targets: [{to: sim/small}]\n",
        )
        .unwrap();
        let h = HeaderMap::new();
        let mut f = facts("sim/big", &h);
        assert_eq!(chosen(&r, &f).as_deref(), Some("sim/big"));
        f.team = Some("ml");
        f.budget_used_percent = Some(79.9);
        assert_eq!(chosen(&r, &f).as_deref(), Some("sim/big"));
        f.budget_used_percent = Some(80.0);
        assert_eq!(chosen(&r, &f).as_deref(), Some("sim/small"));
    }

    #[test]
    fn models_list_has_catalog_and_literal_rule_models() {
        let r = router(
            "rules:\n  - name: a\n    match: {model: [my-model, 'wild*']}\n    targets: [{to: sim/small}]\n",
        )
        .unwrap();
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
                "sim/big",
                "my-model"
            ]
        );
    }

    #[test]
    fn bad_rules_are_reported() {
        let e = router(
            "rules:
  - name: a
    match: {type: images, budget_used_percent: 'lots', headers: {'bad header': x}}
    targets:
      - to: nowhere/x
      - to: sim/unknown
      - {to: sim/small, weight: 0, key: third}
  - name: a
    targets: []
  - name: never
    match: {budget_used_percent: '< 0'}
    targets: [{to: sim/small}]
",
        )
        .unwrap_err();
        let expect = [
            "rules[0].match.type: unknown request type `images`",
            "rules[0].match.headers.bad header",
            "rules[0].match.budget_used_percent: `lots` must be a comparison",
            "rules[0].targets[0].to: unknown provider `nowhere`",
            "rules[0].targets[1].to: `sim/unknown` is not a model id",
            "rules[0].targets[2].weight: a weight must be a positive number",
            "rules[0].targets[2].key: provider `sim` has no key named `third`",
            "rules[1].name: `a` is already the name",
            "rules[1].targets: a rule needs at least one target",
            "rules[2].match.budget_used_percent: `< 0` can never hold",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expect) {
            assert!(got.contains(want), "{got} does not say {want}");
        }
    }

    #[test]
    fn shadowed_rules_are_reported() {
        let e = router(
            "rules:
  - name: all-chat
    priority: 5
    match: {type: chat}
    targets: [{to: sim/small}]
  - name: mini-chat
    match: {model: gpt-4o-mini, type: chat}
    targets: [{to: sim/big}]
  - name: everything
    targets: [{to: sim/big}]
  - name: after-everything
    match: {model: 'x*'}
    targets: [{to: sim/big}]
",
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].contains("rules[1].match: can never match: rules[0] (`all-chat`)"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("rules[3].match: can never match: rules[2] (`everything`)"),
            "{}",
            e[1]
        );
        // A later rule with a higher priority is tried first, and can shadow an earlier one.
        let e = router(
            "rules:\n  - name: narrow\n    match: {model: a}\n    targets: [{to: sim/big}]\n  - name: wide\n    priority: 10\n    targets: [{to: sim/small}]\n",
        )
        .unwrap_err();
        assert!(
            e[0].contains("rules[0].match: can never match: rules[1] (`wide`)"),
            "{e:?}"
        );
        // A narrower rule with a higher priority is fine.
        router("rules:\n  - name: narrow\n    priority: 9\n    match: {model: a}\n    targets: [{to: sim/big}]\n  - name: wide\n    targets: [{to: sim/small}]\n").unwrap();
    }
}
