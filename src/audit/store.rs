//! `audit.db`: the audit chain's own SQLite file. Appends run inside the
//! store writer's group commit; queries and verification open the file
//! read-only, so they work on a stopped vault or a copy of its data
//! directory.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use super::{Action, Head, Outcome, Record, GENESIS};
use crate::crypto::keys::AuditKey;

/// How long an append waits for a lock held by someone else before the
/// batch fails (and its requests get 503).
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
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
    )])
}

/// Opens (creating if needed) `audit.db` for appending.
pub fn open_for_append(path: &Path) -> Result<Connection, String> {
    let open = || -> Result<Connection, Box<dyn std::error::Error>> {
        let mut connection = Connection::open_with_flags(
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

/// Opens `audit.db` read-only (for queries and verification).
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    connection.busy_timeout(LOCK_WAIT)?;
    Ok(connection)
}

/// The newest record, if any.
pub fn head(connection: &Connection) -> rusqlite::Result<Option<Head>> {
    connection
        .query_row(
            "SELECT seq, mac FROM records ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
        )
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
/// another process (the CLI) are chained in, never forked.
pub fn append(
    connection: &Connection,
    key: &AuditKey,
    records: &[Record],
) -> rusqlite::Result<Option<Head>> {
    let mut head = head(connection)?;
    let mut insert = connection.prepare_cached(
        "INSERT INTO records (seq, time_us, request_id, actor, auth, source, action, namespace, route,
                              purpose, item_count, tokens, outcome, reason, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for record in records {
        let (seq, previous) = head.map_or((1, GENESIS), |h| (h.seq + 1, h.mac));
        let mac = key.mac(&record.canonical(seq), &previous);
        // Invariant: a list of strings always serializes.
        let tokens = serde_json::to_string(&record.tokens).expect("tokens serialize");
        insert.execute(params![
            seq as i64,
            record.time_us,
            record.request_id,
            record.actor,
            record.auth,
            record.source,
            record.action.as_str(),
            record.namespace,
            record.route,
            record.purpose,
            record.item_count as i64,
            tokens,
            record.outcome.as_str(),
            record.reason,
            &mac[..],
        ])?;
        head = Some(Head { seq, mac });
    }
    Ok(head)
}

/// A record as stored: sequence number, content, chain MAC.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Sequence number.
    pub seq: u64,
    /// Content.
    pub record: Record,
    /// Chain MAC.
    pub mac: Vec<u8>,
}

/// Query filters; every one is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time (µs since the epoch).
    pub since: Option<i64>,
    /// Records before this time (µs since the epoch).
    pub until: Option<i64>,
    /// Actor name.
    pub actor: Option<String>,
    /// Action name.
    pub action: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// A token among the record's tokens.
    pub token: Option<String>,
    /// Purpose.
    pub purpose: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
}

/// Records matching `filter` with `seq > after`, oldest first, at most `limit`.
pub fn query(
    connection: &Connection,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Stored>> {
    let mut statement = connection.prepare_cached(
        "SELECT seq, time_us, request_id, actor, auth, source, action, namespace, route, purpose,
                item_count, tokens, outcome, reason, mac
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
         LIMIT ?10",
    )?;
    let rows = statement.query_map(
        params![
            after as i64,
            filter.since,
            filter.until,
            filter.actor,
            filter.action,
            filter.namespace,
            filter.token,
            filter.purpose,
            filter.outcome,
            limit as i64,
        ],
        read_row,
    )?;
    rows.collect()
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let bad = |index: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            what.to_owned().into(),
        )
    };
    let action: String = row.get(6)?;
    let outcome: String = row.get(12)?;
    let tokens: String = row.get(11)?;
    Ok(Stored {
        seq: row.get::<_, i64>(0)? as u64,
        record: Record {
            time_us: row.get(1)?,
            request_id: row.get(2)?,
            actor: row.get(3)?,
            auth: row.get(4)?,
            source: row.get(5)?,
            action: Action::parse(&action).ok_or_else(|| bad(6, "unknown action"))?,
            namespace: row.get(7)?,
            route: row.get(8)?,
            purpose: row.get(9)?,
            item_count: row.get::<_, i64>(10)? as u64,
            tokens: serde_json::from_str(&tokens)
                .map_err(|_| bad(11, "tokens are not a JSON list"))?,
            outcome: Outcome::parse(&outcome).ok_or_else(|| bad(12, "unknown outcome"))?,
            reason: row.get(13)?,
        },
        mac: row.get(14)?,
    })
}

/// A chain that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Records checked.
    pub count: u64,
    /// The newest record.
    pub head: Option<Head>,
    /// Records newer than the head recorded in `vault.db` (left by a commit
    /// interrupted between the two files); they verified too.
    pub beyond_recorded_head: u64,
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Checks the whole chain: sequence numbers contiguous from 1, every MAC
/// right given its predecessor, and the end matching `recorded_head` (kept in
/// `vault.db`), so that records cut off the end are detected too.
pub fn verify(
    connection: &Connection,
    key: &AuditKey,
    recorded_head: Option<Head>,
) -> Result<Verified, Broken> {
    let io = |error: rusqlite::Error| Broken {
        seq: 0,
        reason: format!("cannot read audit.db: {error}"),
    };
    let mut statement = connection
        .prepare(
            "SELECT seq, time_us, request_id, actor, auth, source, action, namespace, route, purpose,
                    item_count, tokens, outcome, reason, mac
             FROM records ORDER BY seq",
        )
        .map_err(io)?;
    let mut rows = statement.query([]).map_err(io)?;
    let mut previous = GENESIS;
    let mut expected = 1u64;
    let mut head = None;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(error) => return Err(io(error)),
        };
        let seq = row.get::<_, i64>(0).map_err(io)? as u64;
        if seq != expected {
            return Err(Broken {
                seq: expected,
                reason: format!("record {expected} is missing (next is {seq})"),
            });
        }
        let stored = read_row(row).map_err(|_| Broken {
            seq,
            reason: "record is unreadable".to_owned(),
        })?;
        if !key.verify(&stored.record.canonical(seq), &previous, &stored.mac) {
            return Err(Broken {
                seq,
                reason: "MAC does not match: record edited, moved or forged".to_owned(),
            });
        }
        // Invariant: verify() checked the length is 32.
        previous = stored.mac.as_slice().try_into().expect("32-byte MAC");
        head = Some(Head { seq, mac: previous });
        expected += 1;
    }
    let count = expected - 1;
    let mut beyond_recorded_head = 0;
    if let Some(recorded) = recorded_head {
        if recorded.seq > count {
            return Err(Broken {
                seq: count + 1,
                reason: format!(
                    "records {}..={} are missing: vault.db records the head at {}",
                    count + 1,
                    recorded.seq,
                    recorded.seq
                ),
            });
        }
        let at_recorded = mac_at(connection, recorded.seq).map_err(io)?;
        if at_recorded.as_deref() != Some(&recorded.mac[..]) {
            return Err(Broken {
                seq: recorded.seq,
                reason: "does not match the head recorded in vault.db".to_owned(),
            });
        }
        beyond_recorded_head = count - recorded.seq;
    } else if count > 0 {
        return Err(Broken {
            seq: 1,
            reason: "vault.db records no audit head, but audit.db has records".to_owned(),
        });
    }
    Ok(Verified {
        count,
        head,
        beyond_recorded_head,
    })
}

fn mac_at(connection: &Connection, seq: u64) -> rusqlite::Result<Option<Vec<u8>>> {
    connection
        .query_row(
            "SELECT mac FROM records WHERE seq = ?1",
            params![seq as i64],
            |row| row.get(0),
        )
        .optional()
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
}
