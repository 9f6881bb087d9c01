//! `logging:`: level, format, access log, log files.

use crate::ByteSize;
use std::path::PathBuf;

use serde::Deserialize;

use crate::env;

#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `tollgate=debug`.
    #[serde(deserialize_with = "env::string")]
    pub level: String,
    pub format: LogFormat,
    /// One JSON line per request on the `access` target.
    pub access_log: bool,
    /// Write the log (access and audit lines included) to rotated files instead of stderr, for
    /// hosts without journald.
    pub file: Option<LogFileConfig>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
            file: None,
        }
    }
}

/// Rotated log files: `path`, then `path.1` (newest) to `path.<max_files>`. A file is rotated when
/// it passes `max_total_size / (max_files + 1)`, so all of them together stay within
/// `max_total_size` (plus at most one line).
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFileConfig {
    /// Relative paths are resolved against the config file's directory.
    pub path: PathBuf,
    #[serde(default = "default_log_total")]
    pub max_total_size: ByteSize,
    /// Rotated files kept besides the current one.
    #[serde(default = "default_log_files")]
    pub max_files: u32,
}

fn default_log_total() -> ByteSize {
    ByteSize(1 << 30)
}

fn default_log_files() -> u32 {
    9
}

#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Json,
    Text,
}
