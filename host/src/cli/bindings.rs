//! `tollgate bindings …`: see and change key bindings in the configured stores (audited, and
//! seen by running gateways at once).

use std::process::ExitCode;

use clap::Subcommand;

use super::output::listing;
use super::{ms_to_rfc3339, with_stores};
use crate::service;

#[derive(Subcommand)]
pub(super) enum BindingsAction {
    /// Bindings, most recently used first: key id, network, status, created, last used, last IP,
    /// requests.
    List {
        /// A key's name, or the start of a key id or of a bound network.
        #[arg(long)]
        search: Option<String>,
        /// `active` or `banned`.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Skip this many (with --limit: one page after another).
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Refuse the key from everywhere (403 key_banned).
    Ban { key_id: String },
    /// Lift a ban; the key is bound to its network again.
    Unban { key_id: String },
    /// Forget the binding; the key's next request binds afresh.
    Delete { key_id: String },
    /// Bind the key to another network (a CIDR or one address).
    Move { key_id: String, cidr: String },
    /// Refused requests, newest first: time, key id prefix, bound network, attempted IP, method,
    /// path, reason.
    Intercepts {
        /// Only this key (its id or a prefix of 12 hex digits).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// One audited change through the service layer the admin API uses.
pub(super) async fn change(
    stores: &crate::state::Stores,
    key_id: &str,
    change: service::bindings::Change,
    done: &str,
) -> Result<String, String> {
    match service::bindings::change(stores, &service::Actor::cli(), key_id, change).await {
        Ok(_) => Ok(format!("{key_id}: {done}")),
        Err(service::ServiceError::NotFound(_)) => Err(format!("{key_id}: no binding\n")),
        Err(e) => Err(format!("{e}\n")),
    }
}

pub(super) fn bindings(path: &std::path::Path, action: BindingsAction) -> ExitCode {
    use crate::service::bindings::Change;
    use crate::state::KEY_ID_PREFIX_LEN;
    with_stores(path, async |stores, _| {
        let failed = |e: crate::state::StoreError| format!("{e}\n");
        match action {
            BindingsAction::List {
                search,
                status,
                limit,
                offset,
            } => {
                let status = match status.as_deref() {
                    None => None,
                    Some(s) => {
                        Some(crate::state::BindingStatus::parse(s).ok_or_else(|| {
                            format!("--status: {s:?} is not `active` or `banned`\n")
                        })?)
                    }
                };
                let query = crate::state::BindingQuery {
                    search,
                    status,
                    limit,
                    offset,
                };
                let (rows, total) = service::bindings::list(stores, query)
                    .await
                    .map_err(|e| format!("{e}\n"))?;
                let mut out = listing(&rows, "", |b| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        b.key_id,
                        b.cidr,
                        b.status,
                        ms_to_rfc3339(b.created_ms),
                        ms_to_rfc3339(b.last_used_ms),
                        b.last_ip.as_deref().unwrap_or("-"),
                        b.request_count,
                        b.key_name.as_deref().unwrap_or("-"),
                    )
                })?;
                if !super::output::json() && total > offset + rows.len() as u64 {
                    out.push_str(&format!(
                        "\n… {} more (use --offset {})",
                        total - offset - rows.len() as u64,
                        offset + rows.len() as u64
                    ));
                }
                Ok(out)
            }
            BindingsAction::Ban { key_id } => change(stores, &key_id, Change::Ban, "banned").await,
            BindingsAction::Unban { key_id } => {
                change(stores, &key_id, Change::Unban, "active").await
            }
            BindingsAction::Delete { key_id } => {
                change(stores, &key_id, Change::Unbind, "deleted").await
            }
            BindingsAction::Move { key_id, cidr } => match service::bindings::parse_net(&cidr) {
                Ok(net) => change(stores, &key_id, Change::Move(net), "moved").await,
                Err(e) => Err(format!("{e}\n")),
            },
            BindingsAction::Intercepts { key, limit } => {
                let prefix: Option<String> =
                    key.map(|k| k.chars().take(KEY_ID_PREFIX_LEN).collect());
                let rows = stores.database().intercepts(prefix.as_deref(), limit).await;
                let rows = rows.map_err(failed)?;
                listing(&rows, "", |i| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        ms_to_rfc3339(i.at_ms),
                        i.key_id_prefix,
                        i.bound_cidr.as_deref().unwrap_or("-"),
                        i.attempted_ip,
                        i.method,
                        i.path,
                        i.reason
                    )
                })
            }
        }
    })
}
