//! Upstream providers. `Provider` is the resolved form of a configured provider: where to connect,
//! its keys and timeouts. Each dialect lives in its own file and says how a request is addressed
//! and authenticated there.

pub mod anthropic;
mod azure;
pub mod health;
mod openai;
pub mod relay;

use crate::api::Endpoint;
use crate::config::{ProviderConfig, ProviderKind, Timeouts};
use http::HeaderValue;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// A parsed `base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    pub path: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return Err(format!("`{url}` is not a plain http(s) base URL"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("`{url}` has a bad port"))?;
                (h, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        if authority.parse::<http::uri::Authority>().is_err()
            || (!path.is_empty() && path.parse::<http::uri::PathAndQuery>().is_err())
            || path.contains(' ')
        {
            return Err(format!("`{url}` is not a valid URL"));
        }
        Ok(BaseUrl {
            tls,
            host: host.to_string(),
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        match (self.port == default, self.host.contains(':')) {
            (true, false) => self.host.clone(),
            (true, true) => format!("[{}]", self.host),
            (false, false) => format!("{}:{}", self.host, self.port),
            (false, true) => format!("[{}]:{}", self.host, self.port),
        }
    }
}

#[derive(Debug)]
pub struct Key {
    pub header: HeaderValue,
    pub weight: f64,
    pub name: Option<String>,
    /// Set after a 429 (for its Retry-After) or a 401/403.
    pub cooldown: health::Cooldown,
}

/// A configured provider, resolved: address looked up, keys read from the environment.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base: BaseUrl,
    /// `None` when the provider is unavailable.
    pub addr: Option<SocketAddr>,
    pub host_header: HeaderValue,
    pub keys: Vec<Key>,
    /// Why the provider cannot be used (its key is not set, or its host does not resolve).
    pub unavailable: Option<String>,
    pub timeouts: Timeouts,
    pub api_version: Option<String>,
    pub deployments: indexmap::IndexMap<String, String>,
    /// Anthropic: `max_tokens` for translated requests that give none.
    pub default_max_tokens: u64,
    pub breaker: health::Breaker,
    /// Connects stream requests, which need the first-byte and idle deadlines apart.
    pub relay: Arc<relay::RelayConnect>,
}

impl Provider {
    /// Resolves a provider. DNS is looked up here (when `lookup` is set), once per load, never
    /// on the request path; a provider whose keys are all missing is not looked up.
    pub fn resolve(
        cfg: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
        lookup: bool,
    ) -> Result<Provider, String> {
        let spec = &cfg.spec;
        let base = BaseUrl::parse(&spec.base_url)?;
        let mut keys = Vec::new();
        let mut missing = Vec::new();
        for k in &spec.keys {
            let secret = match k.key.strip_prefix("env:") {
                Some(var) => match env(var) {
                    Some(v) if !v.is_empty() => v,
                    _ => {
                        missing.push(var.to_string());
                        continue;
                    }
                },
                None => k.key.clone(),
            };
            let header = auth_value(spec.kind, &secret).map_err(|_| {
                format!(
                    "provider `{}`: a key holds characters not allowed in a header",
                    cfg.name
                )
            })?;
            keys.push(Key {
                header,
                weight: k.weight,
                name: k.name.clone(),
                cooldown: health::Cooldown::default(),
            });
        }
        let host_header = HeaderValue::from_str(&base.authority()).map_err(|e| e.to_string())?;
        let mut unavailable = (keys.is_empty() && !missing.is_empty())
            .then(|| format!("set {}", missing.join(" or ")));
        let mut addr = None;
        if unavailable.is_none() && lookup {
            match (base.host.as_str(), base.port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(a)) => addr = Some(a),
                Ok(None) => unavailable = Some(format!("{} has no address", base.host)),
                Err(e) => unavailable = Some(format!("cannot resolve {}: {e}", base.host)),
            }
        }
        Ok(Provider {
            name: cfg.name.clone(),
            kind: spec.kind,
            addr,
            host_header,
            unavailable,
            keys,
            timeouts: cfg.timeouts,
            api_version: spec.api_version.clone(),
            deployments: spec.deployments.clone(),
            default_max_tokens: spec.default_max_tokens.unwrap_or(4096),
            breaker: health::Breaker::default(),
            relay: Arc::new(relay::RelayConnect::new(
                addr,
                cfg.timeouts.connect,
                cfg.timeouts.first_byte,
                cfg.timeouts.idle,
            )),
            base,
        })
    }

    pub fn available(&self) -> bool {
        self.unavailable.is_none()
    }

    /// The API this provider speaks for what a client asked of `endpoint`; `None` when it has
    /// no such thing (embeddings from Anthropic).
    pub fn upstream_endpoint(&self, endpoint: Endpoint) -> Option<Endpoint> {
        match (self.kind, endpoint) {
            (ProviderKind::Anthropic, Endpoint::Chat | Endpoint::Messages) => {
                Some(Endpoint::Messages)
            }
            (ProviderKind::Anthropic, _) => None,
            (_, Endpoint::Messages) => Some(Endpoint::Chat),
            (_, e) => Some(e),
        }
    }

    /// The upstream path (with query) for an upstream endpoint and model.
    pub fn path(&self, endpoint: Endpoint, model: &str) -> String {
        match self.kind {
            ProviderKind::Openai | ProviderKind::Anthropic => {
                openai::path(&self.base.path, endpoint)
            }
            ProviderKind::Azure => azure::path(self, endpoint, model),
        }
    }

    /// The header that carries the key.
    pub fn auth_header(&self) -> http::HeaderName {
        match self.kind {
            ProviderKind::Openai => http::header::AUTHORIZATION,
            ProviderKind::Azure => azure::AUTH_HEADER,
            ProviderKind::Anthropic => anthropic::AUTH_HEADER,
        }
    }

    /// Picks a key by weight among those not yet tried (bit i of `tried` set means key i was)
    /// and not cooling down at `now` (a `health::now_ms` time).
    pub fn pick_key(&self, tried: u64, roll: f64, now: u64) -> Option<usize> {
        let open = |i: &usize| tried & (1 << i) == 0 && self.keys[*i].cooldown.ready(now);
        let total: f64 = (0..self.keys.len())
            .filter(open)
            .map(|i| self.keys[i].weight)
            .sum();
        let mut point = roll * total;
        let mut last = None;
        for i in (0..self.keys.len()).filter(open) {
            last = Some(i);
            point -= self.keys[i].weight;
            if point < 0.0 {
                return Some(i);
            }
        }
        last
    }
}

