//! The data plane's own endpoints for load balancers and orchestrators.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use super::Gateway;

/// Liveness: the process is up and serving HTTP.
pub(super) async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: not draining, and the state of every upstream.
pub(super) async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    let rt = gw.runtime();
    let upstreams: Vec<_> = rt
        .upstreams
        .iter()
        .map(|u| json!({"name": &*u.name, "healthy": u.is_healthy()}))
        .collect();
    let state = if gw.draining.load(Ordering::Relaxed) {
        "draining"
    } else if gw.stores.maintenance() {
        "maintenance"
    } else {
        "ready"
    };
    let status = if state == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": state, "upstreams": upstreams});
    (status, axum::Json(body)).into_response()
}
