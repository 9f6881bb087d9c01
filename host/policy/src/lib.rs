//! The WebAssembly policy runtime.
//!
//! One [`PolicyEngine`] per process: a wasmtime `Engine` with the component model, async host
//! calls, the pooling allocator and epoch interruption, and a `Linker` with the host imports. A
//! [`Plugin`] is one loaded *version* of a plugin file: compiled once, checked against its kind's
//! world, configured, and then called through a pool of ready instances.
//!
//! Instance model (measured in the spike: ~35 µs to instantiate per call vs ~2 µs on a
//! reused instance): a pool of configured instances per version. An instance serves up to
//! `max_calls` calls, then is dropped (bounding what a plugin can accumulate); any trap, deadline
//! or out-of-memory drops it at once, since a trapped instance cannot be entered again. A request
//! holds an `Arc<Plugin>`, so one that outlives a reload finishes on the version it started with.
//!
//! Failure never takes the host down: the call returns [`PolicyError`] and the caller applies the
//! plugin's `on_error` (fail closed or open).
//!
//! Isolation between plugins: each version admits at most `max_concurrency` calls at once (more
//! wait up to `queue_timeout`, then fail as [`PolicyError::Overloaded`]), and a circuit breaker
//! stops calling a version that failed `breaker_failures` times within `breaker_window`: for
//! `breaker_cooldown` every call fails at once as [`PolicyError::CircuitOpen`], so a plugin that
//! runs to its deadline on every call costs other routes nothing while it is open. Each failure is
//! one `warn` line (the wasm backtrace goes to `debug`); each opening is one more. Calls refused
//! unrun are counted, and summed up in one line at most every [`REJECTIONS_LOGGED_EVERY`].
//!
//! Files: `engine.rs` (the engine, loading, the compilation cache), `plugin.rs` (a version, its
//! instance pool and admission), `calls.rs` (one call per kind), `breaker.rs`, `ticker.rs` (the
//! epoch clock), `stats.rs` (counters, call-time histogram), `spec.rs` (what the config says of a
//! plugin), `error.rs`, `module.rs` (reading a component from a file or the built-ins),
//! `imports/` (the host imports), `view.rs` (what a policy sees), `wit.rs` (`bindgen!`), and
//! `inspect.rs` (`tollgate plugin inspect`) and `authoring.rs`, the runner behind
//! `tollgate plugin test`.

pub mod authoring;
mod breaker;
mod calls;
mod engine;
mod error;
mod imports;
mod inspect;
mod module;
mod plugin;
mod spec;
mod stats;
mod throttle;
mod ticker;
pub mod view;
mod wit;

pub(crate) use breaker::Breaker;
pub use engine::{CodeOrigin, PolicyEngine};
pub(crate) use error::link_error;
pub use error::{LoadError, PolicyError, REJECTIONS_LOGGED_EVERY};
pub use inspect::Inspection;
pub use plugin::Plugin;
pub(crate) use plugin::{KindGuest, KindIndices, request_handle, response_handle, state_handle};
pub use spec::PluginSpec;
pub use stats::{CALL_BUCKETS, CallTimes, PluginStats};
pub(crate) use ticker::{Ticker, Ticking};

use std::time::Duration;

use sha2::{Digest, Sha256};

pub use view::{RequestInfo, ResponseInfo, TransformState};
pub use wit::{capacity, transform, types};

/// Epoch tick: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Largest memory any plugin may be configured with; also the pooling allocator's slot size.
/// The config owns the number (it validates against it); the runtime sizes its pool by it.
pub use tollgate_config::MAX_PLUGIN_MEMORY as MAX_MEMORY_LIMIT;

/// Instances the pooling allocator can hold at once, across all plugins and versions.
const POOL_INSTANCES: u32 = 1_000;

pub use tollgate_config::PluginKind;

/// What a plugin can reach through WASI (`plugin inspect` prints it; docs/plugins.md, "The
/// sandbox"). Everything else the gateway offers goes through the `tollgate:policy` imports.
pub const WASI_GRANTS: &str = "wall and monotonic clocks (the real time), random (secure and insecure), \
stderr (kept for error messages); no files, network, environment, arguments, stdin or stdout";

/// A module's identity as configs pin it (`plugins[].sha256`) and reloads compare it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The WIT world a plugin of `kind` implements.
pub fn world(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::IpBinding => "ip-binding-policy",
        PluginKind::Router => "router-policy",
        PluginKind::Quota => "quota-policy",
        PluginKind::HeaderRewrite => "header-rewrite-policy",
        PluginKind::Transform => "transform-policy",
    }
}

/// The version of the `tollgate:policy` WIT package this gateway provides.
pub const WIT_VERSION: &str = "@0.2.0";
