//! Model prices and the exact cost of a request.
//!
//! Money is integers end to end: prices are micro-USD per million tokens, so N tokens cost
//! N × price picodollars; a request's total is summed exactly in u128 picodollars and rounded up
//! to nano-USD ([`Usd`]) once. The embedded table (`prices.yaml`) holds list prices; config
//! overrides replace or add entries.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

/// An amount of money in nano-USD (1e-9 USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash, Serialize)]
#[serde(transparent)]
pub struct Usd(pub i64);

impl Usd {
    /// Parses a plain non-negative decimal in dollars ("12.5", "0.000001", "3"), at most 9 decimals.
    pub fn from_decimal(s: &str) -> Option<Usd> {
        let nano = parse_fixed(s, 9)?;
        i64::try_from(nano).ok().map(Usd)
    }

    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }
}

/// Dollars with up to 9 decimals, trailing zeros trimmed but at least 2: `0.341642`, `1.50`.
impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        f.pad(&format!("{sign}{}", format_fixed(self.0.unsigned_abs(), 9)))
    }
}

/// Parses a plain decimal ("12.5", "3") into units of 10^-scale; no sign, exponent or spaces.
fn parse_fixed(s: &str, scale: u32) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (s.contains('.') && !digits(frac)) || frac.len() > scale as usize {
        return None;
    }
    let mut v: u64 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    // frac.len() <= scale, checked above.
    v.checked_mul(10u64.checked_pow(scale - frac.len() as u32)?)
}

/// Formats units of 10^-scale (scale >= 2) as a decimal with at least 2 decimals.
fn format_fixed(v: u64, scale: u32) -> String {
    let unit = 10u64.pow(scale);
    let mut frac = format!("{:0width$}", v % unit, width = scale as usize);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{}.{frac}", v / unit)
}

/// A model's price; every rate is micro-USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: Option<u64>,
    pub cache_write: Option<u64>,
    pub long_context: Option<LongContext>,
}

/// Rates for the whole request when its prompt is above `above` tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongContext {
    pub above: u64,
    pub input: u64,
    pub output: u64,
    pub cached_input: Option<u64>,
    pub cache_write: Option<u64>,
}

/// What a request used, for pricing. `prompt` includes cached and cache-write tokens (OpenAI convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cache_write: u64,
}

impl Price {
    /// The exact cost of a request, rounded up to the nano-USD.
    pub fn cost(&self, t: &Tokens) -> Usd {
        let (input, output, cached, write) = match &self.long_context {
            Some(lc) if t.prompt > lc.above => {
                (lc.input, lc.output, lc.cached_input, lc.cache_write)
            }
            _ => (self.input, self.output, self.cached_input, self.cache_write),
        };
        let uncached = t
            .prompt
            .saturating_sub(t.cached)
            .saturating_sub(t.cache_write);
        let pico = [
            (uncached, input),
            (t.cached, cached.unwrap_or(input)),
            (t.cache_write, write.unwrap_or(input)),
            (t.completion, output),
        ]
        .iter()
        .fold(0u128, |sum, &(n, rate)| {
            sum.saturating_add(u128::from(n) * u128::from(rate))
        });
        Usd(i64::try_from(pico.div_ceil(1000)).unwrap_or(i64::MAX))
    }
}

/// Prices as USD-per-million decimal strings, for the admin listing.
impl Serialize for Price {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View {
            input: String,
            output: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            cached_input: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cache_write: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            long_context: Option<LongView>,
        }
        #[derive(Serialize)]
        struct LongView {
            above: u64,
            input: String,
            output: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            cached_input: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cache_write: Option<String>,
        }
        let usd = |m: u64| format_fixed(m, 6);
        View {
            input: usd(self.input),
            output: usd(self.output),
            cached_input: self.cached_input.map(usd),
            cache_write: self.cache_write.map(usd),
            long_context: self.long_context.as_ref().map(|lc| LongView {
                above: lc.above,
                input: usd(lc.input),
                output: usd(lc.output),
                cached_input: lc.cached_input.map(usd),
                cache_write: lc.cache_write.map(usd),
            }),
        }
        .serialize(s)
    }
}

/// A USD-per-million-tokens amount as written: a YAML number or string, kept as decimal text
/// (a number in the shortest form of its f64) and checked when a table is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerMillion(pub String);

