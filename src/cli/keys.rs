//! `tokenvault keys status|rewrap`: the master key versions and how many
//! rows each seals, and a change of the passphrase or key file that wraps
//! the master key (no row is touched).

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::{ArgGroup, Subcommand};

use super::{CliError, DEFAULT_CONFIG};
use crate::audit::{self, Action, Outcome};
use crate::config::{ConfigErrors, KeySettings, SecretRef};
use crate::crypto::wrapping::Keyring;

/// `keys` subcommands.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Show the master key versions and the rows each one seals, per
    /// namespace.
    Status {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Wrap the master key under a new passphrase or key file. Sealed
    /// values are not touched; afterwards, point [keys] (or the systemd
    /// credential) at the new secret before the next start.
    #[command(group(ArgGroup::new("new").required(true).args(["new_passphrase_file", "new_key_file"])))]
    Rewrap {
        /// Configuration file (its [keys] open the keyring today).
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// File holding the new passphrase (mode 0600, 12 characters or more).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// File holding a new 32-byte key (mode 0600).
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

/// Runs a `keys` subcommand.
pub fn run(command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Status { config } => status(&config),
        KeysCommand::Rewrap {
            config,
            new_passphrase_file,
            new_key_file,
        } => rewrap(&config, new_passphrase_file, new_key_file),
    }
}

fn open(config: &crate::config::Config) -> Result<Keyring, CliError> {
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    Ok(Keyring::open(&config.storage.keyring_path(), &source)
        .map_err(|error| anyhow!("{error}"))?)
}

fn status(config_path: &std::path::Path) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    let keyring = open(&config)?;
    let rows = crate::store::rows_per_key_version_offline(&config.storage.database_path())
        .context("cannot read vault.db")?;
    let current = keyring.versions().last().copied().unwrap_or(0);
    let mut text = String::new();
    for version in keyring.versions() {
        let sealed: u64 = rows
            .iter()
            .filter(|(_, v, _)| *v == version)
            .map(|(_, _, n)| n)
            .sum();
        text.push_str(&format!(
            "master key v{version}{}: {sealed} rows\n",
            if version == current {
                " (current: new values)"
            } else {
                ""
            }
        ));
        for (namespace, _, count) in rows.iter().filter(|(_, v, _)| *v == version) {
            text.push_str(&format!("  {namespace}: {count}\n"));
        }
    }
    super::write_stdout(text.as_bytes())
}

fn rewrap(
    config_path: &std::path::Path,
    new_passphrase_file: Option<PathBuf>,
    new_key_file: Option<PathBuf>,
) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    let keyring = open(&config)?;
    let new = match (new_passphrase_file, new_key_file) {
        (Some(path), None) => KeySettings::Passphrase(SecretRef::File(path)),
        (None, Some(path)) => KeySettings::KeyFile(path),
        _ => return Err(anyhow!("give one of --new-passphrase-file and --new-key-file").into()),
    };
    let source = new
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    keyring
        .rewrap(&config.storage.keyring_path(), &source)
        .map_err(|error| anyhow!("{error}"))?;
    let record = audit::Context::cli("keys rewrap")
        .record(Action::KeyRewrap, Outcome::Ok)
        .reason(match new {
            KeySettings::KeyFile(_) => "key_file",
            _ => "passphrase",
        });
    crate::store::append_audit_offline(
        &config.storage.database_path(),
        &config.storage.audit_path(),
        &keyring.audit_key(),
        &[record],
    )
    .context(
        "the keyring was rewrapped, but the change could not be recorded in the audit trail",
    )?;
    println!(
        "rewrapped {} master key version(s); point [keys] at the new {} before the vault next starts",
        keyring.versions().len(),
        match new {
            KeySettings::KeyFile(_) => "key file",
            _ => "passphrase",
        }
    );
    Ok(())
}
