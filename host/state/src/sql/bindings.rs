//! The bindings table and its archive: reads, first use, changes, pages, retention.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, db_err};
use crate::{Binding, BindingStatus, StoreResult};

pub(super) const BINDING_COLUMNS: &str =
    "key_id, cidr, status, created_ms, last_used_ms, last_ip, request_count";

/// Which bindings to list.
#[derive(Debug, Clone, Default)]
pub struct BindingQuery {
    pub search: Option<String>,
    pub status: Option<BindingStatus>,
    pub limit: u32,
    pub offset: u64,
}

impl SqlStore {
    pub async fn binding(&self, key_id: &str) -> StoreResult<Option<Binding>> {
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE key_id = $1");
        let row = self
            .timed(sqlx::query(&sql).bind(key_id).fetch_optional(&self.pool))
            .await?;
        row.map(|r| binding_from(&r)).transpose()
    }

    /// Inserts the binding unless the key has one, then reads back whichever is in force, and
    /// whether this call created it (a first use).
    pub async fn bind_first(
        &self,
        key_id: &str,
        net: ipnet::IpNet,
        now_ms: u64,
    ) -> StoreResult<(Binding, bool)> {
        let insert = "INSERT INTO bindings (key_id, cidr, status, created_ms, last_used_ms, request_count) \
                      VALUES ($1, $2, 'active', $3, $3, 0) ON CONFLICT (key_id) DO NOTHING";
        let done = self
            .timed(
                sqlx::query(insert)
                    .bind(key_id)
                    .bind(net.to_string())
                    .bind(now_ms as i64)
                    .execute(&self.pool),
            )
            .await?;
        let binding = self
            .binding(key_id)
            .await?
            .ok_or_else(|| db_err("binding vanished right after insert"))?;
        Ok((binding, done.rows_affected() > 0))
    }

    /// Sets a key's status; whether the key had a binding.
    pub async fn set_status(&self, key_id: &str, status: BindingStatus) -> StoreResult<bool> {
        let done = self
            .timed(
                sqlx::query("UPDATE bindings SET status = $2 WHERE key_id = $1")
                    .bind(key_id)
                    .bind(status.as_str())
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a key's binding (its next request binds afresh); whether there was one.
    pub async fn delete_binding(&self, key_id: &str) -> StoreResult<bool> {
        let done = self
            .timed(
                sqlx::query("DELETE FROM bindings WHERE key_id = $1")
                    .bind(key_id)
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Bindings, most recently used first.
    pub async fn bindings(&self, limit: u32) -> StoreResult<Vec<Binding>> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM bindings ORDER BY last_used_ms DESC, key_id LIMIT $1"
        );
        let rows = self
            .timed(
                sqlx::query(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter().map(binding_from).collect()
    }

    /// One page of bindings, most recently used first, and how many match in all. `search`
    /// matches the start of the key id or the bound network's text.
    pub async fn bindings_page(&self, q: &BindingQuery) -> StoreResult<(Vec<Binding>, u64)> {
        let filter =
            "WHERE ($1 = '' OR key_id LIKE $2 OR cidr LIKE $2) AND ($3 = '' OR status = $3)";
        let search = q.search.clone().unwrap_or_default();
        // LIKE wildcards in the search are taken literally: key ids and CIDRs never contain them.
        let like = format!("{}%", search.replace(['%', '_'], ""));
        let status = q.status.map(BindingStatus::as_str).unwrap_or("");
        let total = self
            .timed(
                sqlx::query(&format!("SELECT COUNT(*) AS n FROM bindings {filter}"))
                    .bind(&search)
                    .bind(&like)
                    .bind(status)
                    .fetch_one(&self.pool),
            )
            .await?
            .try_get::<i64, _>("n")
            .map_err(db_err)? as u64;
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM bindings {filter} \
             ORDER BY last_used_ms DESC, key_id LIMIT $4 OFFSET $5"
        );
        let rows = self
            .timed(
                sqlx::query(&sql)
                    .bind(&search)
                    .bind(&like)
                    .bind(status)
                    .bind(i64::from(q.limit))
                    .bind(q.offset.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool),
            )
            .await?;
        let page = rows.iter().map(binding_from).collect::<StoreResult<_>>()?;
        Ok((page, total))
    }

    /// Moves a key's binding to another network; whether the key had a binding.
    pub async fn set_cidr(&self, key_id: &str, net: ipnet::IpNet) -> StoreResult<bool> {
        let done = self
            .timed(
                sqlx::query("UPDATE bindings SET cidr = $2 WHERE key_id = $1")
                    .bind(key_id)
                    .bind(net.to_string())
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Moves active bindings last used before `cutoff_ms` to the archive, in one transaction;
    /// returns their key ids. Banned keys stay.
    pub async fn archive_inactive(&self, cutoff_ms: u64, now_ms: u64) -> StoreResult<Vec<String>> {
        let delete = format!(
            "DELETE FROM bindings WHERE status = 'active' AND last_used_ms < $1 RETURNING {BINDING_COLUMNS}"
        );
        let insert = "INSERT INTO bindings_archive \
                      (key_id, cidr, created_ms, last_used_ms, last_ip, request_count, archived_ms) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7)";
        self.timed(async {
            let mut tx = self.write_tx().await?;
            let rows = sqlx::query(&delete)
                .bind(cutoff_ms as i64)
                .fetch_all(&mut *tx)
                .await?;
            let mut archived = Vec::with_capacity(rows.len());
            for row in &rows {
                let b = binding_from(row).map_err(|e| sqlx::Error::Protocol(e.reason))?;
                sqlx::query(insert)
                    .bind(&b.key_id)
                    .bind(b.cidr.to_string())
                    .bind(b.created_ms as i64)
                    .bind(b.last_used_ms as i64)
                    .bind(&b.last_ip)
                    .bind(b.request_count as i64)
                    .bind(now_ms as i64)
                    .execute(&mut *tx)
                    .await?;
                archived.push(b.key_id);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(archived)
        })
        .await
    }

    /// How many bindings a key has had archived (for tests and the admin API).
    pub async fn archived_count(&self, key_id: &str) -> StoreResult<u64> {
        let row = self
            .timed(
                sqlx::query("SELECT COUNT(*) AS n FROM bindings_archive WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok(row.try_get::<i64, _>("n").map_err(db_err)? as u64)
    }
}

pub(super) fn binding_from(r: &AnyRow) -> StoreResult<Binding> {
    let status: String = r.try_get("status").map_err(db_err)?;
    let cidr: String = r.try_get("cidr").map_err(db_err)?;
    Ok(Binding {
        key_id: r.try_get("key_id").map_err(db_err)?,
        cidr: cidr.parse().map_err(db_err)?,
        status: BindingStatus::parse(&status)
            .ok_or_else(|| db_err(format!("unknown binding status {status:?}")))?,
        created_ms: r.try_get::<i64, _>("created_ms").map_err(db_err)? as u64,
        last_used_ms: r.try_get::<i64, _>("last_used_ms").map_err(db_err)? as u64,
        last_ip: r.try_get("last_ip").map_err(db_err)?,
        request_count: r.try_get::<i64, _>("request_count").map_err(db_err)? as u64,
    })
}
