//! What every admin API handler can reach ([`AdminState`]), and who is calling ([`Viewer`],
//! [`Operator`], [`Admin`]: extractors named for the least role a handler needs).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::StatusCode;

use crate::admin::auth::AdminAuth;
use crate::admin::error::ApiError;
use crate::config::AdminRole;
use crate::gateway::Gateway;
use crate::listen::ConnInfo;
use crate::service::Actor;

/// What every admin handler can reach.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub auth: Arc<AdminAuth>,
}

/// Who is calling, checked: a bearer token, or the console's cookie (with the session's CSRF
/// token on anything but GET, HEAD and OPTIONS). Handlers take one of the three extractors
/// below, named for the least role they need; a lesser role gets 403 `forbidden_role`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub role: AdminRole,
}

/// Any signed-in user (`viewer` and up): reading, and ending one's own session.
pub struct Viewer(pub Caller);
/// `operator` and up: the day-to-day changes.
pub struct Operator(pub Actor);
/// `admin` only: live settings and upstream credentials.
pub struct Admin(pub Actor);

async fn caller(
    parts: &http::request::Parts,
    state: &AdminState,
    need: AdminRole,
) -> Result<Caller, ApiError> {
    let bearer = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let signed = match bearer {
        Some(token) => state.auth.verify_token(token),
        // The console's cookie: a request that changes something must also carry the
        // session's CSRF token (`session.rs`).
        None => {
            let token = super::session::cookie_token(&parts.headers)
                .ok_or_else(ApiError::unauthorized)?;
            let signed = state.auth.verify_token(token);
            let safe = matches!(
                parts.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            );
            let offered = parts
                .headers
                .get(super::session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if signed.is_some() && !safe && !state.auth.csrf_matches(token, offered) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_failed",
                    "a request with the session cookie that changes something needs the session's X-CSRF-Token",
                ));
            }
            signed
        }
    }
    .ok_or_else(ApiError::unauthorized)?;
    if signed.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!(
                "this needs the {} role; {} has {}",
                need.as_str(),
                signed.user,
                signed.role.as_str()
            ),
        ));
    }
    Ok(Caller {
        actor: Actor {
            name: signed.user,
            ip: client_ip(parts).to_string(),
        },
        role: signed.role,
    })
}

impl FromRequestParts<AdminState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AdminState,
    ) -> Result<Self, ApiError> {
        caller(parts, state, AdminRole::Viewer).await.map(Self)
    }
}

impl FromRequestParts<AdminState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AdminState,
    ) -> Result<Self, ApiError> {
        caller(parts, state, AdminRole::Operator)
            .await
            .map(|c| Self(c.actor))
    }
}

impl FromRequestParts<AdminState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AdminState,
    ) -> Result<Self, ApiError> {
        caller(parts, state, AdminRole::Admin)
            .await
            .map(|c| Self(c.actor))
    }
}

pub(crate) fn client_ip(parts: &http::request::Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnInfo>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| {
            crate::config::canonical_ip(c.peer.ip())
        })
}
