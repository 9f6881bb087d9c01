//! `tollgate ip …`: the IP allow and deny entries stored in the database (audited).

use std::process::ExitCode;

use clap::Subcommand;

use super::admin_client::confirm;
use super::output::listing;
use super::{ms_to_rfc3339, with_stores};
use crate::service;

#[derive(Subcommand)]
pub(super) enum IpCommand {
    /// Stored entries, newest first: network, action, created, by, note.
    List,
    /// Let this network in. The first allow entry switches every gateway to allow-list mode
    /// (only listed networks get in): that asks first, or needs `--yes`.
    Allow {
        cidr: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Switch to allow-list mode without asking (for scripts).
        #[arg(long)]
        yes: bool,
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
    with_stores(path, async |stores, config| {
        let done = |e: service::ServiceError| format!("{e}\n");
        match action {
            IpCommand::List => {
                let rows = ip_rules::list(stores).await.map_err(done)?;
                listing(&rows, "", |r| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}",
                        r.cidr,
                        r.action,
                        ms_to_rfc3339(r.created_ms),
                        r.created_by,
                        r.note
                    )
                })
            }
            IpCommand::Allow {
                ref cidr,
                ref note,
                yes,
            } => {
                // Allow-list mode already, from the file's `access.allow` or a stored entry?
                let stored = ip_rules::list(stores).await.map_err(done)?;
                let allow_list =
                    !config.access.allow.is_empty() || stored.iter().any(|r| r.action == "allow");
                if !allow_list
                    && !yes
                    && !confirm(&format!(
                        "{cidr} would be the first allow entry: from then on ONLY allowed networks reach any route, on every gateway sharing the database. Go on?"
                    ))
                {
                    return Err(format!(
                        "not added: {cidr} would switch every gateway to allow-list mode (only allowed networks get in); confirm, or pass --yes\n"
                    ));
                }
                let rule = ip_rules::add(stores, &actor, cidr, IpAction::Allow, note)
                    .await
                    .map_err(done)?;
                Ok(format!("{}: {}", rule.cidr, rule.action))
            }
            IpCommand::Deny { ref cidr, ref note } => {
                let what = IpAction::Deny;
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
