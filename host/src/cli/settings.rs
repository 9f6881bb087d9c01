//! `tollgate settings …`: the live settings in the database (`service::settings`, audited as
//! `cli:<user>`): show each with its source, set some, revert one to the config file's value.
//! Running gateways sharing the database apply a change within a second.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::admin_client::confirm;
use super::output::listing;
use super::{ms_to_rfc3339, with_stores};
use crate::service::settings::{self, SettingsChange};
use crate::service::{Actor, ServiceError};

#[derive(Subcommand)]
pub(super) enum SettingsCommand {
    /// Each setting: its value, where it comes from (file or override, by whom, when), the
    /// config file's value.
    Show,
    /// Set settings, e.g. `failsafe=open log_level=debug maintenance=true` (they override the
    /// config file until reverted). Maintenance on and failsafe open ask first (or `--yes`).
    Set {
        /// `name=value` pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        /// Do not ask before switching maintenance on or the failsafe open.
        #[arg(long)]
        yes: bool,
    },
    /// Revert a setting to the config file's value.
    Revert { name: String },
}

#[derive(Serialize)]
struct Row {
    name: String,
    value: serde_json::Value,
    source: &'static str,
    file: serde_json::Value,
    updated_by: Option<String>,
    updated_ms: Option<u64>,
}

pub(super) fn settings(path: &std::path::Path, action: SettingsCommand) -> ExitCode {
    let actor = Actor::cli();
    with_stores(path, async |stores, config| {
        let done = |e: ServiceError| format!("{e}\n");
        stores.set_file_settings(crate::state::Settings::from_file(config));
        stores
            .refresh_settings()
            .await
            .map_err(|e| format!("{e}\n"))?;
        match action {
            SettingsCommand::Show => {
                let current = serde_json::to_value(stores.settings()).unwrap_or_default();
                let file = serde_json::to_value(stores.file_settings()).unwrap_or_default();
                let overrides = stores.settings_overrides();
                let rows: Vec<Row> = settings::NAMES
                    .iter()
                    .map(|&name| {
                        let o = overrides.iter().find(|o| o.name == name);
                        Row {
                            name: name.to_owned(),
                            value: current[name].clone(),
                            source: if o.is_some() { "override" } else { "file" },
                            file: file[name].clone(),
                            updated_by: o.map(|o| o.updated_by.clone()),
                            updated_ms: o.map(|o| o.updated_ms),
                        }
                    })
                    .collect();
                listing(&rows, "name\tvalue\tsource\tconfig file", |r| {
                    let source = match (&r.updated_by, r.updated_ms) {
                        (Some(by), Some(at)) => {
                            format!("override by {by} at {}", ms_to_rfc3339(at))
                        }
                        _ => "file".into(),
                    };
                    format!("{}\t{}\t{source}\t{}", r.name, r.value, r.file)
                })
            }
            SettingsCommand::Set { pairs, yes } => {
                let mut change = serde_json::Map::new();
                for pair in &pairs {
                    let (name, value) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("{pair:?}: write name=value\n"))?;
                    // Numbers and booleans as JSON; anything else as text.
                    let value = serde_json::from_str(value)
                        .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
                    change.insert(name.to_owned(), value);
                }
                let risky = change.get("maintenance") == Some(&serde_json::json!(true))
                    || change.get("failsafe") == Some(&serde_json::json!("open"));
                if risky
                    && !yes
                    && !confirm(
                        "This changes every gateway sharing the database (maintenance: every proxied request gets 503; failsafe open: requests pass unchecked while the stores cannot answer). Go on?",
                    )
                {
                    return Err("not changed (confirm, or pass --yes)\n".into());
                }
                let change: SettingsChange =
                    serde_json::from_value(serde_json::Value::Object(change))
                        .map_err(|e| format!("{e}\n"))?;
                let after = settings::update(stores, &actor, change)
                    .await
                    .map_err(done)?;
                Ok(format!(
                    "saved: {}",
                    serde_json::to_string(&after).unwrap_or_default()
                ))
            }
            SettingsCommand::Revert { name } => {
                settings::revert(stores, &actor, &name)
                    .await
                    .map_err(done)?;
                let file = serde_json::to_value(stores.file_settings()).unwrap_or_default();
                Ok(format!(
                    "{name}: the config file's value applies ({})",
                    file[&name]
                ))
            }
        }
    })
}
