//! Upstream credentials set at run time: sealed with AES-256-GCM under `storage.credential_keys`
//! (from the environment: the keys never reach the database), stored in `upstream_credentials`,
//! and opened into the in-process [`CredentialMap`] each upstream reads per request. A change is
//! stored, applied at once on the gateway that made it, announced on the cache's `credentials`
//! channel, and picked up by every other gateway on the announcement or the next poll
//! ([`CREDENTIALS_POLL`]).
//!
//! Each record names the key that sealed it (`key_id`), so keys can rotate: put the new key
//! first, run `tollgate credentials reencrypt`, then drop the old one. The upstream's name is the
//! sealing's associated data: a sealed value copied to another row does not open. Nothing shows a
//! credential once it is set, only its fingerprint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use arc_swap::ArcSwap;
use base64::Engine;
use sqlx::Row;
use tollgate_config::Secret;

use super::sql::db_err;
use super::{StoreError, StoreResult, Stores, unix_ms};

/// How often each gateway checks the stored credentials for changes (besides announcements).
pub const CREDENTIALS_POLL: Duration = Duration::from_millis(500);
const CHANNEL: &str = "credentials";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The credentials set at run time, by upstream name: shared with each upstream, which reads it
/// per request (one atomic load, and a lookup when it is not empty).
pub type CredentialMap = Arc<ArcSwap<HashMap<String, Arc<Secret>>>>;

/// What is shown of a stored credential: never the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialInfo {
    pub upstream: String,
    /// The first 16 hex digits of the credential's SHA-256.
    pub fingerprint: String,
    /// The `storage.credential_keys` id that sealed it.
    pub key_id: String,
    pub updated_by: String,
    pub updated_ms: u64,
}

/// The first 16 hex digits of `value`'s SHA-256.
pub fn fingerprint(value: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(value.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sealing keys, the encrypting one first.
pub(crate) struct Cipher {
    keys: Vec<(String, Aes256Gcm)>,
}

impl Cipher {
    /// From `storage.credential_keys`; `None` when unset.
    pub(crate) fn new(keys: Option<&Secret>) -> StoreResult<Option<Self>> {
        let Some(text) = keys else {
            return Ok(None);
        };
        let keys = tollgate_config::credential_keys(text.expose())
            .map_err(|e| StoreError::new("credentials", e))?;
        Ok(Some(Self {
            keys: keys
                .into_iter()
                .map(|(id, k)| (id, Aes256Gcm::new(&k.into())))
                .collect(),
        }))
    }

    /// `(key id, nonce, sealed)`, base64, under the first key.
    fn seal(&self, upstream: &str, value: &str) -> StoreResult<(String, String, String)> {
        let (id, key) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = key
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: upstream.as_bytes(),
                },
            )
            .map_err(|_| StoreError::new("credentials", "cannot seal"))?;
        Ok((id.clone(), B64.encode(nonce), B64.encode(sealed)))
    }

    fn open(
        &self,
        upstream: &str,
        key_id: &str,
        nonce: &str,
        sealed: &str,
    ) -> Result<String, String> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| {
                format!("sealed with key {key_id:?}, which storage.credential_keys lacks")
            })?;
        let nonce = B64.decode(nonce).map_err(|_| "a malformed nonce")?;
        if nonce.len() != 12 {
            return Err("a malformed nonce".into());
        }
        let sealed = B64.decode(sealed).map_err(|_| "a malformed value")?;
        let plain = key
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: upstream.as_bytes(),
                },
            )
            .map_err(|_| "does not open (another key, or altered)")?;
        String::from_utf8(plain).map_err(|_| "not text".into())
    }
}

/// The credentials' cipher and the map in force.
pub(crate) struct Credentials {
    pub(crate) cipher: Option<Cipher>,
    map: CredentialMap,
    seen: AtomicU64,
}

impl Credentials {
    pub(crate) fn new(cipher: Option<Cipher>) -> Self {
        Self {
            cipher,
            map: CredentialMap::default(),
            seen: AtomicU64::new(u64::MAX),
        }
    }
}

/// A stored row.
struct StoredRow {
    upstream: String,
    key_id: String,
    nonce: String,
    sealed: String,
    fingerprint: String,
    updated_by: String,
    updated_ms: u64,
}

impl Stores {
    /// The credentials in force, shared: each upstream holds this handle.
    pub fn credential_map(&self) -> CredentialMap {
        self.credentials.map.clone()
    }

    /// Whether credentials can be set at run time (`storage.credential_keys` is set).
    pub fn credentials_enabled(&self) -> bool {
        self.credentials.cipher.is_some()
    }

    fn cipher(&self) -> StoreResult<&Cipher> {
        self.credentials
            .cipher
            .as_ref()
            .ok_or_else(|| StoreError::new("credentials", "storage.credential_keys is not set"))
    }

