//! `/admin/api/intercepts`: refused requests (wrong network, banned key), filtered and paged, and
//! the same as CSV, streamed page by page so an export of any size holds one page in memory.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{AdminState, Operator, Page};
use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::state::{AuditRecord, Intercept, InterceptQuery, Stores};

/// Rows read per database round trip of an export.
const EXPORT_PAGE: u32 = 1000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InterceptParams {
    /// A key id or its first 12 hex digits.
    pub key: Option<String>,
    /// The refused client address.
    pub ip: Option<String>,
    /// Unix ms.
    pub from_ms: Option<u64>,
    /// Unix ms.
    pub to_ms: Option<u64>,
    /// Page size (1–1000, default 50); not used by the CSV export.
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

impl InterceptParams {
    fn query(&self) -> Result<InterceptQuery, ApiError> {
        if let Some(k) = &self.key
            && (k.is_empty() || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ApiError::invalid("key", "must be hex digits of a key id"));
        }
        if let Some(ip) = &self.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(ApiError::invalid("ip", "must be an IP address"));
        }
        Ok(InterceptQuery {
            key: self.key.clone(),
            ip: self.ip.clone(),
            from_ms: self.from_ms,
            to_ms: self.to_ms,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct InterceptView {
    pub id: i64,
    /// Unix ms.
    pub at_ms: u64,
    /// First 12 hex digits of the key id.
    pub key_id_prefix: String,
    pub bound_cidr: Option<String>,
    pub attempted_ip: String,
    pub method: String,
    pub path: String,
    /// The refusal's code, e.g. `ip_not_allowed`, `key_banned`.
    pub reason: String,
}

fn view((id, i): (i64, Intercept)) -> InterceptView {
    InterceptView {
        id,
        at_ms: i.at_ms,
        key_id_prefix: i.key_id_prefix,
        bound_cidr: i.bound_cidr,
        attempted_ip: i.attempted_ip,
        method: i.method,
        path: i.path,
        reason: i.reason,
    }
}

/// Refused requests, newest first.
#[utoipa::path(get, path = "/admin/api/intercepts", tag = "intercepts", params(InterceptParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<InterceptView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(st): State<AdminState>,
    _op: Operator,
    ApiQuery(p): ApiQuery<InterceptParams>,
) -> Result<Json<Page<InterceptView>>, ApiError> {
    let q = p.query()?;
    let db = st.gateway.stores.database();
    let total = db.count_intercepts(&q).await?;
    let limit = p.limit.unwrap_or(50).clamp(1, super::MAX_PAGE);
    let rows = db
        .intercepts_page(&q, None, p.offset.unwrap_or(0), limit)
        .await?;
    Ok(Json(Page {
        items: rows.into_iter().map(view).collect(),
        total,
    }))
}

const CSV_HEADER: [&str; 8] = [
    "id",
    "at",
    "key_id_prefix",
    "bound_cidr",
    "attempted_ip",
    "method",
    "path",
    "reason",
];

fn csv_page(rows: &[(i64, Intercept)], header: bool) -> Result<Bytes, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 128));
    if header {
        w.write_record(CSV_HEADER)?;
    }
    for (id, i) in rows {
        let at = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(i.at_ms),
        )
        .to_string();
        w.write_record([
            id.to_string().as_str(),
            &at,
            &i.key_id_prefix,
            i.bound_cidr.as_deref().unwrap_or(""),
            &i.attempted_ip,
            &i.method,
            &i.path,
            &i.reason,
        ])?;
    }
    w.into_inner()
        .map(Bytes::from)
        .map_err(|e| e.into_error().into())
}

struct Export {
    stores: Arc<Stores>,
    q: InterceptQuery,
    before: Option<i64>,
    first: bool,
    done: bool,
}

/// The same intercepts as CSV (RFC 4180, a header row, times in RFC 3339 UTC), streamed.
#[utoipa::path(get, path = "/admin/api/intercepts.csv", tag = "intercepts", params(InterceptParams),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn csv(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    ApiQuery(p): ApiQuery<InterceptParams>,
) -> Result<Response, ApiError> {
    let q = p.query()?;
    let stores = st.gateway.stores.clone();
    let target = format!(
        "key={} ip={}",
        q.key.as_deref().unwrap_or(""),
        q.ip.as_deref().unwrap_or("")
    );
    stores
        .database()
        .record_audit(AuditRecord::new(
            &actor.name,
            &actor.ip,
            "intercepts.export",
            &target,
            "ok",
        ))
        .await?;
    let state = Export {
        stores,
        q,
        before: None,
        first: true,
        done: false,
    };
    let pages = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let rows = match s
            .stores
            .database()
            .intercepts_page(&s.q, s.before, 0, EXPORT_PAGE)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                // The client sees a cut-off download; the cause stays in the log.
                tracing::error!(error = %e, "intercept export failed");
                s.done = true;
                return Some((Err(std::io::Error::other("export failed")), s));
            }
        };
        s.done = rows.len() < EXPORT_PAGE as usize;
        s.before = rows.last().map(|(id, _)| *id);
        let page = csv_page(&rows, s.first).map_err(std::io::Error::other);
        s.first = false;
        Some((page, s))
    });
    Ok((
        [
            (http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"intercepts.csv\"",
            ),
        ],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}
