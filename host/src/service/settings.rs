//! Live settings (`state::Settings`): read them, change some. A change is validated field by
//! field, stored in the database (every gateway sharing it applies it within a second), and
//! audited with the values before and after.

use serde::Deserialize;

use super::{Actor, ServiceError};
use crate::state::{AuditRecord, Settings, Stores};

/// Longest archive age accepted, in days.
pub const MAX_ARCHIVE_DAYS: u32 = 3650;
/// Longest alert window accepted, in seconds.
pub const MAX_ALERT_WINDOW_SECS: u64 = 7 * 86_400;

/// `failsafe` as operators give it.
#[derive(Deserialize, utoipa::ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum FailsafeMode {
    Closed,
    Open,
}

/// The settings to change; absent ones keep their value.
#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    pub failsafe: Option<FailsafeMode>,
    pub alert_threshold: Option<u32>,
    pub alert_window_secs: Option<u64>,
    pub archive_days: Option<u32>,
    pub log_level: Option<String>,
    pub maintenance: Option<bool>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field,
        message: message.into(),
    }
}

impl SettingsChange {
    /// `current` with this change applied, or the first field at fault (nothing applied).
    pub fn apply_to(self, current: &Settings) -> Result<Settings, ServiceError> {
        let mut new = current.clone();
        if let Some(f) = self.failsafe {
            new.failsafe = match f {
                FailsafeMode::Closed => "closed",
                FailsafeMode::Open => "open",
            }
            .into();
        }
        if let Some(t) = self.alert_threshold {
            if t == 0 {
                return Err(invalid("alert_threshold", "must be greater than 0"));
            }
            new.alert_threshold = t;
        }
        if let Some(w) = self.alert_window_secs {
            if !(1..=MAX_ALERT_WINDOW_SECS).contains(&w) {
                return Err(invalid(
                    "alert_window_secs",
                    format!("must be 1 to {MAX_ALERT_WINDOW_SECS}"),
                ));
            }
            new.alert_window_secs = w;
        }
        if let Some(d) = self.archive_days {
            if d > MAX_ARCHIVE_DAYS {
                return Err(invalid(
                    "archive_days",
                    format!("must be at most {MAX_ARCHIVE_DAYS} (0: never archive)"),
                ));
            }
            new.archive_days = d;
        }
        if let Some(level) = self.log_level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
                return Err(invalid("log_level", format!("not a log filter: {e}")));
            }
            new.log_level = level;
        }
        if let Some(m) = self.maintenance {
            new.maintenance = m;
        }
        Ok(new)
    }
}

/// The names of the live settings.
pub const NAMES: &[&str] = &[
    "failsafe",
    "alert_threshold",
    "alert_window_secs",
    "archive_days",
    "log_level",
    "maintenance",
];

/// Ends the override of the setting `name` (the config file's value applies again on every
/// gateway sharing the database) and audits it with the values before and after.
pub async fn revert(stores: &Stores, actor: &Actor, name: &str) -> Result<Settings, ServiceError> {
    if !NAMES.contains(&name) {
        return Err(ServiceError::NotFound("setting"));
    }
    let before = stores.settings();
    let had = stores.revert_setting(name).await?;
    let after = stores.settings();
    let record = AuditRecord::new(
        &actor.name,
        &actor.ip,
        "settings.revert",
        name,
        if had { "ok" } else { "unchanged" },
    )
    .with_change(
        serde_json::to_string(&before).ok(),
        serde_json::to_string(&after).ok(),
    );
    stores.database().record_audit(record).await?;
    Ok(after)
}

/// Applies `change` for every gateway sharing the database and audits it; the settings after.
pub async fn update(
    stores: &Stores,
    actor: &Actor,
    change: SettingsChange,
) -> Result<Settings, ServiceError> {
    let before = stores.settings();
    let new = change.apply_to(&before)?;
    let after = stores.save_settings(&new, &actor.name).await?;
    let record = AuditRecord::new(&actor.name, &actor.ip, "settings.update", "settings", "ok")
        .with_change(
            serde_json::to_string(&before).ok(),
            serde_json::to_string(&after).ok(),
        );
    stores.database().record_audit(record).await?;
    Ok(after)
}
