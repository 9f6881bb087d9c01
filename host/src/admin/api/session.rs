//! The console's session: the admin JWT kept in an `HttpOnly`, `SameSite=Strict` cookie, so no
//! page script can read it, and a CSRF token that every state-changing request made with the
//! cookie must carry in `X-CSRF-Token`.
//!
//! - `POST /admin/api/session` `{username, password}`: the same login as `POST /login` (lockout,
//!   audit), answered with the cookie (`Path=/admin`, `Max-Age` = the token's lifetime, `Secure`
//!   when the browser's connection is HTTPS: a TLS connection, or a proxy in front saying so with
//!   `X-Forwarded-Proto`/`Forwarded`) and `{user, expires_at, csrf}` — never the token.
//! - `GET /admin/api/session`: who the cookie belongs to, and its CSRF token again (a page
//!   reload). Only same-origin scripts can read the answer.
//! - `DELETE /admin/api/session`: clears the cookie.
//!
//! The CSRF token is an HMAC of the session's JWT under a key derived from the JWT secret: only
//! the server can make it, it changes with each login, and it needs no stored state. Requests
//! with `Authorization: Bearer` (scripts, `curl`) need no CSRF token: a browser never adds that
//! header on its own.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::login::{LoginRequest, login_error};
use super::state::{AdminState, Viewer, client_ip};
use crate::admin::auth::Login;
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::config::AdminRole;
use crate::listen::ConnInfo;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// The request header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A console session, as its page sees it.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub user: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Unix seconds when the session ends.
    pub expires_at: Option<u64>,
    /// Send it as `X-CSRF-Token` with every POST, PUT, PATCH and DELETE.
    pub csrf: String,
}

/// The session token in the request's cookies, if any.
pub fn cookie_token(headers: &http::HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// The value of the cookie `wanted` in the request's `Cookie` headers, if it is there and not
/// empty.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, wanted: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == wanted && !value.is_empty()).then_some(value)
        })
}

/// Whether a proxy in front says the browser's connection is HTTPS (`X-Forwarded-Proto: https`,
/// or `Forwarded: proto=https`). The admin listener itself serves plain HTTP, so this is how the
/// cookie learns it must be `Secure`. No trust is needed: a client that sends it only makes its
/// own cookie stricter.
pub(super) fn forwarded_https(parts: &http::request::Parts) -> bool {
    let says = |name: &str, https: &dyn Fn(&str) -> bool| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(https)
    };
    says("x-forwarded-proto", &|v| {
        v.split(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
    }) || says("forwarded", &|v| {
        v.split([';', ','])
            .any(|kv| kv.trim().eq_ignore_ascii_case("proto=https"))
    })
}

pub(super) fn set_cookie(value: &str, max_age: u64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("tollgate_session=; Max-Age=0"))
}

/// Logs in and starts a console session (the token goes in the cookie, not in the body).
#[utoipa::path(post, path = "/admin/api/session", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, body = SessionView, headers(("set-cookie" = String, description = "the HttpOnly session cookie"))),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(super) async fn create(
    State(st): State<AdminState>,
    parts: http::request::Parts,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = client_ip(&parts);
    let tls = parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls) || forwarded_https(&parts);
    match st
        .auth
        .login(&st.gateway.stores, &req.username, &req.password, ip)
        .await?
    {
        Login::Ok {
            token,
            expires_at,
            role,
        } => Ok(session_answer(
            &st,
            req.username,
            role,
            &token,
            expires_at,
            tls,
        )),
        other => Err(login_error(other)),
    }
}

/// A session's view with its cookie set (never the token in the body).
fn session_answer(
    st: &AdminState,
    user: String,
    role: AdminRole,
    token: &str,
    expires_at: u64,
    tls: bool,
) -> Response {
    let now = crate::state::unix_ms() / 1000;
    let view = SessionView {
        user,
        role: role.as_str().into(),
        expires_at: Some(expires_at),
        csrf: st.auth.csrf_token(token),
    };
    let mut resp = Json(view).into_response();
    resp.headers_mut().insert(
        http::header::SET_COOKIE,
        set_cookie(token, expires_at.saturating_sub(now), tls),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// Renews the console session: a new cookie `admin.token_ttl` from now (never past
/// `admin.session_max` after the login) and its new CSRF token. The console calls it while it
/// is used; 401 once the session cannot be renewed.
#[utoipa::path(post, path = "/admin/api/session/renew", tag = "auth",
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn renew(
    State(st): State<AdminState>,
    parts: http::request::Parts,
    Viewer(c): Viewer,
) -> Result<Response, ApiError> {
    let tls = parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls) || forwarded_https(&parts);
    let token = cookie_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    let (fresh, expires_at) = st.auth.renew(token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "session_at_maximum",
            "this session has reached admin.session_max; sign in again",
        )
    })?;
    Ok(session_answer(
        &st,
        c.actor.name,
        c.role,
        &fresh,
        expires_at,
        tls,
    ))
}

/// The current console session and its CSRF token.
#[utoipa::path(get, path = "/admin/api/session", tag = "auth",
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody)))]
pub(super) async fn current(
    State(st): State<AdminState>,
    parts: http::request::Parts,
    Viewer(c): Viewer,
) -> Result<Response, ApiError> {
    let token = cookie_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    let view = SessionView {
        user: c.actor.name,
        role: c.role.as_str().into(),
        expires_at: st.auth.verify_token(token).map(|s| s.expires_at),
        csrf: st.auth.csrf_token(token),
    };
    let mut resp = Json(view).into_response();
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Ends the console session (clears the cookie).
#[utoipa::path(delete, path = "/admin/api/session", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn end(parts: http::request::Parts, _: Viewer) -> Response {
    let tls = parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls) || forwarded_https(&parts);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(http::header::SET_COOKIE, set_cookie("", 0, tls));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; tollgate_session=tok; b=2"),
        );
        assert_eq!(cookie_token(&h), Some("tok"));
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("tollgate_session_x=no; tollgate_session="),
        );
        assert_eq!(cookie_token(&h), None);
    }
}
