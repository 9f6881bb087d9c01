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
        // Names of the config file's keys and of the stored ones (`with_stores` put them in).
        let ring = KeyRing::new(&config.auth, stores.key_table());
        let now = crate::state::unix_ms();
        let from = now.saturating_sub(since.as_millis() as u64);
        let currency = &config.pricing.currency;
        let rows = crate::service::usage::rows(stores, &ring, by, from, now, currency)
            .await
            .map_err(|e| format!("{e}\n"))?;
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
