//! `tollgate requests`: the request log (docs/requests.md) from the database every gateway of
//! the deployment writes to: newest first, filtered as the admin API filters, as a table or as
//! JSON lines; `--follow` prints new requests as they are written.

use std::process::ExitCode;

use super::{ms_to_rfc3339, with_stores};
use crate::service::requests::RequestFilter;
use crate::state::RequestRow;

/// How often `--follow` asks for new rows.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(clap::Args)]
pub(super) struct RequestsArgs {
    #[command(flatten)]
    filter: RequestFilter,
    /// How far back, e.g. `1h` or `2d` (unless `--from-ms` is given).
    #[arg(long)]
    since: Option<humantime::Duration>,
    /// Keep printing requests as they are written, oldest first, until interrupted.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line (as the admin API returns them) instead of a table (the same
    /// as `--output json`).
    #[arg(long)]
    json: bool,
}

const HEADER: &str = "time\tstatus\toutcome\terror\tanswered_by\tkey\tclient\troute\tmodel\tupstream\tms\ttokens\tcost\trequest_id";

fn line(r: &RequestRow, json: bool) -> String {
    if json {
        return serde_json::to_string(r).unwrap_or_default();
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let tokens = match (r.input_tokens, r.output_tokens) {
        (Some(i), Some(o)) => format!("{i}+{o}{}", if r.partial { "~" } else { "" }),
        _ => "-".into(),
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{tokens}\t{}\t{}",
        ms_to_rfc3339(r.at_ms),
        r.status,
        r.outcome,
        dash(&r.error),
        dash(&r.answered_by),
        dash(&r.key_name),
        r.client_ip,
        dash(&r.route),
        dash(&r.model),
        dash(&r.upstream),
        r.duration_us as f64 / 1e3,
        r.cost_nanos.map_or("-".into(), |c| format!(
            "{:.6}",
            crate::config::from_nanos(c)
        )),
        r.request_id,
    )
}

pub(super) fn requests(path: &std::path::Path, mut args: RequestsArgs) -> ExitCode {
    if let Some(since) = args.since
        && args.filter.from_ms.is_none()
    {
        let since: std::time::Duration = since.into();
        args.filter.from_ms =
            Some(crate::state::unix_ms().saturating_sub(since.as_millis() as u64));
    }
    with_stores(path, async |stores, _| {
        let q = args
            .filter
            .query(&stores.key_table().load())
            .map_err(|e| format!("{e}\n"))?;
        let db = stores.database();
        let limit = args.filter.limit.unwrap_or(50).clamp(1, 1000);
        let fail = |e: crate::state::StoreError| format!("{e}\n");
        // `--output json` is `--json`: one object per line, which `--follow` can keep printing.
        let json = args.json || super::output::json();
        if !args.follow {
            let rows = db
                .requests_page(&q, args.filter.before, limit)
                .await
                .map_err(fail)?;
            let mut out: Vec<String> = Vec::with_capacity(rows.len() + 1);
            if !json {
                out.push(HEADER.into());
            }
            out.extend(rows.iter().map(|r| line(r, json)));
            return Ok(out.join("\n"));
        }
        // The newest rows first shown oldest first, then whatever comes after them.
        let mut rows = db.requests_page(&q, None, limit).await.map_err(fail)?;
        rows.reverse();
        if !json {
            println!("{HEADER}");
        }
        let mut after = args.filter.after.unwrap_or(0);
        loop {
            for r in &rows {
                println!("{}", line(r, json));
                after = after.max(r.id);
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(String::new()),
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            rows = db.requests_after(&q, after, 1000).await.map_err(fail)?;
        }
    })
}
