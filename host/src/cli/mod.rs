//! Command line: the argument grammar and the dispatch, here; one file per command (as
//! wasmtime's `src/commands/`): `run.rs` (`run`, `migrate`), `check.rs` (`check`, `key-id`),
//! `health.rs`, `bindings.rs`, `ip.rs`, `usage.rs`, `plugin.rs` (and `new_plugin.rs` for `plugin
//! new`), `admin.rs`. What several share (the config argument and the env file, the stores, the
//! runtime, reporting) stays here and in `config_arg.rs`.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod admin_client;
mod bindings;
mod check;
mod config_arg;
mod credentials;
mod doctor;
mod health;
mod ip;
mod keys;
mod new_plugin;
mod output;
mod plugin;
mod remote;
mod requests;
mod run;
mod settings;
mod usage;

use config_arg::{ConfigArg, existing_database};
pub use new_plugin::{COMPONENTIZE_JS, COMPONENTIZE_PY};

use crate::config::Config;
use crate::gateway::Gateway;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Gateway for OpenAI-compatible LLM APIs"
)]
struct Cli {
    /// `text` (tab-separated lines) or `json` (one JSON document) for listings and reports.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: output::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Overrides `logging.level` (e.g. `debug`, `tollgate=debug,access=off`).
        #[arg(long, env = "TOLLGATE_LOG")]
        log_level: Option<String>,
    },
    /// Validate a config file and list every error; exits 1 if there are any.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask a running gateway's `/health` (or `--url`): exit 0 when it answers 200 within
    /// `--timeout`, 1 otherwise (for container healthchecks; the image has no curl).
    Health {
        /// E.g. http://127.0.0.1:8317/ready to ask whether it takes traffic.
        #[arg(long, env = "TOLLGATE_HEALTH_URL", default_value = health::DEFAULT_URL)]
        url: String,
        #[arg(long, default_value = "3s")]
        timeout: humantime::Duration,
    },
    /// Apply pending database migrations (the gateway also applies them at start).
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// See and manage key bindings in the configured stores (also reaches running gateways: their
    /// cached copies are dropped).
    Bindings {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: bindings::BindingsAction,
    },
    /// IP allow and deny entries stored in the database (on top of the config file's `access`
    /// lists); running gateways apply a change within a second.
    Ip {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: ip::IpCommand,
    },
    /// Upstream credentials set at run time (sealed with storage.credential_keys): list them
    /// (fingerprints only), set one from stdin, remove one, seal them again under a new key.
    Credentials {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: credentials::CredentialsCommand,
    },
    /// Client keys: issue, list, show, change, rotate and revoke keys stored in the database
    /// (the config file's keys are listed read-only); running gateways apply a change within a
    /// second.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: keys::KeysCommand,
    },
    /// Token usage per key (by name), upstream or model over the last `--since` (from the
    /// database every gateway of the deployment writes to).
    Usage {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value = "key")]
        by: usage::UsageGroup,
        /// How far back, e.g. `24h`, `7d`, `30m`.
        #[arg(long, default_value = "24h")]
        since: humantime::Duration,
    },
    /// The request log: every request the gateways answered, newest first, filtered as the
    /// admin API filters (`--status 4xx`, `--answered-by auth`, `--key NAME`, …); `--follow`
    /// prints new ones as they are written.
    Requests {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: requests::RequestsArgs,
    },
    /// Work with policy plugins offline.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// The config file as a published contract.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Admin plane helpers.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Print the key id (HMAC-SHA256 under the config's secret) of a key typed at a prompt that
    /// does not echo it (or read from stdin's first line), for `auth.keys[].key_id`.
    KeyId {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The running gateway's status through its admin API: version, uptime, config file,
    /// stores, upstreams, and what needs attention. Exit 2 when something is critical, 1 for a
    /// warning.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
    },
    /// Ask the running gateway to reload its config file and plugins (as SIGHUP); exit 1 with
    /// the reason when the new config is refused (the running one stays).
    Reload {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
    },
    /// The running gateway's upstreams through its admin API: list them with their health, cool
    /// one down, restore it.
    Upstreams {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
        #[command(subcommand)]
        action: remote::UpstreamsCommand,
    },
    /// The live settings in the database: show each with its source, set some, revert one to
    /// the config file's value.
    Settings {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: settings::SettingsCommand,
    },
    /// Check everything that stops a gateway from starting or serving well: the config and its
    /// plugins, the TLS certificate's expiry, the stores, file permissions, demo secrets.
    Doctor {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a completion script for a shell: `tollgate completions bash > /etc/bash_completion.d/tollgate`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the config file (for editors: see docs/config-schema.md).
    Schema,
    /// Print the config file as the gateway reads it: defaults filled in, `${VAR}` expanded,
    /// every secret and URL password `<redacted>` (what the console's Config page shows).
    Show {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `f` on the config file `arg` names, or exit 1 when the environment file cannot be read.
fn with_config(arg: &ConfigArg, f: impl FnOnce(&Path) -> ExitCode) -> ExitCode {
    match arg.path() {
        Ok(path) => f(&path),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    output::set(cli.output);
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tollgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Status { config, admin } => with_config(&config, |p| remote::status(p, &admin)),
        Command::Reload { config, admin } => with_config(&config, |p| remote::reload(p, &admin)),
        Command::Upstreams {
            config,
            admin,
            action,
        } => with_config(&config, |p| remote::upstreams(p, &admin, action)),
        Command::Settings { config, action } => {
            with_config(&config, |p| settings::settings(p, action))
        }
        Command::Doctor { config } => with_config(&config, doctor::doctor),
        Command::Check { config } => with_config(&config, check::check),
        Command::Health { url, timeout } => health::health(&url, timeout.into()),
        Command::KeyId { config } => with_config(&config, check::key_id),
        Command::Config(ConfigCommand::Schema) => {
            match serde_json::to_string_pretty(&crate::config::json_schema()) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Show { config }) => with_config(&config, |p| {
            report(
                Config::load(p)
                    .map_err(|e| e.to_string())
                    .and_then(|c| yaml_serde::to_string(&c).map_err(|e| format!("{e}\n"))),
            )
        }),
        Command::Run { config, log_level } => with_config(&config, |p| run::run(p, log_level)),
        Command::Plugin(cmd) => plugin::plugin(cmd),
        Command::Migrate { config } => with_config(&config, run::migrate),
        Command::Bindings { config, action } => {
            with_config(&config, |p| bindings::bindings(p, action))
        }
        Command::Ip { config, action } => with_config(&config, |p| ip::ip(p, action)),
        Command::Credentials { config, action } => {
            with_config(&config, |p| credentials::credentials(p, action))
        }
        Command::Keys { config, action } => with_config(&config, |p| keys::keys(p, action)),
        Command::Usage { config, by, since } => {
            with_config(&config, |p| usage::usage(p, by, since.into()))
        }
        Command::Requests { config, args } => with_config(&config, |p| requests::requests(p, args)),
        Command::Admin(admin::AdminCommand::HashPassword) => admin::hash_password(),
    }
}

fn ms_to_rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// Runs `f` on the stores of the config at `path` (opened like a gateway's, shut down after),
/// and reports its text or error.
fn with_stores(
    path: &std::path::Path,
    f: impl AsyncFnOnce(&crate::state::Stores, &Config) -> Result<String, String>,
) -> ExitCode {
    let result = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            existing_database(&config)?;
            async_runtime()?.block_on(async {
                let client =
                    crate::upstream::UpstreamClient::new(config.server.timeouts.connect.get());
                let stores = crate::state::Stores::open(
                    &config.storage,
                    &config.base_dir,
                    &config.alerts,
                    std::sync::Arc::new(client),
                )
                .await
                .map_err(|e| format!("{e}\n"))?;
                // The config file's keys by name, beside the stored ones (listings show names).
                let ring = crate::pipeline::auth::KeyRing::new(&config.auth, stores.key_table());
                stores.set_config_keys(ring.config_entries(&config.auth));
                let out = f(&stores, &config).await;
                stores.shutdown().await;
                out
            })
        });
    report(result)
}

/// Prints a command's output (stdout) or error (stderr) and turns it into the exit code.
fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config and everything `run` would load from disk (TLS files), reporting all errors.
fn load_checked(path: &std::path::Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(tls) = &config.server.tls
        && let Err(e) = crate::listen::tls::load_certified_key(&tls.cert, &tls.key)
    {
        return Err(format!("{}: 1 error\n  server.tls: {e}\n", path.display()));
    }
    Ok(config)
}

/// Builds the whole gateway from `config` (compiling and configuring plugins), with errors
/// attributed to the file at `path`. `ephemeral` builds it on throwaway stores (for `check`).
async fn build(
    path: &std::path::Path,
    config: &Config,
    ephemeral: bool,
) -> Result<std::sync::Arc<Gateway>, String> {
    let built = if ephemeral {
        let stores = crate::state::Stores::ephemeral()
            .await
            .map_err(|e| format!("cannot open in-memory stores: {e}\n"))?;
        Gateway::with_stores(config, stores).await
    } else {
        Gateway::new(config).await
    };
    built.map_err(|e| match e {
        crate::gateway::BuildError::Config(mut errors) => {
            errors.source_name = path.display().to_string();
            errors.to_string()
        }
        other => format!("{other}\n"),
    })
}

fn async_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
