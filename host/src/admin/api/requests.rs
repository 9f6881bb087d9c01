//! `/admin/api/requests`: the request log (`telemetry/request_log.rs`), filtered and paged by id
//! (keyset: `before` for older pages, `after` for a live tail), one request by its id, and the
//! same rows as CSV or NDJSON, streamed page by page.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::export::{CsvRow, EXPORT_PAGE, csv_response, ndjson_response, rfc3339_ms};
use super::state::{AdminState, Operator};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::state::{AuditRecord, KeyTable, RequestQuery, RequestRow};

#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestParams {
    /// Unix ms: requests that started at or after it.
    pub from_ms: Option<u64>,
    /// Unix ms: requests that started at or before it.
    pub to_ms: Option<u64>,
    /// A key's name, its id, or the id's first hex digits (at least 4).
    pub key: Option<String>,
    /// The client address, exactly.
    pub ip: Option<String>,
    /// The route's path prefix, e.g. `/v1/`.
    pub route: Option<String>,
    pub model: Option<String>,
    /// The upstream that answered.
    pub upstream: Option<String>,
    /// The status class: `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: Option<String>,
    /// `complete`, `client_aborted`, `upstream_aborted`, `refused` or `cut`.
    pub outcome: Option<String>,
    /// The code of the gateway's own answer (`rate_limit_exceeded`, …), or `any`.
    pub error: Option<String>,
    /// What answered instead of an upstream: `auth`, `limits:NAME`, `plugin:NAME`, …
    pub answered_by: Option<String>,
    pub request_id: Option<String>,
    /// Only rows with a smaller id (the previous page's `next`).
    pub before: Option<i64>,
    /// Only rows with a larger id, oldest first (a live tail: the newest id seen).
    pub after: Option<i64>,
    /// Page size (1–1000, default 50); not used by the exports.
    pub limit: Option<u32>,
}

const OUTCOMES: &[&str] = &[
    "complete",
    "client_aborted",
    "upstream_aborted",
    "refused",
    "cut",
];

impl RequestParams {
    fn query(&self, keys: &KeyTable) -> Result<RequestQuery, ApiError> {
        let (mut key_id, mut key_name) = (None, None);
        if let Some(k) = &self.key {
            match keys.by_name(k) {
                Some(found) => key_id = Some(found.hex.to_string()),
                None if k.len() >= 4 && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    key_id = Some(k.clone());
                }
                // The name of a key no longer in force.
                None if !k.is_empty() => key_name = Some(k.clone()),
                None => return Err(ApiError::invalid("key", "must not be empty")),
            }
        }
        if let Some(ip) = &self.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(ApiError::invalid("ip", "must be an IP address"));
        }
        let status_class = match self.status.as_deref() {
            None => None,
            Some(s) => match s.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
                Some(c @ 1..=5) => Some(c),
                _ => {
                    return Err(ApiError::invalid(
                        "status",
                        "must be a status class: 2xx, 3xx, 4xx or 5xx",
                    ));
                }
            },
        };
        if let Some(o) = &self.outcome
            && !OUTCOMES.contains(&o.as_str())
        {
            return Err(ApiError::invalid(
                "outcome",
                format!("must be one of {}", OUTCOMES.join(", ")),
            ));
        }
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms)
            && from > to
        {
            return Err(ApiError::invalid("from_ms", "must not be after to_ms"));
        }
        Ok(RequestQuery {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            key_id,
            key_name,
            ip: self.ip.clone(),
            route: self.route.clone(),
            model: self.model.clone(),
            upstream: self.upstream.clone(),
            status_class,
            outcome: self.outcome.clone(),
            error: self.error.clone(),
            answered_by: self.answered_by.clone(),
            request_id: self.request_id.clone(),
        })
    }
}

/// A page of the request log.
#[derive(Serialize, ToSchema)]
pub struct RequestPage {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<RequestRow>,
    /// For the next (older) page: pass it as `before`. `null` at the end. With `after`, the
    /// newest id returned (pass it as `after` again).
    pub next: Option<i64>,
}

