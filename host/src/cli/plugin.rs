//! `tollgate plugin …`: work with policy plugins offline (new, inspect, test, builtins).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::{async_runtime, new_plugin};

#[derive(Subcommand)]
pub(super) enum PluginCommand {
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
        /// Rust only: a copy of Tollgate's Rust SDK to depend on, e.g. `plugins/sdk` of a checkout
        /// (default: the checkout the project is in, else the copy this binary carries, written
        /// into the project).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Describe a component: kind, exports, imports, and whether the gateway can load it.
    Inspect {
        /// A component file, or builtin:NAME for a plugin shipped in this binary.
        #[arg(value_parser = parse_module)]
        file: crate::config::Module,
    },
    /// Run a plugin against request fixtures and compare its decisions with what they expect.
    Test {
        /// A component file, or builtin:NAME for a plugin shipped in this binary.
        #[arg(value_parser = parse_module)]
        file: crate::config::Module,
        /// The cases file: YAML with `kind` (optional), `config` (given to `configure`),
        /// `limits` (optional, as `plugins[].limits`) and `cases`, each a `name`, the inputs
        /// (`request`, `candidates`, `response`, `phase`, `upstream`) and what to `expect`. The
        /// full format: docs/plugins.md, "The cases file".
        #[arg(long)]
        cases: PathBuf,
    },
    /// List the plugins shipped in this binary (use them as `module: builtin:NAME`).
    Builtins,
    /// Put a built component where a gateway loads it, only once it is checked: copied next to
    /// DEST, inspected (a policy the gateway can link) and, with --cases, run against its
    /// cases; then renamed over DEST in one step, so a watching gateway reloads once, the
    /// checked bytes. Build somewhere the gateway does not watch (cargo's target/, build.sh's
    /// project directory) and install from there.
    Install {
        /// The component to install.
        file: PathBuf,
        /// Where the gateway's config names it (`plugins[].module`).
        dest: PathBuf,
        /// A cases file (see `plugin test --help`) that must pass first.
        #[arg(long)]
        cases: Option<PathBuf>,
    },
}

pub(super) fn parse_module(s: &str) -> Result<crate::config::Module, String> {
    Ok(crate::config::Module::parse(s))
}

pub(super) fn plugin(cmd: PluginCommand) -> ExitCode {
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
                    let kind = i.world.unwrap_or("none (exports no tollgate:policy interface)");
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
                    if super::output::json() {
                        let rows: Vec<serde_json::Value> = all
                            .iter()
                            .map(|b| {
                                serde_json::json!({
                                    "module": format!("builtin:{}", b.name),
                                    "kind": b.kind,
                                    "version": b.version,
                                    "description": b.description,
                                    "sha256": crate::policy::sha256_hex(b.bytes),
                                })
                            })
                            .collect();
                        println!("{}", serde_json::Value::Array(rows));
                        return Ok(true);
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
                        crate::policy::authoring::run_cases(&engine, &file, &cases).await?;
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
                PluginCommand::Install { file, dest, cases } => {
                    install(&engine, &file, &dest, cases.as_deref()).await
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

/// `plugin install`: checks a copy of `file` beside `dest`, then renames it over `dest`.
async fn install(
    engine: &crate::policy::PolicyEngine,
    file: &Path,
    dest: &Path,
    cases: Option<&Path>,
) -> Result<bool, String> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", dest.display()))?;
    let staged = dir.join(format!(
        ".{}.installing-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(file, &staged).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            file.display(),
            staged.display()
        )
    })?;
    let checked = check_staged(engine, &staged, cases).await;
    let verdict = match checked {
        Ok(Some(sha256)) => std::fs::rename(&staged, dest)
            .map(|()| {
                println!(
                    "installed {} as {} (sha256 {sha256})",
                    file.display(),
                    dest.display()
                );
                true
            })
            .map_err(|e| format!("cannot install {}: {e}", dest.display())),
        Ok(None) => Ok(false),
        Err(e) => Err(e),
    };
    if !matches!(verdict, Ok(true)) {
        let _ = std::fs::remove_file(&staged);
        eprintln!("{} is unchanged", dest.display());
    }
    verdict
}

/// The staged component's sha256 if it may be installed; `None` (having said why) if not.
async fn check_staged(
    engine: &crate::policy::PolicyEngine,
    staged: &Path,
    cases: Option<&Path>,
) -> Result<Option<String>, String> {
    let module = crate::config::Module::File(staged.to_path_buf());
    let i = engine.inspect(&module)?;
    if i.kind.is_none() {
        eprintln!("refused: it exports no tollgate:policy interface (`plugin inspect` says more)");
        return Ok(None);
    }
    if let Some(e) = &i.link_error {
        eprintln!("refused: the gateway cannot link it: {e}");
        return Ok(None);
    }
    if let Some(cases) = cases {
        let report = crate::policy::authoring::run_cases(engine, &module, cases).await?;
        let failed: Vec<_> = report.results.iter().filter(|r| !r.passed).collect();
        for r in &failed {
            eprintln!(
                "FAILED  {}\n        expected: {}\n        actual:   {}",
                r.name, r.expected, r.actual
            );
        }
        if !failed.is_empty() {
            eprintln!(
                "refused: {} of {} cases failed",
                failed.len(),
                report.results.len()
            );
            return Ok(None);
        }
        println!("{} cases passed", report.results.len());
    }
    Ok(Some(i.sha256))
}

pub(super) fn new_plugin_project(
    name: &str,
    kind: &str,
    lang: new_plugin::Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> ExitCode {
    let Ok(kind) = serde_json::from_value::<crate::policy::PluginKind>(serde_json::json!(kind))
    else {
        eprintln!("--kind {kind:?}: use ip-binding, router, quota, header-rewrite or transform");
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
