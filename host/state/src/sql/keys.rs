//! The `client_keys` and `client_key_secrets` tables: keys issued at run time and the digests of
//! the secrets that authenticate as each (see `crate::keys`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, db_err};
use crate::StoreResult;

const KEY_COLUMNS: &str = "id, name, owner, description, tags, models, routes, budgets, limits, metadata, \
     display_prefix, created_by, created_ms, updated_ms, expires_ms, revoked_ms, capture";

/// A stored key as operators see it (never its secret).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyRecord {
    /// 64 hex digits: the digest of its first secret.
    pub id: String,
    pub name: String,
    pub owner: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Models it may ask for (exact, or a prefix ending in `*`); empty: any.
    pub models: Vec<String>,
    /// Route path prefixes it may use; empty: any.
    pub routes: Vec<String>,
    /// Its spending caps.
    pub budgets: Vec<tollgate_config::BudgetSpec>,
    /// Its own rate and concurrency limits.
    pub limits: Option<tollgate_config::KeyLimits>,
    /// Its own body capture, instead of its route's.
    pub capture: Option<tollgate_config::CaptureConfig>,
    /// Operator data, never interpreted.
    pub metadata: serde_json::Value,
    /// The secret's first characters, to recognise it (`tg-AbC123…`).
    pub display_prefix: String,
    pub created_by: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl KeyRecord {
    /// `revoked`, `expired` or `active`, at `now_ms`.
    pub fn status(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|t| now_ms >= t) {
            "expired"
        } else {
            "active"
        }
    }
}

