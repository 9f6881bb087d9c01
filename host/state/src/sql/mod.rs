//! The database: SQLite or PostgreSQL through sqlx's `Any` driver, so one set of queries (written
//! in the dialect both share: `$N` parameters, `ON CONFLICT`, `RETURNING`, `CASE`) serves both.
//! Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`), embedded in
//! the binary and applied at start or by `tollgate migrate`.
//!
//! The connection, migrations and batched writes are here; the queries of each table group in
//! `bindings.rs` (bindings, their archive) and `usage.rs` (key uses, token usage, intercepts).

mod bindings;
mod keys;
mod usage;

use std::path::Path;

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

use super::{StoreError, StoreResult};
use tollgate_config::DatabaseUrl;

pub use bindings::BindingQuery;
pub use keys::{KeyQuery, KeyRecord};
pub use usage::{TokenUsage, Usage, UsageBy};

static SQLITE: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Rows written by one statement of a batch write on PostgreSQL. A round trip per row made a
/// flush after an outage (up to 10,000 queued intercepts) outlast `storage.op_timeout`, so that
/// it failed at every retry; 500 rows of at most 25 parameters stay far below PostgreSQL's limit
/// on parameters per statement (65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// The same on SQLite, in process: no round trip to save. Its parameters are anonymous (`?`):
/// SQLite looks a numbered one (`$N`) up by name in a list, when it parses the statement and
/// again when sqlx binds it, so a statement of 500 rows of 25 `$N` parameters took 2.7 M
/// instructions per row under callgrind. 32 rows a statement keep a full statement's text the
/// same from one batch to the next, so it stays prepared.
const SQLITE_ROWS_PER_STATEMENT: usize = 32;

/// A query on either backend, with its arguments.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// `($1, $2), ($3, $4), …` (PostgreSQL) or `(?, ?), (?, ?), …` (SQLite, `numbered` false): the
/// VALUES list of `rows` rows of `columns` parameters each.
fn placeholders(rows: usize, columns: usize, numbered: bool) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            if numbered {
                out.push('$');
                out.push_str(&(r * columns + c + 1).to_string());
            } else {
                out.push('?');
            }
        }
        out.push(')');
    }
    out
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
            // WAL: readers do not wait for the writer. Persistent in the file, so it is set only
            // when the file is not in WAL yet: changing the mode takes a lock the busy timeout
            // does not wait for, which fails while a running gateway writes (the CLI beside it).
            let mode: String = store
                .timed(sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.pool))
                .await?;
            if !mode.eq_ignore_ascii_case("wal") {
                store
                    .timed(sqlx::query("PRAGMA journal_mode = WAL").execute(&store.pool))
                    .await?;
            }
        }
        Ok(store)
    }

    /// A transaction that writes: `BEGIN IMMEDIATE` on SQLite, so it takes the write lock at once
    /// (waiting for it under the busy timeout) instead of upgrading a read snapshot later, which
    /// fails at once with `SQLITE_BUSY` when another connection wrote in between (a gateway's
    /// batched writer and the CLI, say); plain `BEGIN` on PostgreSQL.
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.postgres {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
    }

    /// A number that changes whenever a row of `table` is added or removed or its `updated`
    /// column (Unix ms, bumped by every change) moves: what a poll compares to skip re-reading
    /// an unchanged table. Both names are constants of this crate.
    pub(crate) async fn table_fingerprint(&self, table: &str, updated: &str) -> StoreResult<u64> {
        let sql = format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, \
             CAST(COALESCE(SUM({updated}), 0) AS BIGINT) AS s FROM {table}"
        );
        let row = self.timed(sqlx::query(&sql).fetch_one(&self.pool)).await?;
        let n = row.try_get::<i64, _>("n").map_err(db_err)? as u64;
        let s = row.try_get::<i64, _>("s").map_err(db_err)? as u64;
        Ok(s.wrapping_mul(1_000_003).wrapping_add(n))
    }

    /// Applies pending migrations (idempotent; concurrent gateways serialise on sqlx's lock).
    pub async fn migrate(&self) -> StoreResult<()> {
        let migrator = if self.postgres { &POSTGRES } else { &SQLITE };
        migrator.run(&self.pool).await.map_err(db_err)
    }

    /// Whether this is PostgreSQL (else SQLite).
    pub(crate) fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// The statement timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
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

    /// Writes `rows` in one transaction, [`ROWS_PER_STATEMENT`] per statement: `statement` makes
    /// a statement's SQL from its VALUES list, `bind` binds one row's `columns` values in order.
    pub(crate) async fn write_rows<T>(
        &self,
        rows: &[T],
        columns: usize,
        bind: for<'a> fn(AnyQuery<'a>, &'a T) -> AnyQuery<'a>,
        statement: impl Fn(&str) -> String,
    ) -> StoreResult<()> {
        self.timed(async {
            let mut tx = self.write_tx().await?;
            let per_statement = if self.postgres {
                ROWS_PER_STATEMENT
            } else {
                SQLITE_ROWS_PER_STATEMENT
            };
            for chunk in rows.chunks(per_statement) {
                let sql = statement(&placeholders(chunk.len(), columns, self.postgres));
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
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_parameter_once_row_by_row() {
        assert_eq!(placeholders(1, 1, true), "($1)");
        assert_eq!(placeholders(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(2, 2, false), "(?, ?), (?, ?)");
        let many = placeholders(500, 11, true);
        assert!(many.starts_with("($1, $2,") && many.ends_with("$5499, $5500)"));
        assert_eq!(many.matches('$').count(), 5500);
    }
}
