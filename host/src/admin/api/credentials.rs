//! `/admin/api/credentials…`: upstream credentials (`service::credentials`). Each upstream with
//! where its credential comes from and its fingerprint; set one (it is sealed and stored, and
//! never returned), remove one. Audited; every gateway applies a change within a second.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::{Admin, AdminState, Viewer};
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::service::credentials::{self as service, CredentialView};

/// The upstreams and their credentials' sources and fingerprints.
#[utoipa::path(get, path = "/admin/api/credentials", tag = "upstreams",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<CredentialView>), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(st): State<AdminState>,
    _: Viewer,
) -> Result<Json<Vec<CredentialView>>, ApiError> {
    let rt = st.gateway.runtime();
    let upstreams: Vec<_> = rt.upstreams.iter().map(|u| &u.config).collect();
    Ok(Json(service::list(&st.gateway.stores, &upstreams).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCredential {
    /// The upstream account's API key. Sealed (AES-256-GCM) and stored; never shown again.
    pub credential: String,
}

#[derive(Serialize, ToSchema)]
pub struct CredentialSet {
    pub upstream: String,
    /// The first 16 hex digits of its SHA-256.
    pub fingerprint: String,
    pub key_id: String,
}

/// Sets an upstream's credential on every gateway (it wins over the config file's).
#[utoipa::path(put, path = "/admin/api/credentials/{upstream}", tag = "upstreams",
    params(("upstream" = String, Path, description = "upstream name")),
    request_body = SetCredential, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = CredentialSet), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set(
    State(st): State<AdminState>,
    Admin(actor): Admin,
    Path(upstream): Path<String>,
    ApiJson(req): ApiJson<SetCredential>,
) -> Result<Json<CredentialSet>, ApiError> {
    let rt = st.gateway.runtime();
    let upstreams: Vec<_> = rt.upstreams.iter().map(|u| &u.config).collect();
    let info = service::set(
        &st.gateway.stores,
        &upstreams,
        &actor,
        &upstream,
        &req.credential,
    )
    .await?;
    Ok(Json(CredentialSet {
        upstream: info.upstream,
        fingerprint: info.fingerprint,
        key_id: info.key_id,
    }))
}

/// Removes an upstream's stored credential: the config file's applies again.
#[utoipa::path(delete, path = "/admin/api/credentials/{upstream}", tag = "upstreams",
    params(("upstream" = String, Path, description = "upstream name")),
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(st): State<AdminState>,
    Admin(actor): Admin,
    Path(upstream): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::remove(&st.gateway.stores, &actor, &upstream).await?;
    Ok(StatusCode::NO_CONTENT)
}
