//! Virtual keys and the hierarchy they sit in: Customer → Team → Virtual Key → Provider. Each
//! level may carry budgets, rate limits and model rules. Keys are held only as SHA-256 hashes.

use super::period::{parse_utc, Period, Reset};
use super::prices::Usd;
use crate::routing::glob;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub type KeyHash = [u8; 32];

pub fn hash_key(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn to_hex(h: &KeyHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<KeyHash> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A budget in USD per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    #[serde(serialize_with = "usd_out", deserialize_with = "usd_in")]
    pub usd: Usd,
    pub period: Period,
    #[serde(default)]
    pub reset: Reset,
    /// Rolling windows count from here (RFC 3339, UTC); default 1970-01-01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

fn usd_in<'de, D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        U(u64),
        F(f64),
    }
    let text = match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::U(u) => u.to_string(),
        Text::F(f) => format!("{f}"),
    };
    Usd::from_decimal(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{text}` is not an amount in USD (at most 9 decimals, not negative)"
        ))
    })
}

fn usd_out<S: Serializer>(v: &Usd, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// At most `max` per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub max: u64,
    pub per: Period,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Requests per window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<WindowSpec>,
    /// Prompt plus completion tokens per window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<WindowSpec>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u32>,
}

/// Model access: a model must match an `allow` pattern (when there are any) and no `deny` one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// What every level may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub models: ModelsSpec,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub models: ModelsSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub models: ModelsSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The key's name: what logs, metrics and the admin API show. Never the secret.
    pub id: String,
    /// The secret (config only; `env:VAR` reads it from the environment). Never stored.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// The secret's SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// For a key with no team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Budgets and limits on this key's use of one provider.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, PolicySpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub models: ModelsSpec,
}

macro_rules! policy_of {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn policy(&self) -> PolicySpec {
                PolicySpec {
                    budgets: self.budgets.clone(),
                    limits: self.limits.clone(),
                    models: self.models.clone(),
                }
            }
        }
    )*};
}
policy_of!(CustomerSpec, TeamSpec, KeySpec);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LevelKind {
    Customer,
    Team,
    Key,
    Provider,
}

impl LevelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LevelKind::Customer => "customer",
            LevelKind::Team => "team",
            LevelKind::Key => "key",
            LevelKind::Provider => "provider",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Budget {
    pub limit: Usd,
    pub period: Period,
    pub reset: Reset,
    pub anchor_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub budgets: Vec<Budget>,
    pub requests: Vec<WindowSpec>,
    pub tokens: Vec<WindowSpec>,
    pub concurrent: Option<u32>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Policy {
    pub fn from_spec(spec: &PolicySpec) -> Result<Policy, String> {
        let mut budgets = Vec::new();
        for (i, b) in spec.budgets.iter().enumerate() {
            let anchor_ms = match &b.since {
                None => 0,
                Some(s) => parse_utc(s).ok_or_else(|| {
                    format!("budgets[{i}].since: `{s}` is not an RFC 3339 UTC time")
                })?,
            };
            if spec.budgets[..i]
                .iter()
                .any(|o| o.period == b.period && o.reset == b.reset)
            {
                return Err(format!(
                    "budgets[{i}]: a second {} budget on one level",
                    b.period.as_str()
                ));
            }
            budgets.push(Budget {
                limit: b.usd,
                period: b.period,
                reset: b.reset,
                anchor_ms,
            });
        }
        for (what, list) in [
            ("requests", &spec.limits.requests),
            ("tokens", &spec.limits.tokens),
        ] {
            for (i, w) in list.iter().enumerate() {
                if w.max == 0 {
                    return Err(format!("limits.{what}[{i}].max must be at least 1"));
                }
                if list[..i].iter().any(|o| o.per == w.per) {
                    return Err(format!(
                        "limits.{what}[{i}]: a second limit per {}",
                        w.per.as_str()
                    ));
                }
            }
        }
        if spec.limits.concurrent == Some(0) {
            return Err("limits.concurrent must be at least 1".into());
        }
        Ok(Policy {
            budgets,
            requests: spec.limits.requests.clone(),
            tokens: spec.limits.tokens.clone(),
            concurrent: spec.limits.concurrent,
            allow: spec
                .models
                .allow
                .iter()
                .map(|m| m.to_ascii_lowercase())
                .collect(),
            deny: spec
                .models
                .deny
                .iter()
                .map(|m| m.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether `model` passes this level's allow and deny lists. A model id `provider/model`
    /// also passes a pattern written for the bare model.
    pub fn allows(&self, model: &str) -> bool {
        let model = model.to_ascii_lowercase();
        let bare = model.split_once('/').map(|(_, m)| m);
        let hit = |pats: &[String]| {
            pats.iter()
                .any(|p| glob(p, &model) || bare.is_some_and(|b| glob(p, b)))
        };
        (self.allow.is_empty() || hit(&self.allow)) && !hit(&self.deny)
    }
}

/// One level a request is governed at; `scope` names its counters (`team:search`).
#[derive(Debug, Clone)]
pub struct Level {
    pub kind: LevelKind,
    pub id: String,
    pub scope: String,
    pub policy: Arc<Policy>,
}

/// A virtual key, resolved with the levels above it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub team: Option<String>,
    pub customer: Option<String>,
    pub expires_ms: Option<i64>,
    pub revoked: bool,
    /// Customer, team, key: those that exist, top down.
    pub levels: Vec<Level>,
    /// Per-provider policy for this key.
    pub providers: HashMap<String, Level>,
}

/// Every customer, team and key, built from config and the admin store.
#[derive(Debug, Default)]
pub struct Directory {
    pub by_hash: HashMap<KeyHash, Arc<KeyEntry>>,
    /// Every level with a policy, by scope (`team:search`, `key:bot/provider:openai`).
    pub levels: BTreeMap<String, Level>,
    pub customers: BTreeMap<String, CustomerSpec>,
    pub teams: BTreeMap<String, TeamSpec>,
    pub keys: BTreeMap<String, KeySpec>,
}

impl Directory {
    /// Builds the directory; `secret` resolves a key spec's secret (`env:VAR`).
    pub fn build(
        customers: Vec<CustomerSpec>,
        teams: Vec<TeamSpec>,
        keys: Vec<KeySpec>,
        secret: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Directory, Vec<String>> {
        let mut errors = Vec::new();
        let mut d = Directory::default();
        let mut policies: HashMap<(LevelKind, String), Arc<Policy>> = HashMap::new();
        fn policy(
            policies: &mut HashMap<(LevelKind, String), Arc<Policy>>,
            kind: LevelKind,
            id: &str,
            spec: &PolicySpec,
            errors: &mut Vec<String>,
        ) {
            match Policy::from_spec(spec) {
                Ok(p) => {
                    policies.insert((kind, id.to_string()), Arc::new(p));
                }
                Err(e) => errors.push(format!("{} `{id}`: {e}", kind.as_str())),
            }
        }
        for c in customers {
            if !valid_id(&c.id) {
                errors.push(format!("customer id `{}`: {ID_RULE}", c.id));
            }
            policy(
                &mut policies,
                LevelKind::Customer,
                &c.id,
                &c.policy(),
                &mut errors,
            );
            if d.customers.insert(c.id.clone(), c.clone()).is_some() {
                errors.push(format!("customer `{}` is defined twice", c.id));
            }
        }
        for t in teams {
            if !valid_id(&t.id) {
                errors.push(format!("team id `{}`: {ID_RULE}", t.id));
            }
            if let Some(c) = &t.customer {
                if !d.customers.contains_key(c) {
                    errors.push(format!("team `{}`: unknown customer `{c}`", t.id));
                }
            }
            policy(
                &mut policies,
                LevelKind::Team,
                &t.id,
                &t.policy(),
                &mut errors,
            );
            if d.teams.insert(t.id.clone(), t.clone()).is_some() {
                errors.push(format!("team `{}` is defined twice", t.id));
            }
        }
        for k in keys {
            let id = k.id.clone();
            if !valid_id(&id) {
                errors.push(format!("key id `{id}`: {ID_RULE}"));
            }
            let hash = match (&k.key, &k.key_sha256) {
                (Some(s), None) => secret(s).and_then(|s| {
                    // Clients' keys are read trimmed, so such a key could never match.
                    if s.is_empty() || s.trim() != s {
                        Err("the secret is empty or begins or ends with spaces".into())
                    } else {
                        Ok(hash_key(&s))
                    }
                }),
                (None, Some(h)) => {
                    from_hex(h).ok_or_else(|| "key_sha256 is not 64 hex digits".into())
                }
                (Some(_), Some(_)) => Err("give `key` or `key_sha256`, not both".into()),
                (None, None) => Err("needs `key` or `key_sha256`".into()),
            };
            let expires_ms = match &k.expires {
                None => Ok(None),
                Some(s) => parse_utc(s)
                    .map(Some)
                    .ok_or_else(|| format!("expires: `{s}` is not an RFC 3339 UTC time")),
            };
            let team = k.team.as_ref().and_then(|t| d.teams.get(t));
            if let Some(t) = &k.team {
                if team.is_none() {
                    errors.push(format!("key `{id}`: unknown team `{t}`"));
                }
            }
            let customer = match (team, &k.customer) {
                (Some(t), Some(c)) if t.customer.as_ref() != Some(c) => {
                    errors.push(format!(
                        "key `{id}`: team `{}` is not in customer `{c}`",
                        t.id
                    ));
                    None
                }
                (Some(t), _) => t.customer.clone(),
                (None, c) => c.clone(),
            };
            if let Some(c) = &customer {
                if !d.customers.contains_key(c) {
                    errors.push(format!("key `{id}`: unknown customer `{c}`"));
                }
            }
            policy(&mut policies, LevelKind::Key, &id, &k.policy(), &mut errors);
            let mut providers = HashMap::new();
            for (name, spec) in &k.providers {
                match Policy::from_spec(spec) {
                    Ok(p) => {
                        let level = Level {
                            kind: LevelKind::Provider,
                            id: name.clone(),
                            scope: format!("key:{id}/provider:{name}"),
                            policy: Arc::new(p),
                        };
                        d.levels.insert(level.scope.clone(), level.clone());
                        providers.insert(name.clone(), level);
                    }
                    Err(e) => errors.push(format!("key `{id}` provider `{name}`: {e}")),
                }
            }
            let (hash, expires_ms) = match (hash, expires_ms) {
                (Ok(h), Ok(e)) => (h, e),
                (Err(e), _) | (_, Err(e)) => {
                    errors.push(format!("key `{id}`: {e}"));
                    continue;
                }
            };
            let mut levels = Vec::new();
            let mut level = |kind: LevelKind, lid: &str| {
                if let Some(p) = policies.get(&(kind, lid.to_string())) {
                    levels.push(Level {
                        kind,
                        id: lid.to_string(),
                        scope: format!("{}:{lid}", kind.as_str()),
                        policy: p.clone(),
                    });
                }
            };
            if let Some(c) = &customer {
                level(LevelKind::Customer, c);
            }
            if let Some(t) = &k.team {
                level(LevelKind::Team, t);
            }
            level(LevelKind::Key, &id);
            let entry = KeyEntry {
                id: id.clone(),
                team: k.team.clone(),
                customer,
                expires_ms,
                revoked: k.revoked,
                levels,
                providers,
            };
            let mut stored = k.clone();
            stored.key = None;
            stored.key_sha256 = Some(to_hex(&hash));
            if d.keys.insert(id.clone(), stored).is_some() {
                errors.push(format!("key `{id}` is defined twice"));
            }
            if d.by_hash.insert(hash, Arc::new(entry)).is_some() {
                errors.push(format!("key `{id}` has the same secret as another key"));
            }
        }
        for ((kind, id), policy) in policies {
            let scope = format!("{}:{id}", kind.as_str());
            let level = Level {
                kind,
                id,
                scope: scope.clone(),
                policy,
            };
            d.levels.insert(scope, level);
        }
        if errors.is_empty() {
            Ok(d)
        } else {
            Err(errors)
        }
    }
}

/// A directory from YAML lists of customers, teams and keys; for tests.
#[cfg(test)]
pub(crate) fn directory_from_yaml(
    yaml: &str,
    secret: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Directory, Vec<String>> {
    #[derive(Deserialize)]
    struct All {
        #[serde(default)]
        customers: Vec<CustomerSpec>,
        #[serde(default)]
        teams: Vec<TeamSpec>,
        #[serde(default)]
        keys: Vec<KeySpec>,
    }
    let a: All = serde_yaml::from_str(yaml).map_err(|e| vec![e.to_string()])?;
    Directory::build(a.customers, a.teams, a.keys, secret)
}

/// A secret as written in config: `env:VAR` reads it from the environment (an unset variable is an
/// error), anything else is the secret itself.
pub fn env_secret(s: &str) -> Result<String, String> {
    match s.strip_prefix("env:") {
        Some(var) => {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
        }
        None => Ok(s.to_string()),
    }
}

const ID_RULE: &str = "ids are 1 to 64 letters, digits, `-`, `_` or `.`";

pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> Result<String, String> {
        Ok(s.to_string())
    }

    fn dir(yaml: &str) -> Result<Directory, Vec<String>> {
        directory_from_yaml(yaml, &plain)
    }

    #[test]
    fn a_key_resolves_with_its_team_and_customer_and_only_its_hash_is_kept() {
        let d = dir("
customers: [{id: acme, budgets: [{usd: 100, period: month}]}]
teams: [{id: search, customer: acme, limits: {requests: [{max: 10, per: minute}]}}]
keys:
  - {id: bot, key: tg-secret-1, team: search, models: {allow: ['llama-*']}}
  - {id: solo, key: tg-secret-2}
")
        .unwrap();
        let bot = &d.by_hash[&hash_key("tg-secret-1")];
        let kinds: Vec<_> = bot.levels.iter().map(|l| l.scope.as_str()).collect();
        assert_eq!(kinds, ["customer:acme", "team:search", "key:bot"]);
        assert_eq!(bot.customer.as_deref(), Some("acme"));
        assert_eq!(d.by_hash[&hash_key("tg-secret-2")].levels.len(), 1);
        let listed = serde_json::to_string(&d.keys).unwrap();
        assert!(!listed.contains("tg-secret"), "{listed}");
        assert!(listed.contains(&to_hex(&hash_key("tg-secret-1"))));
    }

    #[test]
    fn bad_references_and_specs_are_all_reported() {
        let e = dir("
teams: [{id: t, customer: nobody}]
keys:
  - {id: a, key: s1, team: missing}
  - {id: b, key_sha256: xyz}
  - {id: 'bad id', key: s3, limits: {concurrent: 0}}
  - {id: c, key: s1}
")
        .unwrap_err();
        let all = e.join("\n");
        for want in [
            "team `t`: unknown customer `nobody`",
            "key `a`: unknown team `missing`",
            "key `b`: key_sha256 is not 64 hex digits",
            "key id `bad id`",
            "limits.concurrent must be at least 1",
            "same secret as another key",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
    }

    #[test]
    fn model_rules_allow_then_deny_with_wildcards() {
        let p = Policy::from_spec(&PolicySpec {
            models: ModelsSpec {
                allow: vec!["llama-*".into(), "mistral-*".into()],
                deny: vec!["*-405b*".into()],
            },
            ..Default::default()
        })
        .unwrap();
        assert!(p.allows("llama-3.3-70b"));
        assert!(p.allows("groq/llama-3.3-70b"));
        assert!(!p.allows("llama-3.1-405b-instruct"));
        assert!(!p.allows("gpt-4o"));
        assert!(Policy::default().allows("anything"));
    }

    #[test]
    fn amounts_are_read_exactly() {
        let b: BudgetSpec = serde_yaml::from_str("{usd: 0.1, period: day}").unwrap();
        assert_eq!(b.usd, Usd(100_000_000));
        let b: BudgetSpec = serde_yaml::from_str("{usd: '12.345678901', period: day}").unwrap();
        assert_eq!(b.usd, Usd(12_345_678_901));
        let ten = serde_yaml::from_str::<BudgetSpec>("{usd: '1.0000000001', period: day}");
        assert!(ten.is_err(), "more than 9 decimals is refused");
        assert!(serde_yaml::from_str::<BudgetSpec>("{usd: -3, period: day}").is_err());
        assert!(serde_yaml::from_str::<BudgetSpec>("{usd: 3, period: fortnight}").is_err());
    }
}
