//! `/admin/api/upstreams…`: each upstream's health and cooldowns; cool one down or restore it
//! (`service::upstreams`: audited, shared with the cluster).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::ToSchema;

use super::state::{AdminState, Operator, Viewer};
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::service::upstreams::{self as service, UpstreamView};

/// Upstreams of the running config: health, in-flight, latency, error rate, cooldowns, and what
/// is left of each declared allowance.
#[utoipa::path(get, path = "/admin/api/upstreams", tag = "upstreams",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<UpstreamView>), (status = 401, body = ErrorBody)))]
pub(super) async fn upstreams(State(st): State<AdminState>, _: Viewer) -> Json<Vec<UpstreamView>> {
    Json(service::list(&st.gateway).await)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CooldownRequest {
    /// How long, 1–86400 s.
    pub seconds: u64,
    /// Only this model; absent: every model.
    pub model: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Only this model's cooldown; absent: every cooldown of the upstream.
    pub model: Option<String>,
}

/// Cools an upstream down by hand, on every gateway sharing the cache (as a quota policy does).
#[utoipa::path(post, path = "/admin/api/upstreams/{name}/cooldown", tag = "upstreams",
    params(("name" = String, Path, description = "upstream name")),
    request_body = CooldownRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = UpstreamView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn cool_down(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CooldownRequest>,
) -> Result<Json<UpstreamView>, ApiError> {
    Ok(Json(
        service::cool_down(&st.gateway, &actor, &name, req.seconds, req.model).await?,
    ))
}

/// Ends an upstream's cooldowns (one model's, or all), on every gateway sharing the cache.
#[utoipa::path(post, path = "/admin/api/upstreams/{name}/restore", tag = "upstreams",
    params(("name" = String, Path, description = "upstream name")),
    request_body = RestoreRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = UpstreamView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn restore(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<Json<UpstreamView>, ApiError> {
    Ok(Json(
        service::restore(&st.gateway, &actor, &name, req.model).await?,
    ))
}
