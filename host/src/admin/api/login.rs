//! `POST /admin/api/login`: a token for a user name and password (with the lockout).

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::AdminState;
use super::state::client_ip;
use crate::admin::auth::Login;
use crate::admin::error::{ApiError, ApiJson, ErrorBody};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Logs in. Wrong user names and wrong passwords get the same answer; repeated failures from
/// one IP lock the user name out there (`admin.lockout`).
#[utoipa::path(post, path = "/admin/api/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), 
        (status = 200, body = LoginResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, description = "locked out; see Retry-After", body = ErrorBody),
    ))]
pub(super) async fn login(
    State(st): State<AdminState>,
    parts: http::request::Parts,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let ip = client_ip(&parts);
    match st
        .auth
        .login(&st.gateway.stores, &req.username, &req.password, ip)
        .await?
    {
        Login::Ok {
            token, expires_at, ..
        } => Ok(Json(LoginResponse { token, expires_at })),
        other => Err(login_error(other)),
    }
}

/// The answer to a login that did not succeed.
pub(crate) fn login_error(outcome: Login) -> ApiError {
    match outcome {
        Login::Locked { retry_after_secs } => ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "login_locked",
                "too many failed logins for this user from this address; try again later",
            )
        },
        Login::Denied | Login::Ok { .. } => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        ),
    }
}
