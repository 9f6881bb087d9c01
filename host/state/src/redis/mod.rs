//! The shared cache: Redis (one server, Sentinel or Cluster: [`topology`]) through one
//! multiplexed, self-reconnecting connection.
//!
//! Every operation has a timeout. A circuit breaker sits in front: after a failure (an error or
//! a timeout, e.g. a Redis that hangs) the cache reports itself down for [`RETRY_AFTER`], counted
//! from when the failure was *noticed*, without trying, so a dead or hung Redis costs each request
//! nothing instead of a timeout (callers fall back at once). After that window the first
//! operation to find it over starts one probe in the background (a `PING` under the same
//! timeout) and falls back at once like every other: no caller ever waits on a Redis that may
//! still hang. The probe's success closes the breaker, its failure opens it for another window.
//! Recovery needs no restart. Multi-step operations (`incr` with a TTL on creation,
//! compare-and-set) are Lua scripts, so they are atomic across gateways.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;

mod topology;

use super::{Kv, StoreError, StoreResult};
use crate::clock::unix_ms;
use crate::rate::{Decision, GCRA_SCRIPT, Gcra, Op};
use topology::{Backend, Conn};

/// How long a failed Redis is left alone before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Prefix of every key this gateway writes, so a Redis can be shared with other software.
const PREFIX: &str = "tollgate:";

const INCR: &str = r"
local created = redis.call('EXISTS', KEYS[1]) == 0
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v";

const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and cur == false) or (ARGV[1] == '1' and cur == ARGV[2]) then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  return 1
end
return 0";

/// `key` under this gateway's [`PREFIX`].
fn cache_key(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// The cache client; clones of its state go to the background probe.
pub struct RedisKv(Arc<Inner>);

impl std::ops::Deref for RedisKv {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    backend: Arc<Backend>,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
    /// Unix ms until which the cache counts as down.
    down_until: AtomicU64,
    /// A background probe of a Redis that was down is running.
    probing: AtomicBool,
    timeout: Duration,
    incr: redis::Script,
    cas: redis::Script,
    gcra: redis::Script,
}

impl RedisKv {
    /// Checks the URL and tries to connect. A Redis that is down at start is not an error: the
    /// gateway starts on the database alone and connects when Redis comes back.
    pub async fn connect(
        url: &str,
        tls: &tollgate_config::RedisTls,
        base_dir: &std::path::Path,
        timeout: Duration,
    ) -> StoreResult<Self> {
        let kv = Inner {
            backend: Arc::new(Backend::new(url, tls, base_dir)?),
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            down_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            timeout,
            incr: redis::Script::new(INCR),
            cas: redis::Script::new(CAS),
            gcra: redis::Script::new(GCRA_SCRIPT),
        };
        if let Err(e) = kv.connection().await {
            tracing::warn!(target: "state", error = %e, "redis is down at start; using the database until it is back");
        }
        Ok(Self(Arc::new(kv)))
    }

    /// Runs one operation with the timeout and the circuit breaker.
    async fn run<T, F>(&self, op: F) -> StoreResult<T>
    where
        F: AsyncFnOnce(Conn) -> redis::RedisResult<T>,
    {
        let down_until = self.down_until.load(Ordering::Relaxed);
        if down_until != 0 {
            // Open: fall back at once. Past the window, the first caller starts the probe.
            if unix_ms() >= down_until && !self.probing.swap(true, Ordering::AcqRel) {
                let inner = self.0.clone();
                tokio::spawn(async move { inner.probe().await });
            }
            return Err(StoreError::new("redis", "down; retrying shortly"));
        }
        let result = match self.connection().await {
            Ok(conn) => match tokio::time::timeout(self.timeout, op(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::new("redis", e)),
                Err(_) => Err(StoreError::new("redis", "timed out")),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.opened();
        }
        result
    }
}

impl Inner {
    /// Opens the breaker for [`RETRY_AFTER`]. The window starts when the failure is known, not
    /// when the operation began: after a timeout as long as the window, callers must still fall
    /// back at once.
    fn opened(&self) {
        if self.backend.follows_primary() {
            // The next connection asks the Sentinels where the primary is.
            self.conn.store(None);
        }
        self.down_until.store(
            unix_ms() + RETRY_AFTER.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// The half-open probe, off every request: `PING` under the operation timeout.
    async fn probe(&self) {
        let _probing = ProbeGuard(&self.probing);
        let ok = match self.connection().await {
            Ok(mut conn) => {
                let ping = redis::cmd("PING");
                let answer = ping.query_async::<String>(&mut conn);
                matches!(tokio::time::timeout(self.timeout, answer).await, Ok(Ok(_)))
            }
            Err(_) => false,
        };
        if ok {
            tracing::info!(target: "state", "redis answers again; the cache is back");
            self.down_until.store(0, Ordering::Relaxed);
        } else {
            self.opened();
        }
    }

    async fn connection(&self) -> StoreResult<Conn> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return Err(StoreError::new("redis", "connecting"));
        }
        let result = match tokio::time::timeout(
            self.timeout * 2,
            self.backend.connect(self.timeout),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "connect timed out",
            ))),
        };
        self.connecting.store(false, Ordering::Release);
        let conn = result.map_err(|e| StoreError::new("redis", e))?;
        self.conn.store(Some(std::sync::Arc::new(conn.clone())));
        Ok(conn)
    }
}

struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Relays one channel's messages to `tx`, reconnecting after [`RETRY_AFTER`] whenever the
/// subscription breaks (to the next seed node of a cluster, to the current primary under
/// Sentinel), until `tx` is closed.
async fn relay(backend: Arc<Backend>, channel: String, tx: mpsc::Sender<String>) {
    use futures_util::StreamExt;
    let mut attempt = 0;
    while !tx.is_closed() {
        attempt += 1;
        let client = match backend.pubsub_client(attempt).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(target: "state", error = %e, "redis unreachable for subscribe");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        match msg.get_payload::<String>() {
                            Ok(payload) => {
                                if tx.send(payload).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(target: "state", error = %e, "unreadable message")
                            }
                        }
                    }
                    tracing::warn!(target: "state", channel, "redis subscription lost; resubscribing");
                }
                Err(e) => tracing::warn!(target: "state", error = %e, "redis subscribe failed"),
            },
            Err(e) => {
                tracing::debug!(target: "state", error = %e, "redis unreachable for subscribe")
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

#[async_trait::async_trait]
impl Kv for RedisKv {
    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let k = cache_key(key);
        self.run(async |mut c| redis::cmd("GET").arg(&k).query_async(&mut c).await)
            .await
    }

    async fn set(&self, key: &str, value: &str, ttl_ms: Option<u64>) -> StoreResult<()> {
        let k = cache_key(key);
        self.run(async |mut c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&k).arg(value);
            if let Some(ttl) = ttl_ms {
                cmd.arg("PX").arg(ttl.max(1));
            }
            cmd.query_async(&mut c).await
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let k = cache_key(key);
        self.run(async |mut c| redis::cmd("DEL").arg(&k).query_async(&mut c).await)
            .await
    }

    async fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> StoreResult<i64> {
        let k = cache_key(key);
        self.run(async |mut c| {
            self.incr
                .key(&k)
                .arg(delta)
                .arg(ttl_ms.unwrap_or(0))
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        ttl_ms: Option<u64>,
    ) -> StoreResult<bool> {
        let k = cache_key(key);
        let set: i64 = self
            .run(async |mut c| {
                self.cas
                    .key(&k)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or(""))
                    .arg(new)
                    .arg(ttl_ms.unwrap_or(0))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(set == 1)
    }

    async fn publish(&self, channel: &str, message: &str) -> StoreResult<()> {
        let ch = cache_key(channel);
        self.run(async |mut c| {
            redis::cmd("PUBLISH")
                .arg(&ch)
                .arg(message)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
    }

    async fn gcra(&self, key: &str, gcra: &Gcra, op: Op) -> StoreResult<Option<Decision>> {
        let k = cache_key(key);
        let (name, n) = match op {
            // `Stores::rate` has bounded the count to what the bucket holds, plus one.
            Op::Take(n) => ("take", i64::try_from(n).unwrap_or(i64::MAX)),
            Op::Adjust(d) => ("adjust", d),
        };
        let (allowed, wait, ahead): (i64, i64, i64) = self
            .run(async |mut c| {
                self.gcra
                    .key(&k)
                    .arg(gcra.t_us)
                    .arg(gcra.tau_us)
                    .arg(name)
                    .arg(n)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Some(Decision {
            allowed: allowed == 1,
            wait_us: wait.max(0) as u64,
            ahead_us: ahead.max(0) as u64,
        }))
    }

    fn subscribe(&self, channel: &str) -> Option<mpsc::Receiver<String>> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(relay(self.backend.clone(), cache_key(channel), tx));
        Some(rx)
    }
}
