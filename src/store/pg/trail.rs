//! The audit trail on PostgreSQL: one chain for every node, serialized by
//! the `audit_head` row.
//!
//! Each write transaction locks the head row (`FOR UPDATE`) before it
//! appends, checks that the trail still ends at that head, inserts its
//! records after it and moves the head, all in the transaction that writes
//! the data the records describe. Nodes therefore append one after another,
//! never fork the chain, and a record exists exactly when its data does.
//! The chain's rules (what follows what, which MAC is right) are
//! `crate::audit`'s, as for SQLite.

use postgres::Transaction;

use super::super::trail::{encoded_lists, next_place, Columns, COLUMNS};
use super::super::AcknowledgeError;
use super::PgError;
use crate::audit::{Broken, ChainCheck, Head, Record, Stored, Verified, GENESIS};
use crate::crypto::keys::AuditKey;

/// Creates the head row (at sequence 0: no record yet) if it is missing,
/// so that the first appends of two nodes also queue on its lock.
pub(super) const SEED_HEAD: &str =
    "INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '\\x') ON CONFLICT (id) DO NOTHING";

pub(super) fn head_of(seq: i64, mac: Vec<u8>) -> Result<Option<Head>, PgError> {
    if seq == 0 {
        return Ok(None);
    }
    let broken = || PgError::AuditMismatch("the recorded audit head is malformed".to_owned());
    Ok(Some(Head {
        seq: u64::try_from(seq).map_err(|_| broken())?,
        mac: mac.try_into().map_err(|_| broken())?,
    }))
}

