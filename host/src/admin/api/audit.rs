//! `GET /admin/api/audit` and `audit.csv`: the audit log, filtered and paged.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::bindings::Page;
use super::state::{AdminState, Viewer};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::state::{AuditQuery, AuditRecord};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Unix ms.
    pub from_ms: Option<u64>,
    /// Unix ms.
    pub to_ms: Option<u64>,
    /// Page size (1–1000, default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at_ms: u64,
    pub actor: String,
    pub ip: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// JSON of the target before and after ('' where there is none).
    pub before: String,
    pub after: String,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            at_ms: r.at_ms,
            actor: r.actor,
            ip: r.ip,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            before: r.before,
            after: r.after,
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/admin/api/audit", tag = "audit", params(AuditParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<AuditView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn audit(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    let q = p.query();
    let (items, total) = st.gateway.stores.database().audit(&q).await?;
    Ok(Json(Page {
        items: items.into_iter().map(Into::into).collect(),
        total,
    }))
}

impl AuditParams {
    fn query(self) -> AuditQuery {
        AuditQuery {
            actor: self.actor,
            ip: self.ip,
            action: self.action,
            target: self.target,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            limit: self.limit.unwrap_or(50).clamp(1, crate::admin::MAX_PAGE),
            offset: self.offset.unwrap_or(0),
            before_id: None,
        }
    }
}

impl super::export::CsvRow for AuditRecord {
    fn id(&self) -> i64 {
        self.id
    }

    fn fields(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            super::export::rfc3339_ms(self.at_ms),
            self.actor.clone(),
            self.ip.clone(),
            self.action.clone(),
            self.target.clone(),
            self.outcome.clone(),
            self.before.clone(),
            self.after.clone(),
        ]
    }
}

/// The audit log as CSV (same filters; `limit` and `offset` are not used), streamed.
#[utoipa::path(get, path = "/admin/api/audit.csv", tag = "audit", params(AuditParams),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn audit_csv(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> axum::response::Response {
    const HEADER: &[&str] = &[
        "id", "at", "actor", "ip", "action", "target", "outcome", "before", "after",
    ];
    let base = AuditQuery {
        limit: super::export::EXPORT_PAGE,
        offset: 0,
        ..p.query()
    };
    let stores = st.gateway.stores.clone();
    super::export::csv_response("audit.csv", HEADER, move |before_id| {
        let (stores, q) = (
            stores.clone(),
            AuditQuery {
                before_id,
                ..base.clone()
            },
        );
        async move { stores.database().audit_page(&q).await }
    })
}
