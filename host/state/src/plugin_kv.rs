//! The plugin `kv` namespace: each plugin reads and writes only keys under its own prefix, in the
//! shared cache when there is one, in process when that cache fails.

use super::{MemoryKv, Stores};

impl Stores {
    /// The cache key prefix of `plugin`'s namespace.
    pub fn kv_prefix(plugin: &str) -> String {
        format!("p:{plugin}\u{0}")
    }

    /// The budget counters' namespace (`pipeline/filters/budgets`, upstream money allowances),
    /// shared by the gateways of a cluster through the cache. The gateway's own: never evicted.
    pub fn budget_kv(&self) -> PluginKv<'_> {
        self.own_kv("b:budget\u{0}")
    }

    /// A namespace of the gateway's own (budgets, the admin plane's lockouts): in process, it
    /// lives beside the gateway's other state, where no plugin's writes can evict it.
    pub(crate) fn own_kv<'a>(&'a self, prefix: &'a str) -> PluginKv<'a> {
        PluginKv {
            stores: self,
            prefix,
            bounded: false,
        }
    }

    /// Plugin key-value access within `prefix` (from [`Stores::kv_prefix`]). A shared cache that
    /// fails falls back to an in-process one, so counters degrade to per-gateway instead of
    /// failing requests. In process, plugins' keys live in a bounded store
    /// ([`crate::PLUGIN_KV_MEMORY`]): a plugin that writes without end loses its least used keys
    /// instead of growing the gateway.
    pub fn plugin_kv<'a>(&'a self, prefix: &'a str) -> PluginKv<'a> {
        PluginKv {
            stores: self,
            prefix,
            bounded: true,
        }
    }

    /// The weighed bytes plugins' `kv` namespaces hold in process.
    pub fn plugin_kv_bytes(&self) -> u64 {
        self.plugin_local.weighed_size()
    }
}

/// A view of the cache: one namespace's keys only.
pub struct PluginKv<'a> {
    stores: &'a Stores,
    prefix: &'a str,
    /// A plugin's namespace: in process, it lives in the bounded store.
    bounded: bool,
}

impl PluginKv<'_> {
    /// The in-process store this namespace uses by itself (no shared cache), if it is the
    /// bounded one; an own namespace goes through the cache (then in process too).
    fn direct(&self) -> Option<&MemoryKv> {
        (self.bounded && !self.stores.shared).then_some(&self.stores.plugin_local)
    }

    /// `result` from the shared cache, or `local` computed on this namespace's in-process
    /// stand-in if the shared cache failed.
    fn or_local<T>(
        &self,
        op: &str,
        result: crate::StoreResult<T>,
        local: impl FnOnce(&MemoryKv) -> T,
    ) -> T {
        result.unwrap_or_else(|e| {
            self.stores.cache_failed(op, &e);
            local(if self.bounded {
                &self.stores.plugin_local
            } else {
                &self.stores.local
            })
        })
    }

    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(self.prefix);
        k.push_str(key);
        k
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let k = self.key(key);
        if let Some(m) = self.direct() {
            return m.get_now(&k);
        }
        let r = self.stores.cache.get(&k).await;
        self.or_local("kv get", r, |m| m.get_now(&k))
    }

    pub async fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) {
        let k = self.key(key);
        if let Some(m) = self.direct() {
            return m.set_now(&k, value, ttl_ms);
        }
        let r = self.stores.cache.set(&k, value, ttl_ms).await;
        self.or_local("kv set", r, |m| m.set_now(&k, value, ttl_ms));
    }

    pub async fn delete(&self, key: &str) {
        let k = self.key(key);
        if let Some(m) = self.direct() {
            return m.delete_now(&k);
        }
        let r = self.stores.cache.delete(&k).await;
        self.or_local("kv delete", r, |m| m.delete_now(&k));
    }

    pub async fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let k = self.key(key);
        if let Some(m) = self.direct() {
            return m.incr_now(&k, delta, ttl_ms);
        }
        let r = self.stores.cache.incr(&k, delta, ttl_ms).await;
        self.or_local("kv incr", r, |m| m.incr_now(&k, delta, ttl_ms))
    }

    /// Adds `units` to the counter `key` of a window (its entries live `ttl_ms`), seeding it the
    /// first time the window is used on this cache with what `history` says was spent before
    /// (read from the database: a restart or a new cache forgets nothing that was flushed); the
    /// counter's value after. Only the request that found the counter empty (a window new to
    /// this cache, or one fully given back) may need the history, and a marker makes one of
    /// them read it.
    pub async fn add_seeded<F>(&self, key: &str, units: u64, ttl_ms: u64, history: F) -> u64
    where
        F: Future<Output = u64>,
    {
        let total = self.incr(key, units as i64, Some(ttl_ms)).await;
        let marker = format!("seeded\u{0}{key}");
        if total == units as i64 && self.compare_and_set(&marker, None, "1", Some(ttl_ms)).await {
            let seed = history.await;
            if seed > 0 {
                return self.incr(key, seed as i64, Some(ttl_ms)).await.max(0) as u64;
            }
        }
        total.max(0) as u64
    }

    /// Reserves `units` in the counter `key` (seeded as [`PluginKv::add_seeded`] says) if the
    /// counter stays at or under `ceiling`; whether it did. A refused reservation leaves the
    /// counter as it was, and one larger than the ceiling is refused without being counted (a
    /// count near 2^64 would not fit the counter).
    pub async fn reserve_seeded<F>(
        &self,
        key: &str,
        units: u64,
        ceiling: u64,
        ttl_ms: u64,
        history: F,
    ) -> bool
    where
        F: Future<Output = u64>,
    {
        if units > ceiling {
            return false;
        }
        if self.add_seeded(key, units, ttl_ms, history).await > ceiling {
            self.incr(key, -(units as i64), None).await;
            return false;
        }
        true
    }

    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> bool {
        let k = self.key(key);
        if let Some(m) = self.direct() {
            return m.compare_and_set_now(&k, expected, new, ttl_ms);
        }
        let r = self
            .stores
            .cache
            .compare_and_set(&k, expected, new, ttl_ms)
            .await;
        self.or_local("kv compare-and-set", r, |m| {
            m.compare_and_set_now(&k, expected, new, ttl_ms)
        })
    }
}
