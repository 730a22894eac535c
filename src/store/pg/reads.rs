//! What the engine reads, on PostgreSQL: the same answers as the SQLite
//! store's readers, each from one statement (so from one snapshot).
//! Cursor scans order tokens with the "C" collation: byte order, whatever
//! the database's locale, as SQLite orders them.

use postgres::GenericClient;

use super::super::activation::{ConsentRecord, ConsentTarget};
use super::super::budgets::Spending;
use super::super::retention::Day;
use super::super::rotation::{KeyState, StaleRow};
use super::super::subjects::SubjectHash;
use super::super::trail::COLUMNS;
use super::super::{Found, StoredValue};
use super::{trail, PgError};
use crate::audit::{Filter, Head, Stored};

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn as_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// One answer per item, in the order asked, from rows whose first column
/// is the 1-based ordinal of the item they answer (`WITH ORDINALITY`);
/// items without a row answer `default`. `answer` gets the item's index
/// (below `items`) and its row.
pub(super) fn by_ordinal<T: Clone>(
    rows: Vec<postgres::Row>,
    items: usize,
    default: T,
    answer: impl Fn(usize, &postgres::Row) -> T,
) -> Vec<T> {
    let mut answers = vec![default; items];
    for row in rows {
        let ord: i64 = row.get(0);
        if let Some(i) = usize::try_from(ord - 1).ok().filter(|i| *i < items) {
            answers[i] = answer(i, &row);
        }
    }
    answers
}

/// Existing tokens by blind index, in one statement: during a rotation a
/// value is looked up under two versions' indexes while its row moves, and
/// one snapshot sees it under one of them. The day of last use is read for
/// the classes `dated` says have retention, else [`Day::MAX`].
pub(super) fn find_by_blind_index(
    client: &mut impl GenericClient,
    namespace: &str,
    lookups: &[(&str, [u8; 32])],
    dated: &dyn Fn(&str) -> bool,
) -> Result<Vec<Option<Found>>, PgError> {
    let classes: Vec<&str> = lookups.iter().map(|(class, _)| *class).collect();
    let indexes: Vec<&[u8]> = lookups.iter().map(|(_, index)| &index[..]).collect();
    let rows = client.query(
        // LATERAL: one index probe per item, whatever the planner guesses
        // about an array's size (a hash join scanned the whole table).
        "SELECT item.ord, found.token, found.used_day
         FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS item (c, b, ord)
         CROSS JOIN LATERAL (
             SELECT token, used_day FROM tokens
             WHERE namespace = $1 AND class = item.c AND blind_index = item.b
         ) AS found",
        &[&namespace, &classes, &indexes],
    )?;
    Ok(by_ordinal(rows, lookups.len(), None, |i, row| {
        Some(Found {
            token: row.get(1),
            used_day: if dated(lookups[i].0) {
                row.get(2)
            } else {
                Day::MAX
            },
        })
    }))
}

/// Sealed values by token.
pub(super) fn fetch(
    client: &mut impl GenericClient,
    namespace: &str,
    tokens: &[String],
) -> Result<Vec<Option<StoredValue>>, PgError> {
    let rows = client.query(
        "SELECT item.ord, found.class, found.key_version, found.sealed, found.used_day
         FROM unnest($2::text[]) WITH ORDINALITY AS item (t, ord)
         CROSS JOIN LATERAL (
             SELECT class, key_version, sealed, used_day FROM tokens
             WHERE namespace = $1 AND token = item.t
         ) AS found",
        &[&namespace, &tokens],
    )?;
    Ok(by_ordinal(rows, tokens.len(), None, |_, row| {
        Some(StoredValue {
            class: row.get(1),
            key_version: as_u32(row.get(2)),
            sealed: row.get(3),
            used_day: row.get(4),
        })
    }))
}

/// Whether each (token, subject) pair is linked already.
pub(super) fn linked(
    client: &mut impl GenericClient,
    namespace: &str,
    links: &[(String, SubjectHash)],
) -> Result<Vec<bool>, PgError> {
    let tokens: Vec<&str> = links.iter().map(|(token, _)| token.as_str()).collect();
    let subjects: Vec<&[u8]> = links.iter().map(|(_, subject)| &subject[..]).collect();
    let rows = client.query(
        "SELECT item.ord
         FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS item (t, s, ord)
         WHERE EXISTS (
             SELECT 1 FROM subject_links
             WHERE namespace = $1 AND subject_hash = item.s AND token = item.t
         )",
        &[&namespace, &tokens, &subjects],
    )?;
    Ok(by_ordinal(rows, links.len(), false, |_, _| true))
}

