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

pub mod fixtures;
mod imports;
mod module;
mod throttle;
pub mod view;
mod wit;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, Resource};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use imports::{CallBudget, InstanceData};
use throttle::Throttle;
use tollgate_config::Module;
use tollgate_state::{StoreError, Stores};
pub use view::{RequestInfo, ResponseInfo};
pub use wit::types;
use wit::{header_rewrite, ip_binding, plugin, quota, router};

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
    }
}

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
            dry_run: false,
        }
    }
}

/// The process-wide engine, linker and shared host services.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<InstanceData>,
    stores: Arc<Stores>,
    ticker: Arc<Ticker>,
    /// wasmtime's on-disk compilation cache, when one is configured (its hit counter tells a
    /// cached load from a compilation).
    cache: Option<wasmtime::Cache>,
    /// One compilation at a time (each one already uses every core), so the cache's hit
    /// counter is attributable to the load in progress.
    compiling: Mutex<()>,
}

/// Where a loaded version's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeOrigin {
    /// Compiled from the module.
    Compiled,
    /// Read from the on-disk compilation cache (`storage.plugin_cache`): same module bytes,
    /// same wasmtime build and settings.
    DiskCache,
    /// Shared with a version already in service whose module has the same sha256 (a config
    /// edit that did not change the module).
    Reused,
}

impl CodeOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::DiskCache => "disk-cache",
            Self::Reused => "reused",
        }
    }
}

/// The epoch ticker's state. Its thread advances the engine's epoch every [`EPOCH_TICK`] while
/// guest code may run (some [`Ticking`] guard is held: a call, or an instantiation with its
/// `configure`), and sleeps otherwise: an idle gateway, or one whose routes have no plugin, is not
/// woken 1000 times a second. A deadline is as strong as before: the guard is taken before any
/// guest code runs, and the first tick follows within one [`EPOCH_TICK`].
struct Ticker {
    active: std::sync::atomic::AtomicUsize,
    /// Epoch increments so far.
    ticks: AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Ticker {
    /// Keeps the epoch advancing until the guard is dropped.
    fn running(self: &Arc<Self>) -> Ticking {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Ticking(self.clone())
    }
}

/// Holds the epoch ticker awake (see [`Ticker`]).
struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.thread.get() {
            t.unpark();
        }
    }
}

impl PolicyEngine {
    /// An engine without an on-disk compilation cache.
    pub fn new(stores: Arc<Stores>) -> wasmtime::Result<Self> {
        Self::with_cache(stores, None)
    }

    /// An engine whose compilations are cached in `cache_dir` (created with mode 0700 if
    /// missing). wasmtime keys each entry by the module's bytes, its own version and the
    /// engine's settings, so a stale or foreign entry is never used. The directory must be
    /// writable only by the gateway's user: its entries are loaded as machine code. One that
    /// group or others may write is refused with an error (the caller decides whether to go on
    /// without a cache).
    pub fn with_cache(stores: Arc<Stores>, cache_dir: Option<&Path>) -> wasmtime::Result<Self> {
        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        pooling
            .total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 8)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_core_instances_per_component(32)
            .max_memory_size(MAX_MEMORY_LIMIT as usize);
        let mut config = wasmtime::Config::new();
        // `TOLLGATE_PERFMAP=1` writes /tmp/perf-<pid>.map so `perf` can name plugin code (for
        // profiling; see bench/README.md).
        let profiler = if std::env::var_os("TOLLGATE_PERFMAP").is_some() {
            wasmtime::ProfilingStrategy::PerfMap
        } else {
            wasmtime::ProfilingStrategy::None
        };
        // `TOLLGATE_WASM_ON_DEMAND=1` allocates each instance when it is made instead of from
        // the pool, whose terabytes of reserved address space valgrind cannot map (for counting
        // instructions; see bench/README.md). Plugin calls are slower that way.
        let strategy = if std::env::var_os("TOLLGATE_WASM_ON_DEMAND").is_some() {
            wasmtime::InstanceAllocationStrategy::OnDemand
        } else {
            wasmtime::InstanceAllocationStrategy::Pooling(pooling)
        };
        config
            .epoch_interruption(true)
            .profiler(profiler)
            .allocation_strategy(strategy);
        let cache = cache_dir.map(open_cache).transpose()?;
        config.cache(cache.clone());
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wit::Host_::add_to_linker::<InstanceData, HasSelf<InstanceData>>(&mut linker, |s| s)?;

