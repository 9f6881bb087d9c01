//! `pricing:`: what tokens cost, per model, so each request gets a cost (spend in the usage
//! table, `/metrics`, and money budgets).
//!
//! Prices are per million tokens in the deployment's currency (`currency`, shown, never
//! converted). Entries under `models` match a model name exactly or by a prefix ending in `*`;
//! `file` reads LiteLLM's `model_prices_and_context_window.json` (per-token USD prices), which
//! operators already keep. Lookup: an exact `models` entry, then the longest matching prefix
//! entry, then the file's entry for the name, then for the name after its last `/`
//! (`openai/gpt-4o` → `gpt-4o`). A model with no price has no cost (and is refused to keys with a
//! money budget).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Config, Errors};

/// Largest price file read, in bytes.
pub const MAX_PRICE_FILE: u64 = 64 << 20;

#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// LiteLLM's `model_prices_and_context_window.json` (relative to this file).
    pub file: Option<PathBuf>,
    /// The currency prices are in (a label: `USD` by default).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Prices per million tokens; these win over the file's.
    #[serde(default)]
    pub models: Vec<PriceEntry>,
}

fn default_currency() -> String {
    "USD".into()
}

impl Default for PricingConfig {
    fn default() -> Self {
        Self {
            file: None,
            currency: default_currency(),
            models: Vec::new(),
        }
    }
}

/// One model's (or model prefix's) prices per million tokens.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// A model name, or a prefix ending in `*`.
    #[serde(rename = "match")]
    pub pattern: String,
    pub input: f64,
    pub output: f64,
    /// Cached prompt tokens (default: the input price).
    pub cached_input: Option<f64>,
}

/// `amount` of the currency in billionths, the unit costs, budgets and allowances are counted in.
pub fn to_nanos(amount: f64) -> u64 {
    (amount * 1e9).round() as u64
}

/// Billionths of the currency as an amount of it, for reports.
pub fn from_nanos(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// The largest cost one request is counted at (2^62 billionths, about 4.6 billion in the
/// currency): costs are summed and corrected as signed 64-bit counts, which it keeps well inside.
pub const MAX_COST_NANOS: u64 = 1 << 62;

/// Prices per million tokens of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
}

impl Price {
    /// The cost in billionths of the currency unit of `input` prompt tokens (of which `cached`
    /// were cached) and `output` completion tokens.
    pub fn cost_nanos(&self, input: u64, cached: u64, output: u64) -> u64 {
        let cached = cached.min(input);
        // Per million tokens → per token in nano-units: × 1000.
        let nanos = (input - cached) as f64 * self.input * 1000.0
            + cached as f64 * self.cached_input * 1000.0
            + output as f64 * self.output * 1000.0;
        nanos.round().clamp(0.0, MAX_COST_NANOS as f64) as u64
    }
}

/// The prices in force: looked up per request that used tokens.
#[derive(Debug, Default, Clone)]
pub struct PriceTable {
    exact: HashMap<String, Price>,
    /// Prefix entries, longest first.
    prefixes: Vec<(String, Price)>,
    file: HashMap<String, Price>,
    pub currency: String,
}

impl PriceTable {
    /// The price of `model`, if one is known.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(*p);
        }
        if let Some((_, p)) = self.prefixes.iter().find(|(pre, _)| model.starts_with(pre)) {
            return Some(*p);
        }
        self.file.get(model).copied().or_else(|| {
            let (_, tail) = model.rsplit_once('/')?;
            self.file.get(tail).copied()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.file.is_empty()
    }
}

/// A LiteLLM price-file entry (other members ignored).
#[derive(Deserialize, serde::Serialize)]
struct LiteLlmEntry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
}

