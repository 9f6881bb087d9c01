//! `/admin/api/settings`: the live settings (`state::Settings`): read them with where each value
//! comes from, change some, revert one to the config file's value. A change is stored in the
//! database, applied on this gateway at once and on every gateway sharing the database within a
//! second, and audited with the values before and after.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::state::{Admin, AdminState, Viewer};
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

/// The settings in effect, the config file's values, and which of them an override beats.
#[derive(Serialize, ToSchema)]
pub struct SettingsAnswer {
    #[serde(flatten)]
    pub current: SettingsView,
    /// The config file's value of every setting (what a reverted one goes back to).
    pub file: SettingsView,
    /// The settings saved through the API, which beat the file until reverted.
    pub overrides: Vec<OverrideView>,
}

/// One setting saved through the API.
#[derive(Serialize, ToSchema)]
pub struct OverrideView {
    pub name: String,
    /// Unix ms.
    pub updated_ms: u64,
    pub updated_by: String,
}

impl SettingsAnswer {
    fn of(stores: &crate::state::Stores) -> Self {
        Self {
            current: stores.settings().into(),
            file: stores.file_settings().into(),
            overrides: stores
                .settings_overrides()
                .into_iter()
                .map(|o| OverrideView {
                    name: o.name,
                    updated_ms: o.updated_ms,
                    updated_by: o.updated_by,
                })
                .collect(),
        }
    }
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

/// The live settings in effect, the config file's values, and the overrides.
#[utoipa::path(get, path = "/admin/api/settings", tag = "settings",
    security(("bearer" = [])),
    responses((status = 200, body = SettingsAnswer), (status = 401, body = ErrorBody)))]
pub async fn get(State(st): State<AdminState>, _: Viewer) -> Json<SettingsAnswer> {
    Json(SettingsAnswer::of(&st.gateway.stores))
}

/// Reverts one setting to the config file's value, on every gateway sharing the database.
#[utoipa::path(delete, path = "/admin/api/settings/{name}", tag = "settings",
    params(("name" = String, Path, description = "a setting's name, e.g. maintenance")),
    security(("bearer" = [])),
    responses((status = 200, body = SettingsAnswer), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revert(
    State(st): State<AdminState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
) -> Result<Json<SettingsAnswer>, ApiError> {
    settings::revert(&st.gateway.stores, &actor, &name).await?;
    Ok(Json(SettingsAnswer::of(&st.gateway.stores)))
}

/// Changes live settings for every gateway sharing the database.
#[utoipa::path(put, path = "/admin/api/settings", tag = "settings",
    request_body = SettingsChange, security(("bearer" = [])),
    responses((status = 415, description = "not sent as application/json", body = ErrorBody), (status = 200, body = SettingsAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put(
    State(st): State<AdminState>,
    Admin(actor): Admin,
    ApiJson(change): ApiJson<SettingsChange>,
) -> Result<Json<SettingsAnswer>, ApiError> {
    settings::update(&st.gateway.stores, &actor, change).await?;
    Ok(Json(SettingsAnswer::of(&st.gateway.stores)))
}
