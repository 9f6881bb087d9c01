//! `kv`: the plugin's own key namespace in the cache. Never fails: a shared cache that is down
//! is replaced by an in-process one. Each call restarts the budget clock when it returns (the wait
//! is the host's time, not the plugin's).

use super::InstanceData;
use crate::wit::kv;

impl kv::Host for InstanceData {
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
