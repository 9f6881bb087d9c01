//! `/admin/api/status`, `/admin/api/alerts`, `/admin/api/config`: what an operator on call
//! looks at first — the gateway's version, uptime and config file, its stores' health, the
//! conditions that need attention (`service::status`), the alerts it sent, and the config in
//! service with its secrets redacted.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::{AdminState, Viewer};
use crate::admin::error::ErrorBody;
use crate::service::status::{self, Condition, Status};

/// Version, uptime, config file, stores, counters and the conditions that need attention.
#[utoipa::path(get, path = "/admin/api/status", tag = "status",
    security(("bearer" = [])),
    responses((status = 200, body = Status), (status = 401, body = ErrorBody)))]
pub(super) async fn get(State(st): State<AdminState>, _: Viewer) -> Json<Status> {
    Json(status::status(&st.gateway).await)
}

/// The conditions that need attention now, and the alerts this gateway sent lately.
#[derive(Serialize, ToSchema)]
pub struct AlertsView {
    pub conditions: Vec<Condition>,
    /// The last 100 webhook alerts this gateway sent (repeated intercepts, budgets), newest
    /// first, with their delivery (`sending`, `delivered`, `failed`); kept in memory.
    #[schema(value_type = Vec<Object>)]
    pub sent: Vec<crate::state::SentAlert>,
    /// Whether `alerts.webhook` is set (without it no alert is sent).
    pub webhook: bool,
}

/// Conditions and sent alerts.
#[utoipa::path(get, path = "/admin/api/alerts", tag = "status",
    security(("bearer" = [])),
    responses((status = 200, body = AlertsView), (status = 401, body = ErrorBody)))]
pub(super) async fn alerts(State(st): State<AdminState>, _: Viewer) -> Json<AlertsView> {
    let s = status::status(&st.gateway).await;
    Json(AlertsView {
        conditions: s.conditions,
        sent: st.gateway.stores.recent_alerts(),
        webhook: st.gateway.stores.alerts_webhook_set(),
    })
}

/// The config in service (after the last successful reload), defaults filled in and every
/// secret `<redacted>`: API keys, credentials, passwords and their hashes, URL passwords, a
/// webhook's path, plugin config values named like secrets.
#[utoipa::path(get, path = "/admin/api/config", tag = "status",
    security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
pub(super) async fn config(
    State(st): State<AdminState>,
    _: Viewer,
) -> Json<std::sync::Arc<serde_json::Value>> {
    Json(st.gateway.shown_config())
}