/// Locks the head row for the rest of `transaction` and reads it.
fn lock_head(transaction: &mut Transaction<'_>) -> Result<Option<Head>, PgError> {
    let row = transaction
        .query_opt(
            "SELECT seq, mac FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )?
        .ok_or_else(|| PgError::AuditMismatch("the audit head row is missing".to_owned()))?;
    head_of(row.get(0), row.get(1))
}

fn to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn decode(row: &postgres::Row) -> Result<Stored, PgError> {
    decode_at(row, 0)
}

/// The record whose columns ([`COLUMNS`]) start at `at` in `row`.
fn decode_at(row: &postgres::Row, at: usize) -> Result<Stored, PgError> {
    let columns = Columns {
        seq: row.try_get(at)?,
        time_us: row.try_get(at + 1)?,
        request_id: row.try_get(at + 2)?,
        actor: row.try_get(at + 3)?,
        auth: row.try_get(at + 4)?,
        source: row.try_get(at + 5)?,
        action: row.try_get(at + 6)?,
        namespace: row.try_get(at + 7)?,
        route: row.try_get(at + 8)?,
        purpose: row.try_get(at + 9)?,
        item_count: row.try_get(at + 10)?,
        tokens: row.try_get(at + 11)?,
        outcome: row.try_get(at + 12)?,
        reason: row.try_get(at + 13)?,
        mac: row.try_get(at + 14)?,
        gap_first: row.try_get(at + 15)?,
        gap_last: row.try_get(at + 16)?,
        unrecognized: row.try_get(at + 17)?,
        file: row.try_get(at + 18)?,
    };
    columns
        .into_stored()
        .map_err(|(index, what)| PgError::Query(format!("audit column {index}: {what}")))
}

/// Whether the trail ends at `head`: the head's record is there with the
/// head's MAC, that MAC is right given its predecessor, and nothing follows
/// it. The reason, when not. One query, run after the head is locked so
/// that it sees every commit before the lock.
fn check_tail(
    transaction: &mut Transaction<'_>,
    key: &AuditKey,
    head: Option<Head>,
) -> Result<Result<(), String>, PgError> {
    let columns: Vec<String> = COLUMNS
        .split(',')
        .map(|column| format!("r.{}", column.trim()))
        .collect();
    let row = transaction.query_one(
        &format!(
            "SELECT (SELECT max(seq) FROM records),
                    (SELECT mac FROM records AS p WHERE p.seq < coalesce(r.gap_first, r.seq)
                     ORDER BY p.seq DESC LIMIT 1),
                    {}
             FROM (SELECT 1) AS one LEFT JOIN records AS r ON r.seq = $1",
            columns.join(", ")
        ),
        &[&head.map_or(0, |h| to_sql(h.seq))],
    )?;
    let last: Option<i64> = row.try_get(0)?;
    let Some(head) = head else {
        return Ok(match last {
            None => Ok(()),
            Some(_) => Err("no audit head is recorded, but the trail has records".to_owned()),
        });
    };
    let last = last.and_then(|seq| u64::try_from(seq).ok());
    match last {
        None => {
            return Ok(Err(format!(
                "the trail is empty, but the head is at {}",
                head.seq
            )))
        }
        Some(last) if last < head.seq => {
            return Ok(Err(format!(
                "records {}..={} are missing: the head is at {}",
                last + 1,
                head.seq,
                head.seq
            )))
        }
        Some(last) if last > head.seq => {
            return Ok(Err(format!(
                "records {}..={last} follow the head at {}",
                head.seq + 1,
                head.seq
            )))
        }
        Some(_) => {}
    }
    if row.try_get::<_, Option<i64>>(2)?.is_none() {
        return Ok(Err(format!("record {} is missing", head.seq)));
    }
    let stored = decode_at(&row, 2)?;
    let previous: [u8; 32] = match row.try_get::<_, Option<Vec<u8>>>(1)? {
        Some(mac) => mac.try_into().unwrap_or([0; 32]),
        None => GENESIS,
    };
    let right = stored.mac == head.mac
        && key.verify(&stored.record.canonical(stored.seq), &previous, &stored.mac);
    Ok(if right {
        Ok(())
    } else {
        Err(format!("record {} does not match the head", head.seq))
    })
}

/// Whether the trail ends at the recorded head, read without a lock.
pub(super) fn tail_is_consistent(
    transaction: &mut Transaction<'_>,
    key: &AuditKey,
) -> Result<bool, PgError> {
    let row = transaction
        .query_opt("SELECT seq, mac FROM audit_head WHERE id = 1", &[])?
        .ok_or_else(|| PgError::AuditMismatch("the audit head row is missing".to_owned()))?;
    let head = head_of(row.get(0), row.get(1))?;
    Ok(check_tail(transaction, key, head)?.is_ok())
}

/// The audit head, locked for the rest of a write transaction and checked
/// to be the trail's end.
#[must_use = "a write transaction appends its records after the head it locked"]
pub(super) struct Locked(Option<Head>);

/// Locks the head row and checks the tail. The first statement of every
/// write transaction: nodes then take their locks in one order (the head
/// first), so two batches that touch the same rows in different orders
/// queue instead of deadlocking, and while the trail is broken nothing at
/// all commits.
pub(super) fn lock(transaction: &mut Transaction<'_>, key: &AuditKey) -> Result<Locked, PgError> {
    let head = lock_head(transaction)?;
    check_tail(transaction, key, head)?.map_err(PgError::AuditMismatch)?;
    Ok(Locked(head))
}

/// Appends `records` after the locked head and moves it. Returns the new
/// head.
pub(super) fn append(
    transaction: &mut Transaction<'_>,
    key: &AuditKey,
    locked: Locked,
    records: &[Record],
) -> Result<Option<Head>, PgError> {
    let mut head = locked.0;
    if records.is_empty() {
        return Ok(head);
    }
    // Chained here, inserted in one statement.
    let mut rows = RecordColumns::default();
    for record in records {
        let (seq, previous) = next_place(head, record).map_err(PgError::Query)?;
        let mac = key.mac(&record.canonical(seq), &previous);
        rows.push(seq, record, mac);
        head = Some(Head { seq, mac });
    }
    transaction.execute(
        &format!(
            "INSERT INTO records ({COLUMNS})
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::int8[], $12::text[], $13::text[], $14::text[], $15::bytea[],
                                  $16::int8[], $17::int8[], $18::text[], $19::text[])"
        ),
        &[
            &rows.seq,
            &rows.time_us,
            &rows.request_id,
            &rows.actor,
            &rows.auth,
            &rows.source,
            &rows.action,
            &rows.namespace,
            &rows.route,
            &rows.purpose,
            &rows.item_count,
            &rows.tokens,
            &rows.outcome,
            &rows.reason,
            &rows.mac,
            &rows.gap_first,
            &rows.gap_last,
            &rows.unrecognized,
            &rows.file,
        ],
    )?;
    if let Some(head) = head {
        transaction.execute(
            "UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1",
            &[&to_sql(head.seq), &&head.mac[..]],
        )?;
    }
    Ok(head)
}

/// Records as column arrays, for one multi-row insert.
#[derive(Default)]
struct RecordColumns<'a> {
    seq: Vec<i64>,
    time_us: Vec<i64>,
    request_id: Vec<&'a str>,
    actor: Vec<&'a str>,
    auth: Vec<&'a str>,
    source: Vec<Option<&'a str>>,
    action: Vec<&'static str>,
    namespace: Vec<Option<&'a str>>,
    route: Vec<Option<&'a str>>,
    purpose: Vec<Option<&'a str>>,
    item_count: Vec<i64>,
    tokens: Vec<String>,
    outcome: Vec<&'static str>,
    reason: Vec<Option<&'a str>>,
    mac: Vec<Vec<u8>>,
    gap_first: Vec<Option<i64>>,
    gap_last: Vec<Option<i64>>,
    unrecognized: Vec<Option<String>>,
    file: Vec<Option<String>>,
}

