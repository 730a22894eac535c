//! The writer's changes on PostgreSQL, inside its transaction: deletions,
//! marks of use, budget counters, retention sweeps, subjects (links,
//! erasure, correction) and key rotation. Each follows the SQLite store's
//! rule of the same name. Where SQLite ignores a unique conflict
//! (`UPDATE OR IGNORE`), the statement here excludes the conflicting row
//! first: a violated constraint would abort the whole batch.

use std::collections::BTreeMap;

use postgres::Transaction;

use super::super::budgets::Spending;
use super::super::retention::{Sweep, Touch};
use super::super::rotation::{Rekey, RekeyOutcome};
use super::super::subjects::{
    Correction, CorrectionRefused, Erasure, SubjectHash, SubjectOutcome, SubjectWrite,
};
use super::PgError;

fn as_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn version_sql(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(i32::MAX)
}

/// Deletes one token and its subject links; whether it existed.
pub(super) fn delete_token(
    transaction: &mut Transaction<'_>,
    namespace: &str,
    token: &str,
) -> Result<bool, PgError> {
    let deleted = transaction.execute(
        "DELETE FROM tokens WHERE namespace = $1 AND token = $2",
        &[&namespace, &token],
    )?;
    unlink_token(transaction, namespace, token)?;
    Ok(deleted > 0)
}

fn unlink_token(
    transaction: &mut Transaction<'_>,
    namespace: &str,
    token: &str,
) -> Result<(), PgError> {
    transaction.execute(
        "DELETE FROM subject_links WHERE namespace = $1 AND token = $2",
        &[&namespace, &token],
    )?;
    Ok(())
}

/// Marks `touch`'s tokens used on its day (only rows marked earlier).
pub(super) fn touch(transaction: &mut Transaction<'_>, touch: &Touch) -> Result<(), PgError> {
    transaction.execute(
        "UPDATE tokens SET used_day = $3
         WHERE namespace = $1 AND token = ANY($2) AND used_day < $3",
        &[&touch.namespace, &touch.tokens, &touch.day],
    )?;
    Ok(())
}

/// Saves a client's spending; within one window the larger count wins.
pub(super) fn save_budget(
    transaction: &mut Transaction<'_>,
    client: &str,
    spending: &Spending,
) -> Result<(), PgError> {
    transaction.execute(
        "INSERT INTO budget_spent AS b (client, minute, spent_minute, day, spent_day)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (client) DO UPDATE SET
             spent_minute = CASE WHEN b.minute = excluded.minute
                 THEN greatest(b.spent_minute, excluded.spent_minute) ELSE excluded.spent_minute END,
             minute = greatest(b.minute, excluded.minute),
             spent_day = CASE WHEN b.day = excluded.day
                 THEN greatest(b.spent_day, excluded.spent_day) ELSE excluded.spent_day END,
             day = greatest(b.day, excluded.day)",
        &[
            &client,
            &as_sql(spending.minute),
            &as_sql(spending.in_minute),
            &as_sql(spending.day),
            &as_sql(spending.in_day),
        ],
    )?;
    Ok(())
}