        let ticker = Arc::new(Ticker {
            active: std::sync::atomic::AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let (weak, state) = (engine.weak(), ticker.clone());
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !state.stop.load(Ordering::Relaxed) {
                    if state.active.load(Ordering::Acquire) == 0 {
                        // Woken by the next `running` (an unpark that came first is not lost).
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                    state.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        let _ = ticker.thread.set(thread.thread().clone());
        if ticker.active.load(Ordering::Acquire) > 0 {
            thread.thread().unpark();
        }
        Ok(Self {
            engine,
            linker,
            stores,
            ticker,
            cache,
            compiling: Mutex::new(()),
        })
    }

    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// The wasmtime engine every plugin is compiled for.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Epoch ticks so far: they advance only while guest code may run.
    pub fn epoch_ticks(&self) -> u64 {
        self.ticker.ticks.load(Ordering::Relaxed)
    }

    /// Reads, checks, compiles and configures a plugin. Compilation is CPU-heavy: call this off
    /// the request path (it blocks the calling thread).
    pub fn load(&self, module: impl Into<Module>, spec: PluginSpec) -> Result<Plugin, LoadError> {
        self.load_reusing(&module.into(), spec, &[])
    }

    /// [`Self::load`], sharing the machine code of a version in `running` whose module has the
    /// same sha256 instead of compiling it again (a reload that changed only the config).
    pub fn load_reusing(
        &self,
        module: &Module,
        spec: PluginSpec,
        running: &[Arc<Plugin>],
    ) -> Result<Plugin, LoadError> {
        let (bytes, digest) = module::read(module, &spec)?;
        if let Some(same) = running.iter().find(|p| p.sha256 == digest) {
            let component = same.pre.component().clone();
            return self.prepare(
                component,
                (module.clone(), digest),
                spec,
                (CodeOrigin::Reused, Duration::ZERO),
            );
        }
        let (component, origin) = self.compile_bytes(&bytes)?;
        self.prepare(component, (module.clone(), digest), spec, origin)
    }

    /// Reads `module` within `spec`'s size limit and pin, and compiles it.
    pub(crate) fn compile(
        &self,
        module: &Module,
        spec: &PluginSpec,
    ) -> Result<(Component, String, (CodeOrigin, Duration)), LoadError> {
        let (bytes, digest) = module::read(module, spec)?;
        let (component, origin) = self.compile_bytes(&bytes)?;
        Ok((component, digest, origin))
    }

    /// Compiles a component, or loads it from the on-disk cache.
    fn compile_bytes(
        &self,
        bytes: &[u8],
    ) -> Result<(Component, (CodeOrigin, Duration)), LoadError> {
        let _one = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let hits = self.cache.as_ref().map_or(0, wasmtime::Cache::cache_hits);
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let took = started.elapsed();
        let cached = self.cache.as_ref().is_some_and(|c| c.cache_hits() > hits);
        let origin = if cached {
            CodeOrigin::DiskCache
        } else {
            CodeOrigin::Compiled
        };
        Ok((component, (origin, took)))
    }

    /// Links a compiled component as a plugin of `spec.kind`.
    pub(crate) fn prepare(
        &self,
        component: Component,
        (module, digest): (Module, String),
        spec: PluginSpec,
        (origin, took): (CodeOrigin, Duration),
    ) -> Result<Plugin, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(link_error(&e)))?;
        let wrong = |e: wasmtime::Error| LoadError::WrongKind {
            world: world(spec.kind),
            reason: format!("{e:#}"),
        };
        let plugin_idx = plugin::GuestIndices::new(&pre).map_err(wrong)?;
        let kind_idx = match spec.kind {
            PluginKind::IpBinding => {
                KindIndices::IpBinding(ip_binding::GuestIndices::new(&pre).map_err(wrong)?)
            }
            PluginKind::Router => {
                KindIndices::Router(router::GuestIndices::new(&pre).map_err(wrong)?)
            }
            PluginKind::Quota => KindIndices::Quota(quota::GuestIndices::new(&pre).map_err(wrong)?),
            PluginKind::HeaderRewrite => {
                KindIndices::HeaderRewrite(header_rewrite::GuestIndices::new(&pre).map_err(wrong)?)
            }
        };
        Ok(Plugin {
            module,
            sha256: digest,
            code_origin: origin,
            code_time: took,
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            stores: self.stores.clone(),
            pre,
            plugin_idx,
            kind_idx,
            interest: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(spec.max_concurrency as usize)),
            breaker: Breaker::new(),
            rejections: Throttle::default(),
            stats: PluginStats::default(),
            spec,
        })
    }
}