    async fn credential_rows(&self) -> StoreResult<Vec<StoredRow>> {
        let rows = self
            .db
            .timed(
                sqlx::query(
                    "SELECT upstream, key_id, nonce, sealed, fingerprint, updated_by, updated_ms \
                     FROM upstream_credentials ORDER BY upstream",
                )
                .fetch_all(&self.db.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredRow {
                    upstream: r.try_get("upstream").map_err(db_err)?,
                    key_id: r.try_get("key_id").map_err(db_err)?,
                    nonce: r.try_get("nonce").map_err(db_err)?,
                    sealed: r.try_get("sealed").map_err(db_err)?,
                    fingerprint: r.try_get("fingerprint").map_err(db_err)?,
                    updated_by: r.try_get("updated_by").map_err(db_err)?,
                    updated_ms: r.try_get::<i64, _>("updated_ms").map_err(db_err)?.max(0) as u64,
                })
            })
            .collect()
    }

    /// What is stored, by upstream (fingerprints only).
    pub async fn credentials(&self) -> StoreResult<Vec<CredentialInfo>> {
        Ok(self
            .credential_rows()
            .await?
            .into_iter()
            .map(|r| CredentialInfo {
                upstream: r.upstream,
                fingerprint: r.fingerprint,
                key_id: r.key_id,
                updated_by: r.updated_by,
                updated_ms: r.updated_ms,
            })
            .collect())
    }

    async fn write_credential(
        &self,
        upstream: &str,
        value: &str,
        by: &str,
        now: u64,
    ) -> StoreResult<CredentialInfo> {
        let (key_id, nonce, sealed) = self.cipher()?.seal(upstream, value)?;
        let info = CredentialInfo {
            upstream: upstream.to_owned(),
            fingerprint: fingerprint(value),
            key_id,
            updated_by: by.to_owned(),
            updated_ms: now,
        };
        self.db
            .timed(
                sqlx::query(
                    "INSERT INTO upstream_credentials (upstream, key_id, nonce, sealed, \
                     fingerprint, updated_by, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (upstream) DO UPDATE SET key_id = excluded.key_id, \
                     nonce = excluded.nonce, sealed = excluded.sealed, \
                     fingerprint = excluded.fingerprint, updated_by = excluded.updated_by, \
                     updated_ms = excluded.updated_ms",
                )
                .bind(&info.upstream)
                .bind(&info.key_id)
                .bind(&nonce)
                .bind(&sealed)
                .bind(&info.fingerprint)
                .bind(&info.updated_by)
                .bind(now as i64)
                .execute(&self.db.pool),
            )
            .await?;
        Ok(info)
    }

    /// Seals and stores `value` as `upstream`'s credential, for every gateway.
    pub async fn set_credential(
        &self,
        upstream: &str,
        value: &str,
        by: &str,
    ) -> StoreResult<CredentialInfo> {
        let info = self
            .write_credential(upstream, value, by, unix_ms())
            .await?;
        self.credentials_changed().await;
        Ok(info)
    }

    /// Removes `upstream`'s stored credential (its config file one applies again); whether
    /// there was one.
    pub async fn remove_credential(&self, upstream: &str) -> StoreResult<bool> {
        let done = self
            .db
            .timed(
                sqlx::query("DELETE FROM upstream_credentials WHERE upstream = $1")
                    .bind(upstream)
                    .execute(&self.db.pool),
            )
            .await?;
        self.credentials_changed().await;
        Ok(done.rows_affected() > 0)
    }

    /// Seals again under the first key every record sealed under another; how many. A record
    /// no key opens is an error (nothing is changed then).
    pub async fn reencrypt_credentials(&self, by: &str) -> StoreResult<usize> {
        let cipher = self.cipher()?;
        let first = &cipher.keys[0].0;
        let mut opened = Vec::new();
        for r in self.credential_rows().await? {
            if r.key_id == *first {
                continue;
            }
            let value = cipher
                .open(&r.upstream, &r.key_id, &r.nonce, &r.sealed)
                .map_err(|e| StoreError::new("credentials", format!("{}: {e}", r.upstream)))?;
            opened.push((r.upstream, value));
        }
        let now = unix_ms();
        for (upstream, value) in &opened {
            self.write_credential(upstream, value, by, now).await?;
        }
        if !opened.is_empty() {
            self.credentials_changed().await;
        }
        Ok(opened.len())
    }

    async fn credentials_changed(&self) {
        if let Err(e) = self.refresh_credentials(true).await {
            tracing::warn!(target: "state", error = %e, "cannot re-read the upstream credentials");
        }
        if let Err(e) = self.cache.publish(CHANNEL, "changed").await {
            self.cache_failed("publish credentials", &e);
        }
    }

    /// Re-reads the stored credentials and opens them if they changed (or if `force`). A record
    /// that does not open is left out (the upstream's config file credential applies) and logged.
    pub async fn refresh_credentials(&self, force: bool) -> StoreResult<()> {
        let seen = self
            .db
            .table_fingerprint("upstream_credentials", "updated_ms")
            .await?;
        if !force && seen == self.credentials.seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut map = HashMap::new();
        if let Some(cipher) = &self.credentials.cipher {
            for r in self.credential_rows().await? {
                match cipher.open(&r.upstream, &r.key_id, &r.nonce, &r.sealed) {
                    Ok(v) => {
                        map.insert(r.upstream, Arc::new(Secret::new(v)));
                    }
                    Err(e) => {
                        tracing::error!(target: "state", upstream = %r.upstream, error = %e, "a stored credential does not open; the config file's applies")
                    }
                }
            }
        } else if !self.credential_rows().await?.is_empty() {
            tracing::warn!(target: "state", "upstream credentials are stored but storage.credential_keys is not set; the config file's apply");
        }
        self.credentials.map.store(Arc::new(map));
        self.credentials.seen.store(seen, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps this gateway's map in step with the stored credentials.
    pub(crate) fn follow_credentials(self: &Arc<Self>) {
        self.follow(
            CHANNEL,
            CREDENTIALS_POLL,
            "upstream credentials",
            |stores, force| async move { stores.refresh_credentials(force).await },
        );
    }
}
