//! State: bindings, the intercept log, usage, caches, counters and plugin key-value data.
//!
//! Two stores, each behind one abstraction:
//! - the **database** ([`SqlStore`]) is the source of truth for bindings and the intercept log:
//!   SQLite (embedded default, a file created on first run) or PostgreSQL (several gateways). One
//!   implementation serves both through sqlx's `Any` driver; the SQL is the common dialect and
//!   each backend has its own versioned migrations in `migrations/`;
//! - the **cache** ([`Kv`]) holds alert counters and plugin `kv` data, and with Redis the cached
//!   bindings: in process ([`MemoryKv`]) or Redis ([`RedisKv`]). It is never the source of truth
//!   for a binding. Each gateway also keeps the bindings it read recently decoded, in process
//!   (`NearBindings`); with an in-process cache that is the only binding cache.
//!
//! [`Stores`] combines them and owns the failure policy:
//! - reads of a binding go cache first, then the database (cache-aside); a cache failure falls
//!   back to the database, a database failure with a cache hit still decides;
//! - first use is atomic in the database (`INSERT … ON CONFLICT DO NOTHING`, then read back), so
//!   two racing first requests, on any gateway of a cluster, get the same binding;
//! - what neither store can answer is a [`StoreError`]; the caller applies the deployment's
//!   failsafe (`closed` → 503, `open` → let through and log);
//! - intercepts go through a bounded queue to a writer task that flushes every `flush_interval`;
//!   key usage (`last_used`, count, last IP) and token usage are summed in place under a mutex
//!   and taken by the writer at each flush (no wake-up of the writer per request); the request
//!   path never waits for either, and [`Stores::shutdown`] flushes what is pending.

mod alerts;
mod audit;
mod bindings;
mod clock;
mod cooldowns;
mod credentials;
mod dashboard;
mod error;
mod follow;
mod health;
mod intercepts;
mod ip_rules;
mod keys;
mod kv;
mod memory;
mod plugin_kv;
mod queues;
mod rate;
mod recent;
mod redis;
mod requests;
mod settings;
mod sql;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use tollgate_config::{AlertsConfig, CacheUrl, Failsafe, StorageConfig};

pub use self::alerts::{Alert, Delivery, KEPT_ALERTS, NoWebhook, SentAlert, Webhook};
pub use self::audit::{AuditQuery, AuditRecord};
use self::bindings::{BINDINGS, NEAR_TTL, NearBindings};
pub use self::bindings::{Binding, BindingStatus, normalize_net};
pub use self::clock::unix_ms;
pub use self::cooldowns::SharedCooldown;
pub use self::credentials::{CREDENTIALS_POLL, CredentialInfo, CredentialMap, fingerprint};
pub use self::dashboard::{BindingCounts, HourTotals};
pub use self::error::{StoreError, StoreResult};
pub use self::health::{Probe, StoreHealth};
pub use self::intercepts::InterceptQuery;
pub use self::ip_rules::{IP_RULES_POLL, IpAction, IpRule, IpTable};
pub use self::keys::{
    ClientKey, KEYS_POLL, KeyEntry, KeyId, KeyLookup, KeySource, KeyTable, pattern_matches,
};
pub use self::kv::Kv;
pub use self::memory::MemoryKv;
pub use self::plugin_kv::PluginKv;
pub use self::queues::{Intercept, KEY_ID_PREFIX_LEN};
use self::queues::{KeyUses, QUEUE_CAPACITY};
pub use self::rate::{Decision, Gcra, LocalBuckets, Op};
pub use self::recent::{LogHistogram, MinuteTotals, Observed};
pub use self::redis::RedisKv;
pub use self::requests::{Attempt, RequestEntry, RequestQuery, RequestRow};
pub use self::settings::{SETTINGS_POLL, SettingOverride, Settings};
pub use self::sql::{BindingQuery, KeyQuery, KeyRecord, SqlStore, TokenUsage, UsageBy};
use self::writer::{Event, Writer};

/// Request counters the stores keep for metrics and tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Usage updates or intercepts dropped because the write queue was full.
    pub queue_full: AtomicU64,
    /// Cache operations that failed and fell back (to the database or the local cache).
    pub cache_fallbacks: AtomicU64,
    /// Requests decided by the failsafe because the stores could not answer.
    pub failsafe: AtomicU64,
    /// Keys bound on their first use (by this gateway).
    pub first_uses: AtomicU64,
    /// Refused requests written to the intercept log (by this gateway).
    pub intercepts: AtomicU64,
    /// Writer flushes that could not write a batch (kept and retried at the next flush; the
    /// request log's batch is dropped instead).
    pub flush_failures: AtomicU64,
    /// Requests not logged: the request log's buffer was full, or its batch could not be written.
    pub requests_dropped: AtomicU64,
}

