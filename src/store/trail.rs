//! `audit.db`: the audit chain's own SQLite file. Appends run inside the
//! store writer's group commit (or the CLI's offline append, in the same
//! order); queries and verification open the file read-only, so they work on
//! a stopped vault or a copy of its data directory. The chain's rules (what
//! follows what, which MAC is right) live in `crate::audit`; this file reads
//! and writes rows.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use crate::audit::{
    Action, Broken, ChainCheck, Filter, Gap, Head, Outcome, Record, Stored, Unrecognized, Verified,
    GENESIS,
};
use crate::crypto::keys::AuditKey;

/// How long an append waits for a lock held by someone else before the
/// batch fails (and its requests get 503).
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Every column of `records`, in the order `read_row` expects.
pub(super) const COLUMNS: &str =
    "seq, time_us, request_id, actor, auth, source, action, namespace, route,
     purpose, item_count, tokens, outcome, reason, mac, gap_first, gap_last, unrecognized, file";

/// The audit trail's migrations, in order, with their names; the
/// PostgreSQL store keeps steps of the same names (`pg::schema`).
pub fn steps() -> Vec<(&'static str, M<'static>)> {
    vec![
        (
            "records",
            M::up(
                "CREATE TABLE records (
             seq        INTEGER PRIMARY KEY,
             time_us    INTEGER NOT NULL,
             request_id TEXT    NOT NULL,
             actor      TEXT    NOT NULL,
             auth       TEXT    NOT NULL,
             source     TEXT,
             action     TEXT    NOT NULL,
             namespace  TEXT,
             route      TEXT,
             purpose    TEXT,
             item_count INTEGER NOT NULL,
             tokens     TEXT    NOT NULL,
             outcome    TEXT    NOT NULL,
             reason     TEXT,
             mac        BLOB    NOT NULL
         );
         CREATE INDEX records_by_time ON records (time_us);",
            ),
        ),
        // Acknowledged gaps (`audit acknowledge-gap`): the range a gap record
        // bridges. NULL on every other record.
        (
            "gap_columns",
            M::up(
                "ALTER TABLE records ADD COLUMN gap_first INTEGER;
             ALTER TABLE records ADD COLUMN gap_last INTEGER;",
            ),
        ),
        // Keyed fingerprints of caller text that names nothing the vault
        // knows (a JSON list; NULL when there is none).
        (
            "unrecognized",
            M::up("ALTER TABLE records ADD COLUMN unrecognized TEXT;"),
        ),
        // What a bulk file run did (`FileRun` as JSON; NULL on every other
        // record).
        ("file", M::up("ALTER TABLE records ADD COLUMN file TEXT;")),
    ]
}

/// The names of the audit trail's steps, in order.
pub fn step_names() -> Vec<&'static str> {
    steps().into_iter().map(|(name, _)| name).collect()
}

fn migrations() -> Migrations<'static> {
    Migrations::new(steps().into_iter().map(|(_, step)| step).collect())
}

/// Opens (creating if needed) `audit.db` for appending.
pub fn open_for_append(path: &Path) -> Result<Connection, String> {
    let open = || -> Result<Connection, Box<dyn std::error::Error>> {
        let mut connection = super::open_unlocked(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        connection.busy_timeout(LOCK_WAIT)?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        let mode: String = connection.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err("audit.db could not be put in WAL mode".into());
        }
        migrations().to_latest(&mut connection)?;
        Ok(connection)
    };
    open().map_err(|error| format!("cannot open {}: {error}", path.display()))
}

/// `audit.db` opened read-only, for queries and verification (a running
/// vault's reader, `audit query`, `audit verify`, `audit export`).
pub struct Reader(Connection);

