//! `upstreams:`: upstream accounts and servers (or the built-in mock).

use crate::{Config, Duration, Errors, Secret, UpstreamUrl, check_name};
use std::collections::HashMap;

use serde::Deserialize;

use crate::env;

/// One upstream account or server.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// Base URL; exactly one of `url` and `mock` is set.
    pub url: Option<UpstreamUrl>,
    /// The built-in mock upstream (canned completions, for trying the gateway without an account).
    pub mock: Option<MockConfig>,
    /// Credential sent upstream in place of the client's key; empty sends none.
    #[serde(default)]
    pub credential: Secret,
    #[serde(default)]
    pub auth_scheme: AuthScheme,
    /// The API the upstream speaks: what transforms read as `request.upstream-protocol()` (the
    /// `anthropic-openai` translation with `upstream: auto` translates to it).
    #[serde(default)]
    pub protocol: Protocol,
    /// Models served: exact names or prefixes ending in `*`. Empty serves every model.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "one")]
    pub weight: u32,
    /// Consecutive failures (connect error, timeout, 5xx) that mark the upstream unhealthy.
    #[serde(default = "three")]
    pub max_fails: u32,
    /// How long an unhealthy upstream is skipped before it is tried again.
    #[serde(default = "ten_seconds")]
    pub fail_timeout: Duration,
    /// The account's own allowance, as the provider enforces it: the gateway counts what it
    /// sends (cluster-wide, in the shared cache when there is one) and does not send a request
    /// past it, so the provider's 429 never comes. Routers see what is left (`capacity` import).
    #[serde(default)]
    pub limits: Option<UpstreamLimits>,
}

/// An upstream account's allowance (`upstreams[].limits`). `rpm`, `tpm` and `monthly_tokens`
/// are each counted as a bucket that refills continuously (GCRA): `rpm` and `tpm` over a
/// minute, `monthly_tokens` over 30 days (a rolling month). `monthly_budget` is money per
/// calendar month (UTC, as providers bill), counted like a key's money budget.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamLimits {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<std::num::NonZeroU64>,
    /// Tokens per minute (prompt estimate plus completion budget when sent, corrected by the
    /// tokens the answer reports).
    #[serde(default)]
    pub tpm: Option<std::num::NonZeroU64>,
    /// Tokens per rolling 30 days.
    #[serde(default)]
    pub monthly_tokens: Option<std::num::NonZeroU64>,
    /// Money per calendar month (UTC), in `pricing.currency`: what the requests sent to this
    /// upstream cost at their model's price (`pricing:`). An attempt reserves what its prompt
    /// and completion budget may cost and is not sent when that does not fit; its answer's
    /// reported cost settles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget: Option<f64>,
}

impl UpstreamLimits {
    /// `monthly_budget` in billionths of the currency (what costs are counted in).
    pub fn monthly_budget_nanos(&self) -> Option<u64> {
        self.monthly_budget.map(crate::to_nanos)
    }
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten_seconds() -> Duration {
    Duration::secs(10)
}

/// An LLM API protocol.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// OpenAI Chat Completions and compatibles.
    #[default]
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// How the upstream credential is presented.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AuthScheme {
    /// `Authorization: Bearer <credential>` (OpenAI and compatibles).
    #[default]
    Bearer,
    /// `x-api-key: <credential>` (Anthropic).
    XApiKey,
}

/// Built-in mock upstream behaviour.
#[derive(Debug, Deserialize, serde::Serialize, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Text of every completion.
    #[serde(deserialize_with = "env::string")]
    pub reply: String,
    /// Pause between streamed events, to make streaming visible.
    pub delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            reply: "Hello from Tollgate's built-in mock upstream. Configure a real upstream to talk to a model.".into(),
            delay: Duration(std::time::Duration::from_millis(20)),
        }
    }
}

impl UpstreamConfig {
    /// Whether this upstream serves `model` (exact name or `prefix*`; empty list serves all).
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty()
            || self.models.iter().any(|m| match m.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => m == model,
            })
    }
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    if c.upstreams.is_empty() {
        e.add("upstreams", "at least one upstream is required");
    }
    let mut names = HashMap::new();
    for (i, u) in c.upstreams.iter().enumerate() {
        let path = format!("upstreams[{i}]");
        check_name(&u.name, &format!("{path}.name"), "upstream", &mut names, e);
        match (&u.url, &u.mock) {
            (Some(_), Some(_)) => e.add(&path, "set either `url` or `mock`, not both"),
            (None, None) => e.add(&path, "one of `url` or `mock` is required"),
            _ => {}
        }
        if u.weight == 0 {
            e.add(format!("{path}.weight"), "must be greater than 0");
        }
        if let Some(l) = &u.limits {
            if l.rpm.is_none()
                && l.tpm.is_none()
                && l.monthly_tokens.is_none()
                && l.monthly_budget.is_none()
            {
                e.add(
                    format!("{path}.limits"),
                    "set at least one of rpm, tpm, monthly_tokens, monthly_budget",
                );
            }
            if let Some(a) = l.monthly_budget
                && (!a.is_finite() || a <= 0.0 || a > crate::budgets::MAX_AMOUNT)
            {
                e.add(
                    format!("{path}.limits.monthly_budget"),
                    "must be a positive amount of money (in pricing.currency), at most 1000000000",
                );
            }
            if l.monthly_budget.is_some() && c.pricing.models.is_empty() && c.pricing.file.is_none()
            {
                e.add(
                    format!("{path}.limits.monthly_budget"),
                    "a money allowance needs prices: set `pricing.models` or `pricing.file`",
                );
            }
        }
        for (j, m) in u.models.iter().enumerate() {
            if m.is_empty() || m[..m.len() - 1].contains('*') {
                e.add(
                    format!("{path}.models[{j}]"),
                    "must be a model name, or a prefix followed by a single trailing `*`",
                );
            }
        }
    }
}
