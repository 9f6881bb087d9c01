//! What a plugin instance's wasmtime store holds ([`InstanceData`]), and the host imports it may
//! call, one file per capability (in the spirit of Spin's factors): `kv`, `bindings`, `log`,
//! `clock`, and the `request`/`response` resources (`request`).
//!
//! Mechanism lives here, policy in the plugin: the host owns the key-value store and the bindings
//! table ([`tollgate_state::Stores`]) and keeps them exact under concurrency, across gateways when
//! the stores are shared; plugins only read and request changes.
//!
//! A bindings call the stores cannot answer (database down and nothing cached) traps the plugin
//! call with the [`tollgate_state::StoreError`]; the caller sees [`crate::PolicyError::StoreUnavailable`] and
//! applies the deployment's failsafe, not the plugin's `on_error`. Key-value calls never fail:
//! a shared cache that is down is replaced by an in-process one.

mod bindings;
mod capacity;
mod clock;
mod kv;
mod log;
mod request;
mod stderr;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::view::{RequestInfo, ResponseInfo};
use tollgate_state::{PluginKv, Stores};

/// A call's deadline, counted in the plugin's *running* time. The epoch callback fires only while
/// the guest executes; each firing adds the time since the previous one, capped at
/// [`CallBudget::MAX_STEP`], so time spent waiting for a CPU (the executor's run queue after a
/// yield, or OS preemption on a busy machine) is not charged to the plugin. A spinning guest
/// still accrues about one tick per tick and is stopped at its deadline.
#[derive(Debug, Clone, Copy)]
pub struct CallBudget {
    limit: Duration,
    used: Duration,
    last: Instant,
}

impl CallBudget {
    /// Largest charge for one epoch step: two ticks.
    pub const MAX_STEP: Duration = Duration::from_millis(2);

    pub fn new(limit: Duration) -> Self {
        Self::starting_at(limit, Instant::now())
    }

    /// A budget whose clock starts at `now` (a call's start, read once for its timing too).
    pub fn starting_at(limit: Duration, now: Instant) -> Self {
        Self {
            limit,
            used: Duration::ZERO,
            last: now,
        }
    }

    /// Restarts the clock without charging: called when a host import returns, because time the
    /// host spent (waiting on Redis or the database) is not the plugin's running time.
    pub fn resume(&mut self) {
        self.last = Instant::now();
    }

    /// Charges the time since the last step; `false` once the budget is spent.
    pub fn step(&mut self) -> bool {
        let now = Instant::now();
        self.used += now.saturating_duration_since(self.last).min(Self::MAX_STEP);
        self.last = now;
        self.used < self.limit
    }
}

/// The store's resource limits, counting the linear memory the instance holds (what `plugin
/// test` and `plugin inspect` report as its memory).
pub struct Metered {
    limits: StoreLimits,
    /// Bytes of linear memory across the instance's memories: initial sizes plus growth.
    pub linear_bytes: usize,
}

impl wasmtime::ResourceLimiter for Metered {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if ok {
            self.linear_bytes += desired.saturating_sub(current);
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The data of one plugin instance's store.
pub struct InstanceData {
    pub plugin: Arc<str>,
    /// The request the current call serves (the `request` resource; its id tags log lines).
    pub request: Option<Arc<RequestInfo>>,
    /// The response the current call is about, if any (the `response` resource).
    pub response: Option<Arc<ResponseInfo>>,
    /// A transform call's state (the `transform-state` resource), lent for the call.
    pub transform_state: Option<String>,
    /// A router call's candidates' headroom (the `capacity` import), lent for the call.
    pub headroom: Vec<(String, crate::wit::capacity::Headroom)>,
    /// Running time the current call may use, and what it has used so far.
    pub budget: CallBudget,
    pub stores: Arc<Stores>,
    /// This plugin's key namespace in the shared cache.
    kv_prefix: String,
    /// The end of what the guest wrote to stderr, attached to the error when a call traps.
    stderr: stderr::StderrTail,
    pub limits: Metered,
    /// A shadow candidate's instance: `bind-first` writes nothing.
    pub dry_run: bool,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl InstanceData {
    pub fn new(plugin: Arc<str>, stores: Arc<Stores>, limits: StoreLimits, dry_run: bool) -> Self {
        // What `crate::WASI_GRANTS` says: the real clocks and randomness (language runtimes
        // need them; `random` helps load balancing), no preopened directories, environment,
        // arguments, sockets or stdin; stdout is discarded, stderr's tail kept for errors.
        let stderr = stderr::StderrTail::default();
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .build();
        Self {
            kv_prefix: Stores::kv_prefix(&plugin),
            plugin,
            request: None,
            response: None,
            transform_state: None,
            headroom: Vec::new(),
            budget: CallBudget::new(Duration::ZERO),
            stores,
            limits: Metered {
                limits,
                linear_bytes: 0,
            },
            dry_run,
            wasi,
            stderr,
            table: ResourceTable::new(),
        }
    }

    /// The end of what the guest wrote to stderr, as text (empty if nothing).
    pub fn stderr_tail(&self) -> String {
        self.stderr.text()
    }

    pub(crate) fn kv(&self) -> PluginKv<'_> {
        self.stores.plugin_kv(&self.kv_prefix)
    }

    /// Id of the request the current call serves, for log lines.
    pub fn request_id(&self) -> &str {
        self.request.as_ref().map_or("", |r| r.id.as_str())
    }

    pub(crate) fn request(&self) -> wasmtime::Result<&RequestInfo> {
        self.request
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("request handle used outside its call"))
    }

    pub(crate) fn response(&self) -> wasmtime::Result<&ResponseInfo> {
        self.response
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("response handle used outside its call"))
    }
}

impl WasiView for InstanceData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_ignores_long_pauses_but_not_steady_running() {
        let mut b = CallBudget::new(Duration::from_millis(5));
        b.last -= Duration::from_secs(1); // a long wait for a CPU counts as one capped step (2 ms)
        assert!(b.step());
        for _ in 0..2 {
            b.last -= Duration::from_millis(1);
            assert!(b.step(), "{b:?}");
        }
        b.last -= Duration::from_millis(1);
        assert!(
            !b.step(),
            "5 ms of running must exhaust a 5 ms budget: {b:?}"
        );
    }
}
