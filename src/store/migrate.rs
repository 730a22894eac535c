//! `storage migrate --to postgres`: a stopped SQLite vault copied into an
//! empty PostgreSQL schema in one transaction (all of it or nothing), then
//! checked: the row count of every table on both sides, the audit chain on
//! the target against the head the source recorded, and a sample of sealed
//! values opened on both sides to the same plaintext.
//!
//! Rows are copied as stored: sealed values, blind indexes and audit MACs
//! are bytes that mean the same under the same keyring, which is copied
//! too (wrapped, as it is on disk).

use std::io::Write as _;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::pg::PgStore;
use super::{StoreError, StoredValue};
use crate::audit::Head;
use crate::crypto::seal::Binding;
use crate::crypto::wrapping::{Keyring, KeyringDocument};

/// Every table copied: its file, its name, its columns in both backends.
const TABLES: &[(Source, &str, &str)] = &[
    (
        Source::Vault,
        "tokens",
        "namespace, token, class, key_version, sealed, blind_index, created_at, used_day",
    ),
    (
        Source::Vault,
        "consent_events",
        "id, namespace, scope, target, purpose, withdrawn, changed_at, source",
    ),
    (
        Source::Vault,
        "callback_message_ids",
        "message_id, callback, expires_at",
    ),
    (
        Source::Vault,
        "subject_links",
        "namespace, subject_hash, token, linked_at",
    ),
    (
        Source::Vault,
        "budget_spent",
        "client, minute, spent_minute, day, spent_day",
    ),
    (
        Source::Vault,
        "namespace_keys",
        "namespace, version, rotating, paused, moved, rate, changed_at",
    ),
    (Source::Audit, "records", super::trail::COLUMNS),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Vault,
    Audit,
}

/// What the copy did and what its checks found.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// Each table with its row count in the source and in the target.
    pub tables: Vec<(String, u64, u64)>,
    /// The audit head the source recorded, and the number of records the
    /// target's chain verified to it.
    pub head: Option<Head>,
    /// Records the chain on the target verified.
    pub verified: u64,
    /// Sealed values opened on both sides to the same plaintext.
    pub sampled: u64,
}

fn failed(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Write(format!("{what}: {error}"))
}

/// Copies the SQLite vault in `data_dir` into `pg`, whose schema must be
/// migrated and empty, and checks the copy. `keyring` is the source's
/// keyring file, opened with the configured key; nothing is changed in
/// `data_dir`. `sample` values are opened on both sides.
pub fn sqlite_to_postgres(
    data_dir: &Path,
    document: &KeyringDocument,
    keyring: &Keyring,
    pg: &PgStore,
    sample: usize,
) -> Result<Migrated, StoreError> {
    let open = |name: &str| {
        Connection::open_with_flags(data_dir.join(name), OpenFlags::SQLITE_OPEN_READ_ONLY)
    };
    let vault = open("vault.db")?;
    let audit = open("audit.db")?;
    // The source must be at this build's schema: its columns are copied by
    // name.
    let expected = super::schema::step_names().len();
    let version: i64 = vault.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if usize::try_from(version).ok() != Some(expected) {
        return Err(StoreError::Write(format!(
            "vault.db is at schema version {version}, this build's is {expected}: serve it once with this build (or `tokenvault init` a new one) before migrating"
        )));
    }
    let head = super::read_audit_head(&vault)?;
    let mut client = pg.borrow()?;
    let mut transaction = client.transaction().map_err(|e| failed("begin", e))?;
    let busy: bool = transaction
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM keyring) OR EXISTS (SELECT 1 FROM tokens)
                 OR EXISTS (SELECT 1 FROM records)",
            &[],
        )
        .map_err(|e| failed("checking the target", e))?
        .get(0);
    if busy {
        return Err(StoreError::Write(
            "the target schema already holds a vault; migrate into an empty schema".to_owned(),
        ));
    }
    let mut tables = Vec::new();
    for (source, table, columns) in TABLES {
        let db = if *source == Source::Vault {
            &vault
        } else {
            &audit
        };
        let copied = copy_table(db, &mut transaction, table, columns)?;
        tables.push(((*table).to_owned(), copied, 0));
    }
    transaction
        .execute(
            "SELECT setval(pg_get_serial_sequence('consent_events', 'id'),
                           coalesce((SELECT max(id) FROM consent_events), 0) + 1, false)",
            &[],
        )
        .map_err(|e| failed("consent ids", e))?;
    if let Some(head) = head {
        transaction
            .execute(
                "UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1",
                &[&i64::try_from(head.seq).unwrap_or(i64::MAX), &&head.mac[..]],
            )
            .map_err(|e| failed("audit head", e))?;
    }
    transaction
        .execute(
            "INSERT INTO keyring (id, document, changed_at) VALUES (1, $1, $2)",
            &[&document.as_bytes(), &super::unix_now()],
        )
        .map_err(|e| failed("keyring", e))?;
    for (table, _, target) in &mut tables {
        let count: i64 = transaction
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(|e| failed("counting", e))?
            .get(0);
        *target = u64::try_from(count).unwrap_or(0);
    }
    if let Some((table, source, target)) = tables.iter().find(|(_, s, t)| s != t) {
        return Err(StoreError::Write(format!(
            "{table}: {source} rows in the source, {target} in the target; nothing was committed"
        )));
    }
    transaction.commit().map_err(|e| failed("commit", e))?;
    drop(client);

    let verified = pg.verify_audit(&keyring.audit_key()).map_err(|broken| {
        StoreError::Audit(format!(
            "the copied trail does not verify at record {}: {}",
            broken.seq, broken.reason
        ))
    })?;
    if verified.head != head {
        return Err(StoreError::Audit(
            "the copied trail does not end at the head the source recorded".to_owned(),
        ));
    }
    let sampled = compare_sample(&vault, pg, keyring, sample)?;
    Ok(Migrated {
        tables,
        head,
        verified: verified.count,
        sampled,
    })
}

