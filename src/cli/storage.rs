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
    /// Copy a stopped SQLite vault into the PostgreSQL database the
    /// configuration names (which must hold no vault yet), in one
    /// transaction, then check the copy: row counts, the audit chain, and a
    /// sample of values opened on both sides.
    Migrate {
        /// The backend to move to: postgres.
        #[arg(long)]
        to: String,
        /// The SQLite data directory to copy (default: the configured
        /// data_dir).
        #[arg(long)]
        from: Option<PathBuf>,
        /// How many values to open on both sides.
        #[arg(long, default_value_t = 1000)]
        sample: usize,
        /// Configuration file, with `[storage] backend = "postgres"`.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Runs a `storage` subcommand.
pub fn run(command: StorageCommand) -> Result<(), CliError> {
    match command {
        StorageCommand::Check { config } => check(&config),
        StorageCommand::Migrate {
            to,
            from,
            sample,
            config,
        } => migrate(&to, from, sample, &config),
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
    let store = connect_postgres(settings)?;
    store.migrate().map_err(|error| anyhow!("{error}"))?;
    Ok(store)
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

fn migrate(
    to: &str,
    from: Option<PathBuf>,
    sample: usize,
    path: &std::path::Path,
) -> Result<(), CliError> {
    if to != "postgres" {
        return Err(anyhow!("--to {to}: only postgres is a target\nhint: --to postgres").into());
    }
    let config = crate::config::load(path)?;
    let Backend::Postgres(settings) = &config.storage.backend else {
        return Err(anyhow!(
            "the configuration's [storage] is not postgres\nhint: set backend = \"postgres\" and url in [storage] (see docs/configuration.md), and keep data_dir or pass --from"
        )
        .into());
    };
    let from = from.unwrap_or_else(|| config.storage.data_dir.clone());
    // Held to the end: no vault may serve the source meanwhile.
    let _lock = crate::store::lock_data_dir(&from).map_err(|error| {
        anyhow!(
            "{error}\nhint: stop the vault that serves {} first",
            from.display()
        )
    })?;
    let keyring_path = from.join("keyring.json");
    let document = crate::crypto::wrapping::KeyringDocument::from_bytes(
        std::fs::read(&keyring_path)
            .map_err(|error| anyhow!("cannot read {}: {error}", keyring_path.display()))?,
    );
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(crate::config::ConfigErrors(vec![problem])))?;
    let keyring = crate::crypto::wrapping::Keyring::open_document(
        &document,
        &source,
        &keyring_path.display().to_string(),
    )
    .map_err(|error| {
        anyhow!("{error}\nhint: the source opens with the key configured in [keys]")
    })?;
    drop(source);
    let pg = open_postgres(settings)?;
    let migrated =
        crate::store::migrate::sqlite_to_postgres(&from, &document, &keyring, &pg, sample)
            .map_err(|error| anyhow!("{error}"))?;
    println!(
        "copied {} into {} (schema {}):",
        from.display(),
        settings.url,
        settings.schema
    );
    for (table, source, target) in &migrated.tables {
        println!("  {table:<22} {source:>10} rows -> {target:>10} rows");
    }
    println!("  keyring                copied (wrapped)");
    match migrated.head {
        Some(head) => println!(
            "audit chain verified on the target: {} records, head {head}",
            migrated.verified
        ),
        None => println!("audit chain: empty"),
    }
    println!(
        "sample: {} values open to the same plaintext on both sides",
        migrated.sampled
    );
    println!(
        "next: serve every node with this configuration; keep {} as the rollback until you are sure",
        from.display()
    );
    Ok(())
}
