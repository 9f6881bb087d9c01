//! What a plugin instance's store holds, and the host imports it may call.
//!
//! Mechanism lives here, policy in the plugin: the host owns the key-value store and the bindings
//! table and keeps them exact under concurrency; plugins only read and request changes. The
//! in-process stores below serve a single gateway; shared stores (Redis, PostgreSQL) implement the
//! same calls for clusters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{binding_store, clock, kv, log};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// In-process key-value store with TTLs, shared by every plugin (keys are namespaced per plugin).
#[derive(Default)]
pub struct MemoryKv {
    entries: Mutex<HashMap<String, (String, Option<Instant>)>>,
}

impl MemoryKv {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, (String, Option<Instant>)>) -> R) -> R {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    fn live<'a>(
        map: &'a mut HashMap<String, (String, Option<Instant>)>,
        key: &str,
    ) -> Option<&'a mut (String, Option<Instant>)> {
        let expired = map
            .get(key)
            .is_some_and(|(_, exp)| exp.is_some_and(|e| e <= Instant::now()));
        if expired {
            map.remove(key);
        }
        map.get_mut(key)
    }

    fn expiry(ttl_ms: Option<u64>) -> Option<Instant> {
        ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.with(|m| Self::live(m, key).map(|(v, _)| v.clone()))
    }

    pub fn set(&self, key: String, value: String, ttl_ms: Option<u64>) {
        self.with(|m| m.insert(key, (value, Self::expiry(ttl_ms))));
    }

    pub fn delete(&self, key: &str) {
        self.with(|m| m.remove(key));
    }

    pub fn incr(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        self.with(|m| {
            if let Some((v, _)) = Self::live(m, &key) {
                let n = v.parse::<i64>().unwrap_or(0).wrapping_add(delta);
                *v = n.to_string();
                n
            } else {
                m.insert(key, (delta.to_string(), Self::expiry(ttl_ms)));
                delta
            }
        })
    }

    pub fn compare_and_set(
        &self,
        key: String,
        expected: Option<String>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> bool {
        self.with(|m| {
            let current = Self::live(m, &key).map(|(v, _)| v.clone());
            if current == expected {
                m.insert(key, (new, Self::expiry(ttl_ms)));
                true
            } else {
                false
            }
        })
    }
}

/// In-process key → network bindings. First use is atomic: the first writer wins.
#[derive(Default)]
pub struct MemoryBindings {
    table: Mutex<HashMap<String, binding_store::Binding>>,
}

impl MemoryBindings {
    pub fn get(&self, key_id: &str) -> Option<binding_store::Binding> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
    }

    pub fn bind_first(&self, key_id: String, cidr: &str) -> Result<binding_store::Binding, String> {
        let net: crate::config::Cidr = cidr.parse()?;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Ok(table
            .entry(key_id)
            .or_insert_with(|| binding_store::Binding {
                cidr: net.0.to_string(),
                status: binding_store::BindingStatus::Active,
                created_ms: now_ms(),
            })
            .clone())
    }
}

/// Services shared by every plugin instance.
#[derive(Default)]
pub struct HostServices {
    pub kv: MemoryKv,
    pub bindings: MemoryBindings,
}

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
    /// Request the current call serves (for log lines).
    pub request_id: String,
    /// Running time the current call may use, and what it has used so far.
    pub budget: CallBudget,
    pub services: Arc<HostServices>,
    pub limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub fn new(plugin: Arc<str>, services: Arc<HostServices>, limits: StoreLimits) -> Self {
        // No preopened directories, environment, arguments, sockets or stdio: a plugin that
        // imports WASI (as every Rust wasm32-wasip2 build does) links, but can reach nothing.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
        Self {
            plugin,
            request_id: String::new(),
            budget: CallBudget::new(Duration::ZERO),
            services,
            limits,
            wasi,
            table: ResourceTable::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}\u{0}{key}", self.plugin)
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

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.services.kv.get(&self.key(&key))
    }
    async fn set(&mut self, key: String, value: String, ttl_ms: Option<u64>) {
        self.services.kv.set(self.key(&key), value, ttl_ms);
    }
    async fn delete(&mut self, key: String) {
        self.services.kv.delete(&self.key(&key));
    }
    async fn incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        self.services.kv.incr(self.key(&key), delta, ttl_ms)
    }
    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<String>,
        new: String,
        ttl_ms: Option<u64>,
    ) -> bool {
        self.services
            .kv
            .compare_and_set(self.key(&key), expected, new, ttl_ms)
    }
}

impl binding_store::Host for PluginState {
    async fn get(&mut self, key_id: String) -> Option<binding_store::Binding> {
        self.services.bindings.get(&key_id)
    }
    async fn bind_first(
        &mut self,
        key_id: String,
        cidr: String,
    ) -> Result<binding_store::Binding, String> {
        self.services.bindings.bind_first(key_id, &cidr)
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) {
        let (plugin, request_id) = (&*self.plugin, self.request_id.as_str());
        match level {
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, request_id, "{message}"),
        }
    }
}

impl clock::Host for PluginState {
    async fn now_ms(&mut self) -> u64 {
        now_ms()
    }
}

impl super::bindings::tollgate::policy::types::Host for PluginState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_incr_and_cas_are_exact() {
        let kv = MemoryKv::default();
        assert_eq!(kv.incr("n".into(), 1, None), 1);
        assert_eq!(kv.incr("n".into(), 5, None), 6);
        assert!(kv.compare_and_set("k".into(), None, "a".into(), None));
        assert!(!kv.compare_and_set("k".into(), None, "b".into(), None));
        assert!(kv.compare_and_set("k".into(), Some("a".into()), "c".into(), None));
        assert_eq!(kv.get("k").as_deref(), Some("c"));
    }

    #[test]
    fn kv_entries_expire() {
        let kv = MemoryKv::default();
        kv.set("t".into(), "v".into(), Some(0));
        assert_eq!(kv.get("t"), None);
        assert_eq!(kv.incr("t".into(), 2, None), 2);
    }

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

    #[test]
    fn first_binding_wins() {
        let b = MemoryBindings::default();
        let first = b.bind_first("k".into(), "10.1.2.3").unwrap();
        let second = b.bind_first("k".into(), "10.9.9.9").unwrap();
        assert_eq!(first.cidr, "10.1.2.3/32");
        assert_eq!(second.cidr, "10.1.2.3/32");
        assert!(b.bind_first("x".into(), "nonsense").is_err());
    }
}
