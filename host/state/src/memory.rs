//! The in-process cache: a concurrent map with a time to live per entry (`moka`). Used when one
//! gateway runs alone, and as the stand-in for plugin counters while a shared cache is down.
//!
//! Expired entries are removed by the cache's own timer wheel as it is used, so no call scans
//! the map: an insert costs the same with a thousand live entries as with a million (`tollgate-
//! bench kv` measures it). Updates of one key are atomic (`incr`, compare-and-set); different
//! keys do not wait for each other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::{Kv, StoreResult};

#[derive(Clone, Debug)]
struct Entry {
    value: Value,
    /// The time to live this write gives the entry (`None`: it never expires).
    ttl: Option<Duration>,
    /// This write keeps the entry's remaining time instead (an `incr` of a live counter, as
    /// Redis's INCRBY does).
    keep_ttl: bool,
}

#[derive(Clone, Debug)]
enum Value {
    Text(Arc<str>),
    /// A counter (the entry's first `incr` turned it into one). Every clone of the entry shares
    /// the cell, so an `incr` of a live counter adds in place under the cell's lock: one read of
    /// the map and no rewrite of the entry, instead of the map's per-key `compute`.
    Count(Arc<Mutex<Counter>>),
}

#[derive(Debug)]
struct Counter {
    value: i64,
    /// False once a compare-and-set replaced the entry: an `incr` that found this cell before
    /// the replacement goes through the map again instead of adding to a value nobody reads.
    live: bool,
}

impl Value {
    fn counter(value: i64) -> Self {
        Self::Count(Arc::new(Mutex::new(Counter { value, live: true })))
    }

    /// Bytes it stands for, to weigh a bounded store's entries.
    fn size(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Count(_) => 8,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Text(t) => t.to_string(),
            Self::Count(c) => lock(c).value.to_string(),
        }
    }
}

fn lock(c: &Mutex<Counter>) -> std::sync::MutexGuard<'_, Counter> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    fn new(value: &str, ttl_ms: Option<u64>) -> Self {
        Self::with(Value::Text(value.into()), ttl_ms)
    }

    fn with(value: Value, ttl_ms: Option<u64>) -> Self {
        Self {
            value,
            ttl: ttl_ms.map(Duration::from_millis),
            keep_ttl: false,
        }
    }
}

/// Each entry's expiry is the one its write asked for.
struct PerEntry;

impl Expiry<String, Entry> for PerEntry {
    fn expire_after_create(&self, _: &String, e: &Entry, _: Instant) -> Option<Duration> {
        e.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        e: &Entry,
        _: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        if e.keep_ttl { left } else { e.ttl }
    }
}

/// In-process key-value store with TTLs. Never fails.
pub struct MemoryKv {
    /// Hashed with foldhash, seeded per process, not SipHash: plugin counters are looked up here
    /// on every request (a lookup cost about 270 instructions of SipHash).
    entries: Cache<String, Entry, foldhash::fast::RandomState>,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self {
            entries: Cache::builder()
                .expire_after(PerEntry)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }
}

