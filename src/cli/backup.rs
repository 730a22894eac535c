//! `tokenvault backup create|verify|restore`: online backups of a data
//! directory in one file, checked before they are trusted.
//!
//! A backup is a tar of `manifest.json`, `manifest.sha256`, `vault.db`,
//! `audit.db`, `keyring.json` and `forgotten` (the tombstone list). The databases are consistent SQLite
//! snapshots taken while the vault serves (`store::backup::snapshot`); the
//! keyring is the wrapped one from the data directory. Nothing in it is
//! plaintext that the data directory holds encrypted. The manifest names
//! the version, the time, the row counts, the audit head and each part's
//! SHA-256.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CliError, DEFAULT_CONFIG};
use crate::audit::{self, Action, Outcome};
use crate::config::ConfigErrors;
use crate::crypto::wrapping::Keyring;
use crate::store::backup::{self as snapshots, SnapshotFacts};

/// Returns the command's error.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(anyhow!($($arg)*).into())
    };
}

/// The format's name and version.
const FORMAT: &str = "tokenvault-backup/1";
/// The parts, in the order they are written.
const PARTS: [&str; 4] = ["vault.db", "audit.db", "keyring.json", TOMBSTONES];
/// The tombstone list's file name.
const TOMBSTONES: &str = crate::store::tombstones::FILE;

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
    },
}

/// The manifest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Manifest {
    format: String,
    tokenvault_version: String,
    created_at: String,
    audit_head: Option<HeadEntry>,
    audit_records: u64,
    tokens: BTreeMap<String, u64>,
    parts: BTreeMap<String, Part>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct HeadEntry {
    seq: u64,
    mac: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Part {
    bytes: u64,
    sha256: String,
}

/// Runs a `backup` subcommand.
pub fn run(command: BackupCommand) -> Result<(), CliError> {
    match command {
        BackupCommand::Create { out, config } => create(&out, &config),
        BackupCommand::Verify {
            file,
            config,
            all_values,
        } => {
            let dir = tempfile::tempdir().context("cannot create a work directory")?;
            let checked = check(&file, dir.path(), config.as_deref(), all_values)?;
            println!("{}", checked.summary());
            Ok(())
        }
        BackupCommand::Restore {
            file,
            data_dir,
            config,
            erasures_from,
            no_newer_erasures: _,
        } => restore(&file, &data_dir, &config, erasures_from.as_deref()),
    }
}

fn keyring_for(config: &Path, keyring: &Path) -> Result<Keyring, CliError> {
    let config = crate::config::load(config)?;
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    Ok(Keyring::open(keyring, &source).map_err(|error| anyhow!("{error}"))?)
}

fn create(out: &Path, config_path: &Path) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    let storage = &config.storage;
    let work = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(
            out.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("cannot create a work directory beside the backup file")?;
    let (vault, trail) = (work.path().join("vault.db"), work.path().join("audit.db"));
    let facts = snapshots::snapshot(
        &storage.database_path(),
        &storage.audit_path(),
        &vault,
        &trail,
    )
    .context("cannot take the snapshot")?;
    fs::copy(storage.keyring_path(), work.path().join("keyring.json"))
        .context("cannot read the keyring")?;
    let tombstones = crate::store::tombstones::Tombstones::in_dir(&storage.data_dir);
    match fs::copy(tombstones.path(), work.path().join(TOMBSTONES)) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            fs::write(work.path().join(TOMBSTONES), "").context("cannot write the backup")?;
        }
        Err(error) => return Err(anyhow!("cannot read the tombstone list: {error}").into()),
    }
    let mut parts = BTreeMap::new();
    for name in PARTS {
        parts.insert(name.to_owned(), digest(&work.path().join(name))?);
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        tokenvault_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: audit::format_time(audit::now_us()),
        audit_head: facts.audit_head.map(|head| HeadEntry {
            seq: head.seq,
            mac: hex::encode(head.mac),
        }),
        audit_records: facts.audit_records,
        tokens: facts.tokens.clone(),
        parts,
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).context("cannot write the manifest")?;
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |name: &str, bytes: &mut dyn Read, size: u64| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    let mut write = || -> std::io::Result<()> {
        add(
            "manifest.json",
            &mut manifest_bytes.as_slice(),
            manifest_bytes.len() as u64,
        )?;
        let manifest_sum = format!("{}\n", hex::encode(Sha256::digest(&manifest_bytes)));
        add(
            "manifest.sha256",
            &mut manifest_sum.as_bytes(),
            manifest_sum.len() as u64,
        )?;
        for name in PARTS {
            let path = work.path().join(name);
            let size = fs::metadata(&path)?.len();
            add(name, &mut fs::File::open(&path)?, size)?;
        }
        Ok(())
    };
    write().context("cannot write the backup")?;
    let writer = tar.into_inner().context("cannot finish the backup")?;
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
    record.item_count = facts.tokens.values().sum();
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
        facts.tokens.values().sum::<u64>(),
        facts
            .audit_head
            .map_or("none".to_owned(), |h| h.seq.to_string())
    );
    Ok(())
}