/// Deletes the sweep's tokens that are still idle, and their links;
/// answers the tokens deleted.
pub(super) fn sweep(
    transaction: &mut Transaction<'_>,
    sweep: &Sweep,
) -> Result<Vec<String>, PgError> {
    let deleted: Vec<String> = transaction
        .query(
            "DELETE FROM tokens WHERE namespace = $1 AND token = ANY($2) AND used_day < $3
             RETURNING token",
            &[&sweep.namespace, &sweep.tokens, &sweep.before],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    transaction.execute(
        "DELETE FROM subject_links WHERE namespace = $1 AND token = ANY($2)",
        &[&sweep.namespace, &deleted],
    )?;
    // In the order asked, as SQLite answers.
    Ok(sweep
        .tokens
        .iter()
        .filter(|token| deleted.contains(token))
        .cloned()
        .collect())
}

/// Applies a per-subject write.
pub(super) fn subjects(
    transaction: &mut Transaction<'_>,
    write: &SubjectWrite,
    now: i64,
) -> Result<SubjectOutcome, PgError> {
    match write {
        SubjectWrite::Link { namespace, links } => {
            let tokens: Vec<&str> = links.iter().map(|(token, _)| token.as_str()).collect();
            let subjects: Vec<&[u8]> = links.iter().map(|(_, subject)| &subject[..]).collect();
            transaction.execute(
                "INSERT INTO subject_links (namespace, subject_hash, token, linked_at)
                 SELECT $1, s, t, $4 FROM unnest($2::bytea[], $3::text[]) AS link (s, t)
                 ON CONFLICT DO NOTHING",
                &[namespace, &subjects, &tokens, &now],
            )?;
            Ok(SubjectOutcome::Linked)
        }
        SubjectWrite::Forget { namespace, subject } => {
            forget(transaction, namespace, subject).map(SubjectOutcome::Erased)
        }
        SubjectWrite::Correct(correction) => {
            correct(transaction, correction).map(SubjectOutcome::Corrected)
        }
    }
}

fn forget(
    transaction: &mut Transaction<'_>,
    namespace: &str,
    subject: &SubjectHash,
) -> Result<Erasure, PgError> {
    let linked = transaction.query(
        "SELECT l.token, t.class,
                (SELECT count(*) FROM subject_links o
                 WHERE o.namespace = l.namespace AND o.token = l.token
                   AND o.subject_hash <> l.subject_hash)
         FROM subject_links l
         LEFT JOIN tokens t ON t.namespace = l.namespace AND t.token = l.token
         WHERE l.namespace = $1 AND l.subject_hash = $2
         ORDER BY l.token COLLATE \"C\"",
        &[&namespace, &&subject[..]],
    )?;
    let mut erasure = Erasure::default();
    let mut deleted_classes: BTreeMap<String, u64> = BTreeMap::new();
    for row in linked {
        let (token, class, others): (String, Option<String>, i64) =
            (row.get(0), row.get(1), row.get(2));
        if others > 0 {
            erasure.unlinked_shared += 1;
            continue;
        }
        let deleted = transaction.execute(
            "DELETE FROM tokens WHERE namespace = $1 AND token = $2",
            &[&namespace, &token],
        )?;
        if deleted > 0 {
            if let Some(class) = class {
                *deleted_classes.entry(class).or_default() += 1;
            }
            erasure.deleted_tokens.push(token);
        }
    }
    erasure.deleted = deleted_classes;
    transaction.execute(
        "DELETE FROM subject_links WHERE namespace = $1 AND subject_hash = $2",
        &[&namespace, &&subject[..]],
    )?;
    Ok(erasure)
}

fn correct(
    transaction: &mut Transaction<'_>,
    c: &Correction,
) -> Result<Result<(), CorrectionRefused>, PgError> {
    let subjects: Vec<Vec<u8>> = transaction
        .query(
            "SELECT subject_hash FROM subject_links WHERE namespace = $1 AND token = $2",
            &[&c.namespace, &c.token],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !subjects.iter().any(|s| s[..] == c.subject[..]) {
        return Ok(Err(CorrectionRefused::NotTheSubjects));
    }
    if subjects.len() > 1 {
        return Ok(Err(CorrectionRefused::Shared));
    }
    let index = c.blind_index.as_ref().map(|index| &index[..]);
    if let Some(index) = index {
        let holder: Option<String> = transaction
            .query_opt(
                "SELECT token FROM tokens WHERE namespace = $1 AND class = $2 AND blind_index = $3",
                &[&c.namespace, &c.class, &index],
            )?
            .map(|row| row.get(0));
        if holder.is_some_and(|holder| holder != c.token) {
            return Ok(Err(CorrectionRefused::ValueHasAnotherToken));
        }
    }
    let updated = transaction.execute(
        "UPDATE tokens SET sealed = $3, key_version = $4, blind_index = $5
         WHERE namespace = $1 AND token = $2 AND class = $6",
        &[
            &c.namespace,
            &c.token,
            &c.sealed,
            &version_sql(c.key_version),
            &index,
            &c.class,
        ],
    )?;
    Ok(if updated == 1 {
        Ok(())
    } else {
        Err(CorrectionRefused::NotTheSubjects)
    })
}

/// Applies one [`Rekey`].
pub(super) fn rekey(
    transaction: &mut Transaction<'_>,
    rekey: &Rekey,
    now: i64,
) -> Result<RekeyOutcome, PgError> {
    let mut outcome = RekeyOutcome::default();
    match rekey {
        Rekey::Move {
            namespace,
            version,
            moves,
        } => {
            for row in moves {
                let index = row.blind_index.as_ref().map(|index| &index[..]);
                // A row changed meanwhile is left alone; a row whose new
                // index another row holds stays behind, counted.
                let changed = transaction.execute(
                    "UPDATE tokens SET key_version = $3, sealed = $4, blind_index = $5
                     WHERE namespace = $1 AND token = $2 AND key_version = $6 AND sealed = $7
                       AND ($5::bytea IS NULL OR NOT EXISTS (
                           SELECT 1 FROM tokens AS other
                           WHERE other.namespace = $1 AND other.class = tokens.class
                             AND other.blind_index = $5 AND other.token <> $2))",
                    &[
                        namespace,
                        &row.token,
                        &version_sql(*version),
                        &row.sealed,
                        &index,
                        &version_sql(row.old_version),
                        &row.old_sealed,
                    ],
                )?;
                if changed > 0 {
                    outcome.moved += 1;
                } else if index.is_some() {
                    let still: bool = transaction
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM tokens WHERE namespace = $1 AND token = $2
                                 AND key_version = $3 AND sealed = $4)",
                            &[
                                namespace,
                                &row.token,
                                &version_sql(row.old_version),
                                &row.old_sealed,
                            ],
                        )?
                        .get(0);
                    outcome.conflicts += u64::from(still);
                }
            }
            transaction.execute(
                "UPDATE namespace_keys SET moved = moved + $2 WHERE namespace = $1",
                &[namespace, &as_sql(outcome.moved)],
            )?;
        }
        Rekey::Finish { namespace, version } => {
            let left: bool = transaction
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM tokens WHERE namespace = $1 AND key_version <> $2)",
                    &[namespace, &version_sql(*version)],
                )?
                .get(0);
            if !left {
                outcome.finished = transaction.execute(
                    "UPDATE namespace_keys SET rotating = false, paused = false, changed_at = $3
                     WHERE namespace = $1 AND version = $2 AND rotating",
                    &[namespace, &version_sql(*version), &now],
                )? > 0;
            }
        }
    }
    Ok(outcome)
}