fn auth_value(
    kind: ProviderKind,
    secret: &str,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = match kind {
        ProviderKind::Openai => HeaderValue::from_str(&format!("Bearer {secret}"))?,
        ProviderKind::Azure | ProviderKind::Anthropic => HeaderValue::from_str(secret)?,
    };
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeySpec, ProviderSpec};

    fn provider(kind: ProviderKind, keys: &[(&str, f64)]) -> Provider {
        let cfg = ProviderConfig {
            name: "p".into(),
            spec: ProviderSpec {
                kind,
                base_url: "http://127.0.0.1:9/v1".into(),
                keys: keys
                    .iter()
                    .map(|(k, w)| KeySpec {
                        key: k.to_string(),
                        weight: *w,
                        name: None,
                    })
                    .collect(),
                api_version: Some("2024-10-21".into()),
                deployments: [("gpt-4o".to_string(), "prod-4o".to_string())]
                    .into_iter()
                    .collect(),
                timeouts: None,
                default_max_tokens: None,
            },
            timeouts: Timeouts {
                connect: Default::default(),
                first_byte: Default::default(),
                idle: Default::default(),
                write: Default::default(),
            },
        };
        let env = |v: &str| (v == "SET").then(|| "sk-env".to_string());
        Provider::resolve(&cfg, &env, true).unwrap()
    }

    #[test]
    fn base_url_forms() {
        let b = BaseUrl::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        assert_eq!(b.authority(), "api.openai.com");
        let b = BaseUrl::parse("http://127.0.0.1:8089").unwrap();
        assert_eq!(
            (b.port, b.path.as_str(), b.authority()),
            (8089, "", "127.0.0.1:8089".to_string())
        );
        let b = BaseUrl::parse("http://[::1]:9000/v1").unwrap();
        assert_eq!(
            (b.host.as_str(), b.authority()),
            ("::1", "[::1]:9000".to_string())
        );
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("http://x:notaport").is_err());
        assert!(BaseUrl::parse("http:///v1").is_err());
        assert!(BaseUrl::parse("http://x/v 1").is_err());
        assert!(BaseUrl::parse("http://bad host/v1").is_err());
    }

    #[test]
    fn keys_resolve_from_env_or_literal() {
        let p = provider(
            ProviderKind::Openai,
            &[("env:SET", 1.0), ("env:UNSET", 1.0), ("sk-lit", 1.0)],
        );
        assert_eq!(p.keys.len(), 2);
        assert_eq!(p.keys[0].header, "Bearer sk-env");
        assert!(p.available());
        let p = provider(ProviderKind::Openai, &[("env:UNSET", 1.0)]);
        assert!(!p.available());
        assert_eq!(p.unavailable.as_deref(), Some("set UNSET"));
        assert!(p.addr.is_none());
        let p = provider(ProviderKind::Openai, &[]);
        assert!(
            p.available(),
            "a provider with no keys (a local server) is available"
        );
    }

    #[test]
    fn weighted_key_pick_skips_tried_keys() {
        let p = provider(ProviderKind::Openai, &[("a", 1.0), ("b", 3.0)]);
        assert_eq!(p.pick_key(0, 0.1, 1), Some(0));
        assert_eq!(p.pick_key(0, 0.5, 1), Some(1));
        assert_eq!(p.pick_key(0b10, 0.9, 1), Some(0));
        assert_eq!(p.pick_key(0b11, 0.5, 1), None);
        let mut counts = [0u32; 2];
        for i in 0..1000 {
            counts[p.pick_key(0, (i as f64 + 0.5) / 1000.0, 1).unwrap()] += 1;
        }
        assert_eq!(counts, [250, 750]);
    }

    #[test]
    fn dialect_paths_and_auth() {
        let o = provider(ProviderKind::Openai, &[("sk", 1.0)]);
        assert_eq!(o.path(Endpoint::Chat, "gpt-4o"), "/v1/chat/completions");
        assert_eq!(o.path(Endpoint::Embeddings, "x"), "/v1/embeddings");
        assert_eq!(o.auth_header(), http::header::AUTHORIZATION);
        let a = provider(ProviderKind::Azure, &[("az", 1.0)]);
        assert_eq!(
            a.path(Endpoint::Chat, "gpt-4o"),
            "/v1/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            a.path(Endpoint::Completions, "other"),
            "/v1/openai/deployments/other/completions?api-version=2024-10-21"
        );
        assert_eq!(a.auth_header().as_str(), "api-key");
        assert_eq!(a.keys[0].header, "az");
    }
}
