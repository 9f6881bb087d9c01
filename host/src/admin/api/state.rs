//! What every admin API handler can reach ([`AdminState`]), and the authenticated operator
//! ([`Operator`], an extractor: a bearer token, or the console's cookie with its CSRF token).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::StatusCode;

use crate::admin::auth::AdminAuth;
use crate::admin::error::ApiError;
use crate::gateway::Gateway;
use crate::listen::ConnInfo;
use crate::service::Actor;

/// What every admin handler can reach.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub auth: Arc<AdminAuth>,
}

/// An authenticated operator (the extractor checks the token).
pub struct Operator(pub Actor);

impl FromRequestParts<AdminState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &AdminState,
    ) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let user = match bearer {
            Some(token) => state.auth.verify_token(token),
            // The console's cookie: a request that changes something must also carry the
            // session's CSRF token (`session.rs`).
            None => {
                let token = super::session::cookie_token(&parts.headers)
                    .ok_or_else(ApiError::unauthorized)?;
                let user = state.auth.verify_token(token);
                let safe = matches!(
                    parts.method,
                    http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
                );
                let offered = parts
                    .headers
                    .get(super::session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if user.is_some() && !safe && !state.auth.csrf_matches(token, offered) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf_failed",
                        "a request with the session cookie that changes something needs the session's X-CSRF-Token",
                    ));
                }
                user
            }
        }
        .ok_or_else(ApiError::unauthorized)?;
        Ok(Self(Actor {
            name: user,
            ip: client_ip(parts).to_string(),
        }))
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
