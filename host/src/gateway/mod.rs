//! The gateway as a value: built from a [`Config`], served by [`crate::listen`], testable in
//! process.
//!
//! Everything derived from the config lives in a [`Runtime`] snapshot (`runtime.rs`) behind an
//! `ArcSwap`. A request takes the snapshot once at its start and uses it to the end, so a config
//! reload never changes the rules under a request in flight. The upstream connection pool and the
//! stores live outside the snapshot and survive reloads. Also here: the probes (`probes.rs`), the
//! config file watcher (`reload.rs`). The two listeners that serve it are the composition root
//! above the admin plane (`crate::planes`).

mod chain;
mod probes;
pub mod reload;
mod runtime;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::get;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::pipeline::route::Runtime;
use crate::policy::PolicyEngine;
use crate::state::{StoreError, Stores};
use crate::telemetry::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// Why a gateway could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot start the WebAssembly runtime: {0}")]
    Engine(String),
    #[error("cannot open the stores: {0}")]
    Stores(#[from] StoreError),
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// Upstream connect timeout of the pools the data-plane workers make
    /// ([`Gateway::worker_client`]); the alerts have their own pool (see [`Gateway::new`]).
    connect_timeout: std::time::Duration,
    engine: Arc<PolicyEngine>,
    /// Bindings, intercepts, caches; opened once (storage settings are not reloaded).
    pub stores: Arc<Stores>,
    pub(crate) draining: AtomicBool,
    /// Prometheus metrics (`/metrics` on the admin plane); kept across reloads.
    pub(crate) metrics: Arc<Metrics>,
    /// Serialises reloads so two never build from different configs at once.
    reload_lock: tokio::sync::Mutex<()>,
    /// Where the reloader takes requests from the admin API (set when it starts).
    pub(crate) reload_requests: std::sync::OnceLock<tokio::sync::mpsc::Sender<ReloadReply>>,
    /// State outside the snapshot that a reload also replaces (the admin plane's users, once it
    /// serves), registered by its owner; see [`ReloadPart`].
    pub(crate) reload_part: std::sync::OnceLock<Arc<dyn ReloadPart>>,
    last_reload: std::sync::Mutex<Option<ReloadStatus>>,
    /// Unix ms when this gateway was built.
    pub started_ms: u64,
    /// The config file it runs from, once the reloader watches it (none for a gateway built
    /// from a string, as tests do).
    pub(crate) config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// The config in service as shown to operators (`config::show`: secrets redacted), replaced
    /// at each reload.
    shown_config: ArcSwap<serde_json::Value>,
}

/// What a [`ReloadPart`] applies once the new runtime is in service.
pub(crate) type Commit = Box<dyn FnOnce() + Send>;

/// State outside the runtime snapshot that a reload replaces too, owned by a layer above the
/// gateway (the admin plane's users): `prepare` checks the new config and builds the new state
/// (an error refuses the whole reload); the returned commit puts it in service right after the
/// runtime is swapped.
pub(crate) trait ReloadPart: Send + Sync {
    fn prepare(self: Arc<Self>, config: &Config) -> Result<Commit, Vec<ConfigError>>;
}

/// Where a requested reload's result goes.
pub(crate) type ReloadReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The result of the latest reload by the reloader (file change, SIGHUP or admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Unix ms.
    pub at_ms: u64,
    /// Why it was refused, verbatim; `None` when it went into service.
    pub error: Option<String>,
}

impl Gateway {
    /// Opens the configured stores (running migrations) and builds the gateway on them.
    pub async fn new(config: &Config) -> Result<Arc<Self>, BuildError> {
        let client = UpstreamClient::new(config.server.timeouts.connect.get());
        let stores = Stores::open(
            &config.storage,
            &config.base_dir,
            &config.alerts,
            Arc::new(client.clone()),
        )
        .await?;
        Self::with_stores(config, stores).await
    }

