//! `auth:`: the server secret and the client keys.

use crate::{Config, Errors, MIN_KEY_LEN, MIN_SECRET_LEN, Secret, check_name};
use std::collections::HashMap;

use serde::Deserialize;

use crate::env;

/// The development server secret of `policies.example.yaml`: refused off loopback (anyone could
/// compute every key id under it).
pub const DEMO_SECRET: &str = "dev-only-secret-change-me";
/// The demo client key of `policies.example.yaml` (printed in the README): refused off loopback.
pub const DEMO_KEY: &str = "sk-tollgate-demo";

/// Client API keys.
#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Server secret: keys are identified by `HMAC-SHA256(secret, key)`. Changing it changes
    /// every key id.
    pub secret: Secret,
    /// Keys of the config file (read-only at run time). May be empty when every key is issued at
    /// run time (`tollgate keys`, the admin API).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// One client API key, given either as the key itself or as its key id. The optional fields are
/// those of keys issued at run time (`tollgate keys`); a key from this file is read-only there.
#[derive(Debug, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// The key as clients send it (use `${ENV}`).
    pub key: Option<Secret>,
    /// Hex `HMAC-SHA256(secret, key)` (`tollgate key-id`), so the file need not hold the key.
    pub key_id: Option<String>,
    /// Who the key belongs to (a person or a team).
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Models it may ask for: exact names, or prefixes ending in `*`. Empty: any model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Route `path_prefix`es it may use. Empty: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// From this instant (RFC 3339, e.g. `2027-01-01T00:00:00Z`) the key is refused with 401
    /// `key_expired`.
    pub expires: Option<String>,
    /// Spending caps of this key (`budgets:` has the owners' and how they are enforced).
    #[serde(default)]
    pub budgets: Vec<crate::BudgetSpec>,
    /// This key's own rate and concurrency limits, on top of `limits:`.
    pub limits: Option<KeyLimits>,
    /// Bodies kept in the request log for this key's requests, instead of its route's (or the
    /// top-level) `capture`: e.g. to follow one client's failures for a while.
    pub capture: Option<crate::CaptureConfig>,
}

/// A client key's own limits, beside `limits:` (whose `by: key` limits give every key the same
/// allowance): a request must pass both.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Requests per period, e.g. `60/m` (a full period's worth may come at once when idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<crate::Rate>,
    /// Tokens per period, e.g. `100000/m`: reserved at admission (prompt estimate plus
    /// completion budget), settled with the reported usage when the answer ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::Rate>,
    /// Requests at once, on each gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
}

impl KeyLimits {
    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        (self.in_flight == Some(0)).then_some("`in_flight` must be at least 1")
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none() && self.in_flight.is_none()
    }
}

impl KeyConfig {
    /// `expires` as Unix ms (validated when the config was loaded).
    pub fn expires_ms(&self) -> Option<u64> {
        self.expires.as_deref().and_then(parse_instant_ms)
    }
}

/// An RFC 3339 instant as Unix ms.
pub fn parse_instant_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok()
}

/// Whether `m` is a model name or a prefix ending in one `*` (what a key's `models` lists).
pub fn is_model_pattern(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 200
        && m.trim() == m
        && !m.strip_suffix('*').unwrap_or(m).contains('*')
}

fn check_model_patterns(models: &[String], path: &str, e: &mut Errors) {
    for (j, m) in models.iter().enumerate() {
        if !is_model_pattern(m) {
            e.add(
                format!("{path}[{j}]"),
                "must be a model name or a prefix ending in `*` (e.g. `gpt-4o` or `claude-*`)",
            );
        }
    }
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let public = !c.server.listen.0.ip().is_loopback();
    if c.auth.secret.expose().len() < MIN_SECRET_LEN {
        e.add(
            "auth.secret",
            format!("must be at least {MIN_SECRET_LEN} characters"),
        );
    } else if public && c.auth.secret.expose() == DEMO_SECRET {
        e.add(
            "auth.secret",
            "the development secret is refused while server.listen is not on loopback; set TOLLGATE_SECRET (e.g. `openssl rand -hex 32`)",
        );
    }
    let mut names = HashMap::new();
    for (i, k) in c.auth.keys.iter().enumerate() {
        let path = format!("auth.keys[{i}]");
        check_name(&k.name, &format!("{path}.name"), "key", &mut names, e);
        match (&k.key, &k.key_id) {
            (Some(_), Some(_)) => e.add(&path, "set either `key` or `key_id`, not both"),
            (None, None) => e.add(&path, "one of `key` or `key_id` is required"),
            (Some(key), None) if key.expose().len() < MIN_KEY_LEN => {
                e.add(
                    format!("{path}.key"),
                    format!("must be at least {MIN_KEY_LEN} characters"),
                );
            }
            (Some(key), None) if public && key.expose() == DEMO_KEY => e.add(
                format!("{path}.key"),
                "the demo key is refused while server.listen is not on loopback; set TOLLGATE_DEMO_KEY or remove the key",
            ),
            (None, Some(id)) if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                e.add(
                    format!("{path}.key_id"),
                    "must be 64 hex digits (see `tollgate key-id`)",
                );
            }
            _ => {}
        }
        check_model_patterns(&k.models, &format!("{path}.models"), e);
        if let Some(p) = k.limits.as_ref().and_then(KeyLimits::problem) {
            e.add(format!("{path}.limits"), p);
        }
        for (j, r) in k.routes.iter().enumerate() {
            if !c.routes.iter().any(|route| route.path_prefix == *r) {
                e.add(
                    format!("{path}.routes[{j}]"),
                    format!("no route has path_prefix {r:?}"),
                );
            }
        }
        if let Some(t) = &k.expires
            && parse_instant_ms(t).is_none()
        {
            e.add(
                format!("{path}.expires"),
                "must be an RFC 3339 instant, e.g. 2027-01-01T00:00:00Z",
            );
        }
    }
}