/// The most plugins' `kv` namespaces hold in process, together (keys and values, weighed):
/// past it, the entries used least are dropped. A shared cache (Redis) is bounded by its own
/// `maxmemory`.
pub const PLUGIN_KV_MEMORY: u64 = 64 << 20;

/// The database, the cache, and the background work around them.
pub struct Stores {
    db: SqlStore,
    cache: Arc<dyn Kv>,
    /// Stand-in for a shared cache that is down, so the gateway's own counters keep working
    /// (per process).
    local: MemoryKv,
    /// Plugins' `kv` namespaces when the cache is in process, and their stand-in when a shared
    /// cache is down: bounded ([`PLUGIN_KV_MEMORY`]), since third parties write it.
    plugin_local: MemoryKv,
    /// Bindings this gateway read recently, decoded ([`NearBindings`]).
    near: NearBindings,
    /// Whether `cache` is shared with other gateways (Redis): bindings are then also kept there,
    /// as text, and changes are published.
    shared: bool,
    config: StorageConfig,
    queue: mpsc::Sender<Event>,
    /// Token usage of finished requests, taken by the writer at each flush. A plain buffer rather
    /// than the queue: one push per request, and no wake-up of the writer task for each.
    /// The same lock also holds this gateway's last hour per minute (fed with each request's
    /// usage and the intercepts), so recording a request takes one lock, not two.
    tokens: std::sync::Mutex<(Vec<TokenUsage>, recent::LastHour)>,
    /// Keys used since the last flush, summed in place (the same reason: a request with an
    /// ip-binding policy used to wake the writer on the main runtime, from every worker thread).
    /// foldhash, as the token sums of the writer: one lookup per request.
    uses: std::sync::Mutex<KeyUses>,
    /// Finished requests for the request log, encoded as they come, taken by the writer at
    /// each flush.
    requests: std::sync::Mutex<requests::Pending>,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The live settings (failsafe, alerts, archive age, log level).
    pub(crate) live: settings::Live,
    /// The gateway-wide IP allow/deny table.
    pub(crate) ip_lists: ip_rules::IpLists,
    /// The client keys in force (config file and stored).
    pub(crate) keys: keys::KeyLists,
    /// Webhook alerts other than the writer's intercept alerts (budgets).
    alerts: alerts::Alerts,
    /// Upstream credentials set at run time.
    credentials: credentials::Credentials,
    /// Per-gateway state of the request path that outlives a config (rate limit buckets,
    /// in-flight counts), by id.
    kept: std::sync::Mutex<HashMap<String, Arc<dyn std::any::Any + Send + Sync>>>,
    pub stats: StoreStats,
}

impl Stores {
    /// Connects to the configured stores, runs pending migrations, and starts the writer (usage,
    /// intercepts, alerts) and retention tasks. Must run inside a tokio runtime.
    pub async fn open(
        config: &StorageConfig,
        base_dir: &Path,
        alerts: &AlertsConfig,
        webhook: Arc<dyn Webhook>,
    ) -> StoreResult<Arc<Self>> {
        let db = SqlStore::connect(&config.database, base_dir, config.op_timeout.get()).await?;
        db.migrate().await?;
        let cache: Arc<dyn Kv> = match &config.cache {
            CacheUrl::Memory => Arc::new(MemoryKv::default()),
            CacheUrl::Redis(url) => Arc::new(
                RedisKv::connect(
                    url.expose(),
                    &config.redis_tls,
                    base_dir,
                    config.op_timeout.get(),
                )
                .await?,
            ),
        };
        let cipher = credentials::Cipher::new(config.credential_keys.as_ref())?;
        let stores = Self::start(db, cache, config.clone(), alerts.clone(), webhook, cipher);
        stores.refresh_settings().await?;
        stores.refresh_ip_rules(true).await?;
        stores.refresh_keys(true).await?;
        stores.refresh_credentials(true).await?;
        Ok(stores)
    }

