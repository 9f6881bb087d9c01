//! Log output: JSON lines (default, for log shippers) or human-readable text.

pub(crate) mod access_log;
pub(crate) mod metrics;
pub(crate) mod usage;

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Swaps the installed subscriber's filter (the `log_level` live setting).
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Changes the log filter of the subscriber [`init`] installed; a no-op without one (tests).
pub fn set_level(level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid log filter {level:?}: {e}"))?;
    match RELOAD.get() {
        Some(reload) => reload(filter),
        None => Ok(()),
    }
}

/// Installs the global subscriber. `level` is a tracing filter (`info`, `tollgate=debug,access=off`).
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid log filter {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The filter is made reloadable after the format is chosen (its type depends on it).
    let result = match format {
        LogFormat::Json => {
            let b = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = b.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.try_init()
        }
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.try_init()
        }
    };
    result.map_err(|e| e.to_string())
}
