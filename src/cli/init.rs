//! `tokenvault init`

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, Context};

use super::CliError;
use crate::audit::{self, Action, Outcome};
use crate::config::Backend;
use crate::crypto::wrapping::{Keyring, KeyringError};
use crate::store::{append_audit_offline, Store};

/// Creates the data directory (0700), the keyring with a fresh wrapped master
/// key, and `vault.db` with its schema. Refuses to overwrite a keyring.
pub fn run(config_path: &Path) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    crate::harden::harden_process();
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(crate::config::ConfigErrors(vec![problem])))?;
    let data_dir = &config.storage.data_dir;
    if data_dir.exists() {
        let mode = fs::metadata(data_dir)
            .context("cannot read the data directory")?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(anyhow!(
                "data directory {} is accessible by group or others (mode {mode:o})\nhint: chmod 700 {}",
                data_dir.display(),
                data_dir.display()
            )
            .into());
        }
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    }
    if let Backend::Postgres(settings) = &config.storage.backend {
        return init_postgres(settings, &source, config_path);
    }
    let keyring_path = config.storage.keyring_path();
    let keyring = Keyring::create(&keyring_path, &source).map_err(|error| match error {
        KeyringError::Exists(_) => anyhow!(
            "{error}; refusing to overwrite it\nhint: a vault is already initialised there; to start over, move the whole data directory away first"
        ),
        other => keyring_error(other),
    })?;
    let (database, audit_path) = (config.storage.database_path(), config.storage.audit_path());
    let store = Store::open(
        &database,
        &audit_path,
        keyring.audit_key(),
        crate::config::Limits::default().sqlite_cache_mib,
    )
    .context("cannot create vault.db")?;
    store.shutdown();
    let context = audit::Context::cli("init");
    let records = [
        context.record(Action::Init, Outcome::Ok),
        context
            .record(Action::KeyUnwrap, Outcome::Ok)
            .reason("master_key_created"),
    ];
    append_audit_offline(&database, &audit_path, &keyring.audit_key(), &records)
        .context("cannot write the first audit records")?;
    tracing::info!(data_dir = %data_dir.display(), "vault initialised");
    println!("initialised {}:", data_dir.display());
    println!(
        "  keyring   {} (master key v1, wrapped)",
        keyring_path.display()
    );
    println!("  database  {}", database.display());
    println!("  audit     {}", audit_path.display());
    println!("next: tokenvault serve --config {}", config_path.display());
    Ok(())
}

fn keyring_error(error: KeyringError) -> anyhow::Error {
    match error {
        KeyringError::WeakPassphrase => anyhow!(
            "{error}\nhint: use a passphrase of at least 12 characters, ideally a generated one"
        ),
        other => anyhow!(other),
    }
}

/// `init` on PostgreSQL: the schema, the one keyring every node unwraps
/// (stored in the database, wrapped), and the first audit records. The
/// other nodes do not run `init`: they serve with the same configuration
/// and key source.
fn init_postgres(
    settings: &crate::config::PostgresSettings,
    source: &crate::crypto::wrapping::KekSource,
    config_path: &Path,
) -> Result<(), CliError> {
    let store = super::storage::open_postgres(settings)?;
    let (keyring, document) = Keyring::create_document(source).map_err(keyring_error)?;
    if !store
        .create_keyring(&document)
        .map_err(|error| anyhow!("{error}"))?
    {
        return Err(anyhow!(
            "a keyring is already stored in {} (schema {}); refusing to overwrite it\nhint: this vault is initialised; start more nodes with `tokenvault serve` and the same [keys]",
            settings.url,
            settings.schema
        )
        .into());
    }
    let context = audit::Context::cli("init");
    let records = [
        context.record(Action::Init, Outcome::Ok),
        context
            .record(Action::KeyUnwrap, Outcome::Ok)
            .reason("master_key_created"),
    ];
    store
        .append_audit(&keyring.audit_key(), &records)
        .map_err(|error| anyhow!("cannot write the first audit records: {error}"))?;
    tracing::info!(schema = %settings.schema, "vault initialised on postgres");
    println!("initialised {} (schema {}):", settings.url, settings.schema);
    println!("  keyring   in the database (master key v1, wrapped)");
    println!(
        "next: tokenvault serve --config {} on each node",
        config_path.display()
    );
    Ok(())
}
