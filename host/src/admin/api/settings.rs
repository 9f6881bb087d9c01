//! `/admin/api/settings`: the live settings (`state::Settings`): read them, change some. A change
//! is stored in the database, applied on this gateway at once and on every gateway sharing the
//! database within a second, and audited with the values before and after.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::state::{AdminState, Operator};
use crate::admin::error::{ApiError, ApiJson, ErrorBody};
use crate::state::{AuditRecord, Settings};

/// Longest archive age accepted, in days.
const MAX_ARCHIVE_DAYS: u32 = 3650;
/// Longest alert window accepted, in seconds.
const MAX_ALERT_WINDOW_SECS: u64 = 7 * 86_400;

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

/// `failsafe` as the API takes it.
#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum FailsafeMode {
    Closed,
    Open,
}

/// The settings to change; absent ones keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    pub failsafe: Option<FailsafeMode>,
    pub alert_threshold: Option<u32>,
    pub alert_window_secs: Option<u64>,
    pub archive_days: Option<u32>,
    pub log_level: Option<String>,
    pub maintenance: Option<bool>,
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
    let stores = &st.gateway.stores;
    let before = stores.settings();
    let mut new = before.clone();
    if let Some(f) = change.failsafe {
        new.failsafe = match f {
            FailsafeMode::Closed => "closed",
            FailsafeMode::Open => "open",
        }
        .into();
    }
    if let Some(t) = change.alert_threshold {
        if t == 0 {
            return Err(ApiError::invalid(
                "alert_threshold",
                "must be greater than 0",
            ));
        }
        new.alert_threshold = t;
    }
    if let Some(w) = change.alert_window_secs {
        if !(1..=MAX_ALERT_WINDOW_SECS).contains(&w) {
            return Err(ApiError::invalid(
                "alert_window_secs",
                format!("must be 1 to {MAX_ALERT_WINDOW_SECS}"),
            ));
        }
        new.alert_window_secs = w;
    }
    if let Some(d) = change.archive_days {
        if d > MAX_ARCHIVE_DAYS {
            return Err(ApiError::invalid(
                "archive_days",
                format!("must be at most {MAX_ARCHIVE_DAYS} (0: never archive)"),
            ));
        }
        new.archive_days = d;
    }
    if let Some(level) = change.log_level {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            return Err(ApiError::invalid(
                "log_level",
                format!("not a log filter: {e}"),
            ));
        }
        new.log_level = level;
    }
    if let Some(m) = change.maintenance {
        new.maintenance = m;
    }
    let after = stores.save_settings(&new, &actor.name).await?;
    let record = AuditRecord::new(&actor.name, &actor.ip, "settings.update", "settings", "ok")
        .with_change(
            serde_json::to_string(&before).ok(),
            serde_json::to_string(&after).ok(),
        );
    stores.database().record_audit(record).await?;
    Ok(Json(after.into()))
}
