//! Live settings: the few settings safe to change while the gateway serves — the failsafe, the
//! alert threshold and window, the archive age and the log level. Each starts from the config
//! file; a value changed through the admin API is stored in the `settings` table, applied at once
//! on the gateway that took the change, announced on the cache's `settings` channel, and re-read
//! by every gateway sharing the database (on the announcement, and every
//! [`SETTINGS_POLL`] in case it was missed).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use tollgate_config::{AlertsConfig, Failsafe, StorageConfig};

use super::sql::db_err;
use super::{StoreResult, Stores, unix_ms};

/// How often each gateway re-reads the settings table (besides the announcements).
pub const SETTINGS_POLL: Duration = Duration::from_millis(500);
const CHANNEL: &str = "settings";

/// The live settings in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `closed` (503) or `open` (let through) when the stores cannot decide.
    pub failsafe: String,
    /// Intercepts of one key within the window that send one webhook alert.
    pub alert_threshold: u32,
    pub alert_window_secs: u64,
    /// Active bindings unused this many days are archived (0: never).
    pub archive_days: u32,
    /// A tracing filter, e.g. `info` or `tollgate=debug,access=off`.
    pub log_level: String,
    /// Maintenance mode for every route, on top of the config file's `maintenance.enabled`.
    #[serde(default)]
    pub maintenance: bool,
}

/// A setting saved through the admin API, which beats the config file's value until it is
/// reverted (`DELETE /admin/api/settings/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingOverride {
    pub name: String,
    /// The stored value as JSON text.
    pub value: String,
    pub updated_ms: u64,
    pub updated_by: String,
}

impl Settings {
    /// The config file's value of each setting: what it is while no override is stored.
    pub fn from_file(config: &tollgate_config::Config) -> Self {
        Self {
            failsafe: failsafe_name(config.storage.failsafe).into(),
            alert_threshold: config.alerts.threshold,
            alert_window_secs: config.alerts.window.get().as_secs(),
            archive_days: config.storage.archive_days,
            log_level: config.logging.level.clone(),
            maintenance: config.maintenance.enabled,
        }
    }
}

/// The settings as atomics, read on the request path without a lock.
pub(crate) struct Live {
    failsafe_open: AtomicU8,
    alert_threshold: AtomicU32,
    alert_window_ms: AtomicU64,
    archive_days: AtomicU32,
    maintenance: std::sync::atomic::AtomicBool,
    log_level: Mutex<String>,
    /// The config file's values: what a setting without a row is.
    defaults: Mutex<Settings>,
    /// The table's rows as last read: the overrides.
    rows: Mutex<Vec<SettingOverride>>,
    /// Tells the host (log level) about changes.
    changed: tokio::sync::watch::Sender<Settings>,
    /// Newest `updated_ms` applied, to skip re-applying an unchanged table.
    seen_ms: AtomicU64,
    /// Rows in the table when it was last read: a revert deletes one, which the newest
    /// change time alone would not show.
    seen_rows: AtomicU64,
}

fn failsafe_name(f: Failsafe) -> &'static str {
    match f {
        Failsafe::Closed => "closed",
        Failsafe::Open => "open",
    }
}

impl Live {
    pub(crate) fn new(storage: &StorageConfig, alerts: &AlertsConfig) -> Self {
        let defaults = Settings {
            failsafe: failsafe_name(storage.failsafe).into(),
            alert_threshold: alerts.threshold,
            alert_window_secs: alerts.window.get().as_secs(),
            archive_days: storage.archive_days,
            log_level: "info".into(),
            maintenance: false,
        };
        let live = Self {
            failsafe_open: AtomicU8::new(0),
            alert_threshold: AtomicU32::new(0),
            alert_window_ms: AtomicU64::new(0),
            archive_days: AtomicU32::new(0),
            maintenance: std::sync::atomic::AtomicBool::new(false),
            log_level: Mutex::new(String::new()),
            changed: tokio::sync::watch::channel(defaults.clone()).0,
            defaults: Mutex::new(defaults.clone()),
            rows: Mutex::new(Vec::new()),
            seen_ms: AtomicU64::new(0),
            seen_rows: AtomicU64::new(0),
        };
        live.apply(&defaults);
        live
    }

