//! The admin dashboard's figures: requests, errors, tokens and intercepts per hour, and binding
//! counts, read in three aggregate queries.

use sqlx::Row;

use super::StoreResult;
use super::sql::{SqlStore, db_err};

/// One hour's totals over every key, upstream and model.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HourTotals {
    /// Start of the hour, Unix ms.
    pub hour_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub intercepts: u64,
}

/// Bindings by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BindingCounts {
    pub active: u64,
    pub banned: u64,
}

impl SqlStore {
    /// Totals per hour for the hours that start at or after `from_ms` (hours with nothing in
    /// them are absent), oldest first.
    pub async fn hourly_totals(&self, from_ms: u64) -> StoreResult<Vec<HourTotals>> {
        let from = from_ms.min(i64::MAX as u64) as i64;
        let usage = self
            .timed(
                sqlx::query(
                    "SELECT hour_ms, CAST(SUM(requests) AS BIGINT) AS requests, \
                     CAST(SUM(errors) AS BIGINT) AS errors, \
                     CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
                     CAST(SUM(output_tokens) AS BIGINT) AS output_tokens \
                     FROM token_usage WHERE hour_ms >= $1 GROUP BY hour_ms",
                )
                .bind(from)
                .fetch_all(&self.pool),
            )
            .await?;
        let intercepts = self
            .timed(
                sqlx::query(
                    "SELECT CAST((at_ms / 3600000) * 3600000 AS BIGINT) AS hour_ms, \
                     CAST(COUNT(*) AS BIGINT) AS n FROM intercepts WHERE at_ms >= $1 \
                     GROUP BY (at_ms / 3600000)",
                )
                .bind(from)
                .fetch_all(&self.pool),
            )
            .await?;
        let mut hours = std::collections::BTreeMap::<u64, HourTotals>::new();
        let n = |r: &sqlx::any::AnyRow, c: &str| {
            r.try_get::<i64, _>(c)
                .map(|v| v.max(0) as u64)
                .map_err(db_err)
        };
        for r in &usage {
            let hour_ms = n(r, "hour_ms")?;
            let h = hours.entry(hour_ms).or_default();
            h.hour_ms = hour_ms;
            h.requests = n(r, "requests")?;
            h.errors = n(r, "errors")?;
            h.input_tokens = n(r, "input_tokens")?;
            h.output_tokens = n(r, "output_tokens")?;
        }
        for r in &intercepts {
            let hour_ms = n(r, "hour_ms")?;
            let h = hours.entry(hour_ms).or_default();
            h.hour_ms = hour_ms;
            h.intercepts = n(r, "n")?;
        }
        Ok(hours.into_values().collect())
    }

    /// How many bindings are active and banned.
    pub async fn binding_counts(&self) -> StoreResult<BindingCounts> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT status, CAST(COUNT(*) AS BIGINT) AS n FROM bindings GROUP BY status",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        let mut c = BindingCounts::default();
        for r in &rows {
            let n = r.try_get::<i64, _>("n").map_err(db_err)?.max(0) as u64;
            match r.try_get::<String, _>("status").map_err(db_err)?.as_str() {
                "active" => c.active = n,
                "banned" => c.banned = n,
                _ => {}
            }
        }
        Ok(c)
    }
}
