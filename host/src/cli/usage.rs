//! `tollgate usage`: token usage and spend per key (by name), upstream or model, from the
//! database every gateway of the deployment writes to.

use std::process::ExitCode;

use super::{ms_to_rfc3339, with_stores};
use crate::pipeline::auth::KeyRing;

/// One line of `tollgate usage` (and one object with `--output json`).
#[derive(serde::Serialize)]
struct Row {
    name: String,
    requests: u64,
    errors: u64,
    partial: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    cost: f64,
    currency: String,
    last_used_ms: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum UsageGroup {
    Key,
    Upstream,
    Model,
}

pub(super) fn usage(
    path: &std::path::Path,
    by: UsageGroup,
    since: std::time::Duration,
) -> ExitCode {
    use crate::state::UsageBy;
    let by = match by {
        UsageGroup::Key => UsageBy::Key,
        UsageGroup::Upstream => UsageBy::Upstream,
        UsageGroup::Model => UsageBy::Model,
    };
    with_stores(path, async |stores, config| {
        // Names of the config file's keys and of the stored ones (`with_stores` put them in).
        let ring = KeyRing::new(&config.auth, stores.key_table());
        let now = crate::state::unix_ms();
        // Hours are counted from their start: include the hour `since` falls in.
        let from = now.saturating_sub(since.as_millis() as u64) / 3_600_000 * 3_600_000;
        let rows = stores
            .database()
            .token_usage(by, from, now)
            .await
            .map_err(|e| format!("{e}\n"))?;
        let currency = &config.pricing.currency;
        let rows: Vec<Row> = rows
            .iter()
            .map(|u| Row {
                name: match by {
                    UsageBy::Key => ring
                        .name_of_id(&u.key_id)
                        .unwrap_or_else(|| u.key_id.chars().take(12).collect()),
                    UsageBy::Upstream => u.upstream.to_string(),
                    UsageBy::Model => u.model.to_string(),
                },
                requests: u.requests,
                errors: u.errors,
                partial: u.partial,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cached_tokens: u.cached_tokens,
                cost: u.cost_nanos as f64 / 1e9,
                currency: currency.clone(),
                last_used_ms: u.at_ms,
            })
            .collect();
        super::output::listing(
            &rows,
            &format!(
                "name\trequests\terrors\tpartial\tinput\toutput\tcached\tcost ({currency})\tlast used"
            ),
            |r| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.6}\t{}",
                    if r.name.is_empty() { "-" } else { &r.name },
                    r.requests,
                    r.errors,
                    r.partial,
                    r.input_tokens,
                    r.output_tokens,
                    r.cached_tokens,
                    r.cost,
                    ms_to_rfc3339(r.last_used_ms)
                )
            },
        )
    })
}
