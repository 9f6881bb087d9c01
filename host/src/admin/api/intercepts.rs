//! `/admin/api/intercepts`: refused requests (wrong network, banned key), filtered and paged, and
//! the same as CSV, streamed page by page so an export of any size holds one page in memory.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::bindings::Page;
use super::export::{CsvRow, EXPORT_PAGE, csv_response, rfc3339_ms};
use super::state::{AdminState, Caller, Viewer};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::state::{AuditRecord, Intercept, InterceptQuery, KeyTable};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InterceptParams {
    /// A key's name, its id, or the id's first 12 hex digits.
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
    fn query(&self, keys: &KeyTable) -> Result<InterceptQuery, ApiError> {
        let key = match &self.key {
            None => None,
            Some(k) => match keys.by_name(k) {
                Some(found) => Some(found.hex.to_string()),
                None if !k.is_empty() && k.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(k.clone())
                }
                None => {
                    return Err(ApiError::invalid(
                        "key",
                        "must be a key's name or hex digits of its id",
                    ));
                }
            },
        };
        if let Some(ip) = &self.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(ApiError::invalid("ip", "must be an IP address"));
        }
        Ok(InterceptQuery {
            key,
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
    /// The key's name, when a key in force has that id prefix.
    pub key_name: Option<String>,
    pub bound_cidr: Option<String>,
    pub attempted_ip: String,
    pub method: String,
    pub path: String,
    /// The refusal's code, e.g. `ip_not_allowed`, `key_banned`.
    pub reason: String,
}

fn view((id, i): (i64, Intercept), keys: &KeyTable) -> InterceptView {
    InterceptView {
        id,
        at_ms: i.at_ms,
        key_name: keys.name_of(&i.key_id_prefix).map(|n| n.to_string()),
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
    _: Viewer,
    ApiQuery(p): ApiQuery<InterceptParams>,
) -> Result<Json<Page<InterceptView>>, ApiError> {
    let keys = st.gateway.stores.key_table().load_full();
    let q = p.query(&keys)?;
    let db = st.gateway.stores.database();
    let total = db.count_intercepts(&q).await?;
    let limit = p.limit.unwrap_or(50).clamp(1, crate::admin::MAX_PAGE);
    let rows = db
        .intercepts_page(&q, None, p.offset.unwrap_or(0), limit)
        .await?;
    Ok(Json(Page {
        items: rows.into_iter().map(|r| view(r, &keys)).collect(),
        total,
    }))
}

const CSV_HEADER: &[&str] = &[
    "id",
    "at",
    "key_id_prefix",
    "bound_cidr",
    "attempted_ip",
    "method",
    "path",
    "reason",
];

impl CsvRow for (i64, Intercept) {
    fn id(&self) -> i64 {
        self.0
    }

    fn fields(&self) -> Vec<String> {
        let (id, i) = self;
        vec![
            id.to_string(),
            rfc3339_ms(i.at_ms),
            i.key_id_prefix.clone(),
            i.bound_cidr.clone().unwrap_or_default(),
            i.attempted_ip.clone(),
            i.method.clone(),
            i.path.clone(),
            i.reason.clone(),
        ]
    }
}

/// The same intercepts as CSV (RFC 4180, a header row, times in RFC 3339 UTC), streamed.
#[utoipa::path(get, path = "/admin/api/intercepts.csv", tag = "intercepts", params(InterceptParams),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn csv(
    State(st): State<AdminState>,
    Viewer(Caller { actor, .. }): Viewer,
    ApiQuery(p): ApiQuery<InterceptParams>,
) -> Result<Response, ApiError> {
    let q = p.query(&st.gateway.stores.key_table().load())?;
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
    Ok(csv_response("intercepts.csv", CSV_HEADER, move |before| {
        let (stores, q) = (stores.clone(), q.clone());
        async move {
            stores
                .database()
                .intercepts_page(&q, before, 0, EXPORT_PAGE)
                .await
        }
    }))
}