/// A secret digest that authenticates as a stored key.
#[derive(Debug, Clone)]
pub struct SecretRow {
    pub digest: String,
    pub key_id: String,
    pub expires_ms: Option<u64>,
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Names starting with this.
    pub name: Option<String>,
    pub owner: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

fn ms(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn list(r: &AnyRow, col: &str) -> StoreResult<Vec<String>> {
    let text: String = r.try_get(col).map_err(db_err)?;
    serde_json::from_str(&text).map_err(db_err)
}

fn key_from(r: &AnyRow) -> StoreResult<KeyRecord> {
    let metadata: String = r.try_get("metadata").map_err(db_err)?;
    Ok(KeyRecord {
        id: r.try_get("id").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        owner: r.try_get("owner").map_err(db_err)?,
        description: r.try_get("description").map_err(db_err)?,
        tags: list(r, "tags")?,
        models: list(r, "models")?,
        routes: list(r, "routes")?,
        budgets: {
            let text: String = r.try_get("budgets").map_err(db_err)?;
            serde_json::from_str(&text).map_err(db_err)?
        },
        limits: {
            let text: String = r.try_get("limits").map_err(db_err)?;
            serde_json::from_str(&text).map_err(db_err)?
        },
        capture: {
            let text: String = r.try_get("capture").map_err(db_err)?;
            serde_json::from_str(&text).map_err(db_err)?
        },
        metadata: serde_json::from_str(&metadata).map_err(db_err)?,
        display_prefix: r.try_get("display_prefix").map_err(db_err)?,
        created_by: r.try_get("created_by").map_err(db_err)?,
        created_ms: r.try_get::<i64, _>("created_ms").map_err(db_err)?.max(0) as u64,
        updated_ms: r.try_get::<i64, _>("updated_ms").map_err(db_err)?.max(0) as u64,
        expires_ms: ms(r.try_get("expires_ms").map_err(db_err)?),
        revoked_ms: ms(r.try_get("revoked_ms").map_err(db_err)?),
    })
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl SqlStore {
    /// Stores a new key and its first secret's digest; false (nothing stored) if the name is
    /// taken.
    pub async fn insert_key(&self, k: &KeyRecord) -> StoreResult<bool> {
        let sql = format!(
            "INSERT INTO client_keys ({KEY_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (name) DO NOTHING"
        );
        let mut tx = self.write_tx().await.map_err(db_err)?;
        let done = self
            .timed(
                sqlx::query(&sql)
                    .bind(&k.id)
                    .bind(&k.name)
                    .bind(&k.owner)
                    .bind(&k.description)
                    .bind(json(&k.tags))
                    .bind(json(&k.models))
                    .bind(json(&k.routes))
                    .bind(json(&k.budgets))
                    .bind(json(&k.limits))
                    .bind(json(&k.metadata))
                    .bind(&k.display_prefix)
                    .bind(&k.created_by)
                    .bind(k.created_ms as i64)
                    .bind(k.updated_ms as i64)
                    .bind(k.expires_ms.map(|v| v as i64))
                    .bind(k.revoked_ms.map(|v| v as i64))
                    .bind(json(&k.capture))
                    .execute(&mut *tx),
            )
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.timed(
            sqlx::query(
                "INSERT INTO client_key_secrets (digest, key_id, created_ms, expires_ms) \
                 VALUES ($1, $1, $2, NULL)",
            )
            .bind(&k.id)
            .bind(k.created_ms as i64)
            .execute(&mut *tx),
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// The stored key with id or name `which`.
    pub async fn key(&self, which: &str) -> StoreResult<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM client_keys WHERE id = $1 OR name = $1");
        let row = self
            .timed(sqlx::query(&sql).bind(which).fetch_optional(&self.pool))
            .await?;
        row.map(|r| key_from(&r)).transpose()
    }

    /// One page of stored keys, by name, and how many match in all.
    pub async fn keys_page(&self, q: &KeyQuery, now_ms: u64) -> StoreResult<(Vec<KeyRecord>, u64)> {
        let filter = "WHERE ($1 = '' OR name LIKE $2) AND ($3 = '' OR owner = $3) AND \
             ($4 = '' OR ($4 = 'revoked' AND revoked_ms IS NOT NULL) OR \
              ($4 = 'expired' AND revoked_ms IS NULL AND expires_ms IS NOT NULL AND expires_ms <= $5) OR \
              ($4 = 'active' AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > $5)))";
        let name = q.name.clone().unwrap_or_default();
        // LIKE wildcards in the search are taken literally.
        let like = format!("{}%", name.replace(['%', '_', '\\'], ""));
        let owner = q.owner.clone().unwrap_or_default();
        let status = q.status.clone().unwrap_or_default();
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM client_keys {filter} ORDER BY name LIMIT $6 OFFSET $7"
        );
        let rows = self
            .timed(
                sqlx::query(&sql)
                    .bind(&name)
                    .bind(&like)
                    .bind(&owner)
                    .bind(&status)
                    .bind(now_ms as i64)
                    .bind(i64::from(q.limit))
                    .bind(q.offset.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool),
            )
            .await?;
        let count = format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM client_keys {filter}");
        let total = self
            .timed(
                sqlx::query(&count)
                    .bind(&name)
                    .bind(&like)
                    .bind(&owner)
                    .bind(&status)
                    .bind(now_ms as i64)
                    .fetch_one(&self.pool),
            )
            .await?;
        let total = total.try_get::<i64, _>("n").map_err(db_err)?.max(0) as u64;
        Ok((
            rows.iter().map(key_from).collect::<StoreResult<_>>()?,
            total,
        ))
    }

    /// Writes a key's editable fields (name, owner, description, tags, models, routes,
    /// budgets, limits, capture, metadata, expiry, revocation); false if there is no such key or the new name is taken.
    pub async fn update_key(&self, k: &KeyRecord) -> StoreResult<bool> {
        let done = self
            .timed(
                sqlx::query(
                    "UPDATE client_keys SET name = $2, owner = $3, description = $4, tags = $5, \
                     models = $6, routes = $7, metadata = $8, updated_ms = $9, expires_ms = $10, \
                     revoked_ms = $11, budgets = $12, limits = $13, capture = $14 WHERE id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM client_keys o WHERE o.name = $2 AND o.id <> $1)",
                )
                .bind(&k.id)
                .bind(&k.name)
                .bind(&k.owner)
                .bind(&k.description)
                .bind(json(&k.tags))
                .bind(json(&k.models))
                .bind(json(&k.routes))
                .bind(json(&k.metadata))
                .bind(k.updated_ms as i64)
                .bind(k.expires_ms.map(|v| v as i64))
                .bind(k.revoked_ms.map(|v| v as i64))
                .bind(json(&k.budgets))
                .bind(json(&k.limits))
                .bind(json(&k.capture))
                .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Adds `digest` as the key's current secret; every earlier secret stops working at
    /// `old_until_ms` (or sooner, if it already would).
    pub async fn rotate_key(
        &self,
        key_id: &str,
        digest: &str,
        display_prefix: &str,
        now_ms: u64,
        old_until_ms: u64,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await.map_err(db_err)?;
        let done = self
            .timed(
                sqlx::query(
                    "UPDATE client_keys SET display_prefix = $2, updated_ms = $3 \
                     WHERE id = $1 AND revoked_ms IS NULL",
                )
                .bind(key_id)
                .bind(display_prefix)
                .bind(now_ms as i64)
                .execute(&mut *tx),
            )
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.timed(
            sqlx::query(
                "UPDATE client_key_secrets SET expires_ms = $2 WHERE key_id = $1 AND \
                 (expires_ms IS NULL OR expires_ms > $2)",
            )
            .bind(key_id)
            .bind(old_until_ms as i64)
            .execute(&mut *tx),
        )
        .await?;
        self.timed(
            sqlx::query(
                "INSERT INTO client_key_secrets (digest, key_id, created_ms, expires_ms) \
                 VALUES ($1, $2, $3, NULL)",
            )
            .bind(digest)
            .bind(key_id)
            .bind(now_ms as i64)
            .execute(&mut *tx),
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// A number that changes whenever a stored key or secret changes.
    pub(crate) async fn keys_fingerprint(&self) -> StoreResult<u64> {
        let keys = self.table_fingerprint("client_keys", "updated_ms").await?;
        let secrets = self
            .table_fingerprint("client_key_secrets", "created_ms")
            .await?;
        Ok(keys.wrapping_mul(31).wrapping_add(secrets))
    }

    /// Every stored key (revoked ones too) and every secret still working at `now_ms`.
    pub(crate) async fn keys_in_force(
        &self,
        now_ms: u64,
    ) -> StoreResult<(Vec<KeyRecord>, Vec<SecretRow>)> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM client_keys");
        let keys = self
            .timed(sqlx::query(&sql).fetch_all(&self.pool))
            .await?
            .iter()
            .map(key_from)
            .collect::<StoreResult<Vec<_>>>()?;
        let secrets = self
            .timed(
                sqlx::query(
                    "SELECT digest, key_id, expires_ms FROM client_key_secrets \
                     WHERE expires_ms IS NULL OR expires_ms > $1",
                )
                .bind(now_ms as i64)
                .fetch_all(&self.pool),
            )
            .await?
            .iter()
            .map(|r| {
                Ok(SecretRow {
                    digest: r.try_get("digest").map_err(db_err)?,
                    key_id: r.try_get("key_id").map_err(db_err)?,
                    expires_ms: ms(r.try_get("expires_ms").map_err(db_err)?),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((keys, secrets))
    }
}
