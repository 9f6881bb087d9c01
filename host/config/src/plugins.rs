//! `plugins:`: WebAssembly policy plugins, their limits, and what a failed call does.

use crate::{ByteSize, Config, Duration, Errors, Module, check_name};
use std::collections::HashMap;

use serde::Deserialize;

use crate::env;

/// The kind of a policy plugin: which WIT world it implements.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    IpBinding,
    Router,
    Quota,
    HeaderRewrite,
    Transform,
}

impl PluginKind {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IpBinding => "ip-binding",
            Self::Router => "router",
            Self::Quota => "quota",
            Self::HeaderRewrite => "header-rewrite",
            Self::Transform => "transform",
        }
    }
}

/// What happens to a request when a plugin traps, times out or runs out of memory.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail closed: the client gets 503.
    #[default]
    Deny,
    /// Fail open: carry on as if the plugin were not there.
    Skip,
}

/// One WebAssembly policy plugin.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    pub kind: PluginKind,
    /// The component: `builtin:NAME` for a plugin shipped in the binary, or the path of a `.wasm`
    /// file, relative to the config file's directory.
    pub module: Module,
    /// Expected hex sha256 of the component; a different one is refused.
    #[serde(default, deserialize_with = "env::opt_string")]
    pub sha256: Option<String>,
    /// Passed to the plugin's `configure` as JSON, verbatim: no `${VAR}` expansion, because
    /// plugins use `${…}` for their own per-request templates (e.g. `${request_id}`).
    #[serde(
        default = "empty_object",
        serialize_with = "crate::show::plugin_config"
    )]
    pub config: serde_json::Value,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub limits: PluginLimits,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Sandbox limits for one plugin.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory the plugin may grow to.
    pub memory: ByteSize,
    /// Longest a single call may run before it is stopped.
    pub deadline: Duration,
    /// Longest creating an instance may run: its start functions and `configure`. Separate from
    /// `deadline` because an interpreter (Python, JavaScript) needs a few ms to start, which a
    /// call must not; it runs once per instance (at load, and when a worn-out or failed one is
    /// replaced, then on the request that needs it).
    pub init_deadline: Duration,
    /// Largest module file accepted (checked before compiling).
    pub module_size: ByteSize,
    /// Calls one instance serves before it is replaced by a fresh one.
    pub max_calls: u32,
    /// Calls of this plugin running at once; further calls wait for a slot up to `queue_timeout`,
    /// then fail (the plugin's `on_error` decides).
    pub max_concurrency: u32,
    /// Longest a call waits for a free slot.
    pub queue_timeout: Duration,
    /// Circuit breaker: this many failures (deadline, trap, memory) within `breaker_window`
    /// stop calls to the plugin for `breaker_cooldown`; meanwhile `on_error` applies at once.
    /// 0 = no breaker.
    pub breaker_failures: u32,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
    /// Transforms: the largest upstream answer read whole for `on-response-body` (a larger one
    /// fails the request with 502), and the largest event of a stream held for `on-event` (a
    /// larger one ends the stream with an error event). Request bodies are bounded by
    /// `server.max_body`.
    pub max_body: ByteSize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory: ByteSize(32 << 20),
            deadline: Duration(std::time::Duration::from_millis(5)),
            init_deadline: Duration(std::time::Duration::from_millis(100)),
            module_size: ByteSize(32 << 20),
            max_calls: 10_000,
            max_concurrency: 64,
            queue_timeout: Duration(std::time::Duration::from_millis(100)),
            breaker_failures: 5,
            breaker_window: Duration::secs(10),
            breaker_cooldown: Duration::secs(30),
            max_body: ByteSize(4 << 20),
        }
    }
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let mut names = HashMap::new();
    for (i, p) in c.plugins.iter().enumerate() {
        let path = format!("plugins[{i}]");
        check_name(&p.name, &format!("{path}.name"), "plugin", &mut names, e);
        if let super::Module::Builtin(name) = &p.module
            && tollgate_builtins::find(name).is_none()
        {
            e.add(format!("{path}.module"), tollgate_builtins::unknown(name));
        }
        if let Some(pin) = &p.sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            e.add(format!("{path}.sha256"), "must be 64 hex digits");
        }
        let l = &p.limits;
        if l.memory.0 == 0 || l.memory.0 > super::MAX_PLUGIN_MEMORY {
            e.add(
                format!("{path}.limits.memory"),
                format!(
                    "must be between 1 byte and {} MiB",
                    super::MAX_PLUGIN_MEMORY >> 20
                ),
            );
        }
        if l.deadline.get().is_zero() {
            e.add(format!("{path}.limits.deadline"), "must be greater than 0");
        }
        if l.init_deadline.get().is_zero() {
            e.add(
                format!("{path}.limits.init_deadline"),
                "must be greater than 0",
            );
        }
        if l.max_calls == 0 {
            e.add(format!("{path}.limits.max_calls"), "must be at least 1");
        }
        if l.max_concurrency == 0 {
            e.add(
                format!("{path}.limits.max_concurrency"),
                "must be at least 1",
            );
        }
        if l.breaker_failures > 0
            && (l.breaker_window.get().is_zero() || l.breaker_cooldown.get().is_zero())
        {
            e.add(
                format!("{path}.limits"),
                "breaker_window and breaker_cooldown must be greater than 0 when breaker_failures is set",
            );
        }
    }
}
