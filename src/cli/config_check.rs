//! `tokenvault config check`

use std::path::Path;

use super::CliError;

/// Loads and validates the configuration, printing every problem at once.
pub fn run(path: &Path) -> Result<(), CliError> {
    let config = crate::config::load(path)?;
    println!(
        "configuration OK: {} namespace(s), {} role(s), {} client(s); listen {}{}",
        config.namespaces.len(),
        config.roles.len(),
        config.clients.len(),
        config.server.listen,
        if config.server.tls.is_some() {
            " (TLS)"
        } else {
            " (plain HTTP)"
        },
    );
    Ok(())
}
