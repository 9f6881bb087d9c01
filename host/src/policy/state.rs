//! What a plugin instance's store holds, and the host imports it may call.
//!
//! Mechanism lives here, policy in the plugin: the host owns the key-value store and the bindings
//! table ([`crate::state::Stores`]) and keeps them exact under concurrency, across gateways when
//! the stores are shared; plugins only read and request changes.
//!
//! A bindings call the stores cannot answer (database down and nothing cached) traps the plugin
//! call with the [`crate::state::StoreError`]; the caller sees [`super::PolicyError::StoreUnavailable`] and
//! applies the deployment's failsafe, not the plugin's `on_error`. Key-value calls never fail:
//! a shared cache that is down is replaced by an in-process one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{binding_store, clock, kv, log, types};
use crate::policy_view::{RequestInfo, ResponseInfo};
use crate::state::{Binding, BindingStatus, PluginKv, Stores};

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
        Self {
            limit,
            used: Duration::ZERO,
            last: Instant::now(),
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

/// The data of one plugin instance's store.
pub struct PluginState {
    pub plugin: Arc<str>,
    /// The request the current call serves (the `request` resource; its id tags log lines).
    pub request: Option<Arc<RequestInfo>>,
    /// The response the current call is about, if any (the `response` resource).
    pub response: Option<Arc<ResponseInfo>>,
    /// Running time the current call may use, and what it has used so far.
    pub budget: CallBudget,
    pub stores: Arc<Stores>,
    /// This plugin's key namespace in the shared cache.
    kv_prefix: String,
    pub limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub fn new(plugin: Arc<str>, stores: Arc<Stores>, limits: StoreLimits) -> Self {
        // No preopened directories, environment, arguments, sockets or stdio: a plugin that
        // imports WASI (as every Rust wasm32-wasip2 build does) links, but can reach nothing.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
        Self {
            kv_prefix: Stores::kv_prefix(&plugin),
            plugin,
            request: None,
            response: None,
            budget: CallBudget::new(Duration::ZERO),
            stores,
            limits,
            wasi,
            table: ResourceTable::new(),
        }
    }

    fn kv(&self) -> PluginKv<'_> {
        self.stores.plugin_kv(&self.kv_prefix)
    }

    /// Id of the request the current call serves, for log lines.
    pub fn request_id(&self) -> &str {
        self.request.as_ref().map_or("", |r| r.id.as_str())
    }

    fn request(&self) -> wasmtime::Result<&RequestInfo> {
        self.request
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("request handle used outside its call"))
    }

    fn response(&self) -> wasmtime::Result<&ResponseInfo> {
        self.response
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("response handle used outside its call"))
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// Every import that may wait on a store restarts the call's budget clock when it returns: the
// wait is the host's time, not the plugin's.

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let out = self.kv().get(&key).await;
        self.budget.resume();
        Ok(out)
    }
    async fn set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<()> {
        self.kv().set(&key, &value, ttl_ms).await;
        self.budget.resume();
        Ok(())
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.kv().delete(&key).await;
        self.budget.resume();
        Ok(())
    }
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<i64> {
        let out = self.kv().incr(&key, delta, ttl_ms).await;
        self.budget.resume();
        Ok(out)
    }
    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<String>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<bool> {
        let out = self
            .kv()
            .compare_and_set(&key, expected.as_deref(), &new, ttl_ms)
            .await;
        self.budget.resume();
        Ok(out)
    }
}

fn to_wit(b: Binding) -> binding_store::Binding {
    binding_store::Binding {
        cidr: b.cidr.to_string(),
        status: match b.status {
            BindingStatus::Active => binding_store::BindingStatus::Active,
            BindingStatus::Banned => binding_store::BindingStatus::Banned,
        },
        created_ms: b.created_ms,
    }
}

impl binding_store::Host for PluginState {
    async fn get(&mut self, key_id: String) -> wasmtime::Result<Option<binding_store::Binding>> {
        let found = self.stores.binding(&key_id).await;
        self.budget.resume();
        Ok(found?.map(to_wit))
    }
    async fn bind_first(
        &mut self,
        key_id: String,
        cidr: String,
    ) -> wasmtime::Result<Result<binding_store::Binding, String>> {
        let net: crate::config::Cidr = match cidr.parse() {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        let bound = self.stores.bind_first(&key_id, net.0).await;
        self.budget.resume();
        Ok(Ok(to_wit(bound?)))
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let (plugin, request_id) = (&*self.plugin, self.request_id());
        match level {
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, request_id, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for PluginState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::upstream::unix_ms())
    }
}

// The request and response handles are borrows the host lends for one call; the data is the
// store's `request`/`response`, set by the caller for that call. A guest never owns one, so the
// destructors have nothing to do.

impl types::HostRequest for PluginState {
    fn id(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.id.clone())
    }
    fn method(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.method.clone())
    }
    fn path(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.path.clone())
    }
    fn header(
        &mut self,
        _: Resource<RequestInfo>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.header(&name))
    }
    fn headers(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.request()?.header_list())
    }
    fn client_ip(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.client_ip_text.clone())
    }
    fn key_id(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.key_id.clone())
    }
    fn key_name(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<String> {
        Ok(self.request()?.key_name.clone())
    }
    fn model(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.model.clone())
    }
    fn stream(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<bool> {
        Ok(self.request()?.stream)
    }
    fn session_hint(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.session_hint.clone())
    }
    fn drop(&mut self, _: Resource<RequestInfo>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for PluginState {
    fn upstream(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<String> {
        Ok(self.response()?.upstream.clone())
    }
    fn status(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<u16> {
        Ok(self.response()?.status)
    }
    fn header(
        &mut self,
        _: Resource<ResponseInfo>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.response()?.header(&name))
    }
    fn headers(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.response()?.header_list())
    }
    fn first_event(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.response()?.first_event.clone())
    }
    fn drop(&mut self, _: Resource<ResponseInfo>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::Host for PluginState {}

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
