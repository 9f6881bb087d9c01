//! `tollgate credentials …`: upstream credentials set at run time (`service::credentials`,
//! audited as `cli:<user>`), on the database of the config given; running gateways apply a change
//! within a second. A credential is read from stdin, never from the command line (where `ps` and
//! the shell's history would show it).

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;

use super::{ms_to_rfc3339, with_stores};
use crate::service::credentials as service;
use crate::service::{Actor, ServiceError};

#[derive(Subcommand)]
pub(super) enum CredentialsCommand {
    /// Each upstream: where its credential comes from (stored, config, none) and its fingerprint.
    List,
    /// Set an upstream's credential, read from stdin (it wins over the config file's).
    Set { upstream: String },
    /// Remove an upstream's stored credential: the config file's applies again.
    Remove { upstream: String },
    /// Seal every stored credential under the first of `storage.credential_keys` (after adding
    /// a new key in front); then the old key can be dropped.
    Reencrypt,
}

pub(super) fn credentials(path: &std::path::Path, action: CredentialsCommand) -> ExitCode {
    let actor = Actor::cli();
    with_stores(path, async |stores, config| {
        let done = |e: ServiceError| format!("{e}\n");
        let upstreams: Vec<_> = config.upstreams.iter().collect();
        match action {
            CredentialsCommand::List => {
                let rows = service::list(stores, &upstreams).await.map_err(done)?;
                super::output::listing(&rows, "", |c| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}",
                        c.upstream,
                        c.source,
                        c.fingerprint.as_deref().unwrap_or("-"),
                        c.key_id.as_deref().unwrap_or("-"),
                        c.updated_ms.map_or_else(|| "-".to_owned(), ms_to_rfc3339),
                    )
                })
            }
            CredentialsCommand::Set { upstream } => {
                let mut value = String::new();
                std::io::stdin()
                    .read_to_string(&mut value)
                    .map_err(|e| format!("cannot read the credential from stdin: {e}\n"))?;
                let info = service::set(stores, &upstreams, &actor, &upstream, &value)
                    .await
                    .map_err(done)?;
                Ok(format!(
                    "{}: set (fingerprint {}, key {})",
                    info.upstream, info.fingerprint, info.key_id
                ))
            }
            CredentialsCommand::Remove { upstream } => {
                service::remove(stores, &actor, &upstream)
                    .await
                    .map_err(done)?;
                Ok(format!("{upstream}: stored credential removed"))
            }
            CredentialsCommand::Reencrypt => {
                let n = service::reencrypt(stores, &actor).await.map_err(done)?;
                Ok(format!("{n} credentials sealed again under the first key"))
            }
        }
    })
}
