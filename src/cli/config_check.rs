//! `tokenvault config check`

use std::path::Path;

use super::CliError;
use crate::config::{ConfigErrors, KeySettings, Problem, SecretRef};
use crate::crypto::wrapping::{KekSource, MIN_PASSPHRASE_LEN};

/// Loads and validates the configuration, printing every problem at once.
pub fn run(path: &Path) -> Result<(), CliError> {
    let config = crate::config::load(path)?;
    // The passphrase is held to what `init` demands, when it can be read
    // here (a systemd credential is checked when the service starts).
    if config.keys.unloaded_credential().is_none() {
        if let Ok(KekSource::Passphrase(passphrase)) = config.keys.kek_source() {
            if passphrase.len() < MIN_PASSPHRASE_LEN {
                let key = match &config.keys {
                    KeySettings::Passphrase(SecretRef::Env(_)) => "keys.passphrase_env",
                    _ => "keys.passphrase_file",
                };
                return Err(CliError::Config(ConfigErrors(vec![Problem {
                    key: key.to_owned(),
                    message: format!(
                        "the passphrase is shorter than {MIN_PASSPHRASE_LEN} characters"
                    ),
                    hint: Some(
                        "use a passphrase of at least 12 characters, ideally a generated one"
                            .to_owned(),
                    ),
                }])));
            }
        }
    }
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
    let carries_values =
        config.clevertap.is_some() || !config.routes.is_empty() || !config.callbacks.is_empty();
    if config.server.tls.is_none() && !config.server.listen.ip().is_loopback() && carries_values {
        println!(
            "warning: {} is served over plain HTTP off loopback, and its routes, callbacks or CleverTap surface carry personal data and keys; configure tls_cert and tls_key",
            config.server.listen
        );
    }
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
