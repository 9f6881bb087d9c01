//! The gateway's one YAML config file: typed structs, loading and validation.
//!
//! Loading has two phases. Deserialization (serde, `deny_unknown_fields`) rejects unknown keys and
//! wrong types, stopping at the first such error, which carries its YAML path and line. Validation
//! then checks what types cannot express (references between sections, duplicates, ranges) and
//! collects *every* error with its YAML path, so `tollgate check` lists them all at once.
//!
//! One file per section, its types beside the validation of what its types cannot say:
//! `server.rs`, `admin.rs`, `auth.rs`, `upstreams.rs`, `routes.rs`, `plugins.rs`, `storage.rs`
//! (with `alerts:`), `logging.rs`, `edge.rs` (limits, access, CORS, maintenance); value types
//! in `types.rs` and `locations.rs` (database, cache, module), `${VAR}` in `env.rs` and
//! `env_file.rs`, Redis URLs in `redis_url.rs`.
//! `validate.rs` runs every section's check and keeps the checks that cross sections (a route's
//! upstreams and policies, the limits' scopes). This crate depends on no other of the workspace
//! but `tollgate-builtins`.

mod admin;
mod auth;
mod budgets;
mod capture;
mod credential_keys;
pub mod edge;
pub mod env;
pub mod env_file;
mod locations;
mod logging;
pub mod period;
mod plugins;
mod pricing;
pub mod redis_url;
mod routes;
mod server;
pub mod show;
mod storage;
mod telemetry;
pub mod types;
mod upstreams;
mod validate;

pub use admin::{
    AdminConfig, AdminRole, AdminUser, DEMO_ADMIN_PASSWORD, LockoutConfig, OidcConfig,
};
pub use auth::{
    AuthConfig, DEMO_KEY, DEMO_SECRET, KeyConfig, KeyLimits, is_model_pattern, parse_instant_ms,
};
pub use budgets::{BudgetSpec, BudgetsConfig, MAX_BUDGETS, OwnerBudget, Period};
pub use capture::{CaptureConfig, CaptureRules, CaptureWhen};
pub use credential_keys::{CREDENTIAL_KEY_LEN, credential_keys};
pub use logging::{LogFileConfig, LogFormat, LoggingConfig};
pub use plugins::{OnError, PluginConfig, PluginKind, PluginLimits};
pub use pricing::{Price, PriceEntry, PriceTable, PricingConfig, from_nanos, to_nanos};
pub use routes::{HttpMethod, RouteConfig, StreamUsage};
pub use server::{RealIpHeader, ServerConfig, Timeouts, TlsConfig, TlsVersion};
pub use storage::{AlertsConfig, Failsafe, PluginCache, RedisTls, RequestLogConfig, StorageConfig};
pub use telemetry::{OtlpConfig, TelemetryConfig};
pub use upstreams::{AuthScheme, MockConfig, Protocol, UpstreamConfig, UpstreamLimits};
pub(crate) use validate::{Errors, MAX_WORKERS, MIN_KEY_LEN, MIN_SECRET_LEN, check_name};

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest linear memory a plugin may be configured with (`plugins[].limits.memory`).
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;

/// Most webhook delivery retries (`alerts.retries`).
pub const MAX_ALERT_RETRIES: u32 = 10;

/// Paths the gateway answers itself; routes may not claim them. An entry ending in `/` is a prefix.
pub const RESERVED_PATHS: [&str; 4] = ["/health", "/ready", "/metrics", "/admin/"];

/// Whether `path` is one of [`RESERVED_PATHS`] (never proxied, whatever the routes say).
pub fn is_reserved_path(path: &str) -> bool {
    RESERVED_PATHS.iter().any(|own| {
        if own.ends_with('/') {
            path.starts_with(own)
        } else {
            path == *own
        }
    })
}

/// The JSON Schema of the config file (draft 2020-12), for editors: `tollgate config schema`.
/// It checks shapes and types; what it cannot express (references between sections, ranges)
/// `tollgate check` reports.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

pub use edge::{
    AccessConfig, CorsConfig, Enforce, InFlightLimit, LimitBy, LimitScope, LimitsConfig,
    MaintenanceConfig, Rate, RequestLimit, ResponseHeadersConfig, TokenEstimate, TokenLimit,
};
pub use locations::{CacheUrl, DatabaseUrl, Module};
pub use types::{ByteSize, Cidr, Duration, IpText, ListenAddr, Secret, UpstreamUrl, canonical_ip};

/// The whole config file.
#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// WebAssembly policy plugins, referenced by name from routes.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Bindings, intercepts, caches and counters. Read at start only (a change needs a restart).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Webhook alerts on repeated intercepts.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The admin plane's own listener (operators, not LLM clients).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Request, token and concurrency limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// IP allow and deny lists for every route (checked before authentication); entries added
    /// through the admin API or `tollgate ip` join them.
    #[serde(default)]
    pub access: AccessConfig,
    /// Maintenance mode for every route.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// What tokens cost, per model (spend and money budgets).
    #[serde(default)]
    pub pricing: PricingConfig,
    /// Spending caps per owner, and how budgets are enforced (a key's own are in its entry).
    #[serde(default)]
    pub budgets: BudgetsConfig,
    /// OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Request and response bodies kept in the request log (off unless set; a route's own
    /// `capture` replaces it).
    #[serde(default)]
    pub capture: Option<CaptureConfig>,
    /// Directory of the config file; relative plugin paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `routes[0].upstreams[1]`; empty for the document itself.
    pub path: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        match self.location {
            Some((line, col)) => write!(f, "{path} (line {line}, column {col}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, expanding `${VAR}` from the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read file: {e}"),
            }],
        })?;
        let mut config = Self::parse(&text, &name, Box::new(env_file::var))?;
        config.base_dir = base_dir;
        Ok(config)
    }

    /// `path` as given, or relative to the config file's directory.
    /// `module` with a relative file path made relative to the config file's directory.
    pub fn resolve_module(&self, module: &Module) -> Module {
        match module {
            Module::File(path) => Module::File(self.resolve(path)),
            builtin @ Module::Builtin(_) => builtin.clone(),
        }
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Parses and validates `text`; `lookup` supplies `${VAR}` values.
    pub fn parse(
        text: &str,
        source_name: &str,
        lookup: env::EnvSource,
    ) -> Result<Self, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source_name: source_name.to_owned(),
            errors,
        };
        let config = env::with_lookup(lookup, || deserialize(text)).map_err(|e| fail(vec![e]))?;
        let errors = validate::validate(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }
}

fn deserialize(text: &str) -> Result<Config, ConfigError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let mut path = err.path().to_string();
        if path == "." {
            path.clear();
        }
        let inner = err.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let mut message = inner.to_string();
        // The location is reported separately; drop the parser's own " at line N column M".
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // The parser prefixes its own, coarser path ("server.trusted_proxies: …"); ours is exact.
        if let Some((theirs, rest)) = message.split_once(": ")
            && !theirs.contains(' ')
            && path.starts_with(theirs)
        {
            message = rest.to_owned();
        }
        // A syntax error has no key yet; serde_path_to_error marks that segment `?`.
        while let Some(stripped) = path.strip_suffix(".?").or_else(|| path.strip_suffix('?')) {
            path = stripped.to_owned();
        }
        ConfigError {
            path,
            location,
            message,
        }
    })
}

#[cfg(test)]
mod tests;
