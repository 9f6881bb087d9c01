//! The admin plane: endpoints for operators, not LLM clients, served on their own listener
//! (`admin.listen`, default `127.0.0.1:8318`) and never on the data plane, where `/metrics` and
//! `/admin/` are reserved paths no route may claim (they answer 404 there).
//!
//! Serves `GET /metrics` (Prometheus text, `crate::telemetry::metrics`); `/admin/api/…` and
//! `/admin/ui/…` arrive with the rest of the operator-plane issue. It changes the gateway only through the stores and a reload of the snapshot, so the
//! snapshot stays the one thing a request reads.

use std::sync::Arc;

use axum::Router;

use crate::error::ErrorKind;
use crate::gateway::Gateway;

/// The admin plane's routes. Every path it does not serve answers 404 in the OpenAI error shape.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
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
