//! `/admin/api/bindings…`: list, read, move, unbind, ban and unban key bindings (audited, through
//! `service::bindings`, as the CLI does).

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::state::{AdminState, Operator, Viewer};
use crate::admin::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::service::bindings::{self, BindingView, Change};
use crate::state::{BindingQuery, BindingStatus};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BindingsParams {
    /// Start of a key id or of a bound network.
    pub search: Option<String>,
    /// `active` or `banned`.
    pub status: Option<String>,
    /// Page size (1–1000, default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// How many match in all.
    pub total: u64,
}

/// Lists bindings, most recently used first.
#[utoipa::path(get, path = "/admin/api/bindings", tag = "bindings", params(BindingsParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<BindingView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list_bindings(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<BindingsParams>,
) -> Result<Json<Page<BindingView>>, ApiError> {
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            BindingStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status", "must be `active` or `banned`"))?,
        ),
    };
    let (items, total) = bindings::list(
        &st.gateway.stores,
        BindingQuery {
            search: p.search,
            status,
            limit: p.limit.unwrap_or(50),
            offset: p.offset.unwrap_or(0),
        },
    )
    .await?;
    Ok(Json(Page { items, total }))
}

/// Shows one key's binding.
#[utoipa::path(get, path = "/admin/api/bindings/{key_id}", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_binding(
    State(st): State<AdminState>,
    _: Viewer,
    Path(key_id): Path<String>,
) -> Result<Json<BindingView>, ApiError> {
    Ok(Json(bindings::get(&st.gateway.stores, &key_id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The network to bind the key to: a CIDR or one address.
    pub cidr: String,
}

/// Binds a key to another network.
#[utoipa::path(put, path = "/admin/api/bindings/{key_id}", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    request_body = MoveRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn move_binding(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Json<Option<BindingView>>, ApiError> {
    let net = bindings::parse_net(&req.cidr)?;
    let after = bindings::change(&st.gateway.stores, &actor, &key_id, Change::Move(net)).await?;
    Ok(Json(after))
}

/// Forgets a key's binding; its next request binds afresh.
#[utoipa::path(delete, path = "/admin/api/bindings/{key_id}", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn unbind(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    bindings::change(&st.gateway.stores, &actor, &key_id, Change::Unbind).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bans a key everywhere (403 `key_banned`).
#[utoipa::path(post, path = "/admin/api/bindings/{key_id}/ban", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn ban(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
) -> Result<Json<Option<BindingView>>, ApiError> {
    Ok(Json(
        bindings::change(&st.gateway.stores, &actor, &key_id, Change::Ban).await?,
    ))
}

/// Lifts a ban.
#[utoipa::path(post, path = "/admin/api/bindings/{key_id}/unban", tag = "bindings",
    params(("key_id" = String, Path, description = "64 hex digits", pattern = "^[0-9a-fA-F]{64}$")),
    security(("bearer" = [])),
    responses((status = 200, body = BindingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn unban(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key_id): Path<String>,
) -> Result<Json<Option<BindingView>>, ApiError> {
    Ok(Json(
        bindings::change(&st.gateway.stores, &actor, &key_id, Change::Unban).await?,
    ))
}