    /// Builds the gateway on stores opened by the caller (`tollgate check` uses throwaway ones,
    /// so checking a config never touches the real database).
    pub async fn with_stores(
        config: &Config,
        stores: Arc<Stores>,
    ) -> Result<Arc<Self>, BuildError> {
        stores.set_file_settings(crate::state::Settings::from_file(config));
        if let Err(e) = stores.refresh_settings().await {
            tracing::warn!(error = %e, "cannot read live settings; using the config file's");
        }
        follow_log_level(&stores);
        let cache = config
            .storage
            .plugin_cache
            .dir(&config.base_dir, |name| std::env::var_os(name));
        let engine = policy_engine(stores.clone(), cache.as_deref()).map_err(BuildError::Engine)?;
        let engine = Arc::new(engine);
        let metrics = Metrics::new();
        let runtime = runtime::build(config, &engine, None, &metrics)
            .await
            .map_err(|errors| ConfigErrors {
                source_name: "config".into(),
                errors,
            })?;
        let gateway = Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            connect_timeout: config.server.timeouts.connect.get(),
            engine,
            stores,
            draining: AtomicBool::new(false),
            metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            reload_requests: std::sync::OnceLock::new(),
            reload_part: std::sync::OnceLock::new(),
            last_reload: std::sync::Mutex::new(None),
            started_ms: crate::state::unix_ms(),
            config_path: std::sync::OnceLock::new(),
            shown_config: ArcSwap::from_pointee(shown(config)),
        });
        if let Some(feed) = gateway.stores.shared_cooldowns() {
            tokio::spawn(apply_shared_cooldowns(Arc::downgrade(&gateway), feed));
        }
        Ok(gateway)
    }

    /// A new upstream connection pool for one data-plane worker thread: its connections are
    /// driven on that thread only. Made once per worker, so it is kept across config reloads.
    pub(crate) fn worker_client(&self) -> UpstreamClient {
        UpstreamClient::new(self.connect_timeout)
    }

    /// Builds a runtime from `config` and swaps it in atomically. On any error the running
    /// runtime stays in service and the errors are returned. Requests in flight finish on the
    /// runtime they started with. Listener settings (`server.listen`, TLS files) are not
    /// reloaded: they need a restart.
    pub async fn reload(&self, config: &Config) -> Result<(), Vec<ConfigError>> {
        let _serial = self.reload_lock.lock().await;
        let current = self.runtime();
        let built = self.prepare(config, &current).await;
        let counter = match &built {
            Ok(_) => &self.metrics.reloads.ok,
            Err(_) => &self.metrics.reloads.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (rt, commit) = built?;
        let removed: Vec<String> = current
            .keys
            .config_names()
            .filter(|name| rt.keys.config_key(name).is_none())
            .map(str::to_owned)
            .collect();
        self.runtime.store(Arc::new(rt));
        if let Some(commit) = commit {
            commit();
        }
        self.shown_config.store(Arc::new(shown(config)));
        // The file's values of the live settings (what applies where no override is stored).
        self.stores
            .set_file_settings(crate::state::Settings::from_file(config));
        for name in removed {
            // A key taken out of `auth.keys` stops working with this reload: on the record.
            let record = crate::state::AuditRecord::new("config", "", "key.remove", &name, "ok")
                .with_change(
                    Some(serde_json::json!({"name": name, "source": "config"}).to_string()),
                    None,
                );
            if let Err(e) = self.stores.database().record_audit(record).await {
                tracing::warn!(error = %e, key = %name, "cannot audit a config key's removal");
            }
        }
        Ok(())
    }

    /// Everything a reload puts in service, built off the request path: the runtime, and what
    /// the registered [`ReloadPart`] prepares (the admin plane's users; its listener and secret
    /// are kept until a restart).
    async fn prepare(
        &self,
        config: &Config,
        current: &Arc<Runtime>,
    ) -> Result<(Runtime, Option<Commit>), Vec<ConfigError>> {
        let commit = self
            .reload_part
            .get()
            .map(|part| part.clone().prepare(config))
            .transpose()?;
        let rt = runtime::build(config, &self.engine, Some(current), &self.metrics).await?;
        Ok((rt, commit))
    }

    /// The config snapshot a new request should use.
    /// Asks the reloader for a reload (the same path as SIGHUP) and waits for its result; `None`
    /// when no reloader runs (the gateway was not started from a config file).
    pub async fn request_reload(&self) -> Option<Result<(), String>> {
        let tx = self.reload_requests.get()?;
        let (done, result) = tokio::sync::oneshot::channel();
        tx.send(done).await.ok()?;
        result.await.ok()
    }

    pub(crate) fn note_reload(&self, result: &Result<(), String>) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReloadStatus {
            at_ms: crate::state::unix_ms(),
            error: result.as_ref().err().cloned(),
        });
    }

    /// The config in service, secrets redacted (`config::show`).
    pub fn shown_config(&self) -> Arc<serde_json::Value> {
        self.shown_config.load_full()
    }

    /// The config file this gateway runs from, if it watches one.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.get().map(|p| p.as_path())
    }

    /// The latest reload's result, if there was one.
    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Marks the gateway as shutting down: `/ready` fails so load balancers stop sending traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The gateway's own endpoints (`/health`, `/ready`); everything else is proxied.
    pub fn own_endpoints(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(probes::health))
            .route("/ready", get(probes::ready))
            // Reserved paths with nothing behind them yet answer like any unknown path.
            .fallback(|| async { crate::error::ErrorKind::NoRoute })
            .method_not_allowed_fallback(|| async {
                crate::error::ErrorKind::MethodNotAllowed {
                    allow: "GET, HEAD".into(),
                }
            })
            .with_state(self.clone())
    }
}