enum KindIndices {
    IpBinding(ip_binding::GuestIndices),
    Router(router::GuestIndices),
    Quota(quota::GuestIndices),
    HeaderRewrite(header_rewrite::GuestIndices),
}

enum KindGuest {
    IpBinding(ip_binding::Guest),
    Router(router::Guest),
    Quota(quota::Guest),
    HeaderRewrite(header_rewrite::Guest),
}

/// A configured instance, ready for calls.
struct Instance {
    store: Store<InstanceData>,
    guest: KindGuest,
    calls: u32,
    /// The concurrency slot of the call in progress (none while pooled).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the call in progress was handed this instance.
    started: Option<std::time::Instant>,
    /// Keeps the epoch ticking while the call runs (none while pooled).
    ticking: Option<Ticking>,
}

/// Buckets of [`CallTimes`]: up to 1 µs, 2 µs, 4 µs, … 2^19 µs (0.52 s), and above.
pub const CALL_BUCKETS: usize = 21;

/// Call durations of one plugin version (checkout to checkin: the guest's run plus the host's
/// setup), in power-of-two microsecond buckets: one atomic add per call.
#[derive(Debug, Default)]
pub struct CallTimes {
    buckets: [AtomicU64; CALL_BUCKETS],
    sum_ns: AtomicU64,
}

impl CallTimes {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = if us <= 1 {
            0
        } else {
            (64 - (us - 1).leading_zeros()) as usize
        };
        self.buckets[i.min(CALL_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Upper bound of bucket `i` in seconds (`+Inf` for the last).
    pub fn upper_secs(i: usize) -> f64 {
        if i + 1 >= CALL_BUCKETS {
            f64::INFINITY
        } else {
            (1u64 << i) as f64 / 1e6
        }
    }

    /// The count in each bucket (not cumulative).
    pub fn counts(&self) -> [u64; CALL_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    pub fn sum_secs(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile; `None` before any call.
    /// Past the last finite bucket it answers that bucket's bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper_secs(i.min(CALL_BUCKETS - 2)));
            }
        }
        Some(Self::upper_secs(CALL_BUCKETS - 2))
    }
}

/// Counters for metrics and the admin API.
#[derive(Default, Debug)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// Failures that were traps (a panic, `unreachable`, out of memory), not deadlines.
    pub traps: AtomicU64,
    /// Failures that ran past the deadline.
    pub timeouts: AtomicU64,
    /// How long calls took.
    pub call_time: CallTimes,
    pub instantiations: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Calls refused without running: breaker open or concurrency limit.
    pub rejected: AtomicU64,
}

/// The circuit breaker of one plugin version.
struct Breaker {
    born: std::time::Instant,
    /// Milliseconds since `born` until which calls are refused (0 = closed).
    open_until: AtomicU64,
    /// Failures in the current window: (window start, count).
    window: Mutex<(std::time::Instant, u32)>,
}