impl<'de> Deserialize<'de> for PerMillion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PerMillion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a USD amount per million tokens, as a number or a string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PerMillion, E> {
                Ok(PerMillion(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PerMillion, E> {
                Ok(PerMillion(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PerMillion, E> {
                Ok(PerMillion(format!("{v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PerMillion, E> {
                Ok(PerMillion(v.trim().to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One price entry as written in `prices.yaml` or config; rates in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub input: PerMillion,
    pub output: PerMillion,
    #[serde(default)]
    pub cached_input: Option<PerMillion>,
    #[serde(default)]
    pub cache_write: Option<PerMillion>,
    #[serde(default)]
    pub long_context: Option<LongContextSpec>,
}

/// The long-context tier of a [`PriceSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextSpec {
    pub above: u64,
    pub input: PerMillion,
    pub output: PerMillion,
    #[serde(default)]
    pub cached_input: Option<PerMillion>,
    #[serde(default)]
    pub cache_write: Option<PerMillion>,
}

impl PriceSpec {
    /// Converts to micro-USD; an error names the model and the field.
    fn to_price(&self, model: &str) -> Result<Price, String> {
        let rate = |field: &str, a: &PerMillion| {
            parse_fixed(&a.0, 6).ok_or_else(|| {
                format!(
                    "price of `{model}`: {field}: `{}` is not a USD amount per million tokens \
                     (a non-negative decimal with at most 6 decimals)",
                    a.0
                )
            })
        };
        let opt =
            |field: &str, a: &Option<PerMillion>| a.as_ref().map(|a| rate(field, a)).transpose();
        let long_context = match &self.long_context {
            None => None,
            Some(lc) => Some(LongContext {
                above: lc.above,
                input: rate("long_context.input", &lc.input)?,
                output: rate("long_context.output", &lc.output)?,
                cached_input: opt("long_context.cached_input", &lc.cached_input)?,
                cache_write: opt("long_context.cache_write", &lc.cache_write)?,
            }),
        };
        Ok(Price {
            input: rate("input", &self.input)?,
            output: rate("output", &self.output)?,
            cached_input: opt("cached_input", &self.cached_input)?,
            cache_write: opt("cache_write", &self.cache_write)?,
            long_context,
        })
    }
}

/// Prices by lowercase model id; cloning shares the map.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    map: Arc<BTreeMap<String, Price>>,
}

static EMBEDDED: LazyLock<PriceTable> = LazyLock::new(|| {
    parse_table(include_str!("prices.yaml")).unwrap_or_else(|e| {
        // A unit test keeps this from happening; every model is then unpriced, never free.
        log::error!("embedded price table: {e}");
        PriceTable::default()
    })
});

fn parse_table(yaml: &str) -> Result<PriceTable, String> {
    let specs: BTreeMap<String, PriceSpec> =
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    PriceTable::default().with_overrides(&specs)
}

impl PriceTable {
    /// The list prices built into the binary, parsed once.
    pub fn embedded() -> PriceTable {
        EMBEDDED.clone()
    }

    /// This table with `overrides` replacing or adding entries (ids are lowercased).
    pub fn with_overrides(
        &self,
        overrides: &BTreeMap<String, PriceSpec>,
    ) -> Result<PriceTable, String> {
        if overrides.is_empty() {
            return Ok(self.clone());
        }
        let mut map = (*self.map).clone();
        let mut seen = BTreeSet::new();
        for (model, spec) in overrides {
            let id = model.to_ascii_lowercase();
            if id.is_empty() {
                return Err("a price has an empty model id".to_string());
            }
            if !seen.insert(id.clone()) {
                return Err(format!(
                    "price of `{model}`: given twice (model ids ignore case)"
                ));
            }
            map.insert(id, spec.to_price(model)?);
        }
        Ok(PriceTable { map: Arc::new(map) })
    }

    /// The price of `model`: the exact id; then without leading `provider/` segments; each also
    /// without a date or version suffix; then the longest key the id starts with followed by `-`.
    /// `None` means unpriced, never free.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        let lower;
        let id = if model.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = model.to_ascii_lowercase();
            lower.as_str()
        } else {
            model
        };
        // The id, then the id after each `/` (`groq/openai/gpt-oss-120b` → `openai/gpt-oss-120b`).
        let tails = || std::iter::once(id).chain(id.match_indices('/').map(|(i, _)| &id[i + 1..]));
        tails()
            .find_map(|t| self.map.get(t).or_else(|| self.map.get(strip_version(t))))
            .or_else(|| tails().find_map(|t| self.longest_prefix(strip_version(t))))
    }

    /// The longest key that `id` starts with followed by `-`.
    fn longest_prefix(&self, id: &str) -> Option<&Price> {
        id.rmatch_indices('-')
            .find_map(|(i, _)| self.map.get(&id[..i]))
    }

    /// Every entry, sorted by id.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.map.iter().map(|(id, p)| (id.as_str(), p))
    }
}

/// Strips trailing `@...`, `-latest`, `-YYYY-MM-DD` and `-YYYYMMDD`, repeatedly.
fn strip_version(mut id: &str) -> &str {
    let is_date = |s: &str, dashes: &[usize]| {
        s.bytes().enumerate().all(|(i, b)| {
            if dashes.contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
    };
    loop {
        let before = id;
        if let Some((head, _)) = id.split_once('@') {
            id = head;
        }
        if let Some(head) = id.strip_suffix("-latest") {
            id = head;
        }
        let n = id.len();
        if n > 11 && is_date(&id[n - 11..], &[0, 5, 8]) {
            id = &id[..n - 11];
        } else if n > 9 && is_date(&id[n - 9..], &[0]) {
            id = &id[..n - 9];
        }
        if id == before {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(
        input: u64,
        output: u64,
        cached_input: Option<u64>,
        cache_write: Option<u64>,
    ) -> Price {
        Price {
            input,
            output,
            cached_input,
            cache_write,
            long_context: None,
        }
    }

    fn tokens(prompt: u64, completion: u64) -> Tokens {
        Tokens {
            prompt,
            completion,
            ..Tokens::default()
        }
    }

    fn try_specs(yaml: &str) -> Result<BTreeMap<String, PriceSpec>, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    fn specs(yaml: &str) -> BTreeMap<String, PriceSpec> {
        try_specs(yaml).unwrap()
    }

    #[test]
    fn spec_case_cached_input_is_cheap() {
        let p = price(1_250_000, 10_000_000, Some(125_000), None);
        let t = Tokens {
            prompt: 51_232 + 1_188_096,
            cached: 1_188_096,
            completion: 12_909,
            cache_write: 0,
        };
        assert_eq!(p.cost(&t), Usd(341_642_000));
        assert_eq!(p.cost(&t).to_string(), "0.341642");
        // gpt-5 in the embedded table has these rates.
        assert_eq!(
            PriceTable::embedded().lookup("gpt-5").unwrap().cost(&t),
            Usd(341_642_000)
        );
    }

    #[test]
    fn rounds_up_once_per_request() {
        let p = price(37_500, 37_500, None, None);
        assert_eq!(p.input, parse_fixed("0.0375", 6).unwrap());
        assert_eq!(p.cost(&tokens(1, 0)), Usd(38));
        // 37.5 + 37.5 nano is exactly 75: rounding is on the total, not per part.
        assert_eq!(p.cost(&tokens(1, 1)), Usd(75));
        assert_eq!(p.cost(&tokens(2, 0)), Usd(75));
        assert_eq!(p.cost(&Tokens::default()), Usd(0));
    }

    #[test]
    fn cache_write_and_cached_rates() {
        let p = price(3_000_000, 15_000_000, Some(300_000), Some(3_750_000));
        let t = Tokens {
            prompt: 1_000,
            cached: 100,
            cache_write: 400,
            completion: 10,
        };
        // 500 × $3 + 100 × $0.30 + 400 × $3.75 + 10 × $15, per million.
        assert_eq!(p.cost(&t), Usd(1_500_000 + 30_000 + 1_500_000 + 150_000));
        // Without cache rates, cached and written tokens bill at the input rate.
        let plain = price(3_000_000, 15_000_000, None, None);
        assert_eq!(plain.cost(&t), Usd(3_000_000 + 150_000));
        // Cache counts above the prompt do not underflow.
        let odd = Tokens {
            prompt: 10,
            cached: 20,
            ..Tokens::default()
        };
        assert_eq!(p.cost(&odd), Usd(6_000));
    }

    #[test]
    fn long_context_tier_starts_above_the_threshold() {
        let sonnet = PriceTable::embedded()
            .lookup("claude-sonnet-4-5-20250929")
            .unwrap()
            .clone();
        let at = tokens(200_000, 1_000);
        let above = tokens(200_001, 1_000);
        // 200k × $3 + 1k × $15 vs 200,001 × $6 + 1k × $22.50.
        assert_eq!(sonnet.cost(&at), Usd(600_000_000 + 15_000_000));
        assert_eq!(sonnet.cost(&above), Usd(1_200_006_000 + 22_500_000));
        let cached = Tokens {
            prompt: 300_000,
            cached: 100_000,
            cache_write: 100_000,
            completion: 0,
        };
        // 100k each at $6, $0.60 and $7.50.
        assert_eq!(
            sonnet.cost(&cached),
            Usd(600_000_000 + 60_000_000 + 750_000_000)
        );
    }

    #[test]
    fn lookup_rules() {
        let t = PriceTable::embedded();
        let id = |m: &str| {
            t.lookup(m)
                .map(|p| t.entries().find(|(_, q)| std::ptr::eq(*q, p)).unwrap().0)
        };
        assert_eq!(id("gpt-4o"), Some("gpt-4o"));
        assert_eq!(id("GPT-4o"), Some("gpt-4o"));
        assert_eq!(id("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(id("gpt-4o-2024-05-13"), Some("gpt-4o-2024-05-13"));
        assert_eq!(id("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(id("claude-sonnet-4-5-20250929"), Some("claude-sonnet-4-5"));
        assert_eq!(id("claude-sonnet-4-20250514"), Some("claude-sonnet-4"));
        assert_eq!(id("claude-sonnet-4-0"), Some("claude-sonnet-4"));
        assert_eq!(id("claude-3-7-sonnet-latest"), Some("claude-3-7-sonnet"));
        assert_eq!(
            id("claude-3-5-sonnet-v2@20241022"),
            Some("claude-3-5-sonnet")
        );
        assert_eq!(id("mistral-large-latest"), Some("mistral-large"));
        assert_eq!(id("mistral-large-2411"), Some("mistral-large"));
        assert_eq!(
            id("gemini-2.5-flash-lite-preview-06-17"),
            Some("gemini-2.5-flash-lite")
        );
        assert_eq!(id("models/gemini-2.5-pro"), Some("gemini-2.5-pro"));
        assert_eq!(id("openai/gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(id("azure/gpt-4.1-2025-04-14"), Some("gpt-4.1"));
        assert_eq!(id("openai/gpt-oss-120b"), Some("openai/gpt-oss-120b"));
        assert_eq!(id("groq/openai/gpt-oss-20b"), Some("openai/gpt-oss-20b"));
        assert_eq!(
            id("groq/llama-3.3-70b-versatile"),
            Some("llama-3.3-70b-versatile")
        );
        assert_eq!(id("sim/gpt-4o"), Some("sim/gpt-4o"));
        assert_eq!(id("o3-mini-2025-01-31"), Some("o3-mini"));
        assert_eq!(id("grok-4-0709"), Some("grok-4"));
        assert_eq!(id("grok-4-fast-reasoning"), Some("grok-4-fast"));
        assert_eq!(id("unknown-model"), None);
        assert_eq!(id("gpt-4ox"), None);
        assert_eq!(id("my/unknown"), None);
        assert_eq!(id(""), None);
    }

    #[test]
    fn strips_version_suffixes() {
        assert_eq!(strip_version("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(strip_version("claude-opus-4-1-20250805"), "claude-opus-4-1");
        assert_eq!(strip_version("m-latest"), "m");
        assert_eq!(strip_version("m@001"), "m");
        assert_eq!(strip_version("m-20240101-latest"), "m");
        assert_eq!(strip_version("gpt-4-0613"), "gpt-4-0613");
        assert_eq!(strip_version("20240101"), "20240101");
    }

    #[test]
    fn default_config_models_are_priced() {
        let conf: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../conf/gateway.yaml")).unwrap();
        let table = PriceTable::embedded();
        let models = conf["models"].as_sequence().unwrap();
        assert!(!models.is_empty());
        for m in models {
            let id = m["id"].as_str().unwrap();
            assert!(table.lookup(id).is_some(), "{id} is unpriced");
            let upstream = id.split_once('/').unwrap().1;
            assert!(table.lookup(upstream).is_some(), "{upstream} is unpriced");
        }
        // The models the simulator lists (`sim-model` is its default).
        for id in [
            "sim-model",
            "gpt-4o-mini",
            "gpt-4o",
            "gpt-3.5-turbo-instruct",
            "text-embedding-3-small",
        ] {
            assert!(table.lookup(id).is_some(), "{id} is unpriced");
        }
    }

    #[test]
    fn overrides_replace_and_add() {
        let base = PriceTable::embedded();
        let o =
            specs("gpt-4o: {input: 2, output: \"8.5\"}\nMy-Model: {input: 0.000001, output: 1}\n");
        let t = base.with_overrides(&o).unwrap();
        assert_eq!(
            t.lookup("gpt-4o"),
            Some(&price(2_000_000, 8_500_000, None, None))
        );
        // The override covers dated ids too, and the base table is untouched.
        assert_eq!(t.lookup("gpt-4o-2024-08-06").unwrap().input, 2_000_000);
        assert_eq!(base.lookup("gpt-4o").unwrap().input, 2_500_000);
        assert_eq!(t.lookup("my-model"), Some(&price(1, 1_000_000, None, None)));
        assert_eq!(t.entries().count(), base.entries().count() + 1);
        assert!(base.lookup("my-model").is_none());
    }

    #[test]
    fn bad_decimals_name_the_model_and_field() {
        let cases = [
            ("m: {input: 1.2345678, output: 1}", "input"),
            ("m: {input: 1, output: -1}", "output"),
            (
                "m: {input: 1, output: 1, cached_input: .nan}",
                "cached_input",
            ),
            (
                "m: {input: 1, output: 1, cache_write: '1e-3'}",
                "cache_write",
            ),
            (
                "m: {input: 1, output: 1, cached_input: abc}",
                "cached_input",
            ),
            ("m: {input: 1, output: 0.0000001}", "output"),
            (
                "m: {input: 1, output: 1, long_context: {above: 10, input: 1, output: 1.00000001}}",
                "long_context.output",
            ),
        ];
        for (yaml, field) in cases {
            let e = PriceTable::default()
                .with_overrides(&specs(yaml))
                .unwrap_err();
            assert!(
                e.contains("`m`") && e.contains(&format!(": {field}: ")),
                "{yaml}: {e}"
            );
        }
        // Unknown fields and wrong types fail when config is read.
        assert!(try_specs("m: {input: 1, output: 1, cache_read: 1}").is_err());
        assert!(try_specs("m: {input: [1], output: 1}").is_err());
        assert!(try_specs("m: {input: 1}").is_err());
        // Ids that differ only in case are the same model.
        assert!(PriceTable::default()
            .with_overrides(&specs("M: {input: 1, output: 1}\nm: {input: 2, output: 2}"))
            .is_err());
    }

    #[test]
    fn numbers_and_strings_parse_exactly() {
        let t = PriceTable::default()
            .with_overrides(&specs(
                "a: {input: 0.1, output: '0.1'}\nb: {input: 0.075, output: 1.10}\nc: {input: 3, output: '12.500000'}",
            ))
            .unwrap();
        assert_eq!(t.lookup("a"), Some(&price(100_000, 100_000, None, None)));
        assert_eq!(t.lookup("b"), Some(&price(75_000, 1_100_000, None, None)));
        assert_eq!(
            t.lookup("c"),
            Some(&price(3_000_000, 12_500_000, None, None))
        );
    }

    #[test]
    fn embedded_table_is_complete() {
        let raw: BTreeMap<String, PriceSpec> =
            serde_yaml::from_str(include_str!("prices.yaml")).unwrap();
        let t = PriceTable::embedded();
        assert_eq!(t.entries().count(), raw.len());
        assert!(raw.len() >= 50);
        // No id is given twice (YAML would keep the last silently).
        let keys: Vec<&str> = include_str!("prices.yaml")
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(['#', ' ']))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k))
            .collect();
        assert_eq!(keys.len(), raw.len());
        for (id, p) in t.entries() {
            assert_eq!(id, id.to_ascii_lowercase());
            assert!(p.input > 0, "{id}");
            // Embedding models have no output tokens: their output price is 0, everyone else's > 0.
            assert_eq!(p.output == 0, id.contains("embedding"), "{id}");
            assert!(p.cached_input.is_none_or(|c| c > 0 && c < p.input), "{id}");
            assert!(p.cache_write.is_none_or(|c| c > p.input), "{id}");
            if let Some(lc) = &p.long_context {
                assert!(
                    lc.above > 0 && lc.input >= p.input && lc.output >= p.output,
                    "{id}"
                );
            }
        }
        for id in [
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-4o",
            "gpt-4o-mini",
            "o1",
            "o3",
            "o3-mini",
            "o4-mini",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "text-embedding-ada-002",
            "claude-opus-4-1",
            "claude-opus-4",
            "claude-sonnet-4-5",
            "claude-sonnet-4",
            "claude-3-7-sonnet",
            "claude-haiku-4-5",
            "claude-3-5-haiku",
            "claude-3-haiku",
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "gemini-2.5-flash-lite",
            "gemini-2.0-flash",
            "mistral-large",
            "mistral-medium",
            "mistral-small",
            "codestral",
            "open-mistral-nemo",
            "llama-3.3-70b-versatile",
            "llama-3.1-8b-instant",
            "openai/gpt-oss-120b",
            "openai/gpt-oss-20b",
            "deepseek-chat",
            "deepseek-reasoner",
            "grok-4",
            "grok-3-mini",
        ] {
            assert!(raw.contains_key(id), "{id} missing");
        }
        for id in ["claude-sonnet-4-5", "claude-sonnet-4", "gemini-2.5-pro"] {
            assert_eq!(
                t.lookup(id).unwrap().long_context.as_ref().unwrap().above,
                200_000,
                "{id}"
            );
        }
        // Cloning shares the parsed map.
        assert!(Arc::ptr_eq(&t.map, &PriceTable::embedded().map));
    }

    #[test]
    fn entries_are_sorted() {
        let t = PriceTable::embedded();
        let ids: Vec<&str> = t.entries().map(|(id, _)| id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn price_serializes_as_decimal_strings() {
        let p = PriceTable::embedded().lookup("gpt-5").unwrap().clone();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"input":"1.25","output":"10.00","cached_input":"0.125"}"#
        );
        let s = serde_json::to_value(PriceTable::embedded().lookup("claude-sonnet-4-5").unwrap())
            .unwrap();
        assert_eq!(s["cache_write"], "3.75");
        assert_eq!(s["long_context"]["above"], 200_000);
        assert_eq!(s["long_context"]["output"], "22.50");
        assert_eq!(
            serde_json::to_string(&Usd(341_642_000)).unwrap(),
            "341642000"
        );
    }

    #[test]
    fn usd_decimal_round_trips() {
        for (text, nano, shown) in [
            ("12.5", 12_500_000_000, "12.50"),
            ("0.000001", 1_000, "0.000001"),
            ("3", 3_000_000_000, "3.00"),
            ("0", 0, "0.00"),
            ("0.341642", 341_642_000, "0.341642"),
            ("0.000000001", 1, "0.000000001"),
            ("1.50", 1_500_000_000, "1.50"),
            ("007.10", 7_100_000_000, "7.10"),
        ] {
            assert_eq!(Usd::from_decimal(text), Some(Usd(nano)), "{text}");
            assert_eq!(Usd(nano).to_string(), shown);
            assert_eq!(Usd::from_decimal(shown), Some(Usd(nano)));
        }
        for bad in [
            "",
            ".",
            "1.",
            ".5",
            "-1",
            "+1",
            "1.0000000001",
            "1e3",
            " 1",
            "1,5",
            "1.2.3",
            "NaN",
            "9223372037",
        ] {
            assert_eq!(Usd::from_decimal(bad), None, "{bad}");
        }
        assert_eq!(
            Usd::from_decimal("9223372036.854775807"),
            Some(Usd(i64::MAX))
        );
        assert_eq!(Usd(-500_000_000).to_string(), "-0.50");
        assert_eq!(format!("{:>6}", Usd(0)), "  0.00");
    }

    #[test]
    fn usd_saturates() {
        assert_eq!(Usd(1).saturating_add(Usd(2)), Usd(3));
        assert_eq!(Usd(i64::MAX).saturating_add(Usd(1)), Usd(i64::MAX));
        assert_eq!(Usd(1).saturating_sub(Usd(3)), Usd(-2));
        assert_eq!(Usd(i64::MIN).saturating_sub(Usd(1)), Usd(i64::MIN));
        // A huge request saturates rather than wrapping.
        let p = price(u64::MAX, u64::MAX, None, None);
        assert_eq!(p.cost(&tokens(u64::MAX, u64::MAX)), Usd(i64::MAX));
    }
}
