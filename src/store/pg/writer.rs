//! Group commit on PostgreSQL: one writer thread per node takes every job
//! waiting in its queue and applies them in one transaction, with their
//! audit records and one move of the audit head, then answers each job once
//! that transaction has committed. The promise is the SQLite store's: a
//! token is answered only after its row is committed, and a record exists
//! exactly when its data does. If anything in the batch fails, nothing of
//! it commits and every job hears why.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::super::activation::ActivationWrite;
use super::super::{Failure, InsertOutcome, NewRow};
use super::pool::Pool;
use super::{activation, trail, PgError};
use crate::audit::Record;
use crate::crypto::keys::AuditKey;

/// Most jobs in one transaction.
pub(super) const MAX_JOBS: usize = 512;

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// A write the writer applies.
pub(super) enum Job {
    Insert {
        namespace: String,
        rows: Vec<NewRow>,
        audit: Vec<Record>,
        reply: Reply<Vec<InsertOutcome>>,
    },
    Activation {
        write: ActivationWrite,
        audit: Vec<Record>,
        reply: Reply<bool>,
    },
    Audit {
        records: Vec<Record>,
        reply: Reply<()>,
    },
}

enum Answer {
    Insert(Reply<Vec<InsertOutcome>>, Vec<InsertOutcome>),
    Activation(Reply<bool>, bool),
    Audit(Reply<()>),
}

impl Answer {
    fn succeed(self) {
        match self {
            Self::Insert(reply, outcomes) => drop(reply.send(Ok(outcomes))),
            Self::Activation(reply, result) => drop(reply.send(Ok(result))),
            Self::Audit(reply) => drop(reply.send(Ok(()))),
        }
    }

    fn fail(self, failure: &Failure) {
        match self {
            Self::Insert(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Activation(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Audit(reply) => drop(reply.send(Err(failure.clone()))),
        }
    }
}

fn failure(error: PgError) -> Failure {
    match error {
        PgError::AuditMismatch(reason) => Failure::Mismatch(reason),
        other => Failure::Write(other.to_string()),
    }
}

/// Runs until every sender is gone.
pub(super) fn run(pool: &Pool, key: &AuditKey, batches: &AtomicU64, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        match apply(pool, key, batch, &mut answers) {
            Ok(()) => {
                batches.fetch_add(1, Ordering::Relaxed);
                answers.into_iter().for_each(Answer::succeed)
            }
            Err(error) => {
                let failure = failure(error);
                tracing::error!(
                    jobs = answers.len(),
                    detail = %match &failure {
                        Failure::Write(detail) | Failure::Audit(detail) | Failure::Mismatch(detail) => detail,
                    },
                    "postgres write batch failed; rolled back"
                );
                answers.into_iter().for_each(|answer| answer.fail(&failure));
            }
        }
    }
}

fn apply(
    pool: &Pool,
    key: &AuditKey,
    batch: Vec<Job>,
    answers: &mut Vec<Answer>,
) -> Result<(), PgError> {
    // Every job is registered before any work, so that each hears the
    // outcome, whatever fails.
    let mut work = Vec::with_capacity(batch.len());
    for job in batch {
        match job {
            Job::Insert {
                namespace,
                rows,
                audit,
                reply,
            } => {
                answers.push(Answer::Insert(reply, Vec::new()));
                work.push(Work::Insert(namespace, rows, audit));
            }
            Job::Activation {
                write,
                audit,
                reply,
            } => {
                answers.push(Answer::Activation(reply, false));
                work.push(Work::Activation(write, audit));
            }
            Job::Audit { records, reply } => {
                answers.push(Answer::Audit(reply));
                work.push(Work::Audit(records));
            }
        }
    }
    let mut client = pool.borrow()?;
    let mut transaction = client.transaction()?;
    let locked = trail::lock(&mut transaction, key)?;
    let now = super::super::unix_now();
    // Every insert of the batch in one statement, in job order.
    let items: Vec<(&str, &NewRow)> = work
        .iter()
        .filter_map(|item| match item {
            Work::Insert(namespace, rows, _) => Some((namespace.as_str(), rows)),
            _ => None,
        })
        .flat_map(|(namespace, rows)| rows.iter().map(move |row| (namespace, row)))
        .collect();
    let mut outcomes = super::insert_all(&mut transaction, &items)?.into_iter();
    drop(items);
    let mut records = Vec::new();
    for (answer, item) in answers.iter_mut().zip(work) {
        match (answer, item) {
            (Answer::Insert(_, answered), Work::Insert(_, rows, audit)) => {
                *answered = outcomes.by_ref().take(rows.len()).collect();
                records.extend(super::super::records_for_insert(&rows, answered, audit));
            }
            (Answer::Activation(_, result), Work::Activation(write, audit)) => {
                *result = activation::apply(&mut transaction, &write, now)?;
                records.extend(audit);
            }
            (Answer::Audit(_), Work::Audit(more)) => records.extend(more),
            _ => return Err(PgError::Query("writer jobs out of step".to_owned())),
        }
    }
    trail::append(&mut transaction, key, locked, &records)?;
    transaction.commit()?;
    Ok(())
}

enum Work {
    Insert(String, Vec<NewRow>, Vec<Record>),
    Activation(ActivationWrite, Vec<Record>),
    Audit(Vec<Record>),
}
