//! Operational logging (tracing, tracing-appender). Separate from the audit
//! trail, and never given a value: only tokens, counts and ids, with fixed
//! field names (`request_id`, `client`, `route`, `namespace`, `status`,
//! `elapsed_ms`). A value reaches a log only through
//! [`crate::policy::mask`].

use std::io::IsTerminal;
use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::EnvFilter;

/// `[log]`: how the server logs.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Plain text or one JSON object per line.
    pub format: LogFormat,
    /// Default level filter (`RUST_LOG` overrides it).
    pub level: String,
    /// Write daily-rotated files here instead of stdout.
    pub directory: Option<PathBuf>,
    /// Rotated files to keep (one per day).
    pub retention_days: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Plain,
            level: "info".to_owned(),
            directory: None,
            retention_days: 14,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
}

/// Logging for one-shot commands: plain text on stderr, so that stdout stays
/// the command's output.
pub fn init_command() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("info"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Logging for the server: stdout (journald) or daily-rotated files with
/// retention. Keep the returned guard alive until exit: it flushes the file
/// writer.
pub fn init_server(settings: &LogSettings) -> Result<Option<WorkerGuard>, String> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(&settings.level));
    match &settings.directory {
        None => {
            let ansi = std::io::stdout().is_terminal() && settings.format == LogFormat::Plain;
            let builder = builder.with_writer(std::io::stdout).with_ansi(ansi);
            let _ = match settings.format {
                LogFormat::Plain => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            };
            Ok(None)
        }
        Some(directory) => {
            std::fs::create_dir_all(directory).map_err(|error| {
                format!(
                    "cannot create log directory {}: {error}",
                    directory.display()
                )
            })?;
            let appender = Builder::new()
                .rotation(Rotation::DAILY)
                .filename_prefix("tokenvault")
                .filename_suffix("log")
                .max_log_files(settings.retention_days.max(1))
                .build(directory)
                .map_err(|error| {
                    format!("cannot open a log file in {}: {error}", directory.display())
                })?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let builder = builder.with_writer(writer).with_ansi(false);
            let _ = match settings.format {
                LogFormat::Plain => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            };
            Ok(Some(guard))
        }
    }
}
