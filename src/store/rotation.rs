//! Key rotation: which master key version each namespace seals new values
//! with, and the rows still sealed under another, moved in small batches.
//!
//! `namespace_keys` holds one row per namespace that has been rotated at
//! least once: its write version, whether a rotation is moving rows (and
//! whether it is paused), how many rows it has moved, and an optional rate
//! limit. A namespace without a row writes with the newest version the
//! keyring holds.

use rusqlite::{params, Connection, OptionalExtension};

/// Rows moved per transaction: short, so that requests wait little.
pub const MOVE_BATCH: u32 = 500;

/// The key state of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// Namespace.
    pub namespace: String,
    /// The master key version new values are sealed under.
    pub version: u32,
    /// True while rows under other versions are being moved.
    pub rotating: bool,
    /// True when an operator paused the move.
    pub paused: bool,
    /// Rows moved so far by the current (or last) rotation.
    pub moved: u64,
    /// Rows per second the move may write (0: as fast as it goes).
    pub rate: u32,
    /// When the state last changed (seconds since the epoch).
    pub changed_at: i64,
}

/// A row still sealed under another version, read for moving.
#[derive(Debug, Clone)]
pub struct StaleRow {
    /// The token.
    pub token: String,
    /// Data class.
    pub class: String,
    /// The version it is sealed under.
    pub key_version: u32,
    /// `nonce || ciphertext || tag` under that version.
    pub sealed: Vec<u8>,
    /// Whether the row has a blind index (deterministic class).
    pub indexed: bool,
}

/// One row resealed under the write version.
#[derive(Debug, Clone)]
pub struct Move {
    /// The token (unchanged).
    pub token: String,
    /// The version and bytes read, so that a row changed meanwhile
    /// (corrected, erased) is left alone.
    pub old_version: u32,
    /// The sealed bytes read.
    pub old_sealed: Vec<u8>,
    /// The new sealed bytes.
    pub sealed: Vec<u8>,
    /// The blind index under the new version (deterministic classes).
    pub blind_index: Option<[u8; 32]>,
}

/// Work for the writer.
#[derive(Debug, Clone)]
pub enum Rekey {
    /// Reseals rows of a namespace under `version`.
    Move {
        /// Namespace.
        namespace: String,
        /// The write version.
        version: u32,
        /// The rows.
        moves: Vec<Move>,
    },
    /// Ends the namespace's rotation if no row remains under another
    /// version; the audit records are written only then.
    Finish {
        /// Namespace.
        namespace: String,
        /// The write version.
        version: u32,
    },
}

/// What a [`Rekey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RekeyOutcome {
    /// Rows moved.
    pub moved: u64,
    /// Rows that could not move (their new blind index is taken: the value
    /// has another token under the new version).
    pub conflicts: u64,
    /// True when a `Finish` ended the rotation.
    pub finished: bool,
}

/// Every namespace's key state.
pub fn load(db: &Connection) -> rusqlite::Result<Vec<KeyState>> {
    db.prepare_cached(
        "SELECT namespace, version, rotating, paused, moved, rate, changed_at
         FROM namespace_keys ORDER BY namespace",
    )?
    .query_map([], |row| {
        Ok(KeyState {
            namespace: row.get(0)?,
            version: row.get(1)?,
            rotating: row.get(2)?,
            paused: row.get(3)?,
            moved: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
            rate: row.get(5)?,
            changed_at: row.get(6)?,
        })
    })?
    .collect()
}

/// Up to `limit` rows of `namespace` not sealed under `version`, after the
/// token `after` in token order (a cursor: one pass over the table).
pub fn stale(
    db: &Connection,
    namespace: &str,
    version: u32,
    after: &str,
    limit: u32,
) -> rusqlite::Result<Vec<StaleRow>> {
    db.prepare_cached(
        "SELECT token, class, key_version, sealed, blind_index IS NOT NULL FROM tokens
         WHERE namespace = ?1 AND token > ?2 AND key_version <> ?3
         ORDER BY token LIMIT ?4",
    )?
    .query_map(params![namespace, after, version, limit], |row| {
        Ok(StaleRow {
            token: row.get(0)?,
            class: row.get(1)?,
            key_version: row.get(2)?,
            sealed: row.get(3)?,
            indexed: row.get(4)?,
        })
    })?
    .collect()
}