/// Whether each token exists.
pub(super) fn existing(
    client: &mut impl GenericClient,
    namespace: &str,
    tokens: &[String],
) -> Result<Vec<bool>, PgError> {
    Ok(fetch(client, namespace, tokens)?
        .iter()
        .map(Option::is_some)
        .collect())
}

/// Up to `limit` tokens of `class` last used before `before`, after the
/// cursor `after`.
pub(super) fn idle_tokens(
    client: &mut impl GenericClient,
    namespace: &str,
    class: &str,
    before: Day,
    after: &str,
    limit: u32,
) -> Result<Vec<String>, PgError> {
    Ok(client
        .query(
            "SELECT token FROM tokens
             WHERE namespace = $1 AND token COLLATE \"C\" > $2 AND class = $3 AND used_day < $4
             ORDER BY token COLLATE \"C\" LIMIT $5",
            &[&namespace, &after, &class, &before, &i64::from(limit)],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The tokens linked to a subject, and its consent history, oldest first.
pub(super) fn subject_holdings(
    client: &mut impl GenericClient,
    namespace: &str,
    subject: &SubjectHash,
) -> Result<(Vec<String>, Vec<ConsentRecord>), PgError> {
    let tokens = client
        .query(
            "SELECT token FROM subject_links WHERE namespace = $1 AND subject_hash = $2
             ORDER BY token COLLATE \"C\"",
            &[&namespace, &&subject[..]],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let history = consent_history(client, namespace, &ConsentTarget::Subject(*subject))?;
    Ok((tokens, history))
}

/// Every budgeted client's saved spending.
pub(super) fn budget_spending(
    client: &mut impl GenericClient,
) -> Result<Vec<(String, Spending)>, PgError> {
    Ok(client
        .query(
            "SELECT client, minute, spent_minute, day, spent_day FROM budget_spent",
            &[],
        )?
        .iter()
        .map(|row| {
            (
                row.get(0),
                Spending {
                    minute: as_u64(row.get(1)),
                    in_minute: as_u64(row.get(2)),
                    day: as_u64(row.get(3)),
                    in_day: as_u64(row.get(4)),
                },
            )
        })
        .collect())
}

/// Every rotated namespace's key state.
/// The bytes the vault's tables take in the schema (indexes and TOAST
/// included): the audit trail's `records`, and every other table.
pub(super) fn sizes(client: &mut impl GenericClient) -> Result<(u64, u64), PgError> {
    let row = client.query_one(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname <> 'records'), 0)::bigint,
                coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = 'records'), 0)::bigint
           FROM pg_class c
          WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'",
        &[],
    )?;
    let size = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok((size(0), size(1)))
}

