//! Group commit on PostgreSQL: one writer thread per node takes every job
//! waiting in its queue and applies them in one transaction (the order and
//! the records are `store::batch`'s, shared with SQLite), with one move of
//! the audit head, then answers each job once that transaction has
//! committed. The promise is the SQLite store's: a token is answered only
//! after its row is committed, and a record exists exactly when its data
//! does. If anything in the batch fails, nothing of it commits and every
//! job hears why.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use postgres::Transaction;
use tokio::sync::mpsc;

use super::super::activation::ActivationWrite;
use super::super::batch::{self, Batch, Job};
use super::super::budgets::Spending;
use super::super::retention::{Sweep, Touch};
use super::super::rotation::{Rekey, RekeyOutcome};
use super::super::subjects::{SubjectOutcome, SubjectWrite};
use super::super::{Failure, InsertOutcome, NewRow};
use super::pool::Pool;
use super::{activation, changes, trail, PgError};
use crate::audit::{Head, Record};
use crate::crypto::keys::AuditKey;

/// Most jobs in one transaction.
pub(super) const MAX_JOBS: usize = 512;

fn failure(error: PgError) -> Failure {
    match error {
        PgError::AuditMismatch(reason) => Failure::Mismatch(reason),
        other => Failure::Write(other.to_string()),
    }
}

/// Runs until every sender is gone.
pub(super) fn run(
    pool: &Pool,
    key: &AuditKey,
    batches: &AtomicU64,
    audit_state: &AtomicU8,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let result = pool.borrow().map_err(failure).and_then(|mut client| {
            let mut transaction = client.transaction().map_err(|e| failure(e.into()))?;
            let locked = trail::lock(&mut transaction, key).map_err(failure)?;
            let batch = refuse_stale(&mut transaction, batch).map_err(failure)?;
            batch::apply(
                move || {
                    Ok(PgBatch {
                        transaction,
                        key,
                        locked: Some(locked),
                    })
                },
                batch,
                &mut done,
            )
        });
        if result.is_ok() {
            batches.fetch_add(1, Ordering::Relaxed);
        }
        batch::settle(result.map(drop), done, audit_state);
    }
}

/// Answers, with [`Failure::Stale`], every insert job whose rows are
/// sealed with another master key version than their namespace writes
/// with (see `keys::write_versions`), and answers the jobs left. Runs with
/// the audit head locked, so no `keys rotate` commits until this batch has.
fn refuse_stale(transaction: &mut Transaction<'_>, batch: Vec<Job>) -> Result<Vec<Job>, PgError> {
    let inserts: Vec<(&str, u32)> = batch
        .iter()
        .filter_map(|job| match job {
            Job::Insert {
                namespace, rows, ..
            } => rows
                .first()
                .map(|row| (namespace.as_str(), row.key_version)),
            _ => None,
        })
        .collect();
    if inserts.is_empty() {
        return Ok(batch);
    }
    let writes = super::keys::write_versions(transaction, &inserts)?;
    Ok(batch
        .into_iter()
        .filter_map(|job| match job {
            Job::Insert {
                namespace,
                rows,
                audit,
                reply,
            } => match rows.first().map(|row| row.key_version) {
                Some(sealed) if writes.get(&namespace).is_some_and(|w| *w != sealed) => {
                    let write = writes[&namespace];
                    let _ = reply.send(Err(Failure::Stale(format!(
                        "namespace {namespace} writes with master key v{write}, the rows came sealed under v{sealed}"
                    ))));
                    None
                }
                _ => Some(Job::Insert {
                    namespace,
                    rows,
                    audit,
                    reply,
                }),
            },
            other => Some(other),
        })
        .collect())
}

/// A writer batch on PostgreSQL: one transaction, whose first statement
/// locked the audit head.
struct PgBatch<'a> {
    transaction: Transaction<'a>,
    key: &'a AuditKey,
    locked: Option<trail::Locked>,
}

impl Batch for PgBatch<'_> {
    fn insert(
        &mut self,
        items: &[(&str, &NewRow)],
        _now: i64,
    ) -> Result<Vec<InsertOutcome>, Failure> {
        super::insert_all(&mut self.transaction, items).map_err(failure)
    }

    fn delete(&mut self, namespace: &str, token: &str) -> Result<bool, Failure> {
        changes::delete_token(&mut self.transaction, namespace, token).map_err(failure)
    }

    fn touch(&mut self, touch: &Touch) -> Result<(), Failure> {
        changes::touch(&mut self.transaction, touch).map_err(failure)
    }

    fn save_budget(&mut self, client: &str, spending: &Spending) -> Result<(), Failure> {
        changes::save_budget(&mut self.transaction, client, spending).map_err(failure)
    }

    fn sweep(&mut self, sweep: &Sweep) -> Result<Vec<String>, Failure> {
        changes::sweep(&mut self.transaction, sweep).map_err(failure)
    }

    fn activation(&mut self, write: &ActivationWrite, now: i64) -> Result<bool, Failure> {
        activation::apply(&mut self.transaction, write, now).map_err(failure)
    }

    fn subjects(&mut self, write: &SubjectWrite, now: i64) -> Result<SubjectOutcome, Failure> {
        changes::subjects(&mut self.transaction, write, now).map_err(failure)
    }

    fn rekey(&mut self, rekey: &Rekey, now: i64) -> Result<RekeyOutcome, Failure> {
        changes::rekey(&mut self.transaction, rekey, now).map_err(failure)
    }

    fn commit(mut self, records: &[Record]) -> Result<(Option<Head>, Option<Duration>), Failure> {
        let started = std::time::Instant::now();
        let locked = self
            .locked
            .take()
            .ok_or_else(|| Failure::Write("the audit head was not locked".to_owned()))?;
        // A record that cannot be written is an audit failure (`/readyz`
        // says "failing"), whatever the database said.
        let head =
            trail::append(&mut self.transaction, self.key, locked, records).map_err(|error| {
                match error {
                    PgError::AuditMismatch(reason) => Failure::Mismatch(reason),
                    other => Failure::Audit(other.to_string()),
                }
            })?;
        self.transaction.commit().map_err(|e| failure(e.into()))?;
        Ok((head, (!records.is_empty()).then(|| started.elapsed())))
    }
}
