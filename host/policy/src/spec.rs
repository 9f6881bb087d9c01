//! What the config says of one plugin as the runtime needs it: [`PluginSpec`].

use crate::PluginKind;
use std::sync::Arc;
use std::time::Duration;

/// How a plugin is loaded and run.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    pub name: Arc<str>,
    pub kind: PluginKind,
    /// JSON passed to `configure`.
    pub config_json: String,
    pub sha256: Option<String>,
    pub max_module_size: u64,
    pub memory_limit: u64,
    pub deadline: Duration,
    /// Running-time budget of creating an instance (start functions and `configure`).
    pub init_deadline: Duration,
    /// Calls an instance serves before it is replaced.
    pub max_calls: u32,
    pub max_concurrency: u32,
    pub queue_timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
    /// Transforms: the largest upstream answer read whole for `on-response-body`.
    pub max_body: usize,
    /// A shadow candidate: `bindings.bind-first` makes no binding (it answers the binding in
    /// force, or the one that would be made).
    pub dry_run: bool,
}

impl PluginSpec {
    pub fn from_config(c: &tollgate_config::PluginConfig) -> Self {
        Self {
            config_json: c.config.to_string(),
            sha256: c.sha256.clone(),
            ..Self::with_limits(&c.name, c.kind, &c.limits)
        }
    }

    /// A spec with the config file's default limits and an empty config (tests, fixtures, bench).
    pub fn with_defaults(name: &str, kind: PluginKind, config_json: &str) -> Self {
        Self {
            config_json: config_json.to_owned(),
            ..Self::with_limits(name, kind, &tollgate_config::PluginLimits::default())
        }
    }

    /// A spec with the limits `l` (a config file's `plugins[].limits`) and an empty config.
    pub fn with_limits(name: &str, kind: PluginKind, l: &tollgate_config::PluginLimits) -> Self {
        Self {
            name: name.into(),
            kind,
            config_json: "{}".into(),
            sha256: None,
            max_module_size: l.module_size.0,
            memory_limit: l.memory.0,
            deadline: l.deadline.get(),
            init_deadline: l.init_deadline.get(),
            max_calls: l.max_calls,
            max_concurrency: l.max_concurrency,
            queue_timeout: l.queue_timeout.get(),
            breaker_failures: l.breaker_failures,
            breaker_window: l.breaker_window.get(),
            breaker_cooldown: l.breaker_cooldown.get(),
            max_body: usize::try_from(l.max_body.0).unwrap_or(usize::MAX),
            dry_run: false,
        }
    }
}
