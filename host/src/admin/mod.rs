//! The admin plane: endpoints for operators, not LLM clients, served on their own listener
//! (`admin.listen`, default `127.0.0.1:8318`) and never on the data plane, where `/metrics` and
//! `/admin/` are reserved paths no route may claim (they answer 404 there).
//!
//! Empty for now: `/metrics`, `/admin/api/…` and `/admin/ui/…` arrive with the operator-plane
//! issue. It changes the gateway only through the stores and a reload of the snapshot, so the
//! snapshot stays the one thing a request reads.

use std::sync::Arc;

use axum::Router;

use crate::error::ErrorKind;
use crate::gateway::Gateway;

/// The admin plane's routes. Every path it does not serve answers 404 in the OpenAI error shape.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .fallback(|| async { ErrorKind::NoRoute })
        .method_not_allowed_fallback(|| async {
            ErrorKind::MethodNotAllowed {
                allow: "GET, HEAD".into(),
            }
        })
        .with_state(gateway)
}
