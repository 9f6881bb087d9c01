//! The database: SQLite or PostgreSQL through sqlx's `Any` driver, so one set of queries (written
//! in the dialect both share: `$N` parameters, `ON CONFLICT`, `RETURNING`, `CASE`) serves both.
//! Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`), embedded in
//! the binary and applied at start or by `tollgate migrate`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use super::{Binding, BindingStatus, Intercept, StoreError, StoreResult};
use tollgate_config::DatabaseUrl;

static SQLITE: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Rows written by one statement of a batch write. A round trip per row made a flush after an
/// outage (up to 10,000 queued intercepts) outlast `storage.op_timeout`, so that it failed at
/// every retry; 500 rows of at most 11 parameters stay far below both backends' limits on
/// parameters per statement (PostgreSQL 65,535, SQLite 32,766).
const ROWS_PER_STATEMENT: usize = 500;

/// A query on either backend, with its arguments.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// `($1, $2), ($3, $4), …`: the VALUES list of `rows` rows of `columns` parameters each.
fn placeholders(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(r * columns + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

const BINDING_COLUMNS: &str =
    "key_id, cidr, status, created_ms, last_used_ms, last_ip, request_count";

/// Which bindings to list.
#[derive(Debug, Clone, Default)]
pub struct BindingQuery {
    pub search: Option<String>,
    pub status: Option<BindingStatus>,
    pub limit: u32,
    pub offset: u64,
}

/// One aggregated usage update: the key's latest use and how many uses since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub key_id: String,
    pub last_used_ms: u64,
    pub last_ip: String,
    pub count: u64,
}

/// One request's tokens, or the sum of several in one hour for one key, upstream and model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// When the request ended (for a sum: the latest).
    pub at_ms: u64,
    pub key_id: Arc<str>,
    pub upstream: Arc<str>,
    pub model: Arc<str>,
    pub requests: u64,
    pub errors: u64,
    pub partial: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}

impl TokenUsage {
    /// The hour (Unix ms) a use is counted in.
    pub fn hour_ms(&self) -> u64 {
        self.at_ms / 3_600_000 * 3_600_000
    }

    /// Adds `other`'s counts (same group).
    pub fn add(&mut self, other: &TokenUsage) {
        self.at_ms = self.at_ms.max(other.at_ms);
        self.requests += other.requests;
        self.errors += other.errors;
        self.partial += other.partial;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// How [`SqlStore::token_usage`] groups the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    Key,
    Upstream,
    Model,
}

impl UsageBy {
    fn column(self) -> &'static str {
        match self {
            Self::Key => "key_id",
            Self::Upstream => "upstream",
            Self::Model => "model",
        }
    }
}

#[derive(Clone)]
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    postgres: bool,
    timeout: Duration,
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new("database", e)
}

