//! `tollgate run` and `tollgate migrate`.

use std::process::ExitCode;

use super::{async_runtime, build, load_checked, report};
use crate::config::Config;
use crate::planes::Listeners;

pub(super) fn run(path: &std::path::Path, log_level: Option<String>) -> ExitCode {
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

/// Completes on SIGTERM or ctrl-c.
pub(super) async fn shutdown_signal() {
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

pub(super) fn migrate(path: &std::path::Path) -> ExitCode {
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
