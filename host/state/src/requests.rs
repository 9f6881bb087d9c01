//! The request log: one row per request the data plane answered, proxied or refused.
//!
//! The request path hands each finished request to [`Stores::record_request`], which pushes it
//! onto a bounded buffer under a mutex (no allocation beyond the entry, no wake-up); the writer
//! takes the buffer at each flush and writes it in one transaction (`writer.rs`). Past
//! `request_log.max_pending` an entry is dropped and counted. Reading is filtered, newest first,
//! and paged by id (keyset), so a page costs the same on the millionth row as on the first.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use sqlx::Row;

use super::sql::{SqlStore, db_err};
use super::{StoreResult, Stores};

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Attempt {
    pub upstream: Arc<str>,
    /// The upstream's status (0 when it gave none: the connection failed, or timed out).
    pub status: u16,
    /// Why the attempt failed, as the gateway's error code (`upstream_connect`, …), or why it was
    /// not taken (`retry` when a filter moved on from its answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// From the start of the request until the attempt's response head (or its failure).
    pub ms: u32,
}

/// One request, as the log keeps it.
#[derive(Debug, Clone)]
pub struct RequestEntry {
    /// When the request started (unix ms).
    pub at_ms: u64,
    pub request_id: Arc<str>,
    /// The client key's id and name, once authenticated.
    pub key: Option<(Arc<str>, Arc<str>)>,
    pub client_ip: IpAddr,
    pub method: &'static str,
    pub path: Box<str>,
    pub route: Option<Arc<str>>,
    pub model: Option<Arc<str>>,
    /// The upstream that answered.
    pub upstream: Option<Arc<str>>,
    pub attempts: Vec<Attempt>,
    pub status: u16,
    /// `complete`, `client_aborted`, `upstream_aborted`, `refused` or `cut`.
    pub outcome: &'static str,
    /// The code of the gateway's own answer (a policy's refusal: the policy's code).
    pub error: Option<Arc<str>>,
    /// The filter or step that answered instead of an upstream (`auth`, `limits:per-ip`,
    /// `plugin:bind`), or that ended the stream.
    pub answered_by: Option<Arc<str>>,
    pub first_byte_us: Option<u64>,
    pub duration_us: u64,
    /// Input, output and cached tokens, as reported (or seen, when `partial`).
    pub tokens: Option<(u64, u64, u64)>,
    pub partial: bool,
    pub cost_nanos: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What the policies decided, in order (empty: nothing recorded).
    pub decisions: Vec<serde_json::Value>,
    /// The request's and the answer's bodies, redacted and capped, where `capture` keeps them.
    pub bodies: Option<(String, String)>,
}

/// A request read back from the log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestRow {
    pub id: i64,
    pub at_ms: u64,
    pub request_id: String,
    pub key_id: String,
    pub key_name: String,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub route: String,
    pub model: String,
    pub upstream: String,
    pub attempts: serde_json::Value,
    pub status: u16,
    pub outcome: String,
    pub error: String,
    pub answered_by: String,
    pub first_byte_us: Option<u64>,
    pub duration_us: u64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub partial: bool,
    pub cost_nanos: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub decisions: serde_json::Value,
    /// Where `capture` kept them: the body sent upstream and the answer (a stream as its text).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

/// Which requests to read. Text filters match exactly, except `key`.
#[derive(Debug, Clone, Default)]
pub struct RequestQuery {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// A key id, or the start of one (at least 4 hex digits).
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub ip: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    /// 2, 4 or 5: the status class (`2xx`…).
    pub status_class: Option<u16>,
    pub outcome: Option<String>,
    /// The gateway's error code, or `any` for every request it answered itself.
    pub error: Option<String>,
    pub answered_by: Option<String>,
    pub request_id: Option<String>,
}

const COLUMNS: &str = "id, at_ms, request_id, key_id, key_name, client_ip, method, path, route, \
     model, upstream, attempts, status, outcome, error, answered_by, first_byte_us, duration_us, \
     input_tokens, output_tokens, cached_tokens, partial, cost_nanos, bytes_in, bytes_out, \
     decisions, request_body, response_body";

