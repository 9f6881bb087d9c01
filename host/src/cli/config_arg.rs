//! Which config file a command reads, and the environment it is read in.
//!
//! Every command that reads the config first reads the deployment's environment file
//! (`/etc/tollgate/env`, see `tollgate_config::env_file`), so that on a host the CLI resolves
//! `${TOLLGATE_SECRET}`, `${TOLLGATE_DATABASE}` and the config's own path exactly as the running
//! service does. The file is `--config`, else `TOLLGATE_CONFIG` (from the process environment or
//! the environment file), else `policies.yaml` in the working directory.

use std::path::PathBuf;

use crate::config::{Config, DatabaseUrl};

#[derive(clap::Args)]
pub(super) struct ConfigArg {
    /// The config file [default: $TOLLGATE_CONFIG (also read from /etc/tollgate/env), else
    /// policies.yaml]
    /// (Global: it may follow a subcommand, as in `tollgate bindings list --config …`.)
    #[arg(long, short, env = "TOLLGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The config file's path, after reading the environment file.
    pub(super) fn path(&self) -> Result<PathBuf, String> {
        crate::config::env_file::load()?;
        Ok(self
            .config
            .clone()
            .or_else(|| crate::config::env_file::var("TOLLGATE_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| "policies.yaml".into()))
    }
}

/// Refuses to work on an embedded database that does not exist yet: a command that opened it
/// would create an empty one and act on it, while the gateway uses another (a wrong
/// `TOLLGATE_DATABASE`, a relative path from another directory).
pub(super) fn existing_database(config: &Config) -> Result<(), String> {
    if let DatabaseUrl::Sqlite(path) = &config.storage.database {
        let file = config.resolve(path);
        if !file.exists() {
            return Err(format!(
                "no database at {}: the gateway creates it on its first start, so this is not the running gateway's (storage.database, TOLLGATE_DATABASE in /etc/tollgate/env); `tollgate migrate` creates an empty one on purpose\n",
                file.display()
            ));
        }
    }
    Ok(())
}
