//! `/admin/api/keys…`: client keys (`service::keys`). Issue one (its secret is in the answer,
//! once), list and filter them, show, change, rotate (the old secret works on for a grace period)
//! and revoke. Keys of the config file are listed read-only. Every change is audited and reaches
//! every gateway sharing the database within a second.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::bindings::Page;
use super::state::{AdminState, Operator, Viewer};
use crate::admin::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::service::keys::{self, IssuedKey, KeyFields, KeyFilter, KeyView};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeysParams {
    /// Start of a key name.
    pub name: Option<String>,
    pub owner: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: Option<String>,
    /// `database` (issued at run time) or `config`.
    pub source: Option<String>,
    /// Page size (1–1000, default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Lists keys by name: the config file's, then those issued at run time.
#[utoipa::path(get, path = "/admin/api/keys", tag = "keys", params(KeysParams),
    security(("bearer" = [])),
    responses((status = 200, body = Page<KeyView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(st): State<AdminState>,
    _: Viewer,
    ApiQuery(p): ApiQuery<KeysParams>,
) -> Result<Json<Page<KeyView>>, ApiError> {
    let rt = st.gateway.runtime();
    let (items, total) = keys::list(
        &st.gateway.stores,
        &rt.keys,
        KeyFilter {
            name: nonempty(p.name),
            owner: nonempty(p.owner),
            status: nonempty(p.status),
            source: nonempty(p.source),
            limit: p.limit.unwrap_or(50),
            offset: p.offset.unwrap_or(0),
        },
    )
    .await?;
    Ok(Json(Page { items, total }))
}

/// Issues a key. The answer holds its secret, shown this once and stored nowhere.
#[utoipa::path(post, path = "/admin/api/keys", tag = "keys",
    request_body = KeyFields, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 201, body = IssuedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn create(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    ApiJson(fields): ApiJson<KeyFields>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let rt = st.gateway.runtime();
    let issued = keys::create(&st.gateway.stores, &rt.keys, &actor, fields).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Shows one key, by id or name.
#[utoipa::path(get, path = "/admin/api/keys/{key}", tag = "keys",
    params(("key" = String, Path, description = "the key's name or id")),
    security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get(
    State(st): State<AdminState>,
    _: Viewer,
    Path(key): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let rt = st.gateway.runtime();
    Ok(Json(keys::get(&st.gateway.stores, &rt.keys, &key).await?))
}

/// Changes a key issued at run time (fields left out keep their value; `expires_ms: null`
/// removes the expiry).
#[utoipa::path(patch, path = "/admin/api/keys/{key}", tag = "keys",
    params(("key" = String, Path, description = "the key's name or id")),
    request_body = KeyFields, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key): Path<String>,
    ApiJson(fields): ApiJson<KeyFields>,
) -> Result<Json<KeyView>, ApiError> {
    let rt = st.gateway.runtime();
    Ok(Json(
        keys::update(&st.gateway.stores, &rt.keys, &actor, &key, fields).await?,
    ))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps working, 0–2592000 s (default 0: it stops now).
    #[serde(default)]
    pub grace_secs: u64,
}

/// Gives a key a new secret (in the answer, once); the old one works on for `grace_secs`.
#[utoipa::path(post, path = "/admin/api/keys/{key}/rotate", tag = "keys",
    params(("key" = String, Path, description = "the key's name or id")),
    request_body = RotateRequest, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = IssuedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn rotate(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<RotateRequest>,
) -> Result<Json<IssuedKey>, ApiError> {
    let rt = st.gateway.runtime();
    Ok(Json(
        keys::rotate(&st.gateway.stores, &rt.keys, &actor, &key, req.grace_secs).await?,
    ))
}

/// Revokes a key on every gateway: its requests get 401 like an unknown key's.
#[utoipa::path(post, path = "/admin/api/keys/{key}/revoke", tag = "keys",
    params(("key" = String, Path, description = "the key's name or id")),
    security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    Path(key): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let rt = st.gateway.runtime();
    Ok(Json(
        keys::revoke(&st.gateway.stores, &rt.keys, &actor, &key).await?,
    ))
}
