//! The small key-value interface the caches implement: in process ([`crate::MemoryKv`]) and Redis
//! ([`crate::RedisKv`]).

use tokio::sync::mpsc;

use crate::StoreResult;
use crate::rate::{Decision, Gcra, Op};

/// The small key-value interface the caches implement. TTLs are in milliseconds.
#[async_trait::async_trait]
pub trait Kv: Send + Sync + 'static {
    async fn get(&self, key: &str) -> StoreResult<Option<String>>;
    async fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) -> StoreResult<()>;
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// Adds `delta` to the integer at `key` (absent = 0) atomically; `ttl_ms` applies on creation.
    async fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> StoreResult<i64>;
    /// Sets `key` to `new` if its value is `expected` (none = absent); whether it did.
    async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> StoreResult<bool>;
    /// Tells every gateway sharing this cache (this one included) `message` on `channel`. An
    /// in-process cache has nobody else to tell.
    async fn publish(&self, _channel: &str, _message: &str) -> StoreResult<()> {
        Ok(())
    }
    /// Messages published on `channel` by any gateway sharing the cache, until the receiver is
    /// dropped; `None` when the cache is not shared. Survives reconnects; messages published
    /// while disconnected are missed.
    fn subscribe(&self, _channel: &str) -> Option<mpsc::Receiver<String>> {
        None
    }
    /// Applies `op` to the shared GCRA bucket at `key` (see [`crate::rate`]); `None` when the cache is
    /// not shared (the caller keeps the bucket in process).
    async fn gcra(&self, _key: &str, _gcra: &Gcra, _op: Op) -> StoreResult<Option<Decision>> {
        Ok(None)
    }
}
