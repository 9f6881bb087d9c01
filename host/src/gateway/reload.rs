//! Hot reload: the config file and every plugin file it names (not `builtin:` ones) are watched; a change (or SIGHUP)
//! re-reads the config, builds a new runtime off the request path (plugins compiled and
//! configured), and swaps it in atomically. Anything wrong — bad YAML, a plugin that does not
//! compile, refuses its config or fails its sha256 pin — keeps the running version and logs why.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::fs_watch::FileWatch;
use crate::gateway::Gateway;

/// The files whose change triggers a reload: the config and its plugin files (built-in plugins
/// are part of the binary and never change while it runs).
fn watched_files(config_path: &Path, config: Option<&Config>) -> Vec<PathBuf> {
    let mut files = vec![config_path.to_path_buf()];
    if let Some(c) = config {
        files.extend(c.plugins.iter().filter_map(|p| match &p.module {
            crate::config::Module::File(path) => Some(c.resolve(path)),
            crate::config::Module::Builtin(_) => None,
        }));
    }
    files
}

/// Re-reads `config_path` and applies it. Returns whether the new config is in service.
pub async fn reload_once(gateway: &Gateway, config_path: &Path) -> Result<Config, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    gateway.reload(&config).await.map_err(|errors| {
        crate::config::ConfigErrors {
            source_name: config_path.display().to_string(),
            errors,
        }
        .to_string()
    })?;
    Ok(config)
}

/// Reloads on file changes, SIGHUP and admin API requests ([`Gateway::request_reload`]) until
/// the task is aborted; each reload's result is kept ([`Gateway::last_reload`]).
pub fn spawn(
    gateway: Arc<Gateway>,
    config_path: PathBuf,
    initial: &Config,
) -> tokio::task::JoinHandle<()> {
    let mut files = watched_files(&config_path, Some(initial));
    let (tx, mut requests) = tokio::sync::mpsc::channel(4);
    let _ = gateway.config_path.set(config_path.clone());
    if gateway.reload_requests.set(tx).is_err() {
        tracing::warn!("a reloader already runs for this gateway; admin reloads go to the first");
    }
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let mut watch = match FileWatch::new(&files) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch config files; reload on SIGHUP only");
                    None
                }
            };
            let changed = async {
                match watch.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let mut reply = None;
            tokio::select! {
                c = changed => if c.is_none() { return },
                _ = hangup => tracing::info!("SIGHUP: reloading"),
                Some(done) = requests.recv() => {
                    tracing::info!("admin API: reloading");
                    reply = Some(done);
                }
            }
            let result = match reload_once(&gateway, &config_path).await {
                Ok(config) => {
                    tracing::info!(config = %config_path.display(), "configuration reloaded");
                    files = watched_files(&config_path, Some(&config));
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(config = %config_path.display(), "reload refused; the running configuration stays in service:\n{e}");
                    Err(e)
                }
            };
            gateway.note_reload(&result);
            if let Some(done) = reply {
                let _ = done.send(result);
            }
        }
    })
}