    fn apply(&self, s: &Settings) {
        self.failsafe_open
            .store(u8::from(s.failsafe == "open"), Ordering::Relaxed);
        self.alert_threshold
            .store(s.alert_threshold, Ordering::Relaxed);
        self.alert_window_ms.store(
            s.alert_window_secs.saturating_mul(1000).max(1),
            Ordering::Relaxed,
        );
        self.archive_days.store(s.archive_days, Ordering::Relaxed);
        self.maintenance.store(s.maintenance, Ordering::Relaxed);
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = s.log_level.clone();
        self.changed.send_if_modified(|current| {
            let differs = current != s;
            if differs {
                *current = s.clone();
            }
            differs
        });
    }

    pub(crate) fn failsafe(&self) -> Failsafe {
        if self.failsafe_open.load(Ordering::Relaxed) == 1 {
            Failsafe::Open
        } else {
            Failsafe::Closed
        }
    }

    pub(crate) fn alert_threshold(&self) -> u32 {
        self.alert_threshold.load(Ordering::Relaxed)
    }

    pub(crate) fn alert_window_ms(&self) -> u64 {
        self.alert_window_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn archive_days(&self) -> u32 {
        self.archive_days.load(Ordering::Relaxed)
    }

    fn current(&self) -> Settings {
        Settings {
            failsafe: failsafe_name(self.failsafe()).into(),
            alert_threshold: self.alert_threshold(),
            alert_window_secs: self.alert_window_ms() / 1000,
            archive_days: self.archive_days(),
            maintenance: self.maintenance.load(Ordering::Relaxed),
            log_level: self
                .log_level
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// `base` with the stored settings (name, value as JSON) over it; an unknown name or a value of
/// the wrong type leaves that setting as it was.
fn merge(base: &Settings, rows: &[SettingOverride]) -> Settings {
    let mut merged = base.clone();
    for SettingOverride { name, value, .. } in rows {
        let (Ok(mut v), Ok(parsed)) = (
            serde_json::to_value(&merged),
            serde_json::from_str::<serde_json::Value>(value),
        ) else {
            continue;
        };
        if let Some(obj) = v.as_object_mut()
            && obj.contains_key(name)
        {
            obj.insert(name.clone(), parsed);
            if let Ok(next) = serde_json::from_value(v) {
                merged = next;
            }
        }
    }
    merged
}

impl Stores {
    /// The config file's values (at start and at each reload): what each setting is while no
    /// override is stored. Applies the settings again with the overrides last read.
    pub fn set_file_settings(&self, file: Settings) {
        *self.live.defaults.lock().unwrap_or_else(|p| p.into_inner()) = file.clone();
        let rows = self
            .live
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.live.apply(&merge(&file, &rows));
    }

    /// The config file's values of the settings.
    pub fn file_settings(&self) -> Settings {
        self.live
            .defaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The settings saved through the admin API (as last read from the table, at most
    /// [`SETTINGS_POLL`] ago), which beat the config file's values.
    pub fn settings_overrides(&self) -> Vec<SettingOverride> {
        self.live
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Removes the override of `name`, so the config file's value applies again, here at once
    /// and on every gateway sharing the database within a second. Whether there was one.
    pub async fn revert_setting(&self, name: &str) -> StoreResult<bool> {
        let done = self
            .db
            .timed(
                sqlx::query("DELETE FROM settings WHERE name = $1")
                    .bind(name)
                    .execute(&self.db.pool),
            )
            .await?;
        self.refresh_settings().await?;
        if let Err(e) = self.cache.publish(CHANNEL, "changed").await {
            self.cache_failed("publish settings", &e);
        }
        Ok(done.rows_affected() > 0)
    }

    /// Whether maintenance mode is on: the config file's `maintenance.enabled`, or the live
    /// setting that overrides it.
    pub fn maintenance(&self) -> bool {
        self.live.maintenance.load(Ordering::Relaxed)
    }

    /// The live settings in effect on this gateway.
    pub fn settings(&self) -> Settings {
        self.live.current()
    }

    /// Changes to the live settings as they happen (for what the host applies itself: the log
    /// level).
    pub fn settings_changes(&self) -> tokio::sync::watch::Receiver<Settings> {
        self.live.changed.subscribe()
    }

    /// Stores `new` (already validated) for every gateway, applies it here and announces it;
    /// returns what is in effect. Only settings that differ from the current ones get a row.
    pub async fn save_settings(&self, new: &Settings, by: &str) -> StoreResult<Settings> {
        let current = serde_json::to_value(self.settings()).unwrap_or_default();
        let wanted = serde_json::to_value(new).unwrap_or_default();
        let now = unix_ms();
        let upsert = "INSERT INTO settings (name, value, updated_ms, updated_by) VALUES ($1, $2, $3, $4) \
                      ON CONFLICT (name) DO UPDATE SET value = excluded.value, \
                      updated_ms = excluded.updated_ms, updated_by = excluded.updated_by";
        if let (Some(cur), Some(want)) = (current.as_object(), wanted.as_object()) {
            for (name, value) in want {
                if cur.get(name) != Some(value) {
                    self.db
                        .timed(
                            sqlx::query(upsert)
                                .bind(name.as_str())
                                .bind(value.to_string())
                                .bind(now as i64)
                                .bind(by)
                                .execute(&self.db.pool),
                        )
                        .await?;
                }
            }
        }
        self.refresh_settings().await?;
        if let Err(e) = self.cache.publish(CHANNEL, "changed").await {
            self.cache_failed("publish settings", &e);
        }
        Ok(self.settings())
    }

    /// Re-reads the settings table and applies it.
    pub async fn refresh_settings(&self) -> StoreResult<()> {
        let rows = self
            .db
            .timed(
                sqlx::query(
                    "SELECT name, value, updated_ms, updated_by FROM settings ORDER BY name",
                )
                .fetch_all(&self.db.pool),
            )
            .await?;
        let mut pairs = Vec::with_capacity(rows.len());
        let mut newest = 0u64;
        for r in &rows {
            let updated_ms = r.try_get::<i64, _>("updated_ms").map_err(db_err)?.max(0) as u64;
            pairs.push(SettingOverride {
                name: r.try_get::<String, _>("name").map_err(db_err)?,
                value: r.try_get::<String, _>("value").map_err(db_err)?,
                updated_ms,
                updated_by: r.try_get::<String, _>("updated_by").map_err(db_err)?,
            });
            newest = newest.max(updated_ms);
        }
        self.live.seen_ms.store(newest, Ordering::Relaxed);
        self.live
            .seen_rows
            .store(pairs.len() as u64, Ordering::Relaxed);
        let defaults = self
            .live
            .defaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.live.apply(&merge(&defaults, &pairs));
        *self.live.rows.lock().unwrap_or_else(|p| p.into_inner()) = pairs;
        Ok(())
    }

    /// Re-reads the settings table if it changed since it was last read (or if `force`).
    async fn sync_settings(&self, force: bool) -> StoreResult<()> {
        if !force {
            // Cheap check first: has anything changed since we last read the table? A newer
            // change time means a row was set; fewer rows, that one was reverted.
            let row = self
                .db
                .timed(
                    sqlx::query(
                        "SELECT CAST(COALESCE(MAX(updated_ms), 0) AS BIGINT) AS n, \
                         CAST(COUNT(*) AS BIGINT) AS c FROM settings",
                    )
                    .fetch_one(&self.db.pool),
                )
                .await?;
            let newest = row.try_get::<i64, _>("n").map_err(db_err)?.max(0) as u64;
            let rows = row.try_get::<i64, _>("c").map_err(db_err)?.max(0) as u64;
            if newest <= self.live.seen_ms.load(Ordering::Relaxed)
                && rows == self.live.seen_rows.load(Ordering::Relaxed)
            {
                return Ok(());
            }
        }
        self.refresh_settings().await
    }

    /// Keeps this gateway's settings in step with the table: on each announcement, and on a
    /// poll of the newest change time.
    pub(crate) fn follow_settings(self: &Arc<Self>) {
        self.follow(
            CHANNEL,
            SETTINGS_POLL,
            "live settings",
            |stores, force| async move { stores.sync_settings(force).await },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_settings_override_one_by_one_and_bad_rows_are_skipped() {
        let base = Settings {
            failsafe: "closed".into(),
            alert_threshold: 5,
            alert_window_secs: 60,
            archive_days: 0,
            log_level: "info".into(),
            maintenance: false,
        };
        let rows = [
            ("failsafe", "\"open\""),
            ("alert_threshold", "\"many\""), // wrong type: skipped
            ("archive_days", "30"),
            ("colour", "\"blue\""), // unknown: skipped
            ("log_level", "not json"),
        ]
        .map(|(n, v)| SettingOverride {
            name: n.to_owned(),
            value: v.to_owned(),
            updated_ms: 1,
            updated_by: "test".into(),
        });
        let merged = merge(&base, &rows);
        assert_eq!(
            merged,
            Settings {
                failsafe: "open".into(),
                archive_days: 30,
                ..base
            }
        );
    }
}
