//! The in-process cache: a map with TTLs behind one mutex. Used when one gateway runs alone, and
//! as the stand-in for plugin counters while a shared cache is down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Kv, StoreResult};

type Entries = HashMap<String, (String, Option<Instant>)>;

/// Entries above which an insert first sweeps out expired ones (bounds memory under churn).
const SWEEP_AT: usize = 100_000;

/// In-process key-value store with TTLs. Never fails.
#[derive(Default)]
pub struct MemoryKv {
    entries: Mutex<Entries>,
}

impl MemoryKv {
    fn with<R>(&self, f: impl FnOnce(&mut Entries) -> R) -> R {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    fn live<'a>(map: &'a mut Entries, key: &str) -> Option<&'a mut (String, Option<Instant>)> {
        let expired = map
            .get(key)
            .is_some_and(|(_, exp)| exp.is_some_and(|e| e <= Instant::now()));
        if expired {
            map.remove(key);
        }
        map.get_mut(key)
    }

    fn insert(map: &mut Entries, key: String, value: String, ttl_ms: Option<u64>) {
        if map.len() >= SWEEP_AT {
            let now = Instant::now();
            map.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        }
        let expiry = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        map.insert(key, (value, expiry));
    }
}

impl MemoryKv {
    pub fn get_now(&self, key: &str) -> Option<String> {
        self.with(|m| Self::live(m, key).map(|(v, _)| v.clone()))
    }

    pub fn set_now(&self, key: &str, value: &str, ttl_ms: Option<u64>) {
        self.with(|m| Self::insert(m, key.to_owned(), value.to_owned(), ttl_ms));
    }

    pub fn delete_now(&self, key: &str) {
        self.with(|m| m.remove(key));
    }

    pub fn incr_now(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        self.with(|m| {
            if let Some((v, _)) = Self::live(m, key) {
                let n = v.parse::<i64>().unwrap_or(0).wrapping_add(delta);
                *v = n.to_string();
                n
            } else {
                Self::insert(m, key.to_owned(), delta.to_string(), ttl_ms);
                delta
            }
        })
    }

    pub fn compare_and_set_now(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> bool {
        self.with(|m| {
            let current = Self::live(m, key).map(|(v, _)| v.as_str());
            if current == expected {
                Self::insert(m, key.to_owned(), new.to_owned(), ttl_ms);
                true
            } else {
                false
            }
        })
    }
}

#[async_trait::async_trait]
impl Kv for MemoryKv {
    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.get_now(key))
    }

    async fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) -> StoreResult<()> {
        self.set_now(key, value, ttl_ms);
        Ok(())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.delete_now(key);
        Ok(())
    }

    async fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> StoreResult<i64> {
        Ok(self.incr_now(key, delta, ttl_ms))
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> StoreResult<bool> {
        Ok(self.compare_and_set_now(key, expected, new, ttl_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn incr_and_cas_are_exact() {
        let kv = MemoryKv::default();
        assert_eq!(kv.incr("n", 1, None).await.unwrap(), 1);
        assert_eq!(kv.incr("n", 5, None).await.unwrap(), 6);
        assert!(kv.compare_and_set("k", None, "a", None).await.unwrap());
        assert!(!kv.compare_and_set("k", None, "b", None).await.unwrap());
        assert!(kv.compare_and_set("k", Some("a"), "c", None).await.unwrap());
        assert_eq!(kv.get("k").await.unwrap().as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn entries_expire() {
        let kv = MemoryKv::default();
        kv.set("t", "v", Some(0)).await.unwrap();
        assert_eq!(kv.get("t").await.unwrap(), None);
        assert_eq!(kv.incr("t", 2, None).await.unwrap(), 2);
    }
}