impl Reader {
    /// Opens the file at `path`; it must exist.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let connection = super::open_unlocked(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        connection.busy_timeout(LOCK_WAIT)?;
        // A copy written by an older version lacks the newer columns, and a
        // read-only connection cannot migrate it: a temporary view (the temp
        // schema is searched first) gives it empty ones.
        let has_column = |name: &str| -> rusqlite::Result<bool> {
            connection.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('records') WHERE name = ?1)",
                [name],
                |row| row.get(0),
            )
        };
        let (has_gaps, has_unrecognized, has_file) = (
            has_column("gap_first")?,
            has_column("unrecognized")?,
            has_column("file")?,
        );
        let has_table: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records')",
            [],
            |row| row.get(0),
        )?;
        if has_table && !(has_gaps && has_unrecognized && has_file) {
            let gaps = if has_gaps {
                ""
            } else {
                ", NULL AS gap_first, NULL AS gap_last"
            };
            let unrecognized = if has_unrecognized {
                ""
            } else {
                ", NULL AS unrecognized"
            };
            let file = if has_file { "" } else { ", NULL AS file" };
            connection.execute_batch(&format!(
                "CREATE TEMP VIEW records AS SELECT *{gaps}{unrecognized}{file} FROM main.records"
            ))?;
        }
        Ok(Self(connection))
    }

    /// Records matching `filter` with `seq > after`, oldest first, at most
    /// `limit`.
    pub fn query(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> rusqlite::Result<Vec<Stored>> {
        query(&self.0, filter, after, limit)
    }

    /// Every record with `first <= seq <= last`, oldest first.
    pub fn range(&self, first: u64, last: u64) -> rusqlite::Result<Vec<Stored>> {
        let mut statement = self.0.prepare(&format!(
            "SELECT {COLUMNS} FROM records WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq"
        ))?;
        let rows = statement.query_map(params![to_sql(first), to_sql(last)], read_row)?;
        rows.collect()
    }

    /// The MAC the record `seq` chains to: its predecessor's, or the genesis
    /// value for the first record of the trail.
    pub fn previous_mac(&self, seq: u64) -> rusqlite::Result<Vec<u8>> {
        Ok(self
            .0
            .query_row(
                "SELECT mac FROM records WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                params![to_sql(seq)],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or_else(|| GENESIS.to_vec()))
    }

    /// Checks the whole chain against the head recorded in `vault.db`.
    pub fn verify(&self, key: &AuditKey, recorded_head: Option<Head>) -> Result<Verified, Broken> {
        verify(&self.0, key, recorded_head)
    }

    /// Whether the trail still ends where `vault.db` says it does.
    pub fn check_tail(
        &self,
        key: &AuditKey,
        recorded_head: Option<Head>,
    ) -> rusqlite::Result<Result<(), TailMismatch>> {
        check_tail(&self.0, key, recorded_head)
    }
}

/// Sequence numbers are stored as SQLite's signed integers.
fn to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The time (µs) of each actor's newest successful record in the trail at
/// `path`, opened read-only: when each client last used the vault.
pub fn last_use_by_actor(path: &Path) -> rusqlite::Result<std::collections::BTreeMap<String, i64>> {
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    connection.busy_timeout(LOCK_WAIT)?;
    let mut statement = connection
        .prepare("SELECT actor, max(time_us) FROM records WHERE outcome = 'ok' GROUP BY actor")?;
    let last = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect();
    last
}

/// The time (µs) of the newest successful record of `action` in the trail
/// at `path`, opened read-only.
pub fn last_of_action(path: &Path, action: &str) -> rusqlite::Result<Option<i64>> {
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    connection.busy_timeout(LOCK_WAIT)?;
    connection.query_row(
        "SELECT max(time_us) FROM records WHERE action = ?1 AND outcome = 'ok'",
        params![action],
        |row| row.get(0),
    )
}

/// The newest record, if any.
pub fn head(connection: &Connection) -> rusqlite::Result<Option<Head>> {
    head_row(
        connection,
        "SELECT seq, mac FROM records ORDER BY seq DESC LIMIT 1",
    )
}

/// The `(seq, mac)` row `sql` selects, as a head. The statement is cached:
/// the writer reads heads in every commit.
pub(super) fn head_row(connection: &Connection, sql: &str) -> rusqlite::Result<Option<Head>> {
    connection
        .prepare_cached(sql)?
        .query_row([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()
        .map(|found| {
            found.and_then(|(seq, mac)| {
                Some(Head {
                    seq: u64::try_from(seq).ok()?,
                    mac: mac.try_into().ok()?,
                })
            })
        })
}

/// Chains and inserts `records` inside the caller's transaction; returns the
/// new head. The head is read inside the same transaction, so appends by
/// another process (the CLI) are chained in, never forked. A gap record
/// takes the sequence number after its gap and chains to the last record
/// present.
pub fn append(
    connection: &Connection,
    key: &AuditKey,
    records: &[Record],
) -> rusqlite::Result<Option<Head>> {
    let mut head = head(connection)?;
    let mut insert = connection.prepare_cached(
        "INSERT INTO records (seq, time_us, request_id, actor, auth, source, action, namespace, route,
                              purpose, item_count, tokens, outcome, reason, mac, gap_first, gap_last,
                              unrecognized, file)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19)",
    )?;
    for record in records {
        let (seq, previous) = next_place(head, record)
            .map_err(|reason| rusqlite::Error::ToSqlConversionFailure(reason.into()))?;
        let mac = key.mac(&record.canonical(seq), &previous);
        let (tokens, unrecognized) = encoded_lists(record);
        insert.execute(params![
            to_sql(seq),
            record.time_us,
            record.request_id,
            record.actor,
            record.auth,
            record.source,
            record.action.as_str(),
            record.namespace,
            record.route,
            record.purpose,
            to_sql(record.item_count),
            tokens,
            record.outcome.as_str(),
            record.reason,
            &mac[..],
            record.gap.map(|g| to_sql(g.first)),
            record.gap.map(|g| to_sql(g.last)),
            unrecognized,
            record.file.as_ref().map(crate::audit::FileRun::to_text),
        ])?;
        head = Some(Head { seq, mac });
    }
    Ok(head)
}

/// Records matching `filter` with `seq > after`, oldest first, at most `limit`.
pub fn query(
    connection: &Connection,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Stored>> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {COLUMNS}
         FROM records
         WHERE seq > ?1
           AND (?2 IS NULL OR time_us >= ?2)
           AND (?3 IS NULL OR time_us < ?3)
           AND (?4 IS NULL OR actor = ?4)
           AND (?5 IS NULL OR action = ?5)
           AND (?6 IS NULL OR namespace = ?6)
           AND (?7 IS NULL OR EXISTS (SELECT 1 FROM json_each(records.tokens) WHERE value = ?7))
           AND (?8 IS NULL OR purpose = ?8)
           AND (?9 IS NULL OR outcome = ?9)
         ORDER BY seq
         LIMIT ?10"
    ))?;
    let rows = statement.query_map(
        params![
            to_sql(after),
            filter.since,
            filter.until,
            filter.actor,
            filter.action,
            filter.namespace,
            filter.token,
            filter.purpose,
            filter.outcome,
            i64::try_from(limit).unwrap_or(i64::MAX),
        ],
        read_row,
    )?;
    rows.collect()
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let columns = Columns {
        seq: row.get(0)?,
        time_us: row.get(1)?,
        request_id: row.get(2)?,
        actor: row.get(3)?,
        auth: row.get(4)?,
        source: row.get(5)?,
        action: row.get(6)?,
        namespace: row.get(7)?,
        route: row.get(8)?,
        purpose: row.get(9)?,
        item_count: row.get(10)?,
        tokens: row.get(11)?,
        outcome: row.get(12)?,
        reason: row.get(13)?,
        mac: row.get(14)?,
        gap_first: row.get(15)?,
        gap_last: row.get(16)?,
        unrecognized: row.get(17)?,
        file: row.get(18)?,
    };
    columns.into_stored().map_err(|(index, what)| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            what.to_owned().into(),
        )
    })
}

