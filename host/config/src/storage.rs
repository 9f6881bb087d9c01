//! `storage:` and `alerts:`: the database, the cache, and the alert webhook.

use crate::{
    CacheUrl, Config, DatabaseUrl, Duration, Errors, MAX_ALERT_RETRIES, Secret, UpstreamUrl,
};
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;

use crate::env;

/// What happens to a request the stores cannot decide (a first use while the database is down, or a
/// key neither the cache nor the database can answer for).
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Failsafe {
    /// Refuse with 503.
    #[default]
    Closed,
    /// Let it through (no binding is made) and log it.
    Open,
}

/// Stores: see `tollgate::state`.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Source of truth for bindings and the intercept log.
    pub database: DatabaseUrl,
    /// Cache, counters and plugin key-value data. Never the source of truth for bindings.
    /// `memory`, or Redis: one server, Sentinel or Cluster (docs/state.md, "Redis").
    pub cache: CacheUrl,
    /// TLS to Redis (`rediss…` URLs): the CA to trust instead of the system's, and a client
    /// certificate for mutual TLS.
    pub redis_tls: RedisTls,
    pub failsafe: Failsafe,
    /// How often batched `last_used` updates and intercepts are written.
    pub flush_interval: Duration,
    /// How long a binding read from the database is served from the cache.
    pub binding_cache_ttl: Duration,
    /// Active bindings unused for this many days are archived (0 = never); the key binds afresh
    /// on its next request. Banned keys are never archived.
    pub archive_days: u32,
    /// How often the archive job runs.
    pub retention_interval: Duration,
    /// Longest a single database or cache operation may take before it counts as a failure.
    pub op_timeout: Duration,
    /// Where compiled plugins are kept (wasmtime's compilation cache, keyed by the module's
    /// bytes, the wasmtime build and its settings), so a restart does not compile an unchanged
    /// plugin again. `auto`: `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`), else
    /// `$XDG_CACHE_HOME/tollgate`, else `$HOME/.cache/tollgate`; `off`: no cache; else a
    /// directory (relative to the config file). Entries are loaded as machine code: it must be
    /// writable only by the gateway's user (created 0700; one writable by group or others is
    /// not used). Read at start.
    pub plugin_cache: PluginCache,
    /// Keys that encrypt upstream credentials set at run time (AES-256-GCM), as
    /// `ID:BASE64` pairs separated by commas, e.g. `${TOLLGATE_CREDENTIAL_KEYS}`: the first
    /// encrypts, every one decrypts (`tollgate credentials reencrypt` moves old records to the
    /// first). Give it from the environment: it never goes to the database. Unset: credentials
    /// can only come from this file.
    pub credential_keys: Option<Secret>,
    /// The request log: one row per request the data plane answers (docs/requests.md).
    pub request_log: RequestLogConfig,
}

/// `storage.request_log`: what is kept of each request, and for how long. `enabled` and
/// `sample` follow a reload; `max_age`, `max_rows` and `max_pending` are read at start.
#[derive(Debug, Deserialize, serde::Serialize, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogConfig {
    /// Log requests at all.
    pub enabled: bool,
    /// The share of successful requests kept, from 0 to 1 (default 1: all). What the gateway
    /// refused and what failed, was cut or aborted is always kept. docs/requests.md says what
    /// a logged request costs.
    pub sample: f64,
    /// Requests older than this are deleted, a block at a time (0: whatever their age).
    pub max_age: Duration,
    /// The newest this many requests are kept (0: no cap).
    pub max_rows: u64,
    /// Requests waiting for the writer; past it new ones are dropped (and counted in
    /// `tollgate_request_log_dropped_total`).
    pub max_pending: usize,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample: 1.0,
            max_age: Duration::secs(7 * 86_400),
            max_rows: 1_000_000,
            max_pending: 50_000,
        }
    }
}

/// `storage.plugin_cache`: `auto`, `off` or a directory.
#[derive(Debug, Deserialize, serde::Serialize, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(transparent)]
pub struct PluginCache(pub String);

