//! `tokenvault backup create|verify|restore`: online backups of a data
//! directory in one file, checked before they are trusted.
//!
//! A backup is a tar of `manifest.json`, `manifest.sha256`, `vault.db`,
//! `audit.db`, `keyring.json` and `forgotten` (the tombstone list); the
//! format is in `crate::backup`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use clap::Subcommand;

use super::{CliError, DEFAULT_CONFIG};
use crate::audit::{self, Action, Outcome};
use crate::backup::{self, PARTS, TOMBSTONES};
use crate::config::ConfigErrors;
use crate::crypto::wrapping::Keyring;

/// Returns the command's error.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(anyhow!($($arg)*).into())
    };
}

/// `backup` subcommands.
#[derive(Subcommand)]
pub enum BackupCommand {
    /// Write a backup of the data directory into one file, while the vault
    /// serves.
    Create {
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Configuration file (its data directory and keys).
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Encrypt the backup to this age recipient (`age1…`), for copies
        /// kept off site; repeatable.
        #[arg(long)]
        recipient: Vec<String>,
    },
    /// Check a backup on any machine, with no vault running: checksums,
    /// SQLite integrity, the manifest against the databases, and, given the
    /// configuration's keys, the audit chain and the sealed values.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// A configuration whose [keys] open the backup's keyring; without
        /// it, only what needs no key is checked.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Open every sealed value (default: the first 100).
        #[arg(long)]
        all_values: bool,
        /// The age identity file that decrypts an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Restore a backup into an empty data directory.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to restore into: absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// Configuration whose [keys] open the backup's keyring (the
        /// restore is checked, and recorded in the restored trail).
        #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The data directory (or its `forgotten` file) this restore
        /// replaces: subjects erased there since the backup are erased
        /// again when the restored vault starts.
        #[arg(long, required_unless_present = "no_newer_erasures")]
        erasures_from: Option<PathBuf>,
        /// Say that no subject was erased since the backup was taken (a
        /// restore must not silently bring erased values back).
        #[arg(long, conflicts_with = "erasures_from")]
        no_newer_erasures: bool,
        /// The age identity file that decrypts an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

/// Runs a `backup` subcommand.
pub fn run(command: BackupCommand) -> Result<(), CliError> {
    match command {
        BackupCommand::Create {
            out,
            config,
            recipient,
        } => create(&out, &config, &recipient),
        BackupCommand::Verify {
            file,
            config,
            all_values,
            identity,
        } => {
            let dir = tempfile::tempdir().context("cannot create a work directory")?;
            let opener = config.as_deref().map(|config| {
                move |keyring: &Path| -> anyhow::Result<Keyring> { keyring_for(config, keyring) }
            });
            let plain = backup::plain(&file, dir.path(), identity.as_deref())?;
            let checked = backup::check(
                &plain,
                dir.path(),
                opener
                    .as_ref()
                    .map(|f| f as &dyn Fn(&Path) -> anyhow::Result<Keyring>),
                all_values,
            )?;
            println!("{}", checked.summary());
            Ok(())
        }
        BackupCommand::Restore {
            file,
            data_dir,
            config,
            erasures_from,
            no_newer_erasures: _,
            identity,
        } => restore(
            &file,
            &data_dir,
            &config,
            erasures_from.as_deref(),
            identity.as_deref(),
        ),
    }
}

fn keyring_for(config: &Path, keyring: &Path) -> anyhow::Result<Keyring> {
    let config = super::load_sqlite_config(config).map_err(|errors| anyhow!("{errors}"))?;
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| anyhow!("{}", ConfigErrors(vec![problem])))?;
    Keyring::open(keyring, &source).map_err(|error| anyhow!("{error}"))
}

fn create(out: &Path, config_path: &Path, recipients: &[String]) -> Result<(), CliError> {
    let recipients = recipients
        .iter()
        .map(|text| backup::parse_recipient(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = super::load_sqlite_config(config_path)?;
    let storage = &config.storage;
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let work_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let written = match backup::write_to(&storage.data_dir, work_dir, &mut writer, &recipients) {
        Ok(written) => written,
        Err(error) => {
            drop(writer);
            let _ = fs::remove_file(out);
            return Err(error.into());
        }
    };
    let file = writer
        .into_inner()
        .map_err(|error| anyhow!("cannot finish the backup: {}", error.error()))?;
    file.sync_all().context("cannot flush the backup")?;
    // On the live trail: who took which backup, when, of what.
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    let keyring =
        Keyring::open(&storage.keyring_path(), &source).map_err(|error| anyhow!("{error}"))?;
    let mut record = audit::Context::cli("backup create")
        .record(Action::BackupCreate, Outcome::Ok)
        .reason("snapshot");
    record.item_count = written.tokens.values().sum();
    crate::store::append_audit_offline(
        &storage.database_path(),
        &storage.audit_path(),
        &keyring.audit_key(),
        &[record],
    )
    .context("the backup was written, but could not be recorded in the audit trail")?;
    println!(
        "wrote {} ({} tokens, audit head {})",
        out.display(),
        written.tokens.values().sum::<u64>(),
        written
            .audit_seq
            .map_or("none".to_owned(), |seq| seq.to_string())
    );
    Ok(())
}

fn restore(
    file: &Path,
    data_dir: &Path,
    config: &Path,
    erasures_from: Option<&Path>,
    identity: Option<&Path>,
) -> Result<(), CliError> {
    if let Some(from) = erasures_from {
        // Read before anything changes: a list that cannot be read stops
        // the restore.
        let other = if from.is_dir() {
            from.join(TOMBSTONES)
        } else {
            from.to_owned()
        };
        if !other.exists() && !from.is_dir() {
            fail!("{} does not exist", other.display());
        }
    }
    if data_dir.exists() {
        let mut entries = fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?;
        if entries.next().is_some() {
            fail!(
                "{} is not empty\nhint: restore into a new directory, then point [storage] data_dir at it",
                data_dir.display()
            );
        }
    }
    // A vault serving the directory holds its lock.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let _lock = crate::store::lock_data_dir(data_dir).map_err(|error| {
        anyhow!(
            "{error}\nhint: stop the vault that uses {}",
            data_dir.display()
        )
    })?;
    let work = tempfile::tempdir_in(data_dir).context("cannot create a work directory")?;
    let opener = |keyring: &Path| -> anyhow::Result<Keyring> { keyring_for(config, keyring) };
    let plain = backup::plain(file, work.path(), identity)?;
    let checked = backup::check(&plain, work.path(), Some(&opener), false)?;
    for name in PARTS {
        fs::rename(work.path().join(name), data_dir.join(name))
            .with_context(|| format!("cannot move {name} into place"))?;
    }
    drop(work);
    let merged = match erasures_from {
        Some(from) => crate::store::tombstones::Tombstones::in_dir(data_dir)
            .merge_from(from)
            .context("cannot merge the tombstone list")?,
        None => 0,
    };
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .context("cannot flush the data directory")?;
    let keyring = keyring_for(config, &data_dir.join("keyring.json"))?;
    let mut record = audit::Context::cli("backup restore")
        .record(Action::BackupRestore, Outcome::Ok)
        .reason("restored");
    record.item_count = checked.tokens();
    crate::store::append_audit_offline(
        &data_dir.join("vault.db"),
        &data_dir.join("audit.db"),
        &keyring.audit_key(),
        &[record],
    )
    .context("the backup was restored, but could not be recorded in its audit trail")?;
    println!(
        "restored {} tokens into {} ({}); {merged} erasures made since the backup will be applied when the vault starts",
        checked.tokens(),
        data_dir.display(),
        checked.summary()
    );
    Ok(())
}
