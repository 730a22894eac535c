//! `tokenvault keys …`: the master key versions and how many rows each
//! seals; rotation to a new version (the running vault moves the rows),
//! with pause and resume; retirement of a version no row uses; and a
//! change of the passphrase or key file that wraps the keys (no row is
//! touched).

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use clap::{ArgGroup, Subcommand};

use super::{CliError, DEFAULT_CONFIG};
use crate::audit::{self, Action, Outcome};
use crate::config::{ConfigErrors, KeySettings, SecretRef};
use crate::crypto::wrapping::Keyring;
use crate::store::pg::keys::{KeysChange, KeysRefused, KeysView};
use crate::store::pg::PgStore;

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
    /// Create a new master key version. New values are sealed under it as
    /// soon as the running vault notices (within a second); the vault then
    /// moves existing rows to it in small transactions, and lookups consult
    /// both versions meanwhile, so known values keep their tokens.
    Rotate {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Rotate this namespace only (the others keep their version).
        #[arg(long)]
        namespace: Option<String>,
        /// Rows per second the move may write (0: as fast as it goes).
        #[arg(long, default_value_t = 0)]
        rows_per_second: u32,
    },
    /// Pause the moving of rows of running rotations (new values keep the
    /// new version).
    Pause {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// This namespace only.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Resume paused rotations.
    Resume {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// This namespace only.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Destroy a master key version. Refused while any row is sealed under
    /// it or any namespace writes with it.
    Retire {
        /// Configuration file.
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The version to destroy (`keys status` lists them).
        version: u32,
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
        KeysCommand::Rotate {
            config,
            namespace,
            rows_per_second,
        } => rotate(&config, namespace, rows_per_second),
        KeysCommand::Pause { config, namespace } => pause(&config, namespace, true),
        KeysCommand::Resume { config, namespace } => pause(&config, namespace, false),
        KeysCommand::Retire { config, version } => retire(&config, version),
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
    let (keyring, facts) = match &config.storage.backend {
        crate::config::Backend::Sqlite => (
            open(&config)?,
            super::status::sqlite_facts(&config.storage)?,
        ),
        crate::config::Backend::Postgres(settings) => {
            let pg = super::storage::connect_postgres(settings)?;
            (
                super::audit::postgres_keyring(&pg, &config)?,
                super::status::postgres_facts_of(&pg)?,
            )
        }
    };
    let (rows, states) = (facts.rows, facts.states);
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
            if version == current { " (newest)" } else { "" }
        ));
        for (namespace, _, count) in rows.iter().filter(|(_, v, _)| *v == version) {
            text.push_str(&format!("  {namespace}: {count}\n"));
        }
    }
    // Rows under a version the keyring no longer holds cannot open.
    for (namespace, version, count) in rows
        .iter()
        .filter(|(_, v, _)| !keyring.versions().contains(v))
    {
        text.push_str(&format!(
            "master key v{version} (not in the keyring!): {namespace}: {count} rows\n"
        ));
    }
    text.push_str("namespaces:\n");
    for namespace in config.namespaces.keys() {
        let state = states.iter().find(|s| &s.namespace == namespace);
        let write = state.map_or(current, |s| s.version);
        let left: u64 = rows
            .iter()
            .filter(|(ns, v, _)| ns == namespace && *v != write)
            .map(|(_, _, n)| n)
            .sum();
        let progress = match state {
            Some(s) if s.rotating => format!(
                ", rotation {}: {} rows moved, {left} left{}",
                if s.paused { "paused" } else { "running" },
                s.moved,
                if s.rate > 0 {
                    format!(", at most {} rows/s", s.rate)
                } else {
                    String::new()
                }
            ),
            _ if left > 0 => format!(", {left} rows under older versions"),
            _ => String::new(),
        };
        text.push_str(&format!("  {namespace}: writes with v{write}{progress}\n"));
    }
    super::write_stdout(text.as_bytes())
}

/// Namespaces that may hold data: configured, or found in the store.
fn known_namespaces(config: &crate::config::Config) -> Result<Vec<String>, CliError> {
    let mut names: std::collections::BTreeSet<String> = config.namespaces.keys().cloned().collect();
    names.extend(
        crate::store::namespaces_offline(&config.storage.database_path())
            .context("cannot read vault.db")?,
    );
    Ok(names.into_iter().collect())
}