/// Reads a LiteLLM price file: per-token prices become per-million ones.
pub fn read_litellm(path: &Path) -> Result<HashMap<String, Price>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_PRICE_FILE {
        return Err(format!("{} is larger than 64MiB", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw: HashMap<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a LiteLLM price file: {e}", path.display()))?;
    let mut prices = HashMap::new();
    for (model, v) in raw {
        // The file starts with a `sample_spec` documenting the fields; entries without both
        // prices (images, audio) are skipped.
        let Ok(e) = serde_json::from_value::<LiteLlmEntry>(v) else {
            continue;
        };
        let (Some(i), Some(o)) = (e.input_cost_per_token, e.output_cost_per_token) else {
            continue;
        };
        if !(i.is_finite() && o.is_finite() && i >= 0.0 && o >= 0.0) || model == "sample_spec" {
            continue;
        }
        let cached = e
            .cache_read_input_token_cost
            .filter(|c| c.is_finite() && *c >= 0.0)
            .unwrap_or(i);
        prices.insert(
            model,
            Price {
                input: i * 1e6,
                output: o * 1e6,
                cached_input: cached * 1e6,
            },
        );
    }
    Ok(prices)
}

impl PricingConfig {
    /// The table of this config (reads `file`, resolved against `base_dir`).
    pub fn table(&self, base_dir: &Path) -> Result<PriceTable, String> {
        let mut t = PriceTable {
            currency: self.currency.clone(),
            ..PriceTable::default()
        };
        for e in &self.models {
            let price = Price {
                input: e.input,
                output: e.output,
                cached_input: e.cached_input.unwrap_or(e.input),
            };
            match e.pattern.strip_suffix('*') {
                Some(prefix) => t.prefixes.push((prefix.to_owned(), price)),
                None => {
                    t.exact.insert(e.pattern.clone(), price);
                }
            }
        }
        t.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        if let Some(f) = &self.file {
            t.file = read_litellm(&base_dir.join(f))?;
        }
        Ok(t)
    }
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let p = &c.pricing;
    if p.currency.is_empty() || p.currency.len() > 16 {
        e.add("pricing.currency", "1 to 16 characters, e.g. USD");
    }
    for (i, m) in p.models.iter().enumerate() {
        let path = format!("pricing.models[{i}]");
        if !crate::is_model_pattern(&m.pattern) {
            e.add(
                format!("{path}.match"),
                "must be a model name or a prefix ending in `*`",
            );
        }
        for (field, v) in [
            ("input", Some(m.input)),
            ("output", Some(m.output)),
            ("cached_input", m.cached_input),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                e.add(
                    format!("{path}.{field}"),
                    "must be a price per million tokens, 0 or more",
                );
            }
        }
    }
    if let Some(f) = &p.file
        && let Err(err) = read_litellm(&c.base_dir.join(f))
    {
        e.add("pricing.file", err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pattern: &str, input: f64, output: f64) -> PriceEntry {
        PriceEntry {
            pattern: pattern.into(),
            input,
            output,
            cached_input: None,
        }
    }

    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins() {
        let t = PricingConfig {
            file: None,
            currency: "USD".into(),
            models: vec![
                entry("gpt-4o*", 2.5, 10.0),
                entry("gpt-4o-mini*", 0.15, 0.6),
                entry("gpt-4o-mini-exact", 1.0, 1.0),
            ],
        }
        .table(Path::new("."))
        .unwrap();
        assert_eq!(t.price("gpt-4o-2024").unwrap().input, 2.5);
        assert_eq!(t.price("gpt-4o-mini-2024").unwrap().input, 0.15);
        assert_eq!(t.price("gpt-4o-mini-exact").unwrap().input, 1.0);
        assert_eq!(t.price("claude"), None);
    }

    #[test]
    fn costs_are_in_billionths_and_cached_tokens_are_cheaper() {
        let p = Price {
            input: 2.5,
            output: 10.0,
            cached_input: 1.25,
        };
        // 1000 prompt tokens at $2.50/M = $0.0025; 100 output at $10/M = $0.001.
        assert_eq!(p.cost_nanos(1000, 0, 100), 3_500_000);
        assert_eq!(p.cost_nanos(u64::MAX, 0, u64::MAX), MAX_COST_NANOS);
        assert_eq!(p.cost_nanos(1000, 400, 0), 600 * 2_500 + 400 * 1_250);
        assert_eq!(
            p.cost_nanos(10, 50, 0),
            10 * 1_250,
            "cached is part of input"
        );
    }

    #[test]
    fn a_litellm_file_is_read_per_token_and_by_its_last_segment() {
        let dir = std::env::temp_dir().join(format!("tollgate-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("prices.json");
        std::fs::write(
            &f,
            r#"{"sample_spec": {"input_cost_per_token": 0, "output_cost_per_token": 0},
                "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                           "cache_read_input_token_cost": 1.25e-06, "mode": "chat"},
                "dall-e-3": {"output_cost_per_pixel": 1e-07}}"#,
        )
        .unwrap();
        let t = PricingConfig {
            file: Some(f),
            currency: "USD".into(),
            models: vec![],
        }
        .table(Path::new("/"))
        .unwrap();
        let p = t.price("openai/gpt-4o").unwrap();
        assert!((p.input - 2.5).abs() < 1e-9 && (p.cached_input - 1.25).abs() < 1e-9);
        assert_eq!(t.price("dall-e-3"), None);
        assert_eq!(t.price("sample_spec"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