impl SqlStore {
    /// Opens a pool. A SQLite file (and its directory) is created if missing; a relative path is
    /// resolved against `base_dir`.
    pub async fn connect(
        url: &DatabaseUrl,
        base_dir: &Path,
        timeout: Duration,
    ) -> StoreResult<Self> {
        static DRIVERS: std::sync::Once = std::sync::Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let options = AnyPoolOptions::new().acquire_timeout(timeout);
        let (options, url, postgres) = match url {
            DatabaseUrl::Postgres(u) => (options.max_connections(16), u.expose().to_owned(), true),
            DatabaseUrl::SqliteMemory => (
                // Every connection to `:memory:` is a separate database: keep exactly one, forever.
                options
                    .min_connections(1)
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None),
                "sqlite::memory:".to_owned(),
                false,
            ),
            DatabaseUrl::Sqlite(path) => {
                let path = if path.is_absolute() {
                    path.clone()
                } else {
                    base_dir.join(path)
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(db_err)?;
                }
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (options.max_connections(4), url, false)
            }
        };
        let pool = options.connect(&url).await.map_err(db_err)?;
        let store = Self {
            pool,
            postgres,
            timeout,
        };
        if !postgres {
            // WAL: readers do not wait for the writer. Persistent in the file.
            store
                .timed(sqlx::query("PRAGMA journal_mode = WAL").execute(&store.pool))
                .await?;
        }
        Ok(store)
    }

    /// Applies pending migrations (idempotent; concurrent gateways serialise on sqlx's lock).
    pub async fn migrate(&self) -> StoreResult<()> {
        let migrator = if self.postgres { &POSTGRES } else { &SQLITE };
        migrator.run(&self.pool).await.map_err(db_err)
    }

    pub(crate) async fn timed<T, E: std::fmt::Display>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(db_err),
            Err(_) => Err(db_err("timed out")),
        }
    }

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

    /// Applies aggregated usage in one transaction. Keys without a binding are ignored.
    pub async fn record_usage(&self, usage: &[Usage]) -> StoreResult<()> {
        // `UPDATE … FROM (VALUES …)`: SQLite (3.33+) and PostgreSQL both name the columns of a
        // VALUES list column1, column2, …
        fn bind<'a>(q: AnyQuery<'a>, u: &'a Usage) -> AnyQuery<'a> {
            q.bind(&u.key_id)
                .bind(u.last_used_ms as i64)
                .bind(&u.last_ip)
                .bind(u.count as i64)
        }
        self.write_rows(usage, 4, bind, |values| {
            format!(
                "UPDATE bindings SET \
                 last_used_ms = CASE WHEN bindings.last_used_ms < v.column2 \
                 THEN v.column2 ELSE bindings.last_used_ms END, \
                 last_ip = v.column3, request_count = bindings.request_count + v.column4 \
                 FROM (VALUES {values}) AS v WHERE bindings.key_id = v.column1"
            )
        })
        .await
    }

    /// Adds token usage sums (one per hour, key, upstream and model: a group may not appear
    /// twice) in one transaction.
    pub async fn record_token_usage(&self, sums: &[TokenUsage]) -> StoreResult<()> {
        fn bind<'a>(q: AnyQuery<'a>, u: &'a TokenUsage) -> AnyQuery<'a> {
            q.bind(u.hour_ms() as i64)
                .bind(&*u.key_id)
                .bind(&*u.upstream)
                .bind(&*u.model)
                .bind(u.requests as i64)
                .bind(u.errors as i64)
                .bind(u.partial as i64)
                .bind(u.input_tokens as i64)
                .bind(u.output_tokens as i64)
                .bind(u.cached_tokens as i64)
                .bind(u.at_ms as i64)
        }
        self.write_rows(sums, 11, bind, |values| {
            format!(
                "INSERT INTO token_usage (hour_ms, key_id, upstream, model, requests, errors, \
                 partial, input_tokens, output_tokens, cached_tokens, last_used_ms) \
                 VALUES {values} \
                 ON CONFLICT (hour_ms, key_id, upstream, model) DO UPDATE SET \
                 requests = token_usage.requests + excluded.requests, \
                 errors = token_usage.errors + excluded.errors, \
                 partial = token_usage.partial + excluded.partial, \
                 input_tokens = token_usage.input_tokens + excluded.input_tokens, \
                 output_tokens = token_usage.output_tokens + excluded.output_tokens, \
                 cached_tokens = token_usage.cached_tokens + excluded.cached_tokens, \
                 last_used_ms = CASE WHEN token_usage.last_used_ms < excluded.last_used_ms \
                 THEN excluded.last_used_ms ELSE token_usage.last_used_ms END"
            )
        })
        .await
    }

    /// Writes `rows` in one transaction, [`ROWS_PER_STATEMENT`] per statement: `statement` makes
    /// a statement's SQL from its VALUES list, `bind` binds one row's `columns` values in order.
    async fn write_rows<T>(
        &self,
        rows: &[T],
        columns: usize,
        bind: for<'a> fn(AnyQuery<'a>, &'a T) -> AnyQuery<'a>,
        statement: impl Fn(&str) -> String,
    ) -> StoreResult<()> {
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let sql = statement(&placeholders(chunk.len(), columns));
                chunk
                    .iter()
                    .fold(sqlx::query(&sql), bind)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// Token usage totals between `from_ms` and `to_ms` (hours that start in that range), one row
    /// per key, upstream or model (the others are summed over and left empty), most tokens first.
    pub async fn token_usage(
        &self,
        by: UsageBy,
        from_ms: u64,
        to_ms: u64,
    ) -> StoreResult<Vec<TokenUsage>> {
        let col = by.column();
        let sql = format!(
            "SELECT {col} AS grp, CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(errors) AS BIGINT) AS errors, CAST(SUM(partial) AS BIGINT) AS partial, \
             CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
             CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
             CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens, \
             MAX(last_used_ms) AS last_used_ms FROM token_usage \
             WHERE hour_ms >= $1 AND hour_ms <= $2 GROUP BY {col} \
             ORDER BY SUM(input_tokens) + SUM(output_tokens) DESC, {col}"
        );
        let rows = self
            .timed(
                sqlx::query(&sql)
                    .bind(from_ms.min(i64::MAX as u64) as i64)
                    .bind(to_ms.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v as u64).map_err(db_err);
                let grp: Arc<str> = r.try_get::<String, _>("grp").map_err(db_err)?.into();
                let mut u = TokenUsage {
                    at_ms: n("last_used_ms")?,
                    requests: n("requests")?,
                    errors: n("errors")?,
                    partial: n("partial")?,
                    input_tokens: n("input_tokens")?,
                    output_tokens: n("output_tokens")?,
                    cached_tokens: n("cached_tokens")?,
                    ..TokenUsage::default()
                };
                match by {
                    UsageBy::Key => u.key_id = grp,
                    UsageBy::Upstream => u.upstream = grp,
                    UsageBy::Model => u.model = grp,
                }
                Ok(u)
            })
            .collect()
    }

    /// Writes intercepts in one transaction, in order.
    pub async fn record_intercepts(&self, intercepts: &[Intercept]) -> StoreResult<()> {
        fn bind<'a>(q: AnyQuery<'a>, i: &'a Intercept) -> AnyQuery<'a> {
            q.bind(i.at_ms as i64)
                .bind(&i.key_id_prefix)
                .bind(&i.bound_cidr)
                .bind(&i.attempted_ip)
                .bind(&i.method)
                .bind(&i.path)
                .bind(&i.reason)
        }
        self.write_rows(intercepts, 7, bind, |values| {
            format!(
                "INSERT INTO intercepts (at_ms, key_id_prefix, bound_cidr, attempted_ip, method, \
                 path, reason) VALUES {values}"
            )
        })
        .await
    }

    /// The newest intercepts first, optionally for one key id prefix.
    pub async fn intercepts(
        &self,
        key_id_prefix: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Intercept>> {
        let sql = "SELECT at_ms, key_id_prefix, bound_cidr, attempted_ip, method, path, reason \
                   FROM intercepts WHERE ($1 = '' OR key_id_prefix = $1) ORDER BY id DESC LIMIT $2";
        let rows = self
            .timed(
                sqlx::query(sql)
                    .bind(key_id_prefix.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Intercept {
                    at_ms: r.try_get::<i64, _>("at_ms").map_err(db_err)? as u64,
                    key_id_prefix: r.try_get("key_id_prefix").map_err(db_err)?,
                    bound_cidr: r.try_get("bound_cidr").map_err(db_err)?,
                    attempted_ip: r.try_get("attempted_ip").map_err(db_err)?,
                    method: r.try_get("method").map_err(db_err)?,
                    path: r.try_get("path").map_err(db_err)?,
                    reason: r.try_get("reason").map_err(db_err)?,
                })
            })
            .collect()
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
            let mut tx = self.pool.begin().await?;
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

fn binding_from(r: &AnyRow) -> StoreResult<Binding> {
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

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_parameter_once_row_by_row() {
        assert_eq!(placeholders(1, 1), "($1)");
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        let many = placeholders(500, 11);
        assert!(many.starts_with("($1, $2,") && many.ends_with("$5499, $5500)"));
        assert_eq!(many.matches('$').count(), 5500);
    }
}
