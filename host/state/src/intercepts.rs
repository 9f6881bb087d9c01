//! Reading the intercept log: filtered, newest first, paged by id (keyset), so an export of any
//! size reads a bounded page at a time and never holds a connection between pages.

use sqlx::Row;

use super::sql::{SqlStore, db_err};
use super::{Intercept, StoreResult};

/// Which intercepts to read.
#[derive(Debug, Clone, Default)]
pub struct InterceptQuery {
    /// Key id or its first 12 hex digits.
    pub key: Option<String>,
    /// The attempted client address, exactly.
    pub ip: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

const FILTER: &str = "WHERE ($1 = '' OR key_id_prefix = $1) AND ($2 = '' OR attempted_ip = $2) \
                      AND at_ms >= $3 AND at_ms <= $4";

impl InterceptQuery {
    fn args(&self) -> (String, String, i64, i64) {
        let key: String = self
            .key
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(super::KEY_ID_PREFIX_LEN)
            .collect();
        (
            key.to_ascii_lowercase(),
            self.ip.clone().unwrap_or_default(),
            self.from_ms.unwrap_or(0).min(i64::MAX as u64) as i64,
            self.to_ms.unwrap_or(u64::MAX).min(i64::MAX as u64) as i64,
        )
    }
}

impl SqlStore {
    /// How many intercepts match.
    pub async fn count_intercepts(&self, q: &InterceptQuery) -> StoreResult<u64> {
        let (k, ip, from, to) = q.args();
        let row = self
            .timed(
                sqlx::query(&format!("SELECT COUNT(*) AS n FROM intercepts {FILTER}"))
                    .bind(k)
                    .bind(ip)
                    .bind(from)
                    .bind(to)
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok(row.try_get::<i64, _>("n").map_err(db_err)? as u64)
    }

    /// Up to `limit` matching intercepts with their ids, newest first: those with an id below
    /// `before_id` (the last id of the previous page), or from the newest when `None`; `offset`
    /// skips that many first (for numbered pages).
    pub async fn intercepts_page(
        &self,
        q: &InterceptQuery,
        before_id: Option<i64>,
        offset: u64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, Intercept)>> {
        let (k, ip, from, to) = q.args();
        let sql = format!(
            "SELECT id, at_ms, key_id_prefix, bound_cidr, attempted_ip, method, path, reason \
             FROM intercepts {FILTER} AND id < $5 ORDER BY id DESC LIMIT $6 OFFSET $7"
        );
        let rows = self
            .timed(
                sqlx::query(&sql)
                    .bind(k)
                    .bind(ip)
                    .bind(from)
                    .bind(to)
                    .bind(before_id.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .bind(offset.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("id").map_err(db_err)?,
                    Intercept {
                        at_ms: r.try_get::<i64, _>("at_ms").map_err(db_err)? as u64,
                        key_id_prefix: r.try_get("key_id_prefix").map_err(db_err)?,
                        bound_cidr: r.try_get("bound_cidr").map_err(db_err)?,
                        attempted_ip: r.try_get("attempted_ip").map_err(db_err)?,
                        method: r.try_get("method").map_err(db_err)?,
                        path: r.try_get("path").map_err(db_err)?,
                        reason: r.try_get("reason").map_err(db_err)?,
                    },
                ))
            })
            .collect()
    }
}
