//! `/admin/api/oidc…`: console sign-in through the OpenID Connect provider of `admin.oidc`
//! (`crate::admin::oidc` has the flow). Public: the browser has no session yet.
//!
//! - `GET /admin/api/oidc`: whether SSO is configured, and the login page's button text.
//! - `GET /admin/api/oidc/login`: 302 to the provider (with the flow cookie).
//! - `GET /admin/api/oidc/callback`: the provider's redirect back; 302 to the console with the
//!   session cookie, or to `/admin/ui/?sso_error=CODE` when the sign-in is refused (`state`,
//!   `expired`, `code`, `token`, `no_role`, `provider`, `denied`). Every outcome is audited as
//!   `login.sso` with its detail; the browser only ever sees the code.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::session::{cookie, forwarded_https, set_cookie};
use super::state::{AdminState, client_ip};
use crate::admin::error::{ApiError, ApiQuery, ErrorBody};
use crate::admin::oidc::FLOW_COOKIE;
use crate::listen::ConnInfo;
use crate::state::AuditRecord;

/// Whether the console offers SSO.
#[derive(Serialize, ToSchema)]
pub struct OidcView {
    pub enabled: bool,
    /// The login page's button.
    pub button: Option<String>,
}

/// Whether SSO is configured (for the login page).
#[utoipa::path(get, path = "/admin/api/oidc", tag = "auth",
    responses((status = 200, body = OidcView)))]
pub(super) async fn info(State(st): State<AdminState>) -> Json<OidcView> {
    let oidc = st.auth.oidc();
    Json(OidcView {
        enabled: oidc.is_some(),
        button: oidc.map(|o| o.button().to_owned()),
    })
}

fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "sso_not_configured",
        "console sign-in through an OpenID provider is not configured (admin.oidc)",
    )
}

fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(http::header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(http::header::SET_COOKIE, v);
        }
    }
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

/// Starts a sign-in: 302 to the provider's authorization endpoint.
#[utoipa::path(get, path = "/admin/api/oidc/login", tag = "auth",
    responses((status = 302, description = "to the provider"), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn login(
    State(st): State<AdminState>,
    parts: http::request::Parts,
) -> Result<Response, ApiError> {
    let oidc = st.auth.oidc().ok_or_else(not_configured)?;
    let secure =
        parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls) || forwarded_https(&parts);
    match oidc.start(secure).await {
        Ok(start) => Ok(redirect(&start.location, &[start.cookie])),
        Err(e) => {
            tracing::warn!(target: "audit", error = %e.detail, "sso: the provider cannot be reached");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sso_unavailable",
                "the OpenID provider cannot be reached; try again, or sign in with a password",
            ))
        }
    }
}

/// What the provider sends back.
#[derive(Deserialize, IntoParams)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set by the provider when the user or the provider refused.
    pub error: Option<String>,
}

/// The provider's redirect back: 302 to the console, signed in or with `sso_error`.
#[utoipa::path(get, path = "/admin/api/oidc/callback", tag = "auth", params(CallbackParams),
    responses((status = 302, description = "to the console"), (status = 404, body = ErrorBody)))]
pub(super) async fn callback(
    State(st): State<AdminState>,
    parts: http::request::Parts,
    ApiQuery(p): ApiQuery<CallbackParams>,
) -> Result<Response, ApiError> {
    let oidc = st.auth.oidc().ok_or_else(not_configured)?;
    let secure =
        parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls) || forwarded_https(&parts);
    let ip = client_ip(&parts).to_string();
    let flow_cookie = cookie(&parts.headers, FLOW_COOKIE);
    let clear_flow =
        format!("{FLOW_COOKIE}=; Path=/admin/api/oidc; Max-Age=0; HttpOnly; SameSite=Lax");
    let outcome = match (&p.error, &p.code, &p.state) {
        (Some(e), _, _) => Err(crate::admin::oidc::OidcError {
            code: "denied",
            detail: format!("the provider answered error={}", crate::error::truncate(e)),
        }),
        (None, Some(code), Some(state)) => oidc.finish(code, state, flow_cookie).await,
        _ => Err(crate::admin::oidc::OidcError {
            code: "state",
            detail: "the callback lacks code or state".into(),
        }),
    };
    let db = st.gateway.stores.database();
    match outcome {
        Ok((user, role)) => {
            let Some((token, expires_at)) = st.auth.issue_sso(&user, role) else {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state_unavailable",
                    "cannot issue a session",
                ));
            };
            db.record_audit(
                AuditRecord::new(&user, &ip, "login.sso", &user, "ok").with_change(
                    None,
                    Some(serde_json::json!({"role": role.as_str()}).to_string()),
                ),
            )
            .await?;
            let now = crate::state::unix_ms() / 1000;
            let session = set_cookie(&token, expires_at.saturating_sub(now), secure);
            let session = session.to_str().unwrap_or_default().to_owned();
            Ok(redirect("/admin/ui/", &[session, clear_flow]))
        }
        Err(e) => {
            tracing::warn!(target: "audit", code = e.code, error = %e.detail, %ip, "sso sign-in refused");
            db.record_audit(
                AuditRecord::new("sso", &ip, "login.sso", e.code, "denied")
                    .with_change(None, Some(serde_json::json!({"why": e.detail}).to_string())),
            )
            .await?;
            Ok(redirect(
                &format!("/admin/ui/?sso_error={}", e.code),
                &[clear_flow],
            ))
        }
    }
}
