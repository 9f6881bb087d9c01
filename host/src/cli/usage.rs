//! `tollgate usage`: token usage per key (by name), upstream or model, from the database every
//! gateway of the deployment writes to.

use std::process::ExitCode;

use super::{async_runtime, existing_database, ms_to_rfc3339, report};
use crate::config::Config;

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
    use crate::state::{SqlStore, UsageBy};
    let by = match by {
        UsageGroup::Key => UsageBy::Key,
        UsageGroup::Upstream => UsageBy::Upstream,
        UsageGroup::Model => UsageBy::Model,
    };
    let result = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            existing_database(&config)?;
            let names = crate::KeyRing::standalone(&config.auth);
            async_runtime()?.block_on(async {
                let s = &config.storage;
                let db = SqlStore::connect(&s.database, &config.base_dir, s.op_timeout.get())
                    .await
                    .map_err(|e| format!("{e}\n"))?;
                db.migrate().await.map_err(|e| format!("{e}\n"))?;
                let now = crate::state::unix_ms();
                // Hours are counted from their start: include the hour `since` falls in.
                let from = now.saturating_sub(since.as_millis() as u64) / 3_600_000 * 3_600_000;
                let rows = db
                    .token_usage(by, from, now)
                    .await
                    .map_err(|e| format!("{e}\n"))?;
                let mut out = vec![
                    "name\trequests\terrors\tpartial\tinput\toutput\tcached\tlast used".to_owned(),
                ];
                out.extend(rows.iter().map(|u| {
                    let name = match by {
                        UsageBy::Key => names
                            .name_of_id(&u.key_id)
                            .unwrap_or_else(|| u.key_id.chars().take(12).collect()),
                        UsageBy::Upstream => u.upstream.to_string(),
                        UsageBy::Model => u.model.to_string(),
                    };
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        if name.is_empty() { "-" } else { &name },
                        u.requests,
                        u.errors,
                        u.partial,
                        u.input_tokens,
                        u.output_tokens,
                        u.cached_tokens,
                        ms_to_rfc3339(u.at_ms)
                    )
                }));
                Ok::<_, String>(out.join("\n"))
            })
        });
    report(result)
}
