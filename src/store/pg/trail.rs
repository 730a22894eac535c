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
use super::PgError;
use crate::audit::{Broken, ChainCheck, Head, Record, Stored, Verified, GENESIS};
use crate::crypto::keys::AuditKey;

/// Creates the head row (at sequence 0: no record yet) if it is missing,
/// so that the first appends of two nodes also queue on its lock.
pub(super) const SEED_HEAD: &str =
    "INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '\\x') ON CONFLICT (id) DO NOTHING";

fn head_of(seq: i64, mac: Vec<u8>) -> Result<Option<Head>, PgError> {
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

fn stored_at(transaction: &mut Transaction<'_>, seq: u64) -> Result<Option<Stored>, PgError> {
    let row = transaction.query_opt(
        &format!("SELECT {COLUMNS} FROM records WHERE seq = $1"),
        &[&to_sql(seq)],
    )?;
    row.map(|row| decode(&row)).transpose()
}

fn decode(row: &postgres::Row) -> Result<Stored, PgError> {
    let columns = Columns {
        seq: row.try_get(0)?,
        time_us: row.try_get(1)?,
        request_id: row.try_get(2)?,
        actor: row.try_get(3)?,
        auth: row.try_get(4)?,
        source: row.try_get(5)?,
        action: row.try_get(6)?,
        namespace: row.try_get(7)?,
        route: row.try_get(8)?,
        purpose: row.try_get(9)?,
        item_count: row.try_get(10)?,
        tokens: row.try_get(11)?,
        outcome: row.try_get(12)?,
        reason: row.try_get(13)?,
        mac: row.try_get(14)?,
        gap_first: row.try_get(15)?,
        gap_last: row.try_get(16)?,
        unrecognized: row.try_get(17)?,
    };
    columns
        .into_stored()
        .map_err(|(index, what)| PgError::Query(format!("audit column {index}: {what}")))
}

/// Whether the trail ends at `head`: the head's record is there with the
/// head's MAC, that MAC is right given its predecessor, and nothing follows
/// it. The reason, when not.
fn check_tail(
    transaction: &mut Transaction<'_>,
    key: &AuditKey,
    head: Option<Head>,
) -> Result<Result<(), String>, PgError> {
    let last: Option<i64> = transaction
        .query_one("SELECT max(seq) FROM records", &[])?
        .get(0);
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
    let Some(stored) = stored_at(transaction, head.seq)? else {
        return Ok(Err(format!("record {} is missing", head.seq)));
    };
    let resumes_at = stored.record.gap.map_or(stored.seq, |gap| gap.first);
    let previous: [u8; 32] = match transaction.query_opt(
        "SELECT mac FROM records WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
        &[&to_sql(resumes_at)],
    )? {
        Some(row) => row.get::<_, Vec<u8>>(0).try_into().unwrap_or([0; 32]),
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
    let insert = transaction.prepare(&format!(
        "INSERT INTO records ({COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    ))?;
    for record in records {
        let (seq, previous) = next_place(head, record).map_err(PgError::Query)?;
        let mac = key.mac(&record.canonical(seq), &previous);
        let (tokens, unrecognized) = encoded_lists(record);
        transaction.execute(
            &insert,
            &[
                &to_sql(seq),
                &record.time_us,
                &record.request_id,
                &record.actor,
                &record.auth,
                &record.source,
                &record.action.as_str(),
                &record.namespace,
                &record.route,
                &record.purpose,
                &to_sql(record.item_count),
                &tokens,
                &record.outcome.as_str(),
                &record.reason,
                &&mac[..],
                &record.gap.map(|g| to_sql(g.first)),
                &record.gap.map(|g| to_sql(g.last)),
                &unrecognized,
            ],
        )?;
        head = Some(Head { seq, mac });
    }
    if let Some(head) = head {
        transaction.execute(
            "UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1",
            &[&to_sql(head.seq), &&head.mac[..]],
        )?;
    }
    Ok(head)
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
