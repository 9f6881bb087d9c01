//! Log output: JSON lines (default, for log shippers) or human-readable text.

pub(crate) mod access_log;
pub(crate) mod capture;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod request_log;
pub(crate) mod traces;
pub(crate) mod usage;

use std::path::Path;
use std::sync::OnceLock;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::{LogFileConfig, LogFormat};

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

/// Keeps the file writer's background thread; dropping it flushes what is queued.
pub type LogGuard = Option<tracing_appender::non_blocking::WorkerGuard>;

/// Where log lines go: stderr, or rotated files (`logging.file`) through a background writer
/// thread, so a slow disk never holds a request (it waits only when 128k lines are queued; none
/// is dropped).
fn writer(
    file: Option<&LogFileConfig>,
    base_dir: &Path,
) -> Result<(BoxMakeWriter, LogGuard), String> {
    let Some(f) = file else {
        return Ok((BoxMakeWriter::new(std::io::stderr), None));
    };
    let path = if f.path.is_absolute() {
        f.path.clone()
    } else {
        base_dir.join(&f.path)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the log directory {}: {e}", dir.display()))?;
    }
    let per_file = (f.max_total_size.0 / (u64::from(f.max_files) + 1)).max(1) as usize;
    let rotating = FileRotate::new(
        path,
        AppendCount::new(f.max_files as usize),
        ContentLimit::BytesSurpassed(per_file),
        Compression::None,
        #[cfg(unix)]
        None,
    );
    let (w, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(rotating);
    Ok((BoxMakeWriter::new(w), Some(guard)))
}

/// Installs the global subscriber. `level` is a tracing filter (`info`, `tollgate=debug,access=off`).
/// Keep the returned guard until the process ends (it flushes the log file).
pub fn init(
    level: &str,
    format: LogFormat,
    file: Option<&LogFileConfig>,
    base_dir: &Path,
) -> Result<LogGuard, String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid log filter {level:?}: {e}"))?;
    let (make_writer, guard) = writer(file, base_dir)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(file.is_none())
        .with_writer(make_writer);
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
    result.map_err(|e| e.to_string())?;
    Ok(guard)
}
