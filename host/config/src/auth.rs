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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Server secret: keys are identified by `HMAC-SHA256(secret, key)`. Changing it changes
    /// every key id.
    pub secret: Secret,
    pub keys: Vec<KeyConfig>,
}

/// One client API key, given either as the key itself or as its key id.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// The key as clients send it (use `${ENV}`).
    pub key: Option<Secret>,
    /// Hex `HMAC-SHA256(secret, key)` (`tollgate key-id`), so the file need not hold the key.
    pub key_id: Option<String>,
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
    if c.auth.keys.is_empty() {
        e.add("auth.keys", "at least one key is required");
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
    }
}