    /// Stores that keep nothing: an in-memory SQLite database and an in-process cache. For
    /// offline plugin tests and benchmarks.
    pub async fn ephemeral() -> StoreResult<Arc<Self>> {
        let config = StorageConfig {
            database: tollgate_config::DatabaseUrl::SqliteMemory,
            ..StorageConfig::default()
        };
        let db =
            SqlStore::connect(&config.database, Path::new("."), config.op_timeout.get()).await?;
        db.migrate().await?;
        let stores = Self::start(
            db,
            Arc::new(MemoryKv::default()),
            config,
            AlertsConfig::default(),
            Arc::new(NoWebhook),
            None,
        );
        stores.refresh_settings().await?;
        Ok(stores)
    }

    fn start(
        db: SqlStore,
        cache: Arc<dyn Kv>,
        config: StorageConfig,
        alerts: AlertsConfig,
        webhook: Arc<dyn Webhook>,
        cipher: Option<credentials::Cipher>,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let changes = cache.subscribe(BINDINGS);
        let stores = Arc::new(Self {
            db,
            cache,
            local: MemoryKv::default(),
            plugin_local: MemoryKv::bounded(PLUGIN_KV_MEMORY),
            near: NearBindings::new(if changes.is_some() {
                config.binding_cache_ttl.get().min(NEAR_TTL)
            } else {
                config.binding_cache_ttl.get()
            }),
            shared: changes.is_some(),
            live: settings::Live::new(&config, &alerts),
            ip_lists: ip_rules::IpLists::new(),
            keys: keys::KeyLists::new(),
            alerts: alerts::Alerts::new(alerts.clone(), webhook.clone()),
            credentials: credentials::Credentials::new(cipher),
            kept: Default::default(),
            config,
            queue,
            tokens: Default::default(),
            uses: std::sync::Mutex::new(HashMap::default()),
            requests: Default::default(),
            writer: std::sync::Mutex::new(None),
            stats: StoreStats::default(),
        });
        let writer = Writer::new(Arc::downgrade(&stores), alerts, webhook);
        let handle = tokio::spawn(writer.run(rx));
        *stores.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        // Always running: `archive_days` is a live setting (0 skips the job).
        tokio::spawn(retention(Arc::downgrade(&stores)));
        stores.follow_settings();
        stores.follow_ip_rules();
        stores.follow_keys();
        stores.follow_credentials();
        if let Some(mut changes) = changes {
            let weak = Arc::downgrade(&stores);
            tokio::spawn(async move {
                while let Some(key_id) = changes.recv().await {
                    let Some(stores) = weak.upgrade() else { return };
                    stores.near.forget(&key_id);
                }
            });
        }
        stores
    }

    pub fn failsafe(&self) -> Failsafe {
        self.live.failsafe()
    }

    /// The database, for administration (listing, banning) and tests.
    pub fn database(&self) -> &SqlStore {
        &self.db
    }

    fn cache_failed(&self, op: &str, e: &StoreError) {
        self.stats.cache_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "state", op, error = %e, "cache failed; falling back");
    }

    /// The key-value namespace of the admin plane (login failures and lockouts), shared by the
    /// gateways of a cluster through the cache.
    pub fn admin_kv(&self) -> PluginKv<'_> {
        self.own_kv("a:admin\u{0}")
    }

    /// `result` from the shared cache, or `local` computed on the in-process stand-in if the
    /// shared cache failed.
    fn or_local<T>(
        &self,
        op: &str,
        result: StoreResult<T>,
        local: impl FnOnce(&MemoryKv) -> T,
    ) -> T {
        result.unwrap_or_else(|e| {
            self.cache_failed(op, &e);
            local(&self.local)
        })
    }

    /// Whether rate limit buckets are shared with other gateways (the cache is Redis).
    pub fn shares_buckets(&self) -> bool {
        self.shared
    }

    /// The state `id` of this gateway, made by `make` on first use: the same object for as long
    /// as some config uses it, so a reload does not reset a limit. Ids name the type's owner and
    /// parameters; objects no config holds any more are dropped.
    pub fn kept<T: Send + Sync + 'static>(&self, id: &str, make: impl FnOnce() -> T) -> Arc<T> {
        let mut all = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, b| Arc::strong_count(b) > 1);
        if let Some(found) = all.get(id).and_then(|a| a.clone().downcast::<T>().ok()) {
            return found;
        }
        let made = Arc::new(make());
        all.insert(id.to_owned(), made.clone());
        made
    }

    /// Applies `op` to the bucket of `subject` in one limit: in the shared cache, under
    /// `prefix` + `subject`, when there is one (one limit for the cluster); else — or when the
    /// shared cache fails — in the limit's `local` buckets.
    pub async fn rate(
        &self,
        prefix: &str,
        subject: &str,
        gcra: &Gcra,
        op: Op,
        local: &LocalBuckets,
    ) -> Decision {
        // More than the bucket holds is refused whatever its state: taken as one more than it
        // holds, so both backends decide (and compute the wait) alike, and the shared cache's
        // script (Lua doubles, an i64 reply) only ever sees small counts. A count past i64 used
        // to reach it as a negative take.
        let op = match op {
            Op::Take(n) => Op::Take(n.min(gcra.capacity().saturating_add(1))),
            adjust => adjust,
        };
        if self.shared {
            let key = [prefix, subject].concat();
            match self.cache.gcra(&key, gcra, op).await {
                Ok(Some(d)) => return d,
                Ok(None) => {}
                Err(e) => self.cache_failed("rate limit", &e),
            }
        }
        local.apply(subject.as_bytes(), gcra, op)
    }

    /// Stops taking writes and flushes what is queued. Call once, on shutdown.
    pub async fn shutdown(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            // The writer drains the queue and flushes once every sender is gone or this is sent.
            let _ = self.queue.send(Event::Flush).await;
            let _ = self.queue.send(Event::Stop).await;
            let _ = handle.await;
        }
    }

    /// Flushes queued usage and intercepts now (used by tests and `shutdown`).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.queue.send(Event::FlushAck(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Archives active bindings unused for `archive_days`; returns how many.
    pub async fn archive_inactive(&self) -> StoreResult<usize> {
        let days = u64::from(self.live.archive_days());
        if days == 0 {
            return Ok(0);
        }
        let now = unix_ms();
        let cutoff = now.saturating_sub(days * 86_400_000);
        let archived = self.db.archive_inactive(cutoff, now).await?;
        for key_id in &archived {
            self.forget(key_id).await;
        }
        if !archived.is_empty() {
            tracing::info!(target: "state", count = archived.len(), "archived inactive bindings");
        }
        Ok(archived.len())
    }
}

