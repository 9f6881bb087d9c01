//! Client keys as runtime objects: the [`KeyTable`] the request path authenticates against, and
//! the `client_keys` table of keys issued at run time (admin API, `tollgate keys`).
//!
//! The table in force is the config file's `auth.keys` plus the stored keys that are not revoked,
//! each reachable by the digest of every secret that authenticates as it. A change is stored,
//! applied at once on the gateway that made it, announced on the cache's `keys` channel, and
//! picked up by every other gateway sharing the database on the announcement or on the next poll
//! ([`KEYS_POLL`]), so within a second cluster-wide, with the database polled when the cache is
//! down. A request never waits on a store: it looks its key up in the table in process.
//!
//! A key's identity ([`KeyId`]) is `HMAC-SHA256(server secret, secret)`; a stored key keeps the
//! digest of its *first* secret as its id, so bindings, usage and audit keep following it across
//! rotations. Secrets are never stored: only digests.

mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use self::table::{
    ClientKey, KeyEntry, KeyId, KeyLookup, KeySource, KeyTable, pattern_matches,
};
use super::sql::KeyRecord;
use super::{StoreResult, Stores, unix_ms};

/// How often each gateway checks the stored keys for changes (besides the announcements).
pub const KEYS_POLL: Duration = Duration::from_millis(500);
pub(crate) const CHANNEL: &str = "keys";

/// The config file's keys and the stored ones, as one table.
pub(crate) struct KeyLists {
    base: std::sync::Mutex<Vec<KeyEntry>>,
    stored: std::sync::Mutex<Vec<KeyEntry>>,
    /// Names of every stored key, revoked ones included (a config key may not reuse one).
    pub(crate) stored_names: std::sync::Mutex<Vec<String>>,
    pub(crate) table: Arc<ArcSwap<KeyTable>>,
    /// Fingerprint of the stored rows last read, to skip rebuilding an unchanged table.
    pub(crate) seen: AtomicU64,
}

impl KeyLists {
    pub(crate) fn new() -> Self {
        Self {
            base: Default::default(),
            stored: Default::default(),
            stored_names: Default::default(),
            table: Arc::new(ArcSwap::from_pointee(KeyTable::default())),
            seen: AtomicU64::new(u64::MAX),
        }
    }

    pub(crate) fn set_stored(&self, entries: Vec<KeyEntry>, names: Vec<String>) {
        *self.stored.lock().unwrap_or_else(|p| p.into_inner()) = entries;
        *self.stored_names.lock().unwrap_or_else(|p| p.into_inner()) = names;
        self.rebuild();
    }

    fn rebuild(&self) {
        let base = self.base.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stored = self
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A config key wins a digest both define (the same secret configured twice).
        let table = KeyTable::new(stored.into_iter().chain(base));
        self.table.store(Arc::new(table));
    }
}

impl Stores {
    /// The key table in force, shared: the request path holds this handle and loads it per
    /// request (no reference count taken).
    pub fn key_table(&self) -> Arc<ArcSwap<KeyTable>> {
        self.keys.table.clone()
    }

    /// Installs the config file's keys (on start and on every reload).
    pub fn set_config_keys(&self, entries: Vec<KeyEntry>) {
        *self.keys.base.lock().unwrap_or_else(|p| p.into_inner()) = entries;
        self.keys.rebuild();
    }

    /// Names of the stored keys (revoked ones too), as last read.
    pub fn stored_key_names(&self) -> Vec<String> {
        self.keys
            .stored_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps this gateway's table in step with the stored keys.
    pub(crate) fn follow_keys(self: &Arc<Self>) {
        self.follow(
            CHANNEL,
            KEYS_POLL,
            "client keys",
            |stores, force| async move { stores.refresh_keys(force).await },
        );
    }

    /// After a change to the stored keys: re-reads them here and tells the other gateways.
    pub async fn keys_changed(&self) {
        if let Err(e) = self.refresh_keys(true).await {
            tracing::warn!(target: "state", error = %e, "cannot re-read the client keys");
        }
        if let Err(e) = self.cache.publish(CHANNEL, "changed").await {
            self.cache_failed("publish client keys", &e);
        }
    }
}

impl Stores {
    /// Re-reads the stored keys and rebuilds the table if they changed (or if `force`).
    pub async fn refresh_keys(&self, force: bool) -> StoreResult<()> {
        let fingerprint = self.db.keys_fingerprint().await?;
        if !force && fingerprint == self.keys.seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (records, secrets) = self.db.keys_in_force(unix_ms()).await?;
        let names = records.iter().map(|r| r.name.clone()).collect();
        let live: HashMap<&str, Arc<ClientKey>> = records
            .iter()
            .filter(|r| r.revoked_ms.is_none())
            .filter_map(|r| Some((r.id.as_str(), Arc::new(client_key(r)?))))
            .collect();
        let entries = secrets
            .iter()
            .filter_map(|s| {
                Some(KeyEntry {
                    digest: KeyId::from_hex(&s.digest)?,
                    key: live.get(s.key_id.as_str())?.clone(),
                    secret_expires_ms: s.expires_ms,
                })
            })
            .collect();
        self.keys.set_stored(entries, names);
        self.keys.seen.store(fingerprint, Ordering::Relaxed);
        Ok(())
    }
}

/// The request path's view of a stored key.
fn client_key(r: &KeyRecord) -> Option<ClientKey> {
    Some(ClientKey {
        expires_ms: r.expires_ms,
        models: r.models.iter().map(|m| m.as_str().into()).collect(),
        routes: r.routes.iter().map(|m| m.as_str().into()).collect(),
        owner: r.owner.as_str().into(),
        budgets: r.budgets.clone(),
        limits: r.limits.filter(|l| !l.is_empty()),
        capture: r.capture.as_ref().map(|c| Arc::new(c.compile())),
        ..ClientKey::plain(KeyId::from_hex(&r.id)?, &r.name, KeySource::Database)
    })
}