impl<'a> RecordColumns<'a> {
    fn push(&mut self, seq: u64, record: &'a Record, mac: [u8; 32]) {
        let (tokens, unrecognized) = encoded_lists(record);
        self.seq.push(to_sql(seq));
        self.time_us.push(record.time_us);
        self.request_id.push(&record.request_id);
        self.actor.push(&record.actor);
        self.auth.push(&record.auth);
        self.source.push(record.source.as_deref());
        self.action.push(record.action.as_str());
        self.namespace.push(record.namespace.as_deref());
        self.route.push(record.route.as_deref());
        self.purpose.push(record.purpose.as_deref());
        self.item_count.push(to_sql(record.item_count));
        self.tokens.push(tokens);
        self.outcome.push(record.outcome.as_str());
        self.reason.push(record.reason.as_deref());
        self.mac.push(mac.to_vec());
        self.gap_first.push(record.gap.map(|g| to_sql(g.first)));
        self.gap_last.push(record.gap.map(|g| to_sql(g.last)));
        self.unrecognized.push(unrecognized);
        self.file
            .push(record.file.as_ref().map(crate::audit::FileRun::to_text));
    }
}

/// Checks the whole chain against the head row, in one snapshot: sequence
/// numbers contiguous (except across acknowledged gaps), every MAC right
/// given its predecessor, and the last record being the head, so that an
/// edit, a deletion, a reorder and a cut tail are all caught.
pub(super) fn verify(
    transaction: &mut Transaction<'_>,
    key: &AuditKey,
) -> Result<Verified, Broken> {
    let io = |error: PgError| Broken {
        seq: 0,
        reason: format!("cannot read the audit trail: {error}"),
    };
    let row = transaction
        .query_opt("SELECT seq, mac FROM audit_head WHERE id = 1", &[])
        .map_err(|e| io(e.into()))?;
    let recorded = match row {
        Some(row) => head_of(row.get(0), row.get(1)).map_err(io)?,
        None => None,
    };
    let mut chain = ChainCheck::from_start();
    let portal = transaction
        .bind(&format!("SELECT {COLUMNS} FROM records ORDER BY seq"), &[])
        .map_err(|e| io(e.into()))?;
    loop {
        let rows = transaction
            .query_portal(&portal, 1_000)
            .map_err(|e| io(e.into()))?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let stored = decode(row).map_err(|error| Broken {
                seq: row
                    .try_get::<_, i64>(0)
                    .ok()
                    .and_then(|seq| u64::try_from(seq).ok())
                    .unwrap_or(0),
                reason: format!("record is unreadable ({error})"),
            })?;
            chain.check(key, &stored)?;
        }
    }
    let last = chain.head();
    if last != recorded {
        let (seq, reason) = match (last, recorded) {
            (Some(last), Some(head)) if last.seq < head.seq => (
                last.seq + 1,
                format!(
                    "records {}..={} are missing: the head is at {}",
                    last.seq + 1,
                    head.seq,
                    head.seq
                ),
            ),
            (None, Some(head)) => (
                1,
                format!("the trail is empty, but the head is at {}", head.seq),
            ),
            (Some(_), None) => (
                1,
                "no audit head is recorded, but the trail has records".to_owned(),
            ),
            _ => (
                last.map_or(1, |l| l.seq)
                    .min(recorded.map_or(u64::MAX, |r| r.seq)),
                "the last record does not match the recorded head".to_owned(),
            ),
        };
        return Err(Broken { seq, reason });
    }
    Ok(Verified {
        count: chain.count(),
        head: last,
        beyond_recorded_head: 0,
        gaps: chain.into_gaps(),
    })
}

/// `audit acknowledge-gap` on PostgreSQL: with the head locked, when the
/// trail ends before the recorded head (records cut off its end), appends
/// one gap record naming the missing range, chained to the last record
/// present, at the sequence number after the head, and moves the head to
/// it. Nothing is deleted or rewritten; `verify` keeps showing the hole.
pub(super) fn acknowledge_gap(
    transaction: &mut Transaction<'_>,
    key: &AuditKey,
    mut record: Record,
) -> Result<(crate::audit::Gap, Head), AcknowledgeError> {
    let head = lock_head(transaction)?;
    let reason = match check_tail(transaction, key, head)? {
        Ok(()) => return Err(AcknowledgeError::NoGap),
        Err(reason) => reason,
    };
    let mut chain = ChainCheck::from_start();
    let rows = transaction
        .query(&format!("SELECT {COLUMNS} FROM records ORDER BY seq"), &[])
        .map_err(PgError::from)?;
    for row in rows {
        let stored = decode(&row)?;
        chain
            .check(key, &stored)
            .map_err(|broken| AcknowledgeError::ChainBroken {
                seq: broken.seq,
                reason: broken.reason,
            })?;
    }
    let present = chain.head();
    let last = present.map_or(0, |h| h.seq);
    let recorded = match head {
        Some(recorded) if recorded.seq > last => recorded,
        _ => return Err(AcknowledgeError::NotATail(reason)),
    };
    let gap = crate::audit::Gap {
        first: last + 1,
        last: recorded.seq,
    };
    record.gap = Some(gap);
    record.item_count = gap.last - gap.first + 1;
    let head = append(
        transaction,
        key,
        Locked(present),
        std::slice::from_ref(&record),
    )?
    .ok_or_else(|| PgError::Query("nothing was appended".to_owned()))?;
    Ok((gap, head))
}
