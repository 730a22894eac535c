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
    for callback in config.callbacks.iter().filter(|c| c.reveal_to_caller) {
        println!(
            "warning: callback {} answers revealed values to whoever calls it (reveal_to_caller = true); make sure only the sender can reach {}",
            callback.name, callback.path
        );
    }
    if let Some(credential) = config.keys.unloaded_credential() {
        println!(
            "note: {} is a systemd credential (LoadCredential=); it is read and checked when the service starts",
            credential.display()
        );
    }
    Ok(())
}