fn rotate(
    config_path: &std::path::Path,
    namespace: Option<String>,
    rate: u32,
) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    if let Some(name) = &namespace {
        if !config.namespaces.contains_key(name) {
            return Err(anyhow!("no namespace {name} in the configuration").into());
        }
    }
    if let Some(pg) = postgres(&config)? {
        return pg.rotate(namespace, rate);
    }
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    let keyring_path = config.storage.keyring_path();
    let database = config.storage.database_path();
    let before = Keyring::open(&keyring_path, &source).map_err(|error| anyhow!("{error}"))?;
    let newest = before.current().version();
    // Every namespace first keeps the version it writes with, so that a
    // stop between here and the end changes nothing; then the keyring gets
    // the new version; then the chosen namespaces move to it.
    let states = crate::store::key_states_offline(&database).context("cannot read vault.db")?;
    let known = known_namespaces(&config)?;
    let keep: Vec<(String, u32)> = known
        .iter()
        .map(|name| {
            let version = states
                .iter()
                .find(|s| &s.namespace == name)
                .map_or(newest, |s| s.version);
            (name.clone(), version)
        })
        .collect();
    crate::store::pin_key_versions_offline(&database, &keep).context("cannot write vault.db")?;
    let keyring =
        Keyring::add_version(&keyring_path, &source).map_err(|error| anyhow!("{error}"))?;
    let version = keyring.current().version();
    let rotate: Vec<String> = match namespace {
        Some(name) => vec![name],
        None => known,
    };
    let records: Vec<_> = rotate
        .iter()
        .map(|name| {
            audit::Context::cli("keys rotate")
                .record(Action::KeyRotate, Outcome::Ok)
                .namespace(name)
                .reason("started")
        })
        .collect();
    crate::store::start_rotation_offline(
        (&database, &config.storage.audit_path()),
        &keyring.audit_key(),
        &records,
        &rotate,
        version,
        rate,
    )
    .context("the keyring holds the new version, but the rotation could not be recorded; run `keys rotate` again")?;
    println!(
        "master key v{version} created; {} namespace(s) now seal with it: {}\nthe running vault moves their rows in the background; `tokenvault keys status` shows the progress",
        rotate.len(),
        rotate.join(", ")
    );
    Ok(())
}

fn pause(
    config_path: &std::path::Path,
    namespace: Option<String>,
    paused: bool,
) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    let record = audit::Context::cli(if paused { "keys pause" } else { "keys resume" })
        .record(Action::KeyRotate, Outcome::Ok)
        .reason(if paused { "paused" } else { "resumed" });
    let record = match &namespace {
        Some(name) => record.namespace(name),
        None => record,
    };
    if let Some(pg) = postgres(&config)? {
        let changed = pg.change(|_, _| {
            Ok(KeysChange {
                pause: Some((namespace, paused)),
                records: vec![record],
                ..KeysChange::default()
            })
        })?;
        println!(
            "{} {changed} rotation(s)",
            if paused { "paused" } else { "resumed" }
        );
        return Ok(());
    }
    let keyring = open(&config)?;
    let changed = crate::store::pause_rotation_offline(
        (
            &config.storage.database_path(),
            &config.storage.audit_path(),
        ),
        &keyring.audit_key(),
        &[record],
        namespace.as_deref(),
        paused,
    )
    .context("cannot write vault.db")?;
    println!(
        "{} {changed} rotation(s)",
        if paused { "paused" } else { "resumed" }
    );
    Ok(())
}

fn retire(config_path: &std::path::Path, version: u32) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    if let Some(pg) = postgres(&config)? {
        return pg.retire(version);
    }
    let database = config.storage.database_path();
    if let Some(reason) = crate::store::key_version_in_use_offline(&database, version)
        .context("cannot read vault.db")?
    {
        return Err(anyhow!(
            "master key v{version} is still in use: {reason}\nhint: wait for the rotation to finish (`tokenvault keys status`)"
        )
        .into());
    }
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    let namespaces = known_namespaces(&config)?;
    let keyring = Keyring::retire(
        &config.storage.keyring_path(),
        &source,
        version,
        &namespaces,
    )
    .map_err(|error| anyhow!("{error}"))?;
    let record = audit::Context::cli("keys retire")
        .record(Action::KeyRetire, Outcome::Ok)
        .reason(&format!("v{version}"));
    crate::store::append_audit_offline(
        &database,
        &config.storage.audit_path(),
        &keyring.audit_key(),
        &[record],
    )
    .with_context(|| format!("master key v{version} was destroyed, but the change could not be recorded in the audit trail"))?;
    println!(
        "master key v{version} destroyed; the keyring holds {:?}; backups taken before now still hold it",
        keyring.versions()
    );
    Ok(())
}

fn rewrap(
    config_path: &std::path::Path,
    new_passphrase_file: Option<PathBuf>,
    new_key_file: Option<PathBuf>,
) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    let new = match (new_passphrase_file, new_key_file) {
        (Some(path), None) => KeySettings::Passphrase(SecretRef::File(path)),
        (None, Some(path)) => KeySettings::KeyFile(path),
        _ => return Err(anyhow!("give one of --new-passphrase-file and --new-key-file").into()),
    };
    let source = new
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    if let Some(pg) = postgres(&config)? {
        return pg.rewrap(&new, &source);
    }
    let keyring = open(&config)?;
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

/// A `keys` command on PostgreSQL: the keyring and the rotation state are
/// in the database, and each command changes them in one transaction with
/// its audit record (see `store::pg::keys`). Every node notices within a
/// second.
struct OnPostgres {
    pg: std::sync::Arc<PgStore>,
    /// The configured namespaces.
    configured: Vec<String>,
    source: crate::crypto::wrapping::KekSource,
    audit_key: crate::crypto::keys::AuditKey,
}