impl RequestQuery {
    /// The WHERE clause (numbered from `$1`) and its text arguments, in order; conditions for
    /// filters left out are not written, so the database can use the index of the ones given.
    fn clause(&self) -> (String, Vec<Arg>) {
        let mut sql = String::from("WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        let mut cond = |sql: &mut String, text: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&text.replace('?', &format!("${}", args.len())));
        };
        if let Some(from) = self.from_ms {
            cond(&mut sql, " AND at_ms >= ?", Arg::Int(clamp(from)));
        }
        if let Some(to) = self.to_ms {
            cond(&mut sql, " AND at_ms <= ?", Arg::Int(clamp(to)));
        }
        if let Some(k) = &self.key_id {
            let k = k.to_ascii_lowercase();
            if k.len() == 64 {
                cond(&mut sql, " AND key_id = ?", Arg::Text(k));
            } else {
                // Every id starting with `k`: hex digits sort below `~`.
                cond(&mut sql, " AND key_id >= ?", Arg::Text(k.clone()));
                cond(&mut sql, " AND key_id < ?", Arg::Text(format!("{k}~")));
            }
        }
        for (column, value) in [
            ("key_name", &self.key_name),
            ("client_ip", &self.ip),
            ("route", &self.route),
            ("model", &self.model),
            ("upstream", &self.upstream),
            ("outcome", &self.outcome),
            ("answered_by", &self.answered_by),
            ("request_id", &self.request_id),
        ] {
            if let Some(v) = value {
                cond(
                    &mut sql,
                    &format!(" AND {column} = ?"),
                    Arg::Text(v.clone()),
                );
            }
        }
        match self.error.as_deref() {
            None => {}
            Some("any") => sql.push_str(" AND error <> ''"),
            Some(code) => cond(&mut sql, " AND error = ?", Arg::Text(code.to_owned())),
        }
        if let Some(class) = self.status_class {
            let lo = i64::from(class) * 100;
            cond(&mut sql, " AND status >= ?", Arg::Int(lo));
            cond(&mut sql, " AND status < ?", Arg::Int(lo + 100));
        }
        (sql, args)
    }
}

fn clamp(ms: u64) -> i64 {
    ms.min(i64::MAX as u64) as i64
}

enum Arg {
    Text(String),
    Int(i64),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_args(mut q: AnyQuery<'_>, args: Vec<Arg>) -> AnyQuery<'_> {
    for a in args {
        q = match a {
            Arg::Text(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
        };
    }
    q
}

fn opt_u64(r: &sqlx::any::AnyRow, column: &str) -> StoreResult<Option<u64>> {
    Ok(r.try_get::<Option<i64>, _>(column)
        .map_err(db_err)?
        .map(|v| v.max(0) as u64))
}

fn json(text: String) -> serde_json::Value {
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    }
}

impl RequestRow {
    fn read(r: &sqlx::any::AnyRow) -> StoreResult<Self> {
        let int = |c: &str| -> StoreResult<u64> {
            Ok(r.try_get::<i64, _>(c).map_err(db_err)?.max(0) as u64)
        };
        let text = |c: &str| -> StoreResult<String> { r.try_get(c).map_err(db_err) };
        Ok(Self {
            id: r.try_get("id").map_err(db_err)?,
            at_ms: int("at_ms")?,
            request_id: text("request_id")?,
            key_id: text("key_id")?,
            key_name: text("key_name")?,
            client_ip: text("client_ip")?,
            method: text("method")?,
            path: text("path")?,
            route: text("route")?,
            model: text("model")?,
            upstream: text("upstream")?,
            attempts: json(text("attempts")?),
            status: r.try_get::<i32, _>("status").map_err(db_err)?.clamp(0, 999) as u16,
            outcome: text("outcome")?,
            error: text("error")?,
            answered_by: text("answered_by")?,
            first_byte_us: opt_u64(r, "first_byte_us")?,
            duration_us: int("duration_us")?,
            input_tokens: opt_u64(r, "input_tokens")?,
            output_tokens: opt_u64(r, "output_tokens")?,
            cached_tokens: opt_u64(r, "cached_tokens")?,
            partial: r.try_get::<i32, _>("partial").map_err(db_err)? != 0,
            cost_nanos: opt_u64(r, "cost_nanos")?,
            bytes_in: int("bytes_in")?,
            bytes_out: int("bytes_out")?,
            decisions: json(text("decisions")?),
            request_body: r.try_get("request_body").map_err(db_err)?,
            response_body: r.try_get("response_body").map_err(db_err)?,
        })
    }
}

/// A request's row as written: the entry, and the columns that are not in it as text.
struct Written {
    e: RequestEntry,
    client_ip: String,
    attempts: String,
    decisions: String,
}

fn text(s: &Option<Arc<str>>) -> &str {
    s.as_deref().unwrap_or("")
}

fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl From<RequestEntry> for Written {
    fn from(e: RequestEntry) -> Self {
        Self {
            client_ip: e.client_ip.to_string(),
            attempts: serde_json::to_string(&e.attempts).unwrap_or_default(),
            decisions: if e.decisions.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&e.decisions).unwrap_or_default()
            },
            e,
        }
    }
}