/// Starts a rotation of each namespace to `version` (the CLI's
/// `keys rotate`), with an optional rate limit. Namespaces in `keep` get a
/// row that pins their current write version, so that they do not follow
/// the keyring's newest version.
pub fn start(
    db: &Connection,
    rotate: &[String],
    keep: &[(String, u32)],
    version: u32,
    rate: u32,
    now: i64,
) -> rusqlite::Result<()> {
    let mut upsert = db.prepare_cached(
        "INSERT INTO namespace_keys (namespace, version, rotating, paused, moved, rate, changed_at)
         VALUES (?1, ?2, ?3, 0, 0, ?4, ?5)
         ON CONFLICT (namespace) DO UPDATE SET version = excluded.version,
             rotating = excluded.rotating, paused = 0, moved = 0, rate = excluded.rate,
             changed_at = excluded.changed_at",
    )?;
    for namespace in rotate {
        upsert.execute(params![namespace, version, true, rate, now])?;
    }
    let mut pin = db.prepare_cached(
        "INSERT INTO namespace_keys (namespace, version, rotating, paused, moved, rate, changed_at)
         VALUES (?1, ?2, 0, 0, 0, 0, ?3) ON CONFLICT (namespace) DO NOTHING",
    )?;
    for (namespace, current) in keep {
        pin.execute(params![namespace, current, now])?;
    }
    Ok(())
}

/// Pauses or resumes every running rotation (or one namespace's); answers
/// how many changed.
pub fn set_paused(
    db: &Connection,
    namespace: Option<&str>,
    paused: bool,
) -> rusqlite::Result<usize> {
    db.execute(
        "UPDATE namespace_keys SET paused = ?1
         WHERE rotating = 1 AND paused <> ?1 AND (?2 IS NULL OR namespace = ?2)",
        params![paused, namespace],
    )
}

/// Whether any namespace writes with `version`, or any row is sealed under
/// it.
pub fn version_in_use(db: &Connection, version: u32) -> rusqlite::Result<Option<String>> {
    let writer: Option<String> = db
        .query_row(
            "SELECT namespace FROM namespace_keys WHERE version = ?1 LIMIT 1",
            params![version],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(namespace) = writer {
        return Ok(Some(format!(
            "namespace {namespace} seals new values with it"
        )));
    }
    let rows: Option<String> = db
        .query_row(
            "SELECT namespace FROM tokens WHERE key_version = ?1 LIMIT 1",
            params![version],
            |row| row.get(0),
        )
        .optional()?;
    Ok(rows.map(|namespace| format!("rows of namespace {namespace} are still sealed under it")))
}

/// Applies one [`Rekey`] in the writer's transaction.
pub(super) fn apply(db: &Connection, rekey: &Rekey, now: i64) -> rusqlite::Result<RekeyOutcome> {
    let mut outcome = RekeyOutcome::default();
    match rekey {
        Rekey::Move {
            namespace,
            version,
            moves,
        } => {
            let mut update = db.prepare_cached(
                "UPDATE OR IGNORE tokens SET key_version = ?3, sealed = ?4, blind_index = ?5
                 WHERE namespace = ?1 AND token = ?2 AND key_version = ?6 AND sealed = ?7",
            )?;
            for row in moves {
                let changed = update.execute(params![
                    namespace,
                    row.token,
                    version,
                    row.sealed,
                    row.blind_index.as_ref().map(|index| &index[..]),
                    row.old_version,
                    row.old_sealed,
                ])?;
                if changed > 0 {
                    outcome.moved += 1;
                } else if row.blind_index.is_some() {
                    // Unchanged: either the row changed meanwhile (fine) or
                    // its new index is taken (counted, it stays behind).
                    let still: bool = db.query_row(
                        "SELECT EXISTS (SELECT 1 FROM tokens WHERE namespace = ?1 AND token = ?2
                             AND key_version = ?3 AND sealed = ?4)",
                        params![namespace, row.token, row.old_version, row.old_sealed],
                        |r| r.get(0),
                    )?;
                    outcome.conflicts += u64::from(still);
                }
            }
            db.execute(
                "UPDATE namespace_keys SET moved = moved + ?2 WHERE namespace = ?1",
                params![namespace, outcome.moved as i64],
            )?;
        }
        Rekey::Finish { namespace, version } => {
            let left: bool = db.query_row(
                "SELECT EXISTS (SELECT 1 FROM tokens WHERE namespace = ?1 AND key_version <> ?2)",
                params![namespace, version],
                |row| row.get(0),
            )?;
            if !left {
                outcome.finished = db.execute(
                    "UPDATE namespace_keys SET rotating = 0, paused = 0, changed_at = ?3
                     WHERE namespace = ?1 AND version = ?2 AND rotating = 1",
                    params![namespace, version, now],
                )? > 0;
            }
        }
    }
    Ok(outcome)
}