impl Default for PluginCache {
    fn default() -> Self {
        Self("auto".into())
    }
}

impl PluginCache {
    /// The directory to use, if any: `base` resolves a relative path; `env` reads the
    /// environment (`std::env::var_os` outside tests).
    pub fn dir(
        &self,
        base: &Path,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<PathBuf> {
        match self.0.as_str() {
            "off" | "" => None,
            "auto" => {
                let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
                // systemd may list several directories, separated by ':'; the first is ours.
                if let Some(d) = set("CACHE_DIRECTORY") {
                    let first = d
                        .to_string_lossy()
                        .split(':')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    return Some(PathBuf::from(first));
                }
                set("XDG_CACHE_HOME")
                    .filter(|d| d.is_absolute())
                    .map(|d| d.join("tollgate"))
                    .or_else(|| set("HOME").map(|h| h.join(".cache/tollgate")))
            }
            dir => Some(base.join(dir)),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            database: DatabaseUrl::Sqlite("tollgate.db".into()),
            cache: CacheUrl::Memory,
            failsafe: Failsafe::Closed,
            flush_interval: Duration::secs(2),
            binding_cache_ttl: Duration::secs(300),
            archive_days: 90,
            retention_interval: Duration::secs(3600),
            op_timeout: Duration(std::time::Duration::from_millis(1000)),
            plugin_cache: PluginCache::default(),
            redis_tls: RedisTls::default(),
            credential_keys: None,
            request_log: RequestLogConfig::default(),
        }
    }
}

/// `storage.redis_tls`: certificates for `rediss…` caches. Paths are relative to the config
/// file. Read at start.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    /// PEM file of the CA(s) that signed the Redis servers' certificates; the system's trust
    /// store when unset.
    #[serde(deserialize_with = "env::opt_path")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require one (`tls-auth-clients yes`).
    #[serde(deserialize_with = "env::opt_path")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(deserialize_with = "env::opt_path")]
    pub key: Option<PathBuf>,
}

/// Alerts on repeated intercepts: when one key is refused `threshold` times within `window`, a
/// JSON document is POSTed to `webhook`, once per key per window.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    #[serde(serialize_with = "crate::show::origin_only")]
    pub webhook: Option<UpstreamUrl>,
    pub threshold: u32,
    pub window: Duration,
    /// Delivery attempts after the first (0–10, default 5). The waits double from 500 ms up to
    /// 30 s, each shortened by a random part of up to half (jitter).
    pub retries: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            threshold: 5,
            window: Duration::secs(600),
            retries: 5,
        }
    }
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let s = &c.storage;
    for (name, d) in [
        ("flush_interval", s.flush_interval),
        ("binding_cache_ttl", s.binding_cache_ttl),
        ("retention_interval", s.retention_interval),
        ("op_timeout", s.op_timeout),
    ] {
        if d.get().is_zero() {
            e.add(format!("storage.{name}"), "must be greater than 0");
        }
    }
    let log = &s.request_log;
    if !(0.0..=1.0).contains(&log.sample) {
        e.add(
            "storage.request_log.sample",
            "must be from 0 to 1 (the share of successful requests kept)",
        );
    }
    if log.max_pending == 0 {
        e.add("storage.request_log.max_pending", "must be greater than 0");
    }
    if s.redis_tls.cert.is_some() != s.redis_tls.key.is_some() {
        e.add(
            "storage.redis_tls",
            "set both cert and key (a client certificate and its key), or neither",
        );
    }
    if let Some(keys) = &s.credential_keys
        && let Err(err) = crate::credential_keys(keys.expose())
    {
        e.add("storage.credential_keys", err);
    }
    if c.alerts.threshold == 0 {
        e.add("alerts.threshold", "must be greater than 0");
    }
    if c.alerts.window.get().is_zero() {
        e.add("alerts.window", "must be greater than 0");
    }
    if c.alerts.retries > MAX_ALERT_RETRIES {
        e.add(
            "alerts.retries",
            format!("must be at most {MAX_ALERT_RETRIES} (delays reach 30 s by the 7th)"),
        );
    }
}
