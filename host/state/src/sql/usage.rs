//! What requests leave behind: key uses, token usage (summed per hour, key, upstream, model) and
//! the intercept log.

use std::sync::Arc;

use sqlx::Row;

use super::{AnyQuery, SqlStore, db_err};
use crate::{Intercept, StoreResult};

/// One aggregated usage update: the key's latest use and how many uses since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub key_id: String,
    pub last_used_ms: u64,
    pub last_ip: String,
    pub count: u64,
}

/// One request's tokens, or the sum of several in one hour for one key, upstream and model.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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
    /// What they cost, in billionths of the currency (0: no price).
    pub cost_nanos: u64,
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
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
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

impl SqlStore {
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
                .bind(u.cost_nanos.min(i64::MAX as u64) as i64)
        }
        self.write_rows(sums, 12, bind, |values| {
            format!(
                "INSERT INTO token_usage (hour_ms, key_id, upstream, model, requests, errors, \
                 partial, input_tokens, output_tokens, cached_tokens, last_used_ms, cost_nanos) \
                 VALUES {values} \
                 ON CONFLICT (hour_ms, key_id, upstream, model) DO UPDATE SET \
                 requests = token_usage.requests + excluded.requests, \
                 errors = token_usage.errors + excluded.errors, \
                 partial = token_usage.partial + excluded.partial, \
                 input_tokens = token_usage.input_tokens + excluded.input_tokens, \
                 output_tokens = token_usage.output_tokens + excluded.output_tokens, \
                 cached_tokens = token_usage.cached_tokens + excluded.cached_tokens, \
                 cost_nanos = token_usage.cost_nanos + excluded.cost_nanos, \
                 last_used_ms = CASE WHEN token_usage.last_used_ms < excluded.last_used_ms \
                 THEN excluded.last_used_ms ELSE token_usage.last_used_ms END"
            )
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
             CAST(SUM(cost_nanos) AS BIGINT) AS cost_nanos, \
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
                    cost_nanos: n("cost_nanos")?,
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

    /// Tokens (input plus output) and cost the keys `key_ids` used in the hours from the one
    /// containing `from_ms` on (what a budget's window has spent so far).
    pub async fn spend_since(&self, key_ids: &[&str], from_ms: u64) -> StoreResult<(u64, u64)> {
        if key_ids.is_empty() {
            return Ok((0, 0));
        }
        let list = (2..key_ids.len() + 2)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS tokens, \
             CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS cost FROM token_usage \
             WHERE hour_ms >= $1 AND key_id IN ({list})"
        );
        let hour = from_ms / 3_600_000 * 3_600_000;
        let q = key_ids.iter().fold(
            sqlx::query(&sql).bind(hour.min(i64::MAX as u64) as i64),
            |q, k| q.bind(*k),
        );
        let row = self.timed(q.fetch_one(&self.pool)).await?;
        let n = |c: &str| {
            row.try_get::<i64, _>(c)
                .map(|v| v.max(0) as u64)
                .map_err(db_err)
        };
        Ok((n("tokens")?, n("cost")?))
    }

    /// What the requests sent to `upstream` have cost since `from_ms` (from the start of its
    /// hour), in billionths of the currency: where an upstream's money allowance starts a window.
    pub async fn upstream_spend_since(&self, upstream: &str, from_ms: u64) -> StoreResult<u64> {
        let hour = from_ms / 3_600_000 * 3_600_000;
        let q = sqlx::query(
            "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS cost FROM token_usage \
             WHERE hour_ms >= $1 AND upstream = $2",
        )
        .bind(hour.min(i64::MAX as u64) as i64)
        .bind(upstream);
        let row = self.timed(q.fetch_one(&self.pool)).await?;
        row.try_get::<i64, _>("cost")
            .map(|v| v.max(0) as u64)
            .map_err(db_err)
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
}
