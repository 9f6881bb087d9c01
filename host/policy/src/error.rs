//! Why loading a plugin (`LoadError`) or calling one (`PolicyError`) failed, and the advice a
//! link failure comes with.

use crate::WIT_VERSION;
use std::sync::Arc;
use std::time::Duration;

use tollgate_state::StoreError;

/// Why a plugin could not be loaded. The running version (if any) stays in service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    UnknownBuiltin(String),
    #[error("module is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("sha256 is {actual}, but the config pins {expected}")]
    Pin { expected: String, actual: String },
    #[error("not a valid component: {0}")]
    Compile(String),
    #[error("imports something the host does not provide: {0}")]
    Link(String),
    #[error("does not export the `{world}` world's interface: {reason}")]
    WrongKind { world: &'static str, reason: String },
    #[error("configure failed: {0}")]
    Configure(String),
    #[error("crashed while configuring: {0}")]
    Trap(String),
}

/// Why a call into a plugin failed. The instance is discarded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("plugin {plugin} exceeded its {deadline:?} deadline")]
    Deadline {
        plugin: Arc<str>,
        deadline: Duration,
    },
    #[error("plugin {plugin} trapped: {reason}")]
    Trap { plugin: Arc<str>, reason: String },
    #[error("plugin {plugin} could not be instantiated: {reason}")]
    Instantiate { plugin: Arc<str>, reason: String },
    /// The breaker is open after repeated failures; the plugin was not called.
    #[error("plugin {plugin} is not called for now: it failed repeatedly")]
    CircuitOpen { plugin: Arc<str> },
    /// `max_concurrency` calls were running and none finished within `queue_timeout`.
    #[error("plugin {plugin} is at its concurrency limit")]
    Overloaded { plugin: Arc<str> },
    /// A host import needed a store that could not answer; the deployment's failsafe decides,
    /// not the plugin's `on_error`.
    #[error("plugin {plugin} could not reach the stores: {source}")]
    StoreUnavailable {
        plugin: Arc<str>,
        source: StoreError,
    },
}

impl PolicyError {
    /// The plugin was not called (breaker open, concurrency limit): counted in
    /// `PluginStats::rejected` and logged at most once per [`REJECTIONS_LOGGED_EVERY`], so a
    /// caller need not log it per request.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. } | Self::Overloaded { .. })
    }
}

/// How often a plugin's refused calls are summed up in one log line (the first is logged at
/// once).
pub const REJECTIONS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// A link failure, with what to do about it when the cause is a known one.
pub(crate) fn link_error(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    let advice = if text.contains("wasi:http/") {
        Some(
            "plugins get no HTTP: a JavaScript component built by componentize-js needs `-d http \
             fetch-event` (the generated build.sh passes it); in Python, do not import an HTTP \
             client",
        )
    } else if text.contains("wasi:sockets/") {
        Some("plugins get no network: remove the socket use")
    } else if text.contains("tollgate:policy/") && !text.contains(WIT_VERSION) {
        Some(
            "built against another version of Tollgate's WIT: rebuild against this gateway's \
             wit/ (`tollgate plugin new` writes it into Python and JavaScript projects)",
        )
    } else {
        None
    };
    match advice {
        Some(a) => format!("{text}. What to do: {a}"),
        None => text,
    }
}