/// Copies every row of `table` with COPY (text format), as stored.
fn copy_table(
    db: &Connection,
    transaction: &mut postgres::Transaction<'_>,
    table: &str,
    columns: &str,
) -> Result<u64, StoreError> {
    let mut statement = db.prepare(&format!("SELECT {columns} FROM {table}"))?;
    let width = statement.column_count();
    let mut rows = statement.query([])?;
    let mut writer = transaction
        .copy_in(&format!("COPY {table} ({columns}) FROM STDIN"))
        .map_err(|e| failed(table, e))?;
    let mut copied = 0u64;
    let mut line = Vec::new();
    while let Some(row) = rows.next()? {
        line.clear();
        for index in 0..width {
            if index > 0 {
                line.push(b'\t');
            }
            match row.get_ref(index)? {
                ValueRef::Null => line.extend_from_slice(b"\\N"),
                ValueRef::Integer(n) => line.extend_from_slice(n.to_string().as_bytes()),
                ValueRef::Real(x) => line.extend_from_slice(x.to_string().as_bytes()),
                ValueRef::Text(text) => escape_text(&mut line, text),
                ValueRef::Blob(bytes) => {
                    line.extend_from_slice(b"\\\\x");
                    line.extend_from_slice(hex::encode(bytes).as_bytes());
                }
            }
        }
        line.push(b'\n');
        writer.write_all(&line).map_err(|e| failed(table, e))?;
        copied += 1;
    }
    writer.finish().map_err(|e| failed(table, e))?;
    Ok(copied)
}

/// COPY's text format: backslash, tab, newline and carriage return escaped.
fn escape_text(out: &mut Vec<u8>, text: &[u8]) {
    for &byte in text {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// Opens up to `sample` values, spread over the table, on both sides; they
/// must be the same plaintext. Nothing opened leaves this function.
fn compare_sample(
    vault: &Connection,
    pg: &PgStore,
    keyring: &Keyring,
    sample: usize,
) -> Result<u64, StoreError> {
    let total: i64 = vault.query_row("SELECT count(*) FROM tokens", [], |row| row.get(0))?;
    let step = (usize::try_from(total).unwrap_or(0) / sample.max(1)).max(1);
    let mut statement = vault.prepare(
        "SELECT namespace, token, class, key_version, sealed, used_day FROM tokens
         ORDER BY namespace, token",
    )?;
    let mut rows = statement.query([])?;
    let mut compared = 0u64;
    let mut index = 0usize;
    while let Some(row) = rows.next()? {
        index += 1;
        if !(index - 1).is_multiple_of(step) || compared as usize >= sample {
            continue;
        }
        let namespace: String = row.get(0)?;
        let token: String = row.get(1)?;
        let source = StoredValue {
            class: row.get(2)?,
            key_version: row.get(3)?,
            sealed: row.get(4)?,
            used_day: row.get(5)?,
        };
        let target = pg
            .fetch(&namespace, std::slice::from_ref(&token))?
            .pop()
            .flatten()
            .ok_or_else(|| StoreError::Write(format!("token {token} is missing in the target")))?;
        let open = |stored: &StoredValue| {
            keyring.version(stored.key_version).and_then(|key| {
                let binding = Binding {
                    namespace: &namespace,
                    class: &stored.class,
                    token: &token,
                };
                key.namespace_keys(&namespace)
                    .sealer()
                    .open(binding, stored.key_version, &stored.sealed)
                    .ok()
            })
        };
        match (open(&source), open(&target)) {
            (Some(a), Some(b)) if a == b => compared += 1,
            _ => {
                return Err(StoreError::Write(format!(
                    "token {token} does not open to the same value on both sides"
                )))
            }
        }
    }
    Ok(compared)
}
