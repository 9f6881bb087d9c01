//! The audit log: one durable row per admin action, written before the action is acknowledged,
//! and the same record as a JSON line on the `audit` log target.

use serde::Serialize;
use sqlx::Row;

use super::sql::{SqlStore, db_err};
use super::{StoreResult, unix_ms};

/// One admin action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Assigned by the database (0 before it is written).
    pub id: i64,
    pub at_ms: u64,
    /// The admin user, or `cli:<user>` for the command line.
    pub actor: String,
    /// The client address ('' for the command line).
    pub ip: String,
    /// e.g. `login`, `login_failed`, `lockout`, `binding.ban`, `plugins.reload`.
    pub action: String,
    /// What was acted on: a key id, an upstream, a user name ('' if nothing).
    pub target: String,
    /// `ok`, `denied`, `not_found`, `failed`.
    pub outcome: String,
    /// JSON snapshots of the target before and after ('' where there is none).
    pub before: String,
    pub after: String,
}

impl AuditRecord {
    pub fn new(actor: &str, ip: &str, action: &str, target: &str, outcome: &str) -> Self {
        Self {
            id: 0,
            at_ms: unix_ms(),
            actor: actor.into(),
            ip: ip.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            before: String::new(),
            after: String::new(),
        }
    }

    /// With JSON snapshots of the target.
    pub fn with_change(mut self, before: Option<String>, after: Option<String>) -> Self {
        self.before = before.unwrap_or_default();
        self.after = after.unwrap_or_default();
        self
    }
}

/// Which audit records to read: newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub limit: u32,
    pub offset: u64,
    /// Only records with an id below this one (keyset paging for exports).
    pub before_id: Option<i64>,
}

const AUDIT_FILTER: &str = "WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR ip = $2) \
                            AND ($3 = '' OR action = $3) AND ($4 = '' OR target = $4) \
                            AND at_ms >= $5 AND at_ms <= $6";

impl AuditQuery {
    /// The bind values of [`AUDIT_FILTER`] ($1 to $6).
    fn args(&self) -> (String, String, String, String, i64, i64) {
        (
            self.actor.clone().unwrap_or_default(),
            self.ip.clone().unwrap_or_default(),
            self.action.clone().unwrap_or_default(),
            self.target.clone().unwrap_or_default(),
            self.from_ms.unwrap_or(0).min(i64::MAX as u64) as i64,
            self.to_ms.unwrap_or(u64::MAX).min(i64::MAX as u64) as i64,
        )
    }
}

impl SqlStore {
    /// Writes one record (and logs it on the `audit` target); its id.
    pub async fn record_audit(&self, mut r: AuditRecord) -> StoreResult<AuditRecord> {
        let sql = "INSERT INTO audit_log (at_ms, actor, ip, action, target, outcome, before, after) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
        let row = self
            .timed(
                sqlx::query(sql)
                    .bind(r.at_ms as i64)
                    .bind(&r.actor)
                    .bind(&r.ip)
                    .bind(&r.action)
                    .bind(&r.target)
                    .bind(&r.outcome)
                    .bind(&r.before)
                    .bind(&r.after)
                    .fetch_one(&self.pool),
            )
            .await?;
        r.id = row.try_get::<i64, _>("id").map_err(db_err)?;
        tracing::info!(
            target: "audit",
            id = r.id,
            actor = %r.actor,
            ip = %r.ip,
            action = %r.action,
            target_ = %r.target,
            outcome = %r.outcome,
            before = %r.before,
            after = %r.after,
        );
        Ok(r)
    }

    /// Records matching `q`, newest first, and how many match in all.
    pub async fn audit(&self, q: &AuditQuery) -> StoreResult<(Vec<AuditRecord>, u64)> {
        let args = q.args();
        let count_sql = format!("SELECT COUNT(*) AS n FROM audit_log {AUDIT_FILTER}");
        let total = self
            .timed(
                sqlx::query(&count_sql)
                    .bind(&args.0)
                    .bind(&args.1)
                    .bind(&args.2)
                    .bind(&args.3)
                    .bind(args.4)
                    .bind(args.5)
                    .fetch_one(&self.pool),
            )
            .await?
            .try_get::<i64, _>("n")
            .map_err(db_err)? as u64;
        Ok((self.audit_page(q).await?, total))
    }

    /// Records matching `q`, newest first, without counting them all (for exports).
    pub async fn audit_page(&self, q: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let args = q.args();
        let sql = format!(
            "SELECT id, at_ms, actor, ip, action, target, outcome, before, after FROM audit_log \
             {AUDIT_FILTER} AND id < $9 ORDER BY id DESC LIMIT $7 OFFSET $8"
        );
        let rows = self
            .timed(
                sqlx::query(&sql)
                    .bind(&args.0)
                    .bind(&args.1)
                    .bind(&args.2)
                    .bind(&args.3)
                    .bind(args.4)
                    .bind(args.5)
                    .bind(i64::from(q.limit))
                    .bind(q.offset.min(i64::MAX as u64) as i64)
                    .bind(q.before_id.unwrap_or(i64::MAX))
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                let s = |c: &str| r.try_get::<String, _>(c).map_err(db_err);
                Ok(AuditRecord {
                    id: r.try_get("id").map_err(db_err)?,
                    at_ms: r.try_get::<i64, _>("at_ms").map_err(db_err)? as u64,
                    actor: s("actor")?,
                    ip: s("ip")?,
                    action: s("action")?,
                    target: s("target")?,
                    outcome: s("outcome")?,
                    before: s("before")?,
                    after: s("after")?,
                })
            })
            .collect()
    }
}
