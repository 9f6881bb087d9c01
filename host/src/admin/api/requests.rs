//! `/admin/api/requests`: the request log (`telemetry/request_log.rs`), filtered and paged by id
//! (keyset: `before` for older pages, `after` for a live tail), one request by its id, and the
//! same rows as CSV or NDJSON, streamed page by page.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::export::{CsvRow, EXPORT_PAGE, csv_response, ndjson_response, rfc3339_ms};
use super::state::{AdminState, Caller, Viewer};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::config::AdminRole;
use crate::service::requests::RequestFilter;
use crate::state::{AuditRecord, RequestQuery, RequestRow};

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
#[utoipa::path(get, path = "/admin/api/requests", tag = "requests", params(RequestFilter),
    security(("bearer" = [])),
    responses((status = 200, body = RequestPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(st): State<AdminState>,
    Viewer(c): Viewer,
    ApiQuery(p): ApiQuery<RequestFilter>,
) -> Result<Json<RequestPage>, ApiError> {
    let q = p.query(&st.gateway.stores.key_table().load())?;
    let limit = p.limit.unwrap_or(50).clamp(1, crate::admin::MAX_PAGE);
    let db = st.gateway.stores.database();
    if let Some(after) = p.after {
        if p.before.is_some() {
            return Err(ApiError::invalid("after", "give before or after, not both"));
        }
        let mut items = db.requests_after(&q, after, limit).await?;
        withhold_bodies(c.role, &mut items);
        let next = items.last().map_or(Some(after), |r| Some(r.id));
        return Ok(Json(RequestPage { items, next }));
    }
    let mut items = db.requests_page(&q, p.before, limit).await?;
    withhold_bodies(c.role, &mut items);
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
    Viewer(c): Viewer,
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
    withhold_bodies(c.role, &mut rows);
    rows.pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("request"))
}

/// Captured bodies hold the clients' prompts and the models' answers: a `viewer` sees that a
/// body was captured (`"withheld"`), not what it says.
fn withhold_bodies(role: AdminRole, rows: &mut [RequestRow]) {
    if role >= AdminRole::Operator {
        return;
    }
    for r in rows {
        for body in [&mut r.request_body, &mut r.response_body] {
            if body.is_some() {
                *body = Some("withheld".into());
            }
        }
    }
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
    "served_model",
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
            self.served_model.clone(),
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
            opt(self.cost_nanos.map(crate::config::from_nanos)),
            self.bytes_in.to_string(),
            self.bytes_out.to_string(),
        ]
    }
}

/// A page of an export being read.
type PageRead =
    std::pin::Pin<Box<dyn Future<Output = crate::state::StoreResult<Vec<RequestRow>>> + Send>>;

/// Audits an export and returns what reads its pages: the rows below an id, newest first.
async fn export_pages(
    st: &AdminState,
    caller: &Caller,
    p: &RequestFilter,
    format: &str,
) -> Result<impl FnMut(Option<i64>) -> PageRead + Send + 'static, ApiError> {
    let q = p.query(&st.gateway.stores.key_table().load())?;
    let actor = &caller.actor;
    let role = caller.role;
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
    let stores = st.gateway.stores.clone();
    Ok(move |before| {
        let (stores, q): (_, RequestQuery) = (stores.clone(), q.clone());
        Box::pin(async move {
            let mut rows = stores
                .database()
                .requests_page(&q, before, EXPORT_PAGE)
                .await?;
            withhold_bodies(role, &mut rows);
            Ok(rows)
        }) as PageRead
    })
}

/// The same requests as CSV (RFC 4180, a header row, times in RFC 3339 UTC, durations in ms,
/// cost in `pricing.currency`), streamed.
#[utoipa::path(get, path = "/admin/api/requests.csv", tag = "requests", params(RequestFilter),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn csv(
    State(st): State<AdminState>,
    Viewer(c): Viewer,
    ApiQuery(p): ApiQuery<RequestFilter>,
) -> Result<Response, ApiError> {
    let pages = export_pages(&st, &c, &p, "csv").await?;
    Ok(csv_response("requests.csv", CSV_HEADER, pages))
}

/// The same requests as NDJSON (one object per line, as the list returns them), streamed.
#[utoipa::path(get, path = "/admin/api/requests.ndjson", tag = "requests", params(RequestFilter),
    security(("bearer" = [])),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn ndjson(
    State(st): State<AdminState>,
    Viewer(c): Viewer,
    ApiQuery(p): ApiQuery<RequestFilter>,
) -> Result<Response, ApiError> {
    let pages = export_pages(&st, &c, &p, "ndjson").await?;
    Ok(ndjson_response("requests.ndjson", pages))
}