impl Breaker {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Self {
            born: now,
            open_until: AtomicU64::new(0),
            window: Mutex::new((now, 0)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Records a failure; true if it opened the breaker.
    fn failure(&self, spec: &PluginSpec) -> bool {
        if spec.breaker_failures == 0 || self.is_open() {
            return false;
        }
        let now = std::time::Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(w.0) > spec.breaker_window {
            *w = (now, 0);
        }
        w.1 += 1;
        if w.1 < spec.breaker_failures {
            return false;
        }
        *w = (now, 0);
        let until = self.now_ms() + spec.breaker_cooldown.as_millis() as u64;
        self.open_until.store(until.max(1), Ordering::Relaxed);
        true
    }
}

/// Which calls a loaded version asked for (quota `watch`, header-rewrite `phases`), read once
/// from its first instance. Kinds without such a query are called for everything.
#[derive(Debug, Clone)]
struct Interest {
    /// Quota: the statuses `on-response` is called for; `None` = every response.
    statuses: Option<Vec<u16>>,
    /// Header-rewrite: whether `on-request` / `on-response` are called.
    request_phase: bool,
    response_phase: bool,
}

impl Default for Interest {
    fn default() -> Self {
        Self {
            statuses: None,
            request_phase: true,
            response_phase: true,
        }
    }
}

/// One loaded version of a plugin.
pub struct Plugin {
    pub spec: PluginSpec,
    /// Where the component came from: `builtin:NAME` or its file (absolute).
    pub module: Module,
    /// Hex sha256 of the component.
    pub sha256: String,
    /// Where this version's machine code came from.
    pub code_origin: CodeOrigin,
    /// How long compiling it (or reading it from the cache) took; zero when reused.
    pub code_time: Duration,
    engine: Engine,
    ticker: Arc<Ticker>,
    stores: Arc<Stores>,
    pre: InstancePre<InstanceData>,
    plugin_idx: plugin::GuestIndices,
    kind_idx: KindIndices,
    interest: OnceLock<Interest>,
    /// Configured instances, boxed so that a checkout or checkin moves a pointer, not the
    /// instance (each call moves it twice).
    #[allow(clippy::vec_box, reason = "the box is what a call moves")]
    idle: Mutex<Vec<Box<Instance>>>,
    slots: Arc<tokio::sync::Semaphore>,
    breaker: Breaker,
    /// Paces the log lines about refused calls.
    rejections: Throttle,
    pub stats: PluginStats,
}

/// The handles a call lends the guest. Their data is the store's `request`/`response`, so the
/// representation carries nothing.
fn request_handle() -> Resource<RequestInfo> {
    Resource::new_borrow(0)
}

fn response_handle() -> Resource<ResponseInfo> {
    Resource::new_borrow(0)
}

impl Plugin {
    /// Creates and configures a fresh instance.
    async fn instantiate(&self) -> Result<Instance, LoadError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        // Guest code runs below (start functions, `configure`): its deadline needs the ticks.
        let _ticking = self.ticker.running();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.spec.memory_limit as usize)
            .instances(64)
            .tables(64)
            .memories(8)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            InstanceData::new(
                self.spec.name.clone(),
                self.stores.clone(),
                limits,
                self.spec.dry_run,
            ),
        );
        store.limiter(|s| &mut s.limits);
        // Each epoch tick yields to the async executor (other requests keep moving while a guest
        // spins); once the call's running-time budget is spent the guest traps.
        store.epoch_deadline_callback(|mut ctx| {
            if ctx.data_mut().budget.step() {
                Ok(UpdateDeadline::Yield(1))
            } else {
                Err(wasmtime::Trap::Interrupt.into())
            }
        });
        store.set_epoch_deadline(1);
        // One budget for everything creating an instance runs: start functions, `configure`,
        // and the first instance's `watch`/`rewrites`.
        store.data_mut().budget = CallBudget::new(self.spec.init_deadline);
        let init_deadline = self.spec.init_deadline;
        let trap = |e: wasmtime::Error| {
            if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                LoadError::Trap(format!(
                    "ran past its {init_deadline:?} init_deadline while starting or configuring"
                ))
            } else {
                LoadError::Trap(format!("{e:#}"))
            }
        };
        let instance = self.pre.instantiate_async(&mut store).await.map_err(trap)?;
        let configure = self.plugin_idx.load(&mut store, &instance).map_err(trap)?;
        let guest = match &self.kind_idx {
            KindIndices::IpBinding(i) => i.load(&mut store, &instance).map(KindGuest::IpBinding),
            KindIndices::Router(i) => i.load(&mut store, &instance).map(KindGuest::Router),
            KindIndices::Quota(i) => i.load(&mut store, &instance).map(KindGuest::Quota),
            KindIndices::HeaderRewrite(i) => {
                i.load(&mut store, &instance).map(KindGuest::HeaderRewrite)
            }
        }
        .map_err(trap)?;
        configure
            .call_configure(&mut store, &self.spec.config_json)
            .await
            .map_err(trap)?
            .map_err(LoadError::Configure)?;
        if self.interest.get().is_none() {
            let interest = match &guest {
                KindGuest::Quota(g) => Interest {
                    statuses: g.call_watch(&mut store).await.map_err(trap)?,
                    ..Interest::default()
                },
                KindGuest::HeaderRewrite(g) => {
                    let phases = g.call_rewrites(&mut store).await.map_err(trap)?;
                    Interest {
                        request_phase: phases.contains(header_rewrite::Phases::REQUEST),
                        response_phase: phases.contains(header_rewrite::Phases::RESPONSE),
                        ..Interest::default()
                    }
                }
                _ => Interest::default(),
            };
            let _ = self.interest.set(interest);
        }
        Ok(Instance {
            store,
            guest,
            calls: 0,
            started: None,
            slot: None,
            ticking: None,
        })
    }

    /// Linear memory held by a configured instance of this version (after `configure`), if one
    /// is pooled; see [`Plugin::validate`].
    pub fn instance_memory(&self) -> Option<u64> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.last()
            .map(|i| i.store.data().limits.linear_bytes as u64)
    }

    /// Whether `module` still has the contents this version was compiled from.
    pub fn is_unchanged(&self, module: &Module) -> bool {
        module::unchanged(module, &self.sha256)
    }

    /// Checks that the plugin instantiates and accepts its configuration, and keeps that instance
    /// for the first calls. Run before a version is put into service.
    pub async fn validate(&self) -> Result<(), LoadError> {
        let instance = Box::new(self.instantiate().await?);
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
        Ok(())
    }

    fn interest(&self) -> &Interest {
        static EVERYTHING: OnceLock<Interest> = OnceLock::new();
        self.interest
            .get()
            .unwrap_or_else(|| EVERYTHING.get_or_init(Interest::default))
    }

    /// Quota: whether `on_response` wants a response with `status` (streams whose first event was
    /// read are always wanted).
    pub fn watches(&self, status: u16, first_event: bool) -> bool {
        first_event
            || self
                .interest()
                .statuses
                .as_ref()
                .is_none_or(|s| s.contains(&status))
    }

    /// Header-rewrite: whether the plugin rewrites requests.
    pub fn rewrites_requests(&self) -> bool {
        self.interest().request_phase
    }

    /// Header-rewrite: whether the plugin rewrites responses.
    pub fn rewrites_responses(&self) -> bool {
        self.interest().response_phase
    }

    /// Whether the circuit breaker currently refuses calls.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// A concurrency slot for one call, unless the breaker is open or no slot frees in time.
    async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PolicyError> {
        let plugin = || self.spec.name.clone();
        if self.breaker.is_open() {
            self.rejected("the circuit breaker is open");
            return Err(PolicyError::CircuitOpen { plugin: plugin() });
        }
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        // The wait is boxed: it is rare, and its timer would otherwise enlarge the future of
        // every call (and of every filter hook that awaits one), which is moved and copied.
        let wait =
            tokio::time::timeout(self.spec.queue_timeout, self.slots.clone().acquire_owned());
        match Box::pin(wait).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.rejected("it is at its concurrency limit");
                Err(PolicyError::Overloaded { plugin: plugin() })
            }
        }
    }

    /// Counts a call refused unrun; logs the first one and then one line per
    /// [`REJECTIONS_LOGGED_EVERY`] with the count since the last line.
    #[cold]
    fn rejected(&self, why: &'static str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(refused) = self.rejections.note(REJECTIONS_LOGGED_EVERY) {
            tracing::warn!(target: "plugin", plugin = %self.spec.name, refused, reason = why, "plugin calls refused without running since the last such line (on_error decides each request; tollgate_plugin_rejected_total counts them)");
        }
    }

    /// Takes a ready instance (or makes one) and lends it the call's request and response.
    async fn checkout(
        &self,
        request: &Arc<RequestInfo>,
        response: Option<&Arc<ResponseInfo>>,
    ) -> Result<Box<Instance>, PolicyError> {
        let slot = self.admit().await?;
        let ticking = self.ticker.running();
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match pooled {
            Some(i) => i,
            // Boxed, as the rare path: instantiation's future is many times a call's.
            None => Box::new(Box::pin(self.instantiate()).await.map_err(|e| {
                PolicyError::Instantiate {
                    plugin: self.spec.name.clone(),
                    reason: e.to_string(),
                }
            })?),
        };
        let now = std::time::Instant::now();
        instance.slot = Some(slot);
        instance.ticking = Some(ticking);
        instance.started = Some(now);
        let state = instance.store.data_mut();
        state.request = Some(request.clone());
        state.response = response.cloned();
        state.budget = CallBudget::starting_at(self.spec.deadline, now);
        instance.store.set_epoch_deadline(1);
        Ok(instance)
    }

    /// Returns a healthy instance to the pool, or drops a failed or worn-out one.
    fn checkin<R>(
        &self,
        mut instance: Box<Instance>,
        result: wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(started) = instance.started.take() {
            self.stats.call_time.observe(started.elapsed());
        }
        instance.slot = None;
        instance.ticking = None;
        let state = instance.store.data_mut();
        let request = state.request.take();
        state.response = None;
        match result {
            Ok(r) => {
                instance.calls += 1;
                if instance.calls < self.spec.max_calls {
                    self.idle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(instance);
                }
                Ok(r)
            }
            Err(e) => {
                let plugin = self.spec.name.clone();
                if let Some(source) = e.downcast_ref::<StoreError>() {
                    // Not the plugin's fault; the instance is still unusable after the trap.
                    return Err(PolicyError::StoreUnavailable {
                        plugin,
                        source: source.clone(),
                    });
                }
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let err = if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt)
                {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    PolicyError::Deadline {
                        plugin,
                        deadline: self.spec.deadline,
                    }
                } else {
                    self.stats.traps.fetch_add(1, Ordering::Relaxed);
                    // The top-level message and what the guest said on stderr (its panic
                    // message or traceback); the wasm backtrace is logged at debug.
                    let said = instance.store.data().stderr_tail();
                    let trap = e.root_cause().to_string();
                    PolicyError::Trap {
                        plugin,
                        reason: if said.is_empty() {
                            trap
                        } else {
                            format!("{trap}; the plugin wrote: {said}")
                        },
                    }
                };
                let request_id = request.as_ref().map_or("", |r| r.id.as_str());
                tracing::warn!(target: "plugin", request_id, error = %err, "plugin call failed; instance discarded");
                tracing::debug!(target: "plugin", request_id, plugin = %self.spec.name, details = ?e, "plugin failure details");
                if self.breaker.failure(&self.spec) {
                    self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "plugin", plugin = %self.spec.name, failures = self.spec.breaker_failures, window = ?self.spec.breaker_window, cooldown = ?self.spec.breaker_cooldown, "plugin circuit breaker open: calls fail at once (on_error) until the cooldown ends");
                }
                Err(err)
            }
        }
    }

    fn kind_mismatch(&self) -> PolicyError {
        PolicyError::Trap {
            plugin: self.spec.name.clone(),
            reason: "called as the wrong policy kind".into(),
        }
    }

    /// ip-binding `check`.
    pub async fn check(
        &self,
        request: &Arc<RequestInfo>,
    ) -> Result<types::BindingDecision, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        let r = match &i.guest {
            KindGuest::IpBinding(g) => g.call_check(&mut i.store, request_handle()).await,
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// router `select`.
    pub async fn select(
        &self,
        request: &Arc<RequestInfo>,
        candidates: &[types::UpstreamView],
    ) -> Result<types::RouteDecision, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        let r = match &i.guest {
            KindGuest::Router(g) => {
                g.call_select(&mut i.store, request_handle(), candidates)
                    .await
            }
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// quota `on-response`. The caller checks [`Plugin::watches`] first.
    pub async fn on_response(
        &self,
        request: &Arc<RequestInfo>,
        upstream: &types::UpstreamView,
        response: &Arc<ResponseInfo>,
    ) -> Result<types::QuotaDecision, PolicyError> {
        let mut i = self.checkout(request, Some(response)).await?;
        let r = match &i.guest {
            KindGuest::Quota(g) => {
                g.call_on_response(&mut i.store, request_handle(), upstream, response_handle())
                    .await
            }
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// header-rewrite `on-request`. The caller checks [`Plugin::rewrites_requests`] first.
    pub async fn rewrite_request(
        &self,
        request: &Arc<RequestInfo>,
    ) -> Result<Vec<types::HeaderOp>, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        let r = match &i.guest {
            KindGuest::HeaderRewrite(g) => g.call_on_request(&mut i.store, request_handle()).await,
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// header-rewrite `on-response`. The caller checks [`Plugin::rewrites_responses`] first.
    pub async fn rewrite_response(
        &self,
        request: &Arc<RequestInfo>,
        response: &Arc<ResponseInfo>,
    ) -> Result<Vec<types::HeaderOp>, PolicyError> {
        let mut i = self.checkout(request, Some(response)).await?;
        let r = match &i.guest {
            KindGuest::HeaderRewrite(g) => {
                g.call_on_response(&mut i.store, request_handle(), response_handle())
                    .await
            }
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }
}

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

/// The version of the `tollgate:policy` WIT package this gateway provides.
pub const WIT_VERSION: &str = "@0.2.0";

/// wasmtime's compilation cache in `dir`: created owner-only if missing, refused if group or
/// others may write it (its entries are loaded as machine code).
fn open_cache(dir: &Path) -> wasmtime::Result<wasmtime::Cache> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| wasmtime::format_err!("cannot create {}: {e}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| wasmtime::format_err!("cannot read {}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        return Err(wasmtime::format_err!(
            "{} is writable by group or others (mode {:o}): a compilation cache must be writable only by the gateway's user",
            dir.display(),
            mode & 0o777
        ));
    }
    let mut config = wasmtime::CacheConfig::new();
    config.with_directory(dir);
    wasmtime::Cache::new(config)
}

#[cfg(test)]
mod call_time_tests {
    use super::*;

    #[test]
    fn the_wit_version_is_the_packages() {
        let worlds = include_str!("../../../wit/worlds.wit");
        assert!(worlds.contains(&format!("package tollgate:policy{WIT_VERSION};")));
    }

    #[test]
    fn call_times_fall_in_power_of_two_buckets_and_answer_quantiles() {
        let t = CallTimes::default();
        assert_eq!(t.quantile(0.5), None);
        for us in [1, 2, 3, 900, 1000, 1_000_000] {
            t.observe(Duration::from_micros(us));
        }
        let c = t.counts();
        // ≤1 µs, ≤2 µs, ≤4 µs (3), ≤1024 µs (900 and 1000), the last bucket (1 s).
        assert_eq!(
            (c[0], c[1], c[2], c[10], c[CALL_BUCKETS - 1]),
            (1, 1, 1, 2, 1)
        );
        assert_eq!(c.iter().sum::<u64>(), 6);
        assert_eq!(t.quantile(0.5), Some(4e-6));
        assert_eq!(t.quantile(0.8), Some(1024e-6));
        assert!((t.sum_secs() - 1.001906).abs() < 1e-9);
        assert_eq!(CallTimes::upper_secs(CALL_BUCKETS - 1), f64::INFINITY);
    }
}