/// Applies cooldowns decided by other gateways of the cluster to this one's upstreams of the same
/// name, until the gateway is dropped.
/// `config` as operators may see it: every secret redacted (`config::show`).
fn shown(config: &Config) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

/// Applies the `log_level` live setting to the log output whenever it changes.
fn follow_log_level(stores: &Stores) {
    let mut changes = stores.settings_changes();
    let apply = |level: &str| {
        if let Err(e) = crate::telemetry::set_level(level) {
            tracing::warn!(error = %e, "cannot apply the live log level");
        }
    };
    apply(&changes.borrow_and_update().log_level);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let level = changes.borrow_and_update().log_level.clone();
            apply(&level);
        }
    });
}

async fn apply_shared_cooldowns(
    gateway: std::sync::Weak<Gateway>,
    mut feed: tokio::sync::mpsc::Receiver<crate::state::SharedCooldown>,
) {
    while let Some(c) = feed.recv().await {
        let Some(gw) = gateway.upgrade() else {
            return;
        };
        let runtime = gw.runtime();
        if let Some(u) = runtime.upstreams.iter().find(|u| *u.name == *c.upstream) {
            // `until_ms` 0: an operator ended it (`/admin/api/upstreams/{name}/restore`).
            if c.until_ms == 0 {
                u.clear_cooldown(c.model.as_deref());
            } else {
                u.cool_down(c.model.as_deref(), c.until_ms);
            }
        }
    }
}

/// The WebAssembly engine, with wasmtime's compilation cache in `cache` when it can be used; a
/// cache directory that cannot be (not creatable, writable by others) costs compile time, not
/// the start, and is logged once.
pub fn policy_engine(stores: Arc<Stores>, cache: Option<&Path>) -> Result<PolicyEngine, String> {
    if let Some(dir) = cache {
        match PolicyEngine::with_cache(stores.clone(), Some(dir)) {
            Ok(engine) => return Ok(engine),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "plugin compilation cache not used (storage.plugin_cache): plugins are compiled at every start"
            ),
        }
    }
    PolicyEngine::new(stores).map_err(|e| format!("{e:#}"))
}
