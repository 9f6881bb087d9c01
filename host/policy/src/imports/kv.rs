//! `kv`: the plugin's own key namespace in the cache. Never fails for want of a store: a shared
//! cache that is down is replaced by an in-process one (bounded, as the in-process cache of
//! plugins always is: `state::PLUGIN_KV_MEMORY`). A key past [`MAX_KEY`] or a value past
//! [`MAX_VALUE`] fails the call, as a trap does. Each call restarts the budget clock when it
//! returns (the wait is the host's time, not the plugin's).

use super::InstanceData;
use crate::wit::kv;

/// The longest key a plugin may use, in bytes.
pub const MAX_KEY: usize = 256;
/// The longest value a plugin may write, in bytes.
pub const MAX_VALUE: usize = 64 << 10;

/// A key or value past its bound fails the call: the plugin's `on_error` decides the request.
fn check(key: &str, value: Option<&str>) -> wasmtime::Result<()> {
    if key.len() > MAX_KEY {
        wasmtime::bail!("kv: a key of {} bytes (at most {MAX_KEY})", key.len());
    }
    if let Some(v) = value.filter(|v| v.len() > MAX_VALUE) {
        wasmtime::bail!("kv: a value of {} bytes (at most {MAX_VALUE})", v.len());
    }
    Ok(())
}

impl kv::Host for InstanceData {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        check(&key, None)?;
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
        check(&key, Some(&value))?;
        self.kv().set(&key, &value, ttl_ms).await;
        self.budget.resume();
        Ok(())
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        check(&key, None)?;
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
        check(&key, None)?;
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
        check(&key, Some(&new))?;
        let out = self
            .kv()
            .compare_and_set(&key, expected.as_deref(), &new, ttl_ms)
            .await;
        self.budget.resume();
        Ok(out)
    }
}