impl SqlStore {
    /// Writes finished requests in one transaction.
    pub(crate) async fn record_requests(&self, entries: Vec<RequestEntry>) -> StoreResult<()> {
        fn bind<'a>(q: AnyQuery<'a>, w: &'a Written) -> AnyQuery<'a> {
            let e = &w.e;
            let (key_id, key_name) = e
                .key
                .as_ref()
                .map_or(("", ""), |(id, name)| (&**id, &**name));
            let tokens = e.tokens.map(|t| (int(t.0), int(t.1), int(t.2)));
            q.bind(int(e.at_ms))
                .bind(&*e.request_id)
                .bind(key_id)
                .bind(key_name)
                .bind(&w.client_ip)
                .bind(e.method)
                .bind(&*e.path)
                .bind(text(&e.route))
                .bind(text(&e.model))
                .bind(text(&e.upstream))
                .bind(&w.attempts)
                .bind(i32::from(e.status))
                .bind(e.outcome)
                .bind(text(&e.error))
                .bind(text(&e.answered_by))
                .bind(e.first_byte_us.map(int))
                .bind(int(e.duration_us))
                .bind(tokens.map(|t| t.0))
                .bind(tokens.map(|t| t.1))
                .bind(tokens.map(|t| t.2))
                .bind(i32::from(e.partial))
                .bind(e.cost_nanos.map(int))
                .bind(int(e.bytes_in))
                .bind(int(e.bytes_out))
                .bind(&w.decisions)
                .bind(e.bodies.as_ref().map(|b| b.0.as_str()))
                .bind(e.bodies.as_ref().map(|b| b.1.as_str()))
        }
        let rows: Vec<Written> = entries.into_iter().map(Written::from).collect();
        self.write_rows(&rows, 27, bind, |values| {
            format!(
                "INSERT INTO request_log ({}) VALUES {values}",
                COLUMNS.trim_start_matches("id, ")
            )
        })
        .await
    }

    /// Up to `limit` matching requests, newest first: those with an id below `before_id` (the
    /// last id of the previous page), or from the newest.
    pub async fn requests_page(
        &self,
        q: &RequestQuery,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<RequestRow>> {
        let (mut clause, args) = q.clause();
        let n = args.len();
        clause.push_str(&format!(" AND id < ${}", n + 1));
        let sql = format!(
            "SELECT {COLUMNS} FROM request_log {clause} ORDER BY id DESC LIMIT ${}",
            n + 2
        );
        let query = bind_args(sqlx::query(&sql), args)
            .bind(before_id.unwrap_or(i64::MAX))
            .bind(i64::from(limit));
        let rows = self.timed(query.fetch_all(&self.pool)).await?;
        rows.iter().map(RequestRow::read).collect()
    }

    /// Requests newer than `after_id`, oldest first (for a live tail).
    pub async fn requests_after(
        &self,
        q: &RequestQuery,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<RequestRow>> {
        let (mut clause, args) = q.clause();
        let n = args.len();
        clause.push_str(&format!(" AND id > ${}", n + 1));
        let sql = format!(
            "SELECT {COLUMNS} FROM request_log {clause} ORDER BY id ASC LIMIT ${}",
            n + 2
        );
        let query = bind_args(sqlx::query(&sql), args)
            .bind(after_id)
            .bind(i64::from(limit));
        let rows = self.timed(query.fetch_all(&self.pool)).await?;
        rows.iter().map(RequestRow::read).collect()
    }

    /// Deletes requests older than `before_ms` and all but about the newest `keep` (ids below
    /// the newest id minus `keep`); how many went.
    pub(crate) async fn prune_requests(
        &self,
        before_ms: Option<u64>,
        keep: Option<u64>,
    ) -> StoreResult<u64> {
        let mut gone = 0;
        if let Some(before) = before_ms {
            let r = self
                .timed(
                    sqlx::query("DELETE FROM request_log WHERE at_ms < $1")
                        .bind(clamp(before))
                        .execute(&self.pool),
                )
                .await?;
            gone += r.rows_affected();
        }
        if let Some(keep) = keep {
            let r = self
                .timed(
                    sqlx::query(
                        "DELETE FROM request_log WHERE id <= \
                         (SELECT COALESCE(MAX(id), 0) FROM request_log) - $1",
                    )
                    .bind(int(keep))
                    .execute(&self.pool),
                )
                .await?;
            gone += r.rows_affected();
        }
        Ok(gone)
    }
}

impl Stores {
    /// Logs a finished request (batched; never waits). Past `request_log.max_pending` waiting
    /// entries it is dropped and counted.
    pub fn record_request(&self, entry: RequestEntry) {
        let mut pending = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= self.config.request_log.max_pending {
            drop(pending);
            self.stats.requests_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(entry);
    }

    /// The requests logged since the last call (for the writer).
    pub(crate) fn take_requests(&self) -> Vec<RequestEntry> {
        let mut pending = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let room = pending.len();
        std::mem::replace(&mut *pending, Vec::with_capacity(room))
    }

    /// Deletes what `request_log.max_age` and `max_rows` no longer keep.
    pub async fn prune_requests(&self) -> StoreResult<u64> {
        let c = &self.config.request_log;
        let age = c.max_age.get().as_millis() as u64;
        let before = (age > 0).then(|| super::unix_ms().saturating_sub(age));
        let keep = (c.max_rows > 0).then_some(c.max_rows);
        self.db.prune_requests(before, keep).await
    }
}
