//! The config written back (`Serialize`), for showing what runs: the admin API's
//! `GET /admin/api/config`, `tollgate config show`. Every secret is written `<redacted>`, and
//! the password of a database or cache URL too; durations, rates and sizes in the form the file
//! takes. Not for writing a config file back: the secrets are gone.

use serde::{Serialize, Serializer};

use crate::locations::{CacheUrl, DatabaseUrl, Module};
use crate::routes::HttpMethod;
use crate::types::{Cidr, Duration, ListenAddr, Secret, UpstreamUrl};

/// What a secret shows as.
pub const REDACTED: &str = "<redacted>";

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{}://{}{}",
            self.scheme, self.authority, self.base_path
        ))
    }
}

impl Serialize for Module {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for HttpMethod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// A URL with its password (if any) redacted: `postgres://app:<redacted>@db:5432/tollgate`.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.into();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            let password = if user_info.contains(':') {
                format!(":{REDACTED}")
            } else {
                String::new()
            };
            format!("{scheme}://{user}{password}@{host}{}", strip_query(tail))
        }
        None => format!("{scheme}://{authority}{}", strip_query(tail)),
    }
}

/// A query string can carry a password too (`?password=`): it is dropped.
fn strip_query(tail: &str) -> &str {
    tail.split('?').next().unwrap_or("")
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::SqliteMemory => s.serialize_str("sqlite::memory:"),
            Self::Sqlite(path) => s.collect_str(&format_args!("sqlite://{}", path.display())),
            Self::Postgres(url) => s.serialize_str(&without_password(url.expose())),
        }
    }
}

impl Serialize for CacheUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Memory => s.serialize_str("memory"),
            Self::Redis(url) => s.serialize_str(&without_password(url.expose())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_urls_and_the_rest_stays() {
        assert_eq!(
            without_password("postgres://app:hunter2@db:5432/tollgate?sslmode=require&password=x"),
            "postgres://app:<redacted>@db:5432/tollgate"
        );
        assert_eq!(
            without_password("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(without_password("not a url"), REDACTED);
    }
}

/// `serialize_with` for a secret kept as a plain string (an argon2 hash: not the password, but
/// what an offline guess starts from).
pub(crate) fn redacted_opt<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for a URL whose path can be its secret (a chat webhook's is): scheme and
/// host only.
pub(crate) fn origin_only<S: Serializer>(v: &Option<UpstreamUrl>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) if u.base_path.is_empty() => u.serialize(s),
        Some(u) => s.collect_str(&format_args!("{}://{}/{REDACTED}", u.scheme, u.authority)),
        None => s.serialize_none(),
    }
}

/// Whether a plugin config key names something secret.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "credential",
        "api_key",
        "apikey",
        "private",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n == "key"
        || n.ends_with("_key")
}

/// `serialize_with` for a plugin's `config` (free-form JSON): the value of any key named like a
/// secret (`api_key`, `token`, `password`, …), at any depth, is written `<redacted>`.
pub(crate) fn plugin_config<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
    fn scrub(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let shown = if secret_name(k) && !v.is_object() && !v.is_array() {
                        serde_json::Value::String(REDACTED.into())
                    } else {
                        scrub(v)
                    };
                    (k.clone(), shown)
                })
                .collect(),
            serde_json::Value::Array(items) => items.iter().map(scrub).collect(),
            other => other.clone(),
        }
    }
    scrub(v).serialize(s)
}

#[cfg(test)]
mod plugin_config_tests {
    #[test]
    fn secret_named_values_are_redacted_at_any_depth() {
        let config = serde_json::json!({
            "api_key": "sk-1", "nested": [{"token": "t", "keep": 1}], "monkey": "ok", "scope": "model"
        });
        let mut out = Vec::new();
        super::plugin_config(&config, &mut serde_json::Serializer::new(&mut out)).unwrap();
        let shown: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({"api_key": "<redacted>", "nested": [{"token": "<redacted>", "keep": 1}], "monkey": "ok", "scope": "model"})
        );
    }
}
