//! `/admin/api/settings`: the live settings (`state::Settings`): read them, change some. A change
//! is stored in the database, applied on this gateway at once and on every gateway sharing the
//! database within a second, and audited with the values before and after.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::{AdminState, Operator};
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::service::settings::{self, SettingsChange};
use crate::state::Settings;

#[derive(Serialize, ToSchema)]
pub struct SettingsView {
    /// `closed` (503) or `open` (let through) when the stores cannot decide a request.
    pub failsafe: String,
    /// Intercepts of one key within the window that send one webhook alert.
    pub alert_threshold: u32,
    pub alert_window_secs: u64,
    /// Active bindings unused this many days are archived (0: never).
    pub archive_days: u32,
    /// A tracing filter, e.g. `info` or `tollgate=debug,access=off`.
    pub log_level: String,
    /// Maintenance mode for every route of every gateway: proxied requests get 503 with
    /// `Retry-After` (the config file's `maintenance.enabled` turns it on too).
    pub maintenance: bool,
}

impl From<Settings> for SettingsView {
    fn from(s: Settings) -> Self {
        Self {
            failsafe: s.failsafe,
            alert_threshold: s.alert_threshold,
            alert_window_secs: s.alert_window_secs,
            archive_days: s.archive_days,
            log_level: s.log_level,
            maintenance: s.maintenance,
        }
    }
}

/// The live settings in effect.
#[utoipa::path(get, path = "/admin/api/settings", tag = "settings",
    security(("bearer" = [])),
    responses((status = 200, body = SettingsView), (status = 401, body = ErrorBody)))]
pub async fn get(State(st): State<AdminState>, _op: Operator) -> Json<SettingsView> {
    Json(st.gateway.stores.settings().into())
}

/// Changes live settings for every gateway sharing the database.
#[utoipa::path(put, path = "/admin/api/settings", tag = "settings",
    request_body = SettingsChange, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = SettingsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn put(
    State(st): State<AdminState>,
    Operator(actor): Operator,
    ApiJson(change): ApiJson<SettingsChange>,
) -> Result<Json<SettingsView>, ApiError> {
    Ok(Json(
        settings::update(&st.gateway.stores, &actor, change)
            .await?
            .into(),
    ))
}