/// A `records` row as either backend returns it, in [`COLUMNS`] order.
pub(super) struct Columns {
    pub(super) seq: i64,
    pub(super) time_us: i64,
    pub(super) request_id: String,
    pub(super) actor: String,
    pub(super) auth: String,
    pub(super) source: Option<String>,
    pub(super) action: String,
    pub(super) namespace: Option<String>,
    pub(super) route: Option<String>,
    pub(super) purpose: Option<String>,
    pub(super) item_count: i64,
    pub(super) tokens: String,
    pub(super) outcome: String,
    pub(super) reason: Option<String>,
    pub(super) mac: Vec<u8>,
    pub(super) gap_first: Option<i64>,
    pub(super) gap_last: Option<i64>,
    pub(super) unrecognized: Option<String>,
    pub(super) file: Option<String>,
}

impl Columns {
    /// The record, or the index of the column that does not decode and why.
    pub(super) fn into_stored(self) -> Result<Stored, (usize, &'static str)> {
        let gap = match (self.gap_first, self.gap_last) {
            (None, None) => None,
            (Some(first), Some(last)) => Some(Gap {
                first: u64::try_from(first).map_err(|_| (15, "negative gap"))?,
                last: u64::try_from(last).map_err(|_| (16, "negative gap"))?,
            }),
            _ => return Err((15, "half a gap")),
        };
        let unrecognized = match self.unrecognized {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<String>>(&text)
                .ok()
                .and_then(|list| list.iter().map(|t| Unrecognized::parse(t)).collect())
                .ok_or((17, "unrecognized is not a list of fingerprints"))?,
        };
        Ok(Stored {
            seq: u64::try_from(self.seq).map_err(|_| (0, "negative seq"))?,
            record: Record {
                time_us: self.time_us,
                request_id: self.request_id,
                actor: self.actor,
                auth: self.auth,
                source: self.source,
                action: Action::parse(&self.action).ok_or((6, "unknown action"))?,
                namespace: self.namespace,
                route: self.route,
                purpose: self.purpose,
                item_count: u64::try_from(self.item_count).map_err(|_| (10, "negative count"))?,
                tokens: serde_json::from_str(&self.tokens)
                    .map_err(|_| (11, "tokens are not a JSON list"))?,
                outcome: Outcome::parse(&self.outcome).ok_or((12, "unknown outcome"))?,
                reason: self.reason,
                gap,
                unrecognized,
                file: match self.file {
                    None => None,
                    Some(text) => Some(
                        crate::audit::FileRun::parse(&text)
                            .ok_or((18, "file is not a file run's facts"))?,
                    ),
                },
            },
            mac: self.mac,
        })
    }
}

