//! The backup format: one file (a tar) holding consistent snapshots of
//! `vault.db` and `audit.db`, the wrapped keyring and the tombstone list,
//! with a manifest (version, time, row counts, audit head, SHA-256 of each
//! part) and the manifest's own checksum. Written by `tokenvault backup
//! create` and `POST /v1/admin/backup`; checked by `backup verify` and
//! before every restore. Nothing in it is plaintext that the data directory
//! holds encrypted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::wrapping::Keyring;
use crate::store::backup::{self as snapshots, SnapshotFacts};

/// Returns the error.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(anyhow!($($arg)*))
    };
}

/// The format's name and version.
pub const FORMAT: &str = "tokenvault-backup/1";
/// The parts, in the order they are written.
pub const PARTS: [&str; 4] = ["vault.db", "audit.db", "keyring.json", TOMBSTONES];
/// The tombstone list's file name.
pub const TOMBSTONES: &str = crate::store::tombstones::FILE;

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

/// What a backup holds, as its manifest says.
pub struct Written {
    /// Token rows per namespace.
    pub tokens: BTreeMap<String, u64>,
    /// The audit head the snapshot ends at.
    pub audit_seq: Option<u64>,
}

/// Writes a backup of the data directory `data_dir` (its `vault.db`,
/// `audit.db`, `keyring.json` and tombstone list) to `out`, while the
/// vault may be serving. `work_dir` holds the snapshots meanwhile (the same
/// file system as `out` is best).
pub fn write(data_dir: &Path, work_dir: &Path, out: &mut dyn Write) -> anyhow::Result<Written> {
    let work = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(work_dir)
        .context("cannot create a work directory")?;
    let (vault, trail) = (work.path().join("vault.db"), work.path().join("audit.db"));
    let facts = snapshots::snapshot(
        &data_dir.join("vault.db"),
        &data_dir.join("audit.db"),
        &vault,
        &trail,
    )
    .context("cannot take the snapshot")?;
    fs::copy(
        data_dir.join("keyring.json"),
        work.path().join("keyring.json"),
    )
    .context("cannot read the keyring")?;
    let tombstones = crate::store::tombstones::Tombstones::in_dir(data_dir);
    match fs::copy(tombstones.path(), work.path().join(TOMBSTONES)) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            fs::write(work.path().join(TOMBSTONES), "").context("cannot write the backup")?;
        }
        Err(error) => return Err(anyhow!("cannot read the tombstone list: {error}")),
    }
    let mut parts = BTreeMap::new();
    for name in PARTS {
        parts.insert(name.to_owned(), digest(&work.path().join(name))?);
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        tokenvault_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: crate::audit::format_time(crate::audit::now_us()),
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
    let mut tar = tar::Builder::new(out);
    let mut add = |name: &str, bytes: &mut dyn Read, size: u64| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    let mut write_parts = || -> std::io::Result<()> {
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
    write_parts().context("cannot write the backup")?;
    tar.into_inner()
        .and_then(|out| out.flush())
        .context("cannot finish the backup")?;
    Ok(Written {
        tokens: facts.tokens,
        audit_seq: facts.audit_head.map(|head| head.seq),
    })
}

fn digest(path: &Path) -> anyhow::Result<Part> {
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

/// Opens a backup's keyring file (with the operator's passphrase or key
/// file).
pub type OpenKeyring<'a> = dyn Fn(&Path) -> anyhow::Result<Keyring> + 'a;

/// What [`check`] established.
pub struct Checked {
    manifest: Manifest,
    chain: Option<u64>,
    opened: Option<u64>,
}

impl Checked {
    /// Tokens the backup holds.
    pub fn tokens(&self) -> u64 {
        self.manifest.tokens.values().sum()
    }

    /// One line for the operator.
    pub fn summary(&self) -> String {
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
pub fn check(
    file: &Path,
    dir: &Path,
    keyring: Option<&OpenKeyring<'_>>,
    all_values: bool,
) -> anyhow::Result<Checked> {
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
    if let Some(open_keyring) = keyring {
        let keyring = open_keyring(&dir.join("keyring.json"))?;
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
fn open_values(vault: &Path, keyring: &Keyring, all: bool) -> anyhow::Result<u64> {
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

/// The first bytes of an age-encrypted file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// Parses an age X25519 recipient (`age1…`).
pub fn parse_recipient(text: &str) -> anyhow::Result<age::x25519::Recipient> {
    text.trim()
        .parse()
        .map_err(|error| anyhow!("`{}` is not an age recipient: {error}", text.trim()))
}

/// Like [`write`], the tar encrypted to `recipients` with age (for copies
/// that leave the site) when there are any.
pub fn write_to(
    data_dir: &Path,
    work_dir: &Path,
    out: &mut dyn Write,
    recipients: &[age::x25519::Recipient],
) -> anyhow::Result<Written> {
    if recipients.is_empty() {
        return write(data_dir, work_dir, out);
    }
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|error| anyhow!("cannot encrypt the backup: {error}"))?;
    let mut encrypted = encryptor
        .wrap_output(out)
        .context("cannot encrypt the backup")?;
    let written = write(data_dir, work_dir, &mut encrypted)?;
    encrypted
        .finish()
        .context("cannot finish the encrypted backup")?;
    Ok(written)
}

/// The backup at `file` as a plain tar: itself, or, when it is
/// age-encrypted, decrypted with the identities in `identity` into
/// `work_dir`.
pub fn plain(
    file: &Path,
    work_dir: &Path,
    identity: Option<&Path>,
) -> anyhow::Result<std::path::PathBuf> {
    let mut start = [0u8; AGE_MAGIC.len()];
    let read = fs::File::open(file)
        .and_then(|mut f| f.read(&mut start))
        .with_context(|| format!("cannot read {}", file.display()))?;
    if &start[..read] != AGE_MAGIC {
        return Ok(file.to_owned());
    }
    let Some(identity) = identity else {
        fail!("the backup is encrypted with age\nhint: give --identity with the key file of one of its recipients");
    };
    let text = fs::read_to_string(identity)
        .with_context(|| format!("cannot read {}", identity.display()))?;
    let identities: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.parse().map_err(|_| {
                anyhow!(
                    "{} holds a line that is not an age identity",
                    identity.display()
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(fs::File::open(file)?))
        .map_err(|error| anyhow!("the backup is damaged (age): {error}"))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|error| anyhow!("cannot decrypt the backup: {error}"))?;
    let path = work_dir.join("backup.tar");
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .context("cannot write the decrypted backup")?;
    std::io::copy(&mut reader, &mut out).context("the backup is damaged (age)")?;
    Ok(path)
}