/// Runs the archive job every `retention_interval` while the stores are alive.
async fn retention(stores: std::sync::Weak<Stores>) {
    let period = match stores.upgrade() {
        Some(s) => s.config.retention_interval.get(),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(stores) = stores.upgrade() else {
            return;
        };
        if let Err(e) = stores.archive_inactive().await {
            tracing::warn!(target: "state", error = %e, "archiving inactive bindings failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    #[test]
    fn mapped_ipv6_networks_become_ipv4() {
        let n: IpNet = "::ffff:10.1.2.3/120".parse().unwrap();
        assert_eq!(normalize_net(n).to_string(), "10.1.2.0/24");
        let n: IpNet = "2001:db8::1/64".parse().unwrap();
        assert_eq!(normalize_net(n).to_string(), "2001:db8::/64");
        let n: IpNet = "10.1.2.3/16".parse().unwrap();
        assert_eq!(normalize_net(n).to_string(), "10.1.0.0/16");
    }

    #[test]
    fn cached_bindings_round_trip() {
        let b = Binding {
            key_id: "k".into(),
            cidr: "2001:db8::/64".parse().unwrap(),
            status: BindingStatus::Banned,
            created_ms: 42,
            last_used_ms: 42,
            last_ip: None,
            request_count: 0,
        };
        assert_eq!(Binding::decode("k", &b.encode()), Some(b));
        assert_eq!(Binding::decode("k", "bogus"), None);
    }

    /// With an in-process cache, a binding read once is answered from the near bindings: a change
    /// made behind the stores' back (in the database only) is not seen, and one made through the
    /// stores (which drops the cached copy) is seen at once.
    #[tokio::test]
    async fn in_process_bindings_are_served_decoded_until_a_change_drops_them() {
        let stores = Stores::ephemeral().await.unwrap();
        let key = "e".repeat(64);
        let net: IpNet = "2001:db8::/64".parse().unwrap();
        let bound = stores.bind_first(&key, net).await.unwrap();
        stores
            .database()
            .set_status(&key, BindingStatus::Banned)
            .await
            .unwrap();
        let read = stores.binding(&key).await.unwrap().unwrap();
        assert_eq!((read.cidr, read.status), (net, BindingStatus::Active));
        assert_eq!(read.created_ms, bound.created_ms);
        stores
            .set_status(&key, BindingStatus::Banned)
            .await
            .unwrap();
        let read = stores.binding(&key).await.unwrap().unwrap();
        assert_eq!(read.status, BindingStatus::Banned);
        assert_eq!(stores.binding(&"f".repeat(64)).await.unwrap(), None);
    }
}