pub(super) fn key_states(client: &mut impl GenericClient) -> Result<Vec<KeyState>, PgError> {
    Ok(client
        .query(
            "SELECT namespace, version, rotating, paused, moved, rate, changed_at
             FROM namespace_keys ORDER BY namespace COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(|row| KeyState {
            namespace: row.get(0),
            version: as_u32(row.get(1)),
            rotating: row.get(2),
            paused: row.get(3),
            moved: as_u64(row.get(4)),
            rate: u32::try_from(row.get::<_, i64>(5)).unwrap_or(0),
            changed_at: row.get(6),
        })
        .collect())
}

/// Up to `limit` rows of `namespace` not sealed under `version`, after the
/// cursor `after`.
pub(super) fn stale_rows(
    client: &mut impl GenericClient,
    namespace: &str,
    version: u32,
    after: &str,
    limit: u32,
) -> Result<Vec<StaleRow>, PgError> {
    let version = i32::try_from(version).unwrap_or(i32::MAX);
    Ok(client
        .query(
            "SELECT token, class, key_version, sealed, blind_index IS NOT NULL FROM tokens
             WHERE namespace = $1 AND key_version <> $2 AND token COLLATE \"C\" > $3
             ORDER BY token COLLATE \"C\" LIMIT $4",
            &[&namespace, &version, &after, &i64::from(limit)],
        )?
        .iter()
        .map(|row| StaleRow {
            token: row.get(0),
            class: row.get(1),
            key_version: as_u32(row.get(2)),
            sealed: row.get(3),
            indexed: row.get(4),
        })
        .collect())
}

/// Audit records matching `filter` after `after`, oldest first, at most
/// `limit`.
pub(super) fn query_audit(
    client: &mut impl GenericClient,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> Result<Vec<Stored>, PgError> {
    let rows = client.query(
        &format!(
            "SELECT {COLUMNS}
             FROM records
             WHERE seq > $1
               AND ($2::int8 IS NULL OR time_us >= $2)
               AND ($3::int8 IS NULL OR time_us < $3)
               AND ($4::text IS NULL OR actor = $4)
               AND ($5::text IS NULL OR action = $5)
               AND ($6::text IS NULL OR namespace = $6)
               AND ($7::text IS NULL OR tokens::jsonb ? $7)
               AND ($8::text IS NULL OR purpose = $8)
               AND ($9::text IS NULL OR outcome = $9)
             ORDER BY seq
             LIMIT $10"
        ),
        &[
            &i64::try_from(after).unwrap_or(i64::MAX),
            &filter.since,
            &filter.until,
            &filter.actor,
            &filter.action,
            &filter.namespace,
            &filter.token,
            &filter.purpose,
            &filter.outcome,
            &i64::try_from(limit).unwrap_or(i64::MAX),
        ],
    )?;
    rows.iter().map(trail::decode).collect()
}

/// The recorded audit head.
pub(super) fn recorded_audit_head(
    client: &mut impl GenericClient,
) -> Result<Option<Head>, PgError> {
    match client.query_opt("SELECT seq, mac FROM audit_head WHERE id = 1", &[])? {
        Some(row) => trail::head_of(row.get(0), row.get(1)),
        None => Ok(None),
    }
}

/// Token rows per namespace and key version.
pub(super) fn rows_per_key_version(
    client: &mut impl GenericClient,
) -> Result<Vec<(String, u32, u64)>, PgError> {
    Ok(client
        .query(
            "SELECT namespace, key_version, count(*) FROM tokens
             GROUP BY namespace, key_version ORDER BY key_version, namespace COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(|row| (row.get(0), as_u32(row.get(1)), as_u64(row.get(2))))
        .collect())
}

/// The time (µs) of the newest successful record of `action`.
pub(super) fn last_of_action(
    client: &mut impl GenericClient,
    action: &str,
) -> Result<Option<i64>, PgError> {
    Ok(client
        .query_one(
            "SELECT max(time_us) FROM records WHERE action = $1 AND outcome = 'ok'",
            &[&action],
        )?
        .get(0))
}

/// The time (µs) of each actor's newest successful record.
pub(super) fn last_use_by_actor(
    client: &mut impl GenericClient,
) -> Result<std::collections::BTreeMap<String, i64>, PgError> {
    Ok(client
        .query(
            "SELECT actor, max(time_us) FROM records WHERE outcome = 'ok' GROUP BY actor",
            &[],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Every consent event for `target`, oldest first; for a token, also the
/// events of the subjects linked to it (as the SQLite store answers).
pub(super) fn consent_history(
    client: &mut impl GenericClient,
    namespace: &str,
    target: &ConsentTarget,
) -> Result<Vec<ConsentRecord>, PgError> {
    let token = match target {
        ConsentTarget::Token(token) => token.as_str(),
        ConsentTarget::Subject(_) => "",
    };
    Ok(client
        .query(
            "SELECT scope, purpose, withdrawn, changed_at, source FROM consent_events
             WHERE namespace = $1
               AND ((scope = $2 AND target = $3)
                    OR ($2 = 'token' AND scope = 'subject' AND target IN (
                        SELECT subject_hash FROM subject_links
                        WHERE namespace = $1 AND token = $4)))
             ORDER BY changed_at, id",
            &[&namespace, &target.scope(), &target.bytes(), &token],
        )?
        .iter()
        .map(|row| ConsentRecord {
            scope: row.get(0),
            purpose: row.get(1),
            withdrawn: row.get(2),
            changed_at: row.get(3),
            source: row.get(4),
        })
        .collect())
}

/// The MAC the record `seq` chains to: its predecessor's, or the genesis
/// value for the first record.
pub(super) fn previous_mac(client: &mut impl GenericClient, seq: u64) -> Result<Vec<u8>, PgError> {
    Ok(client
        .query_opt(
            "SELECT mac FROM records WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
            &[&i64::try_from(seq).unwrap_or(i64::MAX)],
        )?
        .map_or_else(|| crate::audit::GENESIS.to_vec(), |row| row.get(0)))
}