/// A record's list columns as stored: the tokens, and the unrecognized
/// fingerprints (`None` when there are none).
pub(super) fn encoded_lists(record: &Record) -> (String, Option<String>) {
    // Invariant: a list of strings always serializes.
    let tokens = serde_json::to_string(&record.tokens).expect("tokens serialize");
    let unrecognized = (!record.unrecognized.is_empty()).then(|| {
        let list: Vec<&str> = record.unrecognized.iter().map(|u| u.as_str()).collect();
        // Invariant: a list of strings always serializes.
        serde_json::to_string(&list).expect("fingerprints serialize")
    });
    (tokens, unrecognized)
}

/// Where the record after `head` goes: its sequence number (after its gap,
/// for a gap record) and the MAC it chains to.
pub(super) fn next_place(head: Option<Head>, record: &Record) -> Result<(u64, [u8; 32]), String> {
    let (next, previous) = head.map_or((1, GENESIS), |h| (h.seq + 1, h.mac));
    let seq = match record.gap {
        Some(gap) if gap.first == next && gap.first <= gap.last => gap.last + 1,
        Some(_) => return Err("a gap record must start right after the last record".into()),
        None => next,
    };
    Ok((seq, previous))
}

fn stored_at(connection: &Connection, seq: u64) -> rusqlite::Result<Option<Stored>> {
    connection
        .prepare_cached(&format!("SELECT {COLUMNS} FROM records WHERE seq = ?1"))?
        .query_row(params![to_sql(seq)], read_row)
        .optional()
}

