//! `GET /admin/api/usage`: token usage per key, upstream or model over a range of hours.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::state::{AdminState, Viewer};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::service::usage::{self, UsageRow};
use crate::state::UsageBy;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// `key` (default), `upstream` or `model`.
    pub by: Option<String>,
    /// Unix ms; default 24 h ago.
    pub from_ms: Option<u64>,
    /// Unix ms; default now.
    pub to_ms: Option<u64>,
}

/// Requests and tokens per key, upstream or model over a time range (hours that start in it).
#[utoipa::path(get, path = "/admin/api/usage", tag = "usage", params(UsageParams),
    security(("bearer" = [])),
    responses((status = 200, body = Vec<UsageRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn usage(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Json<Vec<UsageRow>>, ApiError> {
    let by = match p.by.as_deref().unwrap_or("key") {
        "key" => UsageBy::Key,
        "upstream" => UsageBy::Upstream,
        "model" => UsageBy::Model,
        _ => {
            return Err(ApiError::invalid(
                "by",
                "must be `key`, `upstream` or `model`",
            ));
        }
    };
    let now = crate::state::unix_ms();
    let to = p.to_ms.unwrap_or(now);
    let from = p.from_ms.unwrap_or(now.saturating_sub(24 * 3_600_000));
    if from > to {
        return Err(ApiError::invalid("from_ms", "must not be after to_ms"));
    }
    let rt = st.gateway.runtime();
    let rows = usage::rows(
        &st.gateway.stores,
        &rt.keys,
        by,
        from,
        to,
        &rt.prices.currency,
    )
    .await?;
    Ok(Json(rows))
}
