//! `tollgate ip …`: the IP allow and deny entries stored in the database (audited).

use std::process::ExitCode;

use clap::Subcommand;

use super::{ms_to_rfc3339, with_stores};
use crate::service;

#[derive(Subcommand)]
pub(super) enum IpCommand {
    /// Stored entries, newest first: network, action, created, by, note.
    List,
    /// Let this network in (with allow entries, only listed networks get in).
    Allow {
        cidr: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Refuse this network (403 ip_denied, before authentication).
    Deny {
        cidr: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Remove the entry for this network.
    Remove { cidr: String },
}

pub(super) fn ip(path: &std::path::Path, action: IpCommand) -> ExitCode {
    use crate::service::ip_rules;
    use crate::state::IpAction;
    let actor = service::Actor::cli();
    with_stores(path, async |stores, _| {
        let done = |e: service::ServiceError| format!("{e}\n");
        match action {
            IpCommand::List => {
                let rows = ip_rules::list(stores).await.map_err(done)?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}",
                            r.cidr,
                            r.action,
                            ms_to_rfc3339(r.created_ms),
                            r.created_by,
                            r.note
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
            IpCommand::Allow { ref cidr, ref note } | IpCommand::Deny { ref cidr, ref note } => {
                let what = if matches!(action, IpCommand::Allow { .. }) {
                    IpAction::Allow
                } else {
                    IpAction::Deny
                };
                let rule = ip_rules::add(stores, &actor, cidr, what, note)
                    .await
                    .map_err(done)?;
                Ok(format!("{}: {}", rule.cidr, rule.action))
            }
            IpCommand::Remove { cidr } => {
                ip_rules::remove(stores, &actor, &cidr)
                    .await
                    .map_err(done)?;
                Ok(format!("{cidr}: removed"))
            }
        }
    })
}