/// The MAC of the record `seq`, if it is there (the tail check needs no
/// more of the predecessor, and the writer runs it in every commit).
fn mac_at(connection: &Connection, seq: u64) -> rusqlite::Result<Option<Vec<u8>>> {
    connection
        .prepare_cached("SELECT mac FROM records WHERE seq = ?1")?
        .query_row(params![to_sql(seq)], |row| row.get(0))
        .optional()
}

/// Checks the whole chain: sequence numbers contiguous from 1 (except across
/// acknowledged gaps), every MAC right given its predecessor, and the end
/// matching `recorded_head` (kept in `vault.db`), so that records cut off
/// the end are detected too.
pub fn verify(
    connection: &Connection,
    key: &AuditKey,
    recorded_head: Option<Head>,
) -> Result<Verified, Broken> {
    let io = io_broken;
    let chain = walk(connection, key)?;
    let count = chain.count();
    let last = chain.head().map_or(0, |head| head.seq);
    let mut beyond_recorded_head = 0;
    if let Some(recorded) = recorded_head {
        if recorded.seq > last {
            return Err(Broken {
                seq: last + 1,
                reason: format!(
                    "records {}..={} are missing: vault.db records the head at {}",
                    last + 1,
                    recorded.seq,
                    recorded.seq
                ),
            });
        }
        let at_recorded = stored_at(connection, recorded.seq).map_err(io)?;
        match at_recorded {
            Some(stored) if stored.mac == recorded.mac => {}
            // A gap acknowledged after the head was recorded, whose commit to
            // vault.db was interrupted: the gap record covers the head.
            None if chain.acknowledged(recorded.seq) => {}
            _ => {
                return Err(Broken {
                    seq: recorded.seq,
                    reason: "does not match the head recorded in vault.db".to_owned(),
                })
            }
        }
        let rows_beyond: i64 = connection
            .query_row(
                "SELECT count(*) FROM records WHERE seq > ?1",
                params![to_sql(recorded.seq)],
                |row| row.get(0),
            )
            .map_err(io)?;
        beyond_recorded_head = u64::try_from(rows_beyond).unwrap_or(0);
    } else if count > 0 {
        return Err(Broken {
            seq: 1,
            reason: "vault.db records no audit head, but audit.db has records".to_owned(),
        });
    }
    let head = chain.head();
    Ok(Verified {
        count,
        head,
        beyond_recorded_head,
        gaps: chain.into_gaps(),
    })
}

fn io_broken(error: rusqlite::Error) -> Broken {
    Broken {
        seq: 0,
        reason: format!("cannot read audit.db: {error}"),
    }
}

/// Checks every record's place and MAC, oldest first, without looking at
/// the recorded head.
pub fn walk(connection: &Connection, key: &AuditKey) -> Result<ChainCheck, Broken> {
    let io = io_broken;
    let mut statement = connection
        .prepare(&format!("SELECT {COLUMNS} FROM records ORDER BY seq"))
        .map_err(io)?;
    let mut rows = statement.query([]).map_err(io)?;
    let mut chain = ChainCheck::from_start();
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(error) => return Err(io(error)),
        };
        let seq = row.get::<_, i64>(0).map_err(io)?;
        let stored = read_row(row).map_err(|_| Broken {
            seq: u64::try_from(seq).unwrap_or(0),
            reason: "record is unreadable".to_owned(),
        })?;
        chain.check(key, &stored)?;
    }
    Ok(chain)
}

/// The trail does not end where `vault.db` says it does: records were cut
/// off, the file was replaced, or the recorded head's record was forged.
/// Appending now would hide it, so nothing is appended until an operator
/// runs `audit acknowledge-gap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailMismatch {
    /// The head `vault.db` records.
    pub recorded: Option<Head>,
    /// The last record `audit.db` holds.
    pub last: Option<u64>,
    /// What is wrong, for the operator (sequence numbers only).
    pub reason: String,
}

