//! The engine: one wasmtime engine, linker and compilation cache for every plugin; loads a
//! component into a [`Plugin`] of its kind.

use crate::{
    Breaker, EPOCH_TICK, KindIndices, LoadError, MAX_MEMORY_LIMIT, POOL_INSTANCES, Plugin,
    PluginKind, PluginSpec, PluginStats, Ticker, link_error, world,
};
use crate::{module, wit};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::imports::InstanceData;
use crate::throttle::Throttle;
use crate::wit::{header_rewrite, ip_binding, lean_router, plugin, quota, router, transform};

use tollgate_config::Module;
use tollgate_state::Stores;

/// The process-wide engine, linker and shared host services.
pub struct PolicyEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<InstanceData>,
    pub(crate) stores: Arc<Stores>,
    pub(crate) ticker: Arc<Ticker>,
    /// wasmtime's on-disk compilation cache, when one is configured (its hit counter tells a
    /// cached load from a compilation).
    pub(crate) cache: Option<wasmtime::Cache>,
    /// One compilation at a time (each one already uses every core), so the cache's hit
    /// counter is attributable to the load in progress.
    pub(crate) compiling: Mutex<()>,
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
    pub(crate) fn compile_bytes(
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
        let wants_capacity = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("tollgate:policy/capacity"));
        let wrong = |e: wasmtime::Error| LoadError::WrongKind {
            world: world(spec.kind),
            reason: format!("{e:#}"),
        };
        let plugin_idx = plugin::GuestIndices::new(&pre).map_err(wrong)?;
        let kind_idx = match spec.kind {
            PluginKind::IpBinding => {
                KindIndices::IpBinding(ip_binding::GuestIndices::new(&pre).map_err(wrong)?)
            }
            // A router exports `router` or its lean form; the first found is the one called.
            PluginKind::Router => match router::GuestIndices::new(&pre) {
                Ok(i) => KindIndices::Router(i),
                Err(_) => KindIndices::LeanRouter(
                    lean_router::GuestIndices::new(&pre).map_err(|e| LoadError::WrongKind {
                        world: world(spec.kind),
                        reason: format!(
                            "it exports neither tollgate:policy/router nor tollgate:policy/lean-router \
                             ({e:#})"
                        ),
                    })?,
                ),
            },
            PluginKind::Quota => KindIndices::Quota(quota::GuestIndices::new(&pre).map_err(wrong)?),
            PluginKind::HeaderRewrite => {
                KindIndices::HeaderRewrite(header_rewrite::GuestIndices::new(&pre).map_err(wrong)?)
            }
            PluginKind::Transform => {
                KindIndices::Transform(transform::GuestIndices::new(&pre).map_err(wrong)?)
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
            wants_capacity,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(spec.max_concurrency as usize)),
            breaker: Breaker::new(),
            rejections: Throttle::default(),
            stats: PluginStats::default(),
            spec,
        })
    }
}

/// wasmtime's compilation cache in `dir`: created owner-only if missing, refused if group or
/// others may write it (its entries are loaded as machine code).
pub(crate) fn open_cache(dir: &Path) -> wasmtime::Result<wasmtime::Cache> {
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
