//! Operational logging (tracing). Separate from the audit trail, and never
//! given a value: only tokens, counts and ids, with fixed field names.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: plain text on stderr (journald picks it up),
/// level from `RUST_LOG`, `info` by default.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