/// Requests, newest first (or, with `after`, the ones since, oldest first).
#[utoipa::path(get, path = "/admin/api/requests", tag = "requests", params(RequestParams),
    security(("bearer" = [])),
    responses((status = 200, body = RequestPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(st): State<AdminState>,
    _op: Operator,
    ApiQuery(p): ApiQuery<RequestParams>,
) -> Result<Json<RequestPage>, ApiError> {
    let q = p.query(&st.gateway.stores.key_table().load())?;
    let limit = p.limit.unwrap_or(50).clamp(1, crate::admin::MAX_PAGE);
    let db = st.gateway.stores.database();
    if let Some(after) = p.after {
        if p.before.is_some() {
            return Err(ApiError::invalid("after", "give before or after, not both"));
        }
        let items = db.requests_after(&q, after, limit).await?;
        let next = items.last().map_or(Some(after), |r| Some(r.id));
        return Ok(Json(RequestPage { items, next }));
    }
    let items = db.requests_page(&q, p.before, limit).await?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(Json(RequestPage { items, next }))
}

/// One request by its request id (the newest, if a trusted peer sent the same id twice).
#[utoipa::path(get, path = "/admin/api/requests/{request_id}", tag = "requests",
    params(("request_id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(st): State<AdminState>,
    _op: Operator,
    Path(request_id): Path<String>,
) -> Result<Json<RequestRow>, ApiError> {
    let q = RequestQuery {
        request_id: Some(request_id),
        ..RequestQuery::default()
    };
    let mut rows = st
        .gateway
        .stores
        .database()
        .requests_page(&q, None, 1)
        .await?;
    rows.pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("request"))
}

const CSV_HEADER: &[&str] = &[
    "id",
    "at",
    "request_id",
    "key_id",
    "key_name",
    "client_ip",
    "method",
    "path",
    "route",
    "model",
    "upstream",
    "attempts",
    "status",
    "outcome",
    "error",
    "answered_by",
    "first_byte_ms",
    "duration_ms",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "partial",
    "cost",
    "bytes_in",
    "bytes_out",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl CsvRow for RequestRow {
    fn id(&self) -> i64 {
        self.id
    }

    fn fields(&self) -> Vec<String> {
        let ms = |us: u64| format!("{:.3}", us as f64 / 1e3);
        vec![
            self.id.to_string(),
            rfc3339_ms(self.at_ms),
            self.request_id.clone(),
            self.key_id.clone(),
            self.key_name.clone(),
            self.client_ip.clone(),
            self.method.clone(),
            self.path.clone(),
            self.route.clone(),
            self.model.clone(),
            self.upstream.clone(),
            self.attempts.to_string(),
            self.status.to_string(),
            self.outcome.clone(),
            self.error.clone(),
            self.answered_by.clone(),
            opt(self.first_byte_us.map(ms)),
            ms(self.duration_us),
            opt(self.input_tokens),
            opt(self.output_tokens),
            opt(self.cached_tokens),
            self.partial.to_string(),
            opt(self.cost_nanos.map(|c| c as f64 / 1e9)),
            self.bytes_in.to_string(),
            self.bytes_out.to_string(),
        ]
    }
}

/// Audits an export and returns its query.
async fn export_query(
    st: &AdminState,
    actor: &crate::service::Actor,
    p: &RequestParams,
    format: &str,
) -> Result<RequestQuery, ApiError> {
    let q = p.query(&st.gateway.stores.key_table().load())?;
    st.gateway
        .stores
        .database()
        .record_audit(AuditRecord::new(
            &actor.name,
            &actor.ip,
            "requests.export",
            &format!("format={format} {q:?}"),
            "ok",
        ))
        .await?;
    Ok(q)
}

/// The same requests as CSV (RFC 4180, a header row, times in RFC 3339 UTC, durations in ms,
/// cost in `pricing.currency`), streamed.
#[utoipa::path(get, path = "/admin/api/requests.csv", tag = "requests", params(RequestParams),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn csv(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    ApiQuery(p): ApiQuery<RequestParams>,
) -> Result<Response, ApiError> {
    let q = export_query(&st, &actor, &p, "csv").await?;
    let stores = st.gateway.stores.clone();
    Ok(csv_response("requests.csv", CSV_HEADER, move |before| {
        let (stores, q) = (stores.clone(), q.clone());
        async move { stores.database().requests_page(&q, before, EXPORT_PAGE).await }
    }))
}

/// The same requests as NDJSON (one object per line, as the list returns them), streamed.
#[utoipa::path(get, path = "/admin/api/requests.ndjson", tag = "requests", params(RequestParams),
    security(("bearer" = [])),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn ndjson(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    ApiQuery(p): ApiQuery<RequestParams>,
) -> Result<Response, ApiError> {
    let q = export_query(&st, &actor, &p, "ndjson").await?;
    let stores = st.gateway.stores.clone();
    Ok(ndjson_response("requests.ndjson", move |before| {
        let (stores, q) = (stores.clone(), q.clone());
        async move { stores.database().requests_page(&q, before, EXPORT_PAGE).await }
    }))
}
