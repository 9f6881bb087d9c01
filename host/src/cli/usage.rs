//! `tollgate usage`: token usage and spend per key (by name), upstream or model, from the
//! database every gateway of the deployment writes to.

use std::process::ExitCode;

use super::{ms_to_rfc3339, with_stores};
use crate::pipeline::auth::KeyRing;

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
        // Names of the config file's keys and of the stored ones.
        let ring = KeyRing::new(&config.auth, stores.key_table());
        stores.set_config_keys(ring.config_entries(&config.auth));
        let now = crate::state::unix_ms();
        // Hours are counted from their start: include the hour `since` falls in.
        let from = now.saturating_sub(since.as_millis() as u64) / 3_600_000 * 3_600_000;
        let rows = stores
            .database()
            .token_usage(by, from, now)
            .await
            .map_err(|e| format!("{e}\n"))?;
        let currency = &config.pricing.currency;
        let mut out = vec![format!(
            "name\trequests\terrors\tpartial\tinput\toutput\tcached\tcost ({currency})\tlast used"
        )];
        out.extend(rows.iter().map(|u| {
            let name = match by {
                UsageBy::Key => ring
                    .name_of_id(&u.key_id)
                    .unwrap_or_else(|| u.key_id.chars().take(12).collect()),
                UsageBy::Upstream => u.upstream.to_string(),
                UsageBy::Model => u.model.to_string(),
            };
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.6}\t{}",
                if name.is_empty() { "-" } else { &name },
                u.requests,
                u.errors,
                u.partial,
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.cost_nanos as f64 / 1e9,
                ms_to_rfc3339(u.at_ms)
            )
        }));
        Ok(out.join("\n"))
    })
}
