//! The SQL of backups: consistent online snapshots of both databases, and
//! the checks a backup gets before it is trusted.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::{read_audit_head, trail, StoreError};
use crate::audit::Head;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The audit head recorded in the snapshot's `vault.db`.
    pub audit_head: Option<Head>,
    /// Token rows per namespace.
    pub tokens: BTreeMap<String, u64>,
    /// Records in the snapshot's `audit.db`.
    pub audit_records: u64,
}

/// Writes consistent copies of `vault.db` and `audit.db` (SQLite's
/// `VACUUM INTO`: a transactional snapshot, compacted, so no free page of
/// the original comes along) into `vault_out` and `audit_out`, while the
/// vault may be serving.
///
/// `vault.db` is copied first: every batch commits `audit.db` before the
/// head in `vault.db`, so the later copy of `audit.db` holds at least every
/// record up to that head. Records past it (writes committed while the
/// copies were made, whose rows are not in the snapshot) are then removed
/// from the copy, so that the two agree exactly.
pub fn snapshot(
    database: &Path,
    audit: &Path,
    vault_out: &Path,
    audit_out: &Path,
) -> Result<SnapshotFacts, StoreError> {
    let source = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    source.busy_timeout(std::time::Duration::from_secs(5))?;
    vacuum_into(&source, vault_out)?;
    let audit_source = Connection::open_with_flags(audit, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    audit_source.busy_timeout(std::time::Duration::from_secs(5))?;
    vacuum_into(&audit_source, audit_out)?;
    let copy = Connection::open(vault_out)?;
    let audit_head = read_audit_head(&copy)?;
    let audit_copy = Connection::open(audit_out)?;
    let last = audit_head.map_or(0, |head| head.seq);
    audit_copy.execute(
        "DELETE FROM records WHERE seq > ?1",
        params![i64::try_from(last).unwrap_or(i64::MAX)],
    )?;
    audit_copy.execute_batch("VACUUM")?;
    drop(audit_copy);
    facts(vault_out, audit_out)
}

fn vacuum_into(source: &Connection, out: &Path) -> Result<(), StoreError> {
    let target = out
        .to_str()
        .ok_or_else(|| StoreError::Write("the backup path is not UTF-8".into()))?;
    source.execute("VACUUM INTO ?1", params![target])?;
    Ok(())
}

/// Reads what a snapshot (or a restored data directory) holds.
pub fn facts(database: &Path, audit: &Path) -> Result<SnapshotFacts, StoreError> {
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let audit_head = read_audit_head(&db)?;
    let tokens = db
        .prepare("SELECT namespace, count(*) FROM tokens GROUP BY namespace ORDER BY namespace")?
        .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)?)))?
        .map(|row| row.map(|(ns, n): (String, i64)| (ns, u64::try_from(n).unwrap_or(0))))
        .collect::<rusqlite::Result<_>>()?;
    let audit_db = Connection::open_with_flags(audit, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let audit_records: i64 =
        audit_db.query_row("SELECT count(*) FROM records", [], |row| row.get(0))?;
    Ok(SnapshotFacts {
        audit_head,
        tokens,
        audit_records: u64::try_from(audit_records).unwrap_or(0),
    })
}

/// `PRAGMA integrity_check` of the database at `path`: `Ok(())` or the
/// problems SQLite lists.
pub fn integrity_check(path: &Path) -> Result<Result<(), String>, StoreError> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let lines: Vec<String> = db
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(if lines == ["ok"] {
        Ok(())
    } else {
        Err(lines.join("; "))
    })
}

/// One stored row, sealed.
pub struct SealedRow<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Token.
    pub token: &'a str,
    /// Class.
    pub class: &'a str,
    /// Master key version it is sealed under.
    pub key_version: u32,
    /// `nonce || ciphertext || tag`.
    pub sealed: &'a [u8],
}

/// Calls `each` with every row, for opening every sealed value of a backup
/// (or a sample).
pub fn sealed_rows(database: &Path, each: &mut dyn FnMut(SealedRow<'_>)) -> Result<(), StoreError> {
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement =
        db.prepare("SELECT namespace, token, class, key_version, sealed FROM tokens")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (namespace, token, class): (String, String, String) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        let sealed: Vec<u8> = row.get(4)?;
        each(SealedRow {
            namespace: &namespace,
            token: &token,
            class: &class,
            key_version: row.get(3)?,
            sealed: &sealed,
        });
    }
    Ok(())
}

/// Verifies the audit chain of `audit` against the head in `database`.
pub fn verify_chain(
    database: &Path,
    audit: &Path,
    key: &crate::crypto::keys::AuditKey,
) -> Result<Result<crate::audit::Verified, crate::audit::Broken>, StoreError> {
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let head = read_audit_head(&db)?;
    let reader = trail::Reader::open(audit)?;
    Ok(reader.verify(key, head))
}