fn postgres(config: &crate::config::Config) -> Result<Option<OnPostgres>, CliError> {
    let crate::config::Backend::Postgres(settings) = &config.storage.backend else {
        return Ok(None);
    };
    let pg = super::storage::connect_postgres(settings)?;
    let keyring = super::audit::postgres_keyring(&pg, config)?;
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    Ok(Some(OnPostgres {
        pg,
        configured: config.namespaces.keys().cloned().collect(),
        source,
        audit_key: keyring.audit_key(),
    }))
}

impl OnPostgres {
    /// Runs `decide` on what the database holds (with the namespaces of
    /// the configuration added to those found), in one transaction.
    fn change(
        &self,
        decide: impl FnOnce(&KeysView, Vec<String>) -> Result<KeysChange, String>,
    ) -> Result<u64, CliError> {
        let configured = self.configured.clone();
        self.pg
            .change_keys(&self.audit_key, |view| {
                let mut known: std::collections::BTreeSet<String> =
                    view.namespaces.iter().cloned().collect();
                known.extend(configured);
                decide(view, known.into_iter().collect())
            })
            .map_err(|refused| match refused {
                in_use @ KeysRefused::InUse { .. } => anyhow!(
                    "{in_use}\nhint: wait for the rotation to finish (`tokenvault keys status`)"
                )
                .into(),
                other => anyhow!("{other}").into(),
            })
    }

    fn rotate(&self, namespace: Option<String>, rate: u32) -> Result<(), CliError> {
        let mut rotated = (0, Vec::new());
        self.change(|view, known| {
            let newest = view
                .document
                .versions(super::KEYRING_IN_DATABASE)
                .map_err(|e| e.to_string())?
                .last()
                .copied()
                .unwrap_or(0);
            let (keyring, document) = Keyring::add_version_document(
                &view.document,
                &self.source,
                super::KEYRING_IN_DATABASE,
            )
            .map_err(|e| e.to_string())?;
            let version = keyring.current().version();
            let keep = known
                .iter()
                .map(|name| {
                    let write = view
                        .states
                        .iter()
                        .find(|s| &s.namespace == name)
                        .map_or(newest, |s| s.version);
                    (name.clone(), write)
                })
                .collect();
            let rotate = namespace.map_or(known, |name| vec![name]);
            let records = rotate
                .iter()
                .map(|name| {
                    audit::Context::cli("keys rotate")
                        .record(Action::KeyRotate, Outcome::Ok)
                        .namespace(name)
                        .reason("started")
                })
                .collect();
            rotated = (version, rotate.clone());
            Ok(KeysChange {
                document: Some(document),
                rotate,
                keep,
                to_version: version,
                rate,
                records,
                ..KeysChange::default()
            })
        })?;
        let (version, rotate) = rotated;
        println!(
            "master key v{version} created; {} namespace(s) now seal with it: {}\nevery node moves their rows in the background; `tokenvault keys status` shows the progress",
            rotate.len(),
            rotate.join(", ")
        );
        Ok(())
    }

    fn retire(&self, version: u32) -> Result<(), CliError> {
        let mut left = Vec::new();
        self.change(|view, known| {
            let (keyring, document) = Keyring::retire_document(
                &view.document,
                &self.source,
                super::KEYRING_IN_DATABASE,
                version,
                &known,
            )
            .map_err(|e| e.to_string())?;
            left = keyring.versions();
            Ok(KeysChange {
                document: Some(document),
                unused: Some(version),
                records: vec![audit::Context::cli("keys retire")
                    .record(Action::KeyRetire, Outcome::Ok)
                    .reason(&format!("v{version}"))],
                ..KeysChange::default()
            })
        })?;
        println!(
            "master key v{version} destroyed; the keyring holds {left:?}; database backups taken before now still hold it"
        );
        Ok(())
    }

    fn rewrap(
        &self,
        new: &KeySettings,
        new_source: &crate::crypto::wrapping::KekSource,
    ) -> Result<(), CliError> {
        let mut count = 0;
        let what = match new {
            KeySettings::KeyFile(_) => "key_file",
            _ => "passphrase",
        };
        self.change(|view, _| {
            let keyring =
                Keyring::open_document(&view.document, &self.source, super::KEYRING_IN_DATABASE)
                    .map_err(|e| e.to_string())?;
            count = keyring.versions().len();
            Ok(KeysChange {
                document: Some(
                    keyring
                        .rewrap_document(new_source)
                        .map_err(|e| e.to_string())?,
                ),
                records: vec![audit::Context::cli("keys rewrap")
                    .record(Action::KeyRewrap, Outcome::Ok)
                    .reason(what)],
                ..KeysChange::default()
            })
        })?;
        println!(
            "rewrapped {count} master key version(s) in the database; point [keys] on every node at the new {} before it next starts",
            if what == "key_file" { "key file" } else { "passphrase" }
        );
        Ok(())
    }
}