fn digest(path: &Path) -> Result<Part, CliError> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Part {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// What `check` established.
struct Checked {
    manifest: Manifest,
    chain: Option<u64>,
    opened: Option<u64>,
}

impl Checked {
    fn summary(&self) -> String {
        let tokens: u64 = self.manifest.tokens.values().sum();
        let mut text = format!(
            "backup ok: {} tokens, {} audit records, taken {} by tokenvault {}; checksums and SQLite integrity verified",
            tokens,
            self.manifest.audit_records,
            self.manifest.created_at,
            self.manifest.tokenvault_version
        );
        match (self.chain, self.opened) {
            (Some(records), Some(opened)) => text.push_str(&format!(
                "; audit chain verified ({records} records); {opened} sealed values opened"
            )),
            _ => text.push_str("; audit chain and values not checked (no --config with the keys)"),
        }
        text
    }
}

/// Unpacks `file` into `dir` and checks it: only the expected parts, each
/// with its checksum; SQLite's integrity check; the manifest's facts
/// against the databases; with a configuration, the audit chain against
/// the head and the sealed values (all, or the first 100).
fn check(
    file: &Path,
    dir: &Path,
    config: Option<&Path>,
    all_values: bool,
) -> Result<Checked, CliError> {
    let reader = fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(reader));
    let mut seen = Vec::new();
    for entry in archive
        .entries()
        .context("not a tokenvault backup (not a tar file)")?
    {
        let mut entry = entry.context("the backup is damaged (tar)")?;
        let name = entry
            .path()
            .context("the backup is damaged (tar)")?
            .to_string_lossy()
            .into_owned();
        let expected =
            name == "manifest.json" || name == "manifest.sha256" || PARTS.contains(&name.as_str());
        if !expected || seen.contains(&name) || !entry.header().entry_type().is_file() {
            fail!("not a tokenvault backup: unexpected entry `{name}`");
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(&name))
            .context("cannot unpack the backup")?;
        std::io::copy(&mut entry, &mut out).context("the backup is damaged (truncated)")?;
        out.flush().context("cannot unpack the backup")?;
        seen.push(name);
    }
    let manifest_bytes =
        fs::read(dir.join("manifest.json")).context("the backup has no manifest")?;
    let stated = fs::read_to_string(dir.join("manifest.sha256"))
        .context("the backup has no manifest checksum")?;
    if stated.trim() != hex::encode(Sha256::digest(&manifest_bytes)) {
        fail!("the backup is damaged: the manifest does not match its checksum");
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .context("the backup is damaged: unreadable manifest")?;
    if manifest.format != FORMAT {
        fail!(
            "not a backup this version reads: format `{}`",
            manifest.format
        );
    }
    for name in PARTS {
        let expected = manifest
            .parts
            .get(name)
            .ok_or_else(|| anyhow!("the backup is damaged: the manifest does not list {name}"))?;
        let path = dir.join(name);
        if !path.exists() {
            fail!("the backup is damaged: {name} is missing");
        }
        if &digest(&path)? != expected {
            fail!("the backup is damaged: {name} does not match its checksum");
        }
    }
    let (vault, trail) = (dir.join("vault.db"), dir.join("audit.db"));
    for (name, path) in [("vault.db", &vault), ("audit.db", &trail)] {
        if let Err(problems) =
            snapshots::integrity_check(path).context("cannot open a database of the backup")?
        {
            fail!("the backup is damaged: {name} fails SQLite's integrity check: {problems}");
        }
    }
    let facts = snapshots::facts(&vault, &trail).context("cannot read the backup's databases")?;
    let stated = SnapshotFacts {
        audit_head: facts.audit_head,
        tokens: manifest.tokens.clone(),
        audit_records: manifest.audit_records,
    };
    let head_matches = manifest.audit_head.as_ref().map(|h| (h.seq, h.mac.clone()))
        == facts.audit_head.map(|h| (h.seq, hex::encode(h.mac)));
    if facts != stated || !head_matches {
        fail!("the backup is damaged: the manifest does not describe its databases");
    }
    let (mut chain, mut opened) = (None, None);
    if let Some(config) = config {
        let keyring = keyring_for(config, &dir.join("keyring.json"))?;
        match snapshots::verify_chain(&vault, &trail, &keyring.audit_key())
            .context("cannot read the backup's audit trail")?
        {
            Ok(verified) => chain = Some(verified.count),
            Err(broken) => fail!(
                "the backup's audit trail does not verify at record {}: {}",
                broken.seq,
                broken.reason
            ),
        }
        opened = Some(open_values(&vault, &keyring, all_values)?);
    }
    Ok(Checked {
        manifest,
        chain,
        opened,
    })
}

/// Opens the backup's sealed values with its keyring (all, or the first
/// 100); every one must authenticate.
fn open_values(vault: &Path, keyring: &Keyring, all: bool) -> Result<u64, CliError> {
    let limit = if all { u64::MAX } else { 100 };
    let (mut opened, mut failed) = (0u64, 0u64);
    let mut keys = BTreeMap::new();
    snapshots::sealed_rows(vault, &mut |row| {
        if opened + failed >= limit {
            return;
        }
        let (namespace, token, class, version, sealed) = (
            row.namespace,
            row.token,
            row.class,
            row.key_version,
            row.sealed,
        );
        let keys = keys
            .entry((namespace.to_owned(), version))
            .or_insert_with(|| {
                keyring
                    .version(version)
                    .map(|key| key.namespace_keys(namespace))
            });
        let binding = crate::crypto::seal::Binding {
            namespace,
            class,
            token,
        };
        match keys
            .as_ref()
            .map(|keys| keys.sealer().open(binding, version, sealed))
        {
            Some(Ok(_)) => opened += 1,
            _ => failed += 1,
        }
    })
    .context("cannot read the backup's tokens")?;
    if failed > 0 {
        fail!("the backup is damaged: {failed} sealed values do not open with its keyring");
    }
    Ok(opened)
}

fn restore(
    file: &Path,
    data_dir: &Path,
    config: &Path,
    erasures_from: Option<&Path>,
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
    let checked = check(file, work.path(), Some(config), false)?;
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
    record.item_count = checked.manifest.tokens.values().sum();
    crate::store::append_audit_offline(
        &data_dir.join("vault.db"),
        &data_dir.join("audit.db"),
        &keyring.audit_key(),
        &[record],
    )
    .context("the backup was restored, but could not be recorded in its audit trail")?;
    println!(
        "restored {} tokens into {} ({}); {merged} erasures made since the backup will be applied when the vault starts",
        checked.manifest.tokens.values().sum::<u64>(),
        data_dir.display(),
        checked.summary()
    );
    Ok(())
}
