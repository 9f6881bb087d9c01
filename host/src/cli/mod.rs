//! Command line: `run`, `check`, `health`, `migrate`, `bindings`, `ip`, `usage`, `key-id`,
//! `plugin`, `config`, `admin`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_arg;
mod health;
mod new_plugin;

use config_arg::{ConfigArg, existing_database};
pub use new_plugin::{COMPONENTIZE_JS, COMPONENTIZE_PY};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::planes::Listeners;
use crate::service;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Gateway for OpenAI-compatible LLM APIs"
)]
struct Cli {
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
        action: BindingsAction,
    },
    /// IP allow and deny entries stored in the database (on top of the config file's `access`
    /// lists); running gateways apply a change within a second.
    Ip {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: IpCommand,
    },
    /// Token usage per key (by name), upstream or model over the last `--since` (from the
    /// database every gateway of the deployment writes to).
    Usage {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value = "key")]
        by: UsageGroup,
        /// How far back, e.g. `24h`, `7d`, `30m`.
        #[arg(long, default_value = "24h")]
        since: humantime::Duration,
    },
    /// Work with policy plugins offline.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The config file as a published contract.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Admin plane helpers.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the key id (HMAC-SHA256 under the config's secret) of the key read from stdin, for
    /// `auth.keys[].key_id`.
    KeyId {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Print the argon2 hash of the password read from stdin, for `admin.users[].password_hash`.
    HashPassword,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UsageGroup {
    Key,
    Upstream,
    Model,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the config file (for editors: see docs/config-schema.md).
    Schema,
}

#[derive(Subcommand)]
enum BindingsAction {
    /// Bindings, most recently used first: key id, network, status, created, last used, last IP,
    /// requests.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
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

#[derive(Subcommand)]
enum IpCommand {
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

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin project that builds, passes its own cases and loads in the gateway.
    New {
        /// The project's (and the crate's) name, e.g. `team-router`.
        name: String,
        /// ip-binding, router, quota or header-rewrite.
        #[arg(long)]
        kind: String,
        /// rust, python (componentize-py) or js (componentize-js).
        #[arg(long, value_enum, default_value = "rust")]
        lang: new_plugin::Lang,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust only: Tollgate's `plugins/sdk` (default: found above the project directory).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Describe a component: kind, exports, imports, and whether the gateway can load it.
    Inspect {
        /// A component file, or builtin:NAME for a plugin shipped in this binary.
        #[arg(value_parser = parse_module)]
        file: crate::config::Module,
    },
    /// Run a plugin against request fixtures (see docs/plugins.md) and compare its decisions.
    Test {
        /// A component file, or builtin:NAME for a plugin shipped in this binary.
        #[arg(value_parser = parse_module)]
        file: crate::config::Module,
        #[arg(long)]
        cases: PathBuf,
    },
    /// List the plugins shipped in this binary (use them as `module: builtin:NAME`).
    Builtins,
}

fn parse_module(s: &str) -> Result<crate::config::Module, String> {
    Ok(crate::config::Module::parse(s))
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
    match cli.command {
        Command::Check { config } => with_config(&config, check),
        Command::Health { url, timeout } => health::health(&url, timeout.into()),
        Command::KeyId { config } => with_config(&config, key_id),
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
        Command::Run { config, log_level } => with_config(&config, |p| run(p, log_level)),
        Command::Plugin(cmd) => plugin(cmd),
        Command::Migrate { config } => with_config(&config, migrate),
        Command::Bindings { config, action } => with_config(&config, |p| bindings(p, action)),
        Command::Ip { config, action } => with_config(&config, |p| ip(p, action)),
        Command::Usage { config, by, since } => {
            with_config(&config, |p| usage(p, by, since.into()))
        }
        Command::Admin(AdminCommand::HashPassword) => hash_password(),
    }
}

fn usage(path: &std::path::Path, by: UsageGroup, since: std::time::Duration) -> ExitCode {
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
            let names = crate::KeyRing::new(&config.auth);
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

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = input.trim_end_matches(['\r', '\n']);
    if password.len() < 12 {
        eprintln!("the password must be at least 12 characters");
        return ExitCode::FAILURE;
    }
    match crate::admin::auth::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn ms_to_rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// One audited change through the service layer the admin API uses.
async fn change(
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

fn bindings(path: &std::path::Path, action: BindingsAction) -> ExitCode {
    use crate::service::bindings::Change;
    use crate::state::KEY_ID_PREFIX_LEN;
    with_stores(path, async |stores| {
        let failed = |e: crate::state::StoreError| format!("{e}\n");
        match action {
            BindingsAction::List { limit } => {
                let rows = stores.database().bindings(limit).await;
                let rows = rows.map_err(failed)?;
                let lines: Vec<String> = rows
                    .iter()
                    .map(|b| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            b.key_id,
                            b.cidr,
                            b.status.as_str(),
                            ms_to_rfc3339(b.created_ms),
                            ms_to_rfc3339(b.last_used_ms),
                            b.last_ip.as_deref().unwrap_or("-"),
                            b.request_count
                        )
                    })
                    .collect();
                Ok(lines.join("\n"))
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
                let lines: Vec<String> = rows
                    .iter()
                    .map(|i| {
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
                    .collect();
                Ok(lines.join("\n"))
            }
        }
    })
}

/// Runs `f` on the stores of the config at `path` (opened like a gateway's, shut down after),
/// and reports its text or error.
fn with_stores(
    path: &std::path::Path,
    f: impl AsyncFnOnce(&crate::state::Stores) -> Result<String, String>,
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
                let out = f(&stores).await;
                stores.shutdown().await;
                out
            })
        });
    report(result)
}

fn ip(path: &std::path::Path, action: IpCommand) -> ExitCode {
    use crate::service::ip_rules;
    use crate::state::IpAction;
    let actor = service::Actor::cli();
    with_stores(path, async |stores| {
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

fn migrate(path: &std::path::Path) -> ExitCode {
    let result = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            async_runtime()?.block_on(async {
                let s = &config.storage;
                let db = crate::state::SqlStore::connect(
                    &s.database,
                    &config.base_dir,
                    s.op_timeout.get(),
                )
                .await
                .map_err(|e| format!("{e}\n"))?;
                db.migrate().await.map_err(|e| format!("{e}\n"))?;
                Ok::<_, String>(format!("{:?}", s.database))
            })
        });
    report(result.map(|db| format!("{db}: migrations applied")))
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

fn check(path: &std::path::Path) -> ExitCode {
    let checked = load_checked(path).and_then(|config| {
        async_runtime()?
            .block_on(build(path, &config, true))
            .map(drop)
    });
    report(checked.map(|()| format!("{}: ok", path.display())))
}

fn key_id(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut key = String::new();
    if std::io::stdin().read_to_string(&mut key).is_err() {
        eprintln!("cannot read the key from stdin");
        return ExitCode::FAILURE;
    }
    if config.auth.secret.expose() == crate::config::DEMO_SECRET
        && let Ok(Some(env_file)) = crate::config::env_file::load()
    {
        // On a host with a deployment's environment file, the development secret means
        // TOLLGATE_SECRET is missing there: this id would match no running gateway's.
        eprintln!(
            "auth.secret is the development default, so TOLLGATE_SECRET is set neither here nor in {}: the id would not be the deployed gateway's",
            env_file.display()
        );
        return ExitCode::FAILURE;
    }
    let ring = crate::pipeline::auth::KeyRing::new(&config.auth);
    println!(
        "{}",
        ring.id_of(key.trim_end_matches(['\r', '\n'])).to_hex()
    );
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path, log_level: Option<String>) -> ExitCode {
    let mut config = match load_checked(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The command line's level is the default the `log_level` live setting overrides.
    if let Some(level) = log_level {
        config.logging.level = level;
    }
    let level = config.logging.level.clone();
    let _log_guard = match crate::telemetry::init(
        &level,
        config.logging.format,
        config.logging.file.as_ref(),
        &config.base_dir,
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match async_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gateway = match build(path, &config, false).await {
            Ok(g) => g,
            Err(e) => {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let listeners = match Listeners::bind(&config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %listeners.data_addr(),
            admin = listeners.admin_addr().map(|a| a.to_string()),
            tls = config.server.tls.is_some(),
            config = %path.display(),
            "tollgate listening"
        );
        let reloader = crate::gateway::reload::spawn(gateway.clone(), path.to_path_buf(), &config);
        listeners.serve(gateway, shutdown_signal()).await;
        reloader.abort();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn plugin(cmd: PluginCommand) -> ExitCode {
    if let PluginCommand::New {
        name,
        kind,
        lang,
        dir,
        sdk,
    } = cmd
    {
        return new_plugin_project(&name, &kind, lang, dir, sdk);
    }
    // The plugin's own log lines (and the runtime's warnings) on stderr, as the gateway would
    // log them: a test run shows what the plugin said. `RUST_LOG` overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,plugin=debug"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
    let outcome = async_runtime().and_then(|rt| {
        rt.block_on(async {
            let stores = crate::state::Stores::ephemeral()
                .await
                .map_err(|e| format!("cannot open in-memory stores: {e}"))?;
            // The gateway's default compilation cache: a plugin tested here is not compiled
            // again by a gateway on this machine, and the other way round.
            let cache = crate::config::PluginCache::default()
                .dir(Path::new("."), |name| std::env::var_os(name));
            let engine = crate::gateway::policy_engine(stores, cache.as_deref())
                .map_err(|e| format!("cannot start the WebAssembly runtime: {e}"))?;
            match cmd {
                PluginCommand::Inspect { file } => {
                    let i = engine.inspect(&file)?;
                    match &file {
                        crate::config::Module::Builtin(name) => {
                            let version = tollgate_builtins::find(name).map_or("", |b| b.version);
                            println!("module:  {file} (built in, version {version}, {} bytes)", i.size);
                        }
                        crate::config::Module::File(_) => {
                            println!("file:    {file} ({} bytes)", i.size);
                        }
                    }
                    println!("sha256:  {}", i.sha256);
                    let kind = i.kind.map_or(
                        "none (exports no tollgate:policy interface)",
                        crate::policy::world,
                    );
                    println!("kind:    {kind}");
                    println!("exports: {}", i.exports.join(", "));
                    println!("imports: {}", i.imports.join(", "));
                    println!("sandbox: {}", crate::policy::WASI_GRANTS);
                    let (origin, took) = i.code;
                    let code = match origin {
                        crate::policy::CodeOrigin::DiskCache => "read from the compilation cache in",
                        _ => "compiled in",
                    };
                    println!("code:    {code} {:.0} ms", took.as_secs_f64() * 1e3);
                    match &i.link_error {
                        None => println!("links:   ok"),
                        Some(e) => println!("links:   NO: {e}"),
                    }
                    if let (Some(kind), None) = (i.kind, &i.link_error) {
                        match engine.first_instance(&file, kind).await {
                            Ok((t, memory)) => println!(
                                "memory:  {:.1} MiB for an instance configured with {{}} ({:.2} ms to create, under the gateway's default limits)",
                                memory as f64 / (1024.0 * 1024.0),
                                t.as_secs_f64() * 1e3
                            ),
                            Err(e) => println!("memory:  unknown: an instance configured with {{}} failed: {e}"),
                        }
                    }
                    Ok(i.kind.is_some() && i.link_error.is_none())
                }
                PluginCommand::Builtins => {
                    let all = tollgate_builtins::all();
                    if all.is_empty() {
                        println!("{}", tollgate_builtins::unknown("…"));
                        return Ok(false);
                    }
                    for b in all {
                        println!(
                            "builtin:{:<18} {:<15} {}  {}\n  sha256 {}",
                            b.name,
                            b.kind,
                            b.version,
                            b.description,
                            crate::policy::sha256_hex(b.bytes)
                        );
                    }
                    Ok(true)
                }
                PluginCommand::Test { file, cases } => {
                    let report =
                        crate::policy::fixtures::run_cases(&engine, &file, &cases).await?;
                    let results = &report.results;
                    let failed = results.iter().filter(|r| !r.passed).count();
                    for r in results {
                        if r.passed {
                            println!("ok      {}", r.name);
                        } else {
                            println!(
                                "FAILED  {}\n        expected: {}\n        actual:   {}",
                                r.name, r.expected, r.actual
                            );
                        }
                    }
                    println!("{} passed, {failed} failed", results.len() - failed);
                    let mut times = report.case_times.clone();
                    times.sort();
                    let at = |q: f64| {
                        times
                            .get(((times.len().saturating_sub(1)) as f64 * q).round() as usize)
                            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
                    };
                    println!(
                        "{} {:.0} ms, first instance {:.2} ms ({:.1} MiB of memory), per case p50 {:.0} µs / p99 {:.0} µs ({} cases)",
                        match report.code_origin {
                            crate::policy::CodeOrigin::DiskCache => "read from the compilation cache in",
                            _ => "compile",
                        },
                        report.compile.as_secs_f64() * 1e3,
                        report.first_instance.as_secs_f64() * 1e3,
                        report.instance_memory as f64 / (1024.0 * 1024.0),
                        at(0.5),
                        at(0.99),
                        times.len()
                    );
                    Ok(failed == 0)
                }
                PluginCommand::New { .. } => unreachable!("written above"),
            }
        })
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn new_plugin_project(
    name: &str,
    kind: &str,
    lang: new_plugin::Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> ExitCode {
    let Ok(kind) = serde_json::from_value::<crate::policy::PluginKind>(serde_json::json!(kind))
    else {
        eprintln!("--kind {kind:?}: use ip-binding, router, quota or header-rewrite");
        return ExitCode::FAILURE;
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match new_plugin::write(name, kind, lang, &dir, sdk.as_deref()) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            let build = match lang {
                new_plugin::Lang::Rust => "cargo build --release --target wasm32-wasip2",
                new_plugin::Lang::Python | new_plugin::Lang::Js => "./build.sh",
            };
            println!("next: cd {} && {build} (see README.md)", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}