impl std::fmt::Display for TailMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Whether `audit.db` still holds the head recorded in `vault.db`, with a
/// MAC that is right given its predecessor (so a row copied in with the
/// recorded MAC but other content does not pass). Cheap: a few indexed rows
/// and one HMAC, so the writer runs it before every append.
pub fn check_tail(
    connection: &Connection,
    key: &AuditKey,
    recorded: Option<Head>,
) -> rusqlite::Result<Result<(), TailMismatch>> {
    // The trail's last record: read only to describe a mismatch (the
    // append that follows a passed check reads it anyway).
    let last = || -> rusqlite::Result<Option<u64>> { Ok(head(connection)?.map(|h| h.seq)) };
    let mismatch = |last: Option<u64>, reason: String| {
        Ok(Err(TailMismatch {
            recorded,
            last,
            reason,
        }))
    };
    let Some(recorded) = recorded else {
        let last = last()?;
        return match last {
            None => Ok(Ok(())),
            Some(_) => mismatch(
                last,
                "vault.db records no audit head, but audit.db has records".into(),
            ),
        };
    };
    let Some(stored) = stored_at(connection, recorded.seq)? else {
        let covered: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM records WHERE gap_first <= ?1 AND seq > ?1)",
            params![to_sql(recorded.seq)],
            |row| row.get(0),
        )?;
        if covered {
            return Ok(Ok(()));
        }
        let last = last()?;
        return mismatch(
            last,
            match last {
                None => format!(
                    "audit.db is empty, but vault.db records the head at {}",
                    recorded.seq
                ),
                Some(last) if last < recorded.seq => format!(
                    "records {}..={} are missing: vault.db records the head at {}",
                    last + 1,
                    recorded.seq,
                    recorded.seq
                ),
                Some(_) => format!("record {} (the recorded head) is missing", recorded.seq),
            },
        );
    };
    if stored.mac != recorded.mac {
        return mismatch(
            last()?,
            format!(
                "record {} does not match the head recorded in vault.db",
                recorded.seq
            ),
        );
    }
    let chained_from = stored.record.gap.map_or(stored.seq, |gap| gap.first) - 1;
    let previous = if chained_from == 0 {
        Some(GENESIS.to_vec())
    } else {
        mac_at(connection, chained_from)?
    };
    let linked = previous
        .and_then(|mac| <[u8; 32]>::try_from(mac.as_slice()).ok())
        .is_some_and(|previous| {
            key.verify(&stored.record.canonical(stored.seq), &previous, &stored.mac)
        });
    if !linked {
        return mismatch(
            last()?,
            format!(
                "record {} (the recorded head) does not chain to its predecessor",
                recorded.seq
            ),
        );
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Context;
    use crate::crypto::keys::MasterKey;

    fn chain(records: usize) -> (tempfile::TempDir, Connection, AuditKey, Option<Head>) {
        let dir = tempfile::tempdir().unwrap();
        let connection = open_for_append(&dir.path().join("audit.db")).unwrap();
        let key = MasterKey::generate(1).audit_key();
        let batch: Vec<Record> = (0..records)
            .map(|i| {
                Context::cli("test")
                    .record(Action::Tokenize, Outcome::Ok)
                    .items(i)
            })
            .collect();
        let head = append(&connection, &key, &batch).unwrap();
        (dir, connection, key, head)
    }

    #[test]
    fn verify_accepts_an_intact_chain_and_names_the_first_bad_record() {
        let (_dir, connection, key, head) = chain(50);
        let verified = verify(&connection, &key, head).unwrap();
        assert_eq!((verified.count, verified.head), (50, head));

        connection
            .execute("UPDATE records SET item_count = 99 WHERE seq = 20", [])
            .unwrap();
        assert_eq!(verify(&connection, &key, head).unwrap_err().seq, 20);
        connection
            .execute("UPDATE records SET item_count = 19 WHERE seq = 20", [])
            .unwrap();
        assert!(verify(&connection, &key, head).is_ok());

        let other = MasterKey::generate(1).audit_key();
        assert_eq!(verify(&connection, &other, head).unwrap_err().seq, 1);

        connection
            .execute("DELETE FROM records WHERE seq > 45", [])
            .unwrap();
        let broken = verify(&connection, &key, head).unwrap_err();
        assert_eq!(broken.seq, 46, "{}", broken.reason);
    }

    #[test]
    fn query_filters() {
        let (_dir, connection, key, _) = chain(3);
        let mut record = Context::cli("test")
            .record(Action::Detokenize, Outcome::Denied)
            .namespace("retail");
        record.tokens = vec!["TKN_one".into(), "TKN_two".into()];
        append(&connection, &key, &[record]).unwrap();
        let by_token = Filter {
            token: Some("TKN_two".into()),
            ..Filter::default()
        };
        let found = query(&connection, &by_token, 0, 100).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].seq, 4);
        let by_outcome = Filter {
            outcome: Some("ok".into()),
            ..Filter::default()
        };
        assert_eq!(query(&connection, &by_outcome, 0, 100).unwrap().len(), 3);
        assert_eq!(query(&connection, &by_outcome, 1, 1).unwrap()[0].seq, 2);
    }

    #[test]
    fn a_cut_tail_fails_the_tail_check_until_a_gap_bridges_it() {
        let (_dir, connection, key, head) = chain(10);
        assert_eq!(check_tail(&connection, &key, head).unwrap(), Ok(()));
        connection
            .execute("DELETE FROM records WHERE seq > 7", [])
            .unwrap();
        let mismatch = check_tail(&connection, &key, head).unwrap().unwrap_err();
        assert!(
            mismatch.reason.contains("records 8..=10 are missing"),
            "{mismatch}"
        );

        // A row put back at the head with the recorded MAC but other content
        // does not chain to its predecessor.
        connection
            .execute(
                "INSERT INTO records SELECT 10, time_us, request_id, 'mallory', auth, source, action,
                        namespace, route, purpose, item_count, tokens, outcome, reason, ?1, NULL, NULL,
                        NULL, NULL
                 FROM records WHERE seq = 7",
                params![&head.unwrap().mac[..]],
            )
            .unwrap();
        let mismatch = check_tail(&connection, &key, head).unwrap().unwrap_err();
        assert!(mismatch.reason.contains("does not chain"), "{mismatch}");
        connection
            .execute("DELETE FROM records WHERE seq = 10", [])
            .unwrap();

        // A gap record must start right after the last record present.
        let mut gap = Context::cli("test").record(Action::AuditGap, Outcome::Ok);
        gap.gap = Some(Gap { first: 9, last: 10 });
        assert!(append(&connection, &key, std::slice::from_ref(&gap)).is_err());
        gap.gap = Some(Gap { first: 8, last: 10 });
        let bridged = append(&connection, &key, &[gap]).unwrap().unwrap();
        assert_eq!(bridged.seq, 11);
        // Before vault.db learns the new head, the old one lies inside the
        // acknowledged gap: consistent.
        assert_eq!(check_tail(&connection, &key, head).unwrap(), Ok(()));
        assert_eq!(
            check_tail(&connection, &key, Some(bridged)).unwrap(),
            Ok(())
        );
        let verified = verify(&connection, &key, Some(bridged)).unwrap();
        assert_eq!((verified.count, verified.gaps.len()), (8, 1));
        let more = Context::cli("test").record(Action::Tokenize, Outcome::Ok);
        let head = append(&connection, &key, &[more]).unwrap();
        assert_eq!(head.unwrap().seq, 12);
        assert!(verify(&connection, &key, head).is_ok());

        // Without the key, nobody bridges a hole: a forged gap row fails.
        connection
            .execute("DELETE FROM records WHERE seq > 5 AND seq < 8", [])
            .unwrap();
        let broken = verify(&connection, &key, head).unwrap_err();
        assert_eq!(broken.seq, 6, "{}", broken.reason);
    }

    #[test]
    fn an_empty_trail_under_a_recorded_head_is_a_mismatch() {
        let (_dir, connection, key, head) = chain(3);
        connection.execute("DELETE FROM records", []).unwrap();
        let mismatch = check_tail(&connection, &key, head).unwrap().unwrap_err();
        assert!(mismatch.reason.contains("empty"), "{mismatch}");
        assert_eq!(check_tail(&connection, &key, None).unwrap(), Ok(()));
    }
}
