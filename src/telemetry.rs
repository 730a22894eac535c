//! Operational logging (tracing, tracing-appender). Separate from the audit
//! trail, and never given a value: only tokens, counts and ids, with fixed
//! field names (`request_id`, `client`, `route`, `namespace`, `status`,
//! `elapsed_ms`). A value reaches a log only through
//! [`crate::policy::mask`].

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Set when the server's log lines go to stdout as JSON: then nothing else
/// may be written there (see [`stdout_is_json_log`]).
static JSON_ON_STDOUT: AtomicBool = AtomicBool::new(false);

/// True when stdout carries JSON log lines, so that a human-readable line
/// (such as "tokenvault listening on …") belongs on stderr instead.
pub fn stdout_is_json_log() -> bool {
    JSON_ON_STDOUT.load(Ordering::SeqCst)
}

/// A log writer that escapes every control character of a formatted line
/// except its final newline: C0 controls (newline, carriage return, escape,
/// …), DEL, C1 controls and the Unicode line and paragraph separators become
/// `\u00XX` / `\u2028`. Whatever a field holds, one event stays one line and
/// cannot move the cursor of a terminal, in the plain format and the JSON
/// one alike (inside a JSON string, `\u00XX` is a valid escape of the same
/// character). The formatter hands each event to one `write` call.
pub struct Escaping<W>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Most lines hold nothing to escape: no control byte before the
        // final newline, and no byte that could start a C1 control or a
        // line separator.
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if body
            .iter()
            .all(|b| !(b.is_ascii_control() || *b == 0xc2 || *b == 0xe2))
        {
            self.0.write_all(buf)?;
        } else {
            self.0.write_all(&escape_controls(buf))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// See [`Escaping`]: a formatted line (UTF-8; anything else is shown
/// lossily) with every control character but the final newline escaped.
pub fn escape_controls(line: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    match text.strip_suffix('\n') {
        Some(body) => {
            let mut out = escape_control_chars(body);
            out.push('\n');
            out.into_bytes()
        }
        None => escape_control_chars(&text).into_bytes(),
    }
}

/// `text` with every control character (C0, DEL, C1) and the Unicode line
/// and paragraph separators written as `\u00XX` / `\u2028`: safe to print on
/// a terminal or in a log, where such characters could start a fake line or
/// move the cursor. Used for log lines and for the CLI's table output.
pub fn escape_control_chars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Targets held at `info` whatever `[log] level` or `RUST_LOG` asks: the
/// PostgreSQL client logs every statement with its bind parameters at
/// debug, and a parameter can be what a caller sent (a "token" that is
/// really a value).
const HELD_AT_INFO: [&str; 2] = ["tokio_postgres", "postgres"];

fn filter(level: &str) -> EnvFilter {
    held_at_info(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)))
}

fn held_at_info(mut filter: EnvFilter) -> EnvFilter {
    for target in HELD_AT_INFO {
        // A directive for the same target replaces the one given.
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Logging for one-shot commands: plain text on stderr, so that stdout stays
/// the command's output.
pub fn init_command() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("info"))
        .with_writer(|| Escaping(io::stderr()))
        .with_ansi(false)
        .try_init();
}

/// Logging for the server: stdout (journald) or daily-rotated files with
/// retention. Keep the returned guard alive until exit: it flushes the file
/// writer.
pub fn init_server(settings: &LogSettings) -> Result<Option<WorkerGuard>, String> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(&settings.level));
    match &settings.directory {
        None => {
            // No colours: their escape sequences would be escaped too, and a
            // caller's would be indistinguishable from them.
            let builder = builder
                .with_writer(|| Escaping(io::stdout()))
                .with_ansi(false);
            JSON_ON_STDOUT.store(settings.format == LogFormat::Json, Ordering::SeqCst);
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
            let builder = builder
                .with_writer(move || Escaping(writer.clone()))
                .with_ansi(false);
            let _ = match settings.format {
                LogFormat::Plain => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            };
            Ok(Some(guard))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_client_never_logs_below_info_whatever_is_asked() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for asked in ["trace", "tokio_postgres=trace,postgres=debug,trace"] {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(held_at_info(EnvFilter::new(asked)))
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!(target: "tokio_postgres::query", "bind parameters");
                tracing::info!(target: "tokio_postgres::connection", "connection info");
                tracing::debug!(target: "tokenvault::store", "own debug");
            });
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("bind parameters"), "{asked}: {text}");
            assert!(text.contains("connection info"), "{asked}: {text}");
            assert!(text.contains("own debug"), "{asked}: {text}");
        }
    }

    #[test]
    fn a_forged_line_stays_one_escaped_line() {
        let line =
            "WARN path=/d/0/x\n2026-12-01T00:00:00Z ERROR forged \x1b[2J\r\u{85}\u{2028}end\n";
        let escaped = String::from_utf8(escape_controls(line.as_bytes())).unwrap();
        assert_eq!(
            escaped,
            "WARN path=/d/0/x\\u000a2026-12-01T00:00:00Z ERROR forged \\u001b[2J\\u000d\\u0085\\u2028end\n"
        );
        assert_eq!(escaped.matches('\n').count(), 1);
        // Inside JSON, the escapes decode to the same characters.
        let json = format!(
            "{{\"f\":\"{}\"}}",
            String::from_utf8(escape_controls("a\u{1b}b\u{2029}".as_bytes())).unwrap()
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["f"], "a\u{1b}b\u{2029}");
        assert_eq!(
            escape_controls("café ☕ ok".as_bytes()),
            "café ☕ ok".as_bytes()
        );
        // Through the writer: a clean line as it is, a dirty one escaped.
        let mut writer = Escaping(Vec::new());
        writer.write_all(b"clean line\n").unwrap();
        writer.write_all("two\nlines \u{85}\n".as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(writer.0).unwrap(),
            "clean line\ntwo\\u000alines \\u0085\n"
        );
    }
}
