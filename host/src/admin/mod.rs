//! The admin plane: endpoints for operators, not LLM clients, served on their own listener
//! (`admin.listen`, default `127.0.0.1:8318`) and never on the data plane, where `/metrics` and
//! `/admin/` are reserved paths no route may claim (they answer 404 there).
//!
//! Every request is first checked against `admin.allow` (403 otherwise). Serves:
//! - `GET /metrics` (Prometheus text, `crate::telemetry::metrics`);
//! - `/admin/api/…` (`api/`, one file per endpoint group: login, session, dashboard, bindings,
//!   usage, upstreams, plugins and reload, intercepts, settings, IP rules, audit; OpenAPI at
//!   `/admin/api/openapi.json`), behind a JWT (`auth.rs`): as a bearer token, or for the console
//!   as an HttpOnly cookie with a CSRF token (`api/session.rs`);
//! - `/admin/ui/` (`ui.rs`): the console, embedded in the binary.
//!
//! It changes the gateway only through the stores (`crate::service`) and a reload of the
//! snapshot, so the snapshot stays the one thing a request reads.

pub mod api;
pub mod auth;
pub mod error;
pub mod oidc;
pub mod ui;

/// Longest page any list endpoint serves at once.
pub use crate::service::bindings::MAX_PAGE;

use std::sync::Arc;

use axum::Router;

use crate::error::ErrorKind;
use crate::gateway::Gateway;

/// The admin plane's routes. Every path it does not serve answers 404 in the OpenAI error shape.
pub fn router(gateway: Arc<Gateway>, auth: Arc<auth::AdminAuth>) -> Router {
    let api = api::routes()
        .fallback(|| async {
            error::ApiError::new(
                http::StatusCode::NOT_FOUND,
                "unknown_url",
                "no admin API endpoint at this path",
            )
        })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path",
            )
        })
        .with_state(api::AdminState {
            gateway: gateway.clone(),
            auth,
        });
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .nest("/admin/api", api)
        .merge(ui::routes())
        .fallback(|| async { ErrorKind::NoRoute })
        .method_not_allowed_fallback(|| async {
            ErrorKind::MethodNotAllowed {
                allow: "GET, HEAD".into(),
            }
        })
        .with_state(gateway)
}

/// The metrics in the Prometheus text format.
async fn metrics(
    axum::extract::State(gateway): axum::extract::State<Arc<Gateway>>,
) -> impl axum::response::IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gateway.metrics.encode(&gateway.runtime(), &gateway.stores),
    )
}
