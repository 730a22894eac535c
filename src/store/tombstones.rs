//! The tombstone list: the keyed hashes of every subject ever forgotten,
//! one line each (`<namespace> <hash hex>`), in `forgotten` in the data
//! directory. It is written (and flushed) before an erasure commits, it is
//! part of every backup, a restore can take it from the directory it
//! replaces, and the vault re-applies it at start: so restoring a copy taken
//! before an erasure does not bring the subject's values back.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{StoreError, SubjectHash};

/// File name in the data directory.
pub const FILE: &str = "forgotten";

/// The tombstone list of one data directory.
#[derive(Debug, Clone)]
pub struct Tombstones {
    path: PathBuf,
}

impl Tombstones {
    /// The list in `data_dir` (the file is created on first use).
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(FILE),
        }
    }

    /// Adds a forgotten subject, durably (before its erasure commits).
    pub fn add(&self, namespace: &str, subject: &SubjectHash) -> Result<(), StoreError> {
        let fail = |error: std::io::Error| {
            StoreError::Write(format!(
                "cannot record the erasure in {}: {error}",
                self.path.display()
            ))
        };
        if self.list()?.contains(&(namespace.to_owned(), *subject)) {
            return Ok(());
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(fail)?;
        writeln!(file, "{namespace} {}", hex::encode(subject)).map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    /// Every forgotten subject. A missing file is an empty list; a line
    /// that does not parse is an error (a damaged list must not be skipped).
    pub fn list(&self) -> Result<BTreeSet<(String, SubjectHash)>, StoreError> {
        read(&self.path)
    }

    /// Adds every subject of the list at `other` (a data directory or a
    /// `forgotten` file).
    pub fn merge_from(&self, other: &Path) -> Result<usize, StoreError> {
        let other = if other.is_dir() {
            other.join(FILE)
        } else {
            other.to_owned()
        };
        let theirs = read(&other)?;
        let ours = self.list()?;
        let mut added = 0;
        for (namespace, subject) in theirs.difference(&ours) {
            self.add(namespace, subject)?;
            added += 1;
        }
        Ok(added)
    }

    /// Where the list is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read(path: &Path) -> Result<BTreeSet<(String, SubjectHash)>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(error) => {
            return Err(StoreError::Write(format!(
                "cannot read {}: {error}",
                path.display()
            )))
        }
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let parsed = line.split_once(' ').and_then(|(namespace, hash)| {
                let bytes = hex::decode(hash.trim()).ok()?;
                Some((
                    namespace.to_owned(),
                    <SubjectHash>::try_from(bytes.as_slice()).ok()?,
                ))
            });
            parsed.ok_or_else(|| {
                StoreError::Write(format!(
                    "{} has a line that is not a tombstone",
                    path.display()
                ))
            })
        })
        .collect()
}
