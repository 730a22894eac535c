//! `tokenvault storage check`

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Subcommand;

use super::{CliError, DEFAULT_CONFIG};
use crate::config::Backend;
use crate::store::pg::PgStore;

#[derive(Subcommand)]
pub enum StorageCommand {
    /// Connect to the configured database, bring its schema up to date and
    /// report the server, the connection's TLS and each schema version.
    Check {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Runs a `storage` subcommand.
pub fn run(command: StorageCommand) -> Result<(), CliError> {
    match command {
        StorageCommand::Check { config } => check(&config),
    }
}

fn check(path: &std::path::Path) -> Result<(), CliError> {
    let config = crate::config::load(path)?;
    let settings = match &config.storage.backend {
        Backend::Sqlite => {
            println!(
                "storage: sqlite in {}; nothing to connect to (`tokenvault status` reports the store)",
                config.storage.data_dir.display()
            );
            return Ok(());
        }
        Backend::Postgres(settings) => settings,
    };
    let store = PgStore::connect(settings).map_err(|error| {
        anyhow!(
            "{error}\nhint: check storage.url, the password and, off this machine, storage.ca_file"
        )
    })?;
    let report = store.check().map_err(|error| anyhow!("{error}"))?;
    println!(
        "storage: postgres at {}, schema {}",
        settings.url, settings.schema
    );
    match &settings.ca_file {
        Some(ca_file) => println!(
            "connection: TLS, certificate verified for {} against {}",
            settings.url.host(),
            ca_file.display()
        ),
        None => println!("connection: plain TCP on this machine's loopback"),
    }
    println!("server: PostgreSQL {}", report.server_version);
    let versions: Vec<String> = report
        .versions
        .iter()
        .map(|(component, version)| format!("{component} {version}"))
        .collect();
    println!("schema: {} (up to date)", versions.join(", "));
    Ok(())
}

/// Connects to the configured PostgreSQL store and brings its schema up to
/// date, for `init` and `serve`.
pub(crate) fn open_postgres(
    settings: &crate::config::PostgresSettings,
) -> Result<std::sync::Arc<PgStore>, CliError> {
    let store = PgStore::connect(settings).map_err(|error| {
        anyhow!(
            "{error}\nhint: check storage.url, the password and, off this machine, storage.ca_file"
        )
    })?;
    store.migrate().map_err(|error| anyhow!("{error}"))?;
    Ok(std::sync::Arc::new(store))
}

/// Connects to the configured PostgreSQL store without changing its
/// schema, for commands that only read (an auditor's role may not be
/// allowed to migrate).
pub(crate) fn connect_postgres(
    settings: &crate::config::PostgresSettings,
) -> Result<std::sync::Arc<PgStore>, CliError> {
    let store = PgStore::connect(settings).map_err(|error| {
        anyhow!(
            "{error}\nhint: check storage.url, the password and, off this machine, storage.ca_file"
        )
    })?;
    Ok(std::sync::Arc::new(store))
}
