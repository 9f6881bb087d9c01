//! A loaded plugin version ([`Plugin`]): its pool of configured instances, admission (breaker,
//! concurrency), and instantiation.

use crate::module;
use crate::{
    Breaker, CodeOrigin, LoadError, PluginSpec, PluginStats, PolicyError, REJECTIONS_LOGGED_EVERY,
    RequestInfo, ResponseInfo, Ticker, Ticking,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{InstancePre, Resource};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use crate::imports::{CallBudget, InstanceData};
use crate::throttle::Throttle;
use crate::wit::{header_rewrite, ip_binding, lean_router, plugin, quota, router, transform};

use tollgate_config::Module;
use tollgate_state::{StoreError, Stores};

pub(crate) enum KindIndices {
    IpBinding(ip_binding::GuestIndices),
    Router(router::GuestIndices),
    /// A router that exports `lean-router` (candidates without strings).
    LeanRouter(lean_router::GuestIndices),
    Quota(quota::GuestIndices),
    HeaderRewrite(header_rewrite::GuestIndices),
    Transform(transform::GuestIndices),
}

pub(crate) enum KindGuest {
    IpBinding(ip_binding::Guest),
    Router(router::Guest),
    LeanRouter(lean_router::Guest),
    Quota(quota::Guest),
    HeaderRewrite(header_rewrite::Guest),
    Transform(transform::Guest),
}

/// A configured instance, ready for calls.
pub(crate) struct Instance {
    pub(crate) store: Store<InstanceData>,
    pub(crate) guest: KindGuest,
    pub(crate) calls: u32,
    /// The concurrency slot of the call in progress (none while pooled).
    pub(crate) slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the call in progress was handed this instance.
    pub(crate) started: Option<std::time::Instant>,
    /// Keeps the epoch ticking while the call runs (none while pooled).
    pub(crate) ticking: Option<Ticking>,
}

/// Which calls a loaded version asked for (quota `watch`, header-rewrite `phases`), read once
/// from its first instance. Kinds without such a query are called for everything.
#[derive(Debug, Clone)]
pub(crate) struct Interest {
    /// Quota: the statuses `on-response` is called for; `None` = every response.
    pub(crate) statuses: Option<Vec<u16>>,
    /// Header-rewrite: whether `on-request` / `on-response` are called.
    pub(crate) request_phase: bool,
    pub(crate) response_phase: bool,
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
    pub(crate) engine: Engine,
    pub(crate) ticker: Arc<Ticker>,
    pub(crate) stores: Arc<Stores>,
    pub(crate) pre: InstancePre<InstanceData>,
    pub(crate) plugin_idx: plugin::GuestIndices,
    pub(crate) kind_idx: KindIndices,
    pub(crate) interest: OnceLock<Interest>,
    /// The component imports `capacity`: its calls need the candidates' headroom.
    pub(crate) wants_capacity: bool,
    /// Configured instances, boxed so that a checkout or checkin moves a pointer, not the
    /// instance (each call moves it twice).
    #[allow(clippy::vec_box, reason = "the box is what a call moves")]
    pub(crate) idle: Mutex<Vec<Box<Instance>>>,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    pub(crate) breaker: Breaker,
    /// Paces the log lines about refused calls.
    pub(crate) rejections: Throttle,
    pub stats: PluginStats,
}

/// The handles a call lends the guest. Their data is the store's `request`/`response`, so the
/// representation carries nothing.
pub(crate) fn request_handle() -> Resource<RequestInfo> {
    Resource::new_borrow(0)
}

pub(crate) fn response_handle() -> Resource<ResponseInfo> {
    Resource::new_borrow(0)
}

pub(crate) fn state_handle() -> Resource<crate::TransformState> {
    Resource::new_borrow(0)
}

impl Plugin {
    /// Creates and configures a fresh instance.
    pub(crate) async fn instantiate(&self) -> Result<Instance, LoadError> {
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
            KindIndices::LeanRouter(i) => i.load(&mut store, &instance).map(KindGuest::LeanRouter),
            KindIndices::Quota(i) => i.load(&mut store, &instance).map(KindGuest::Quota),
            KindIndices::HeaderRewrite(i) => {
                i.load(&mut store, &instance).map(KindGuest::HeaderRewrite)
            }
            KindIndices::Transform(i) => i.load(&mut store, &instance).map(KindGuest::Transform),
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

    pub(crate) fn interest(&self) -> &Interest {
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

    /// Router: whether the plugin reads the candidates' headroom (it imports `capacity`), so
    /// the host reads it before each call; otherwise it never does.
    pub fn wants_capacity(&self) -> bool {
        self.wants_capacity
    }

    /// Router: whether the plugin exports `lean-router`, so its calls take the candidates'
    /// figures alone ([`crate::view::Candidates::Figures`]); otherwise it needs their views.
    pub fn lean_router(&self) -> bool {
        matches!(self.kind_idx, KindIndices::LeanRouter(_))
    }

    /// Whether the circuit breaker currently refuses calls.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// A concurrency slot for one call, unless the breaker is open or no slot frees in time.
    pub(crate) async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PolicyError> {
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
    pub(crate) fn rejected(&self, why: &'static str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(refused) = self.rejections.note(REJECTIONS_LOGGED_EVERY) {
            tracing::warn!(target: "plugin", plugin = %self.spec.name, refused, reason = why, "plugin calls refused without running since the last such line (on_error decides each request; tollgate_plugin_rejected_total counts them)");
        }
    }

    /// Takes a ready instance (or makes one) and lends it the call's request and response.
    pub(crate) async fn checkout(
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
    pub(crate) fn checkin<R>(
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
        state.transform_state = None;
        state.headroom.clear();
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
}