impl MemoryKv {
    /// A store of about `max_bytes` of keys and values at most (each entry weighed as its key,
    /// its value and 64 bytes of bookkeeping); past it, the entries used least are dropped
    /// first (moka's TinyLFU). For what third parties write: plugins' `kv` namespaces.
    pub fn bounded(max_bytes: u64) -> Self {
        Self {
            entries: Cache::builder()
                .expire_after(PerEntry)
                .weigher(|k: &String, e: &Entry| {
                    u32::try_from(k.len() + e.value.size() + 64).unwrap_or(u32::MAX)
                })
                .max_capacity(max_bytes)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The weighed size of what it holds (a bounded store's measure; pending evictions run
    /// first).
    pub fn weighed_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    pub fn get_now(&self, key: &str) -> Option<String> {
        self.entries.get(key).map(|e| e.value.text())
    }

    pub fn set_now(&self, key: &str, value: &str, ttl_ms: Option<u64>) {
        self.entries
            .insert(key.to_owned(), Entry::new(value, ttl_ms));
    }

    pub fn delete_now(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Adds `delta` to the counter at `key` (an absent or expired key counts from 0, a value that
    /// is not a number counts as 0) and answers the sum. A live counter keeps its time to live.
    pub fn incr_now(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        // A live counter: add in its cell.
        if let Some(e) = self.entries.get(key)
            && let Value::Count(cell) = &e.value
        {
            let mut c = lock(cell);
            if c.live {
                c.value = c.value.wrapping_add(delta);
                return c.value;
            }
        }
        // Absent, text, or replaced meanwhile: make it a counter under the map's per-key lock.
        let mut result = delta;
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                Some(e) => match &e.value {
                    // Another `incr` made it a counter first (a cell in the map is live: a
                    // compare-and-set retires a cell only as it replaces the entry).
                    Value::Count(cell) => {
                        let mut c = lock(cell);
                        c.value = c.value.wrapping_add(delta);
                        result = c.value;
                        Op::Nop
                    }
                    Value::Text(t) => {
                        result = t.parse::<i64>().unwrap_or(0).wrapping_add(delta);
                        Op::Put(Entry {
                            value: Value::counter(result),
                            keep_ttl: true,
                            ..e
                        })
                    }
                },
                None => Op::Put(Entry::with(Value::counter(delta), ttl_ms)),
            });
        result
    }

    pub fn compare_and_set_now(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> bool {
        let mut done = false;
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                done = match current.as_ref().map(|e| &e.value().value) {
                    None => expected.is_none(),
                    Some(Value::Text(t)) => expected == Some(&**t),
                    // Compared and retired under the cell's lock, so that no `incr` adds to it
                    // between the comparison and the replacement.
                    Some(Value::Count(cell)) => {
                        let mut c = lock(cell);
                        let same = expected.is_some_and(|x| x == c.value.to_string());
                        c.live &= !same;
                        same
                    }
                };
                if done {
                    Op::Put(Entry::new(new, ttl_ms))
                } else {
                    Op::Nop
                }
            });
        done
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

    /// `threads` threads at once, each adding 1 to the counter `n` `each` times.
    fn add_from_threads(kv: &Arc<MemoryKv>, threads: i64, each: i64) {
        let adders: Vec<_> = (0..threads)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..each {
                        kv.incr_now("n", 1, None);
                    }
                })
            })
            .collect();
        adders.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn incr_and_cas_are_exact_under_concurrent_callers() {
        let kv = Arc::new(MemoryKv::default());
        const THREADS: i64 = 8;
        const EACH: i64 = 5_000;
        // Every thread adds to one counter at once: no increment is lost.
        add_from_threads(&kv, THREADS, EACH);
        assert_eq!(kv.get_now("n").as_deref(), Some("40000"));
        assert_eq!(kv.incr_now("n", -40_000, None), 0);
        // Every thread races to claim each of 200 keys: exactly one wins each.
        let racers: Vec<_> = (0..THREADS)
            .map(|t| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter(|k| {
                            kv.compare_and_set_now(&format!("k{k}"), None, &t.to_string(), None)
                        })
                        .count()
                })
            })
            .collect();
        let wins: usize = racers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(wins, 200);
        // A swap from the right value succeeds once, from a stale one never.
        let owner = kv.get_now("k7").unwrap();
        assert!(kv.compare_and_set_now("k7", Some(&owner), "next", None));
        assert!(!kv.compare_and_set_now("k7", Some(&owner), "again", None));
        assert_eq!(kv.get_now("k7").as_deref(), Some("next"));
    }

    #[test]
    fn a_counter_harvested_by_compare_and_set_loses_no_increment() {
        let kv = Arc::new(MemoryKv::default());
        const THREADS: i64 = 4;
        const EACH: i64 = 20_000;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Takes the count and resets it to 0 with a compare-and-set, again and again, while the
        // adders run: what it takes plus what is left must be every increment.
        let harvester = {
            let (kv, done) = (kv.clone(), done.clone());
            std::thread::spawn(move || {
                let mut taken = 0i64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(v) = kv.get_now("n")
                        && kv.compare_and_set_now("n", Some(&v), "0", None)
                    {
                        taken += v.parse::<i64>().unwrap();
                    }
                }
                taken
            })
        };
        add_from_threads(&kv, THREADS, EACH);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let taken = harvester.join().unwrap();
        let left: i64 = kv.get_now("n").unwrap().parse().unwrap();
        assert_eq!(taken + left, THREADS * EACH, "taken {taken}, left {left}");
        // A text value that is a number counts on from it; one that is not counts from 0.
        kv.set_now("t", "41", None);
        assert_eq!(kv.incr_now("t", 1, None), 42);
        assert_eq!(kv.get_now("t").as_deref(), Some("42"));
        kv.set_now("t", "x", None);
        assert_eq!(kv.incr_now("t", 1, None), 1);
    }

    #[test]
    fn entries_expire_and_incr_keeps_the_time_left() {
        let kv = MemoryKv::default();
        kv.set_now("t", "v", Some(0));
        assert_eq!(kv.get_now("t"), None);
        // An expired counter starts again from the delta.
        assert_eq!(kv.incr_now("t", 2, None), 2);
        // A counter's incr keeps its first TTL (it does not live forever once touched).
        assert_eq!(kv.incr_now("c", 1, Some(150)), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(kv.incr_now("c", 1, None), 2);
        let until = Instant::now() + Duration::from_secs(5);
        while kv.get_now("c").is_some() {
            assert!(Instant::now() < until, "the counter never expired");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A set replaces the TTL; a compare-and-set gives its own.
        kv.set_now("s", "1", Some(60_000));
        kv.set_now("s", "2", None);
        assert!(kv.compare_and_set_now("s", Some("2"), "3", Some(0)));
        assert_eq!(kv.get_now("s"), None);
        // Deleting makes the key absent for compare-and-set too.
        kv.set_now("d", "x", None);
        kv.delete_now("d");
        assert!(kv.compare_and_set_now("d", None, "y", None));
    }
}
