//! A writer batch, whatever the backend: the jobs the writer takes from its
//! queue, what each answers, and the one order in which a batch applies
//! them. A backend supplies the changes ([`Batch`]); this file decides
//! what is recorded for each job and in which order, so that SQLite and
//! PostgreSQL write the same records for the same jobs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::activation::ActivationWrite;
use super::budgets::Spending;
use super::key_order::{in_input_order, key_order};
use super::retention::{Sweep, Touch};
use super::rotation::{Rekey, RekeyOutcome};
use super::subjects::{SubjectOutcome, SubjectWrite};
use super::{AuditState, Failure, InsertOutcome, NewRow};
use crate::audit::{self, Head, Record};

/// One write transaction of a batch on a backend: the changes its jobs
/// make, then the audit append and the commit. Every method runs inside
/// the one transaction; a failure rolls all of it back.
pub(super) trait Batch {
    /// Stores rows in the order given (namespace and row), each inserted,
    /// existing or taken, as if inserted one by one.
    fn insert(
        &mut self,
        items: &[(&str, &NewRow)],
        now: i64,
    ) -> Result<Vec<InsertOutcome>, Failure>;
    /// Deletes a token and its links; whether it existed.
    fn delete(&mut self, namespace: &str, token: &str) -> Result<bool, Failure>;
    /// Marks tokens used.
    fn touch(&mut self, touch: &Touch) -> Result<(), Failure>;
    /// Saves a client's budget spending.
    fn save_budget(&mut self, client: &str, spending: &Spending) -> Result<(), Failure>;
    /// Deletes the sweep's still-idle tokens; the tokens deleted.
    fn sweep(&mut self, sweep: &Sweep) -> Result<Vec<String>, Failure>;
    /// A consent change or a callback message id.
    fn activation(&mut self, write: &ActivationWrite, now: i64) -> Result<bool, Failure>;
    /// A per-subject write.
    fn subjects(&mut self, write: &SubjectWrite, now: i64) -> Result<SubjectOutcome, Failure>;
    /// Moves rows to a key version, or ends a rotation.
    fn rekey(&mut self, rekey: &Rekey, now: i64) -> Result<RekeyOutcome, Failure>;
    /// Appends `records` after checking that the trail ends at the recorded
    /// head (even when there are none: while the trail is broken nothing
    /// commits), and commits. The new head, and how long the audit write
    /// took when there was one.
    fn commit(self, records: &[Record]) -> Result<(Option<Head>, Option<Duration>), Failure>;
}

/// Where the writer sends a job's committed result, or why its batch failed.
pub(super) type Reply<T> = oneshot::Sender<Result<T, Failure>>;

pub(super) enum Job {
    Insert {
        namespace: String,
        rows: Vec<NewRow>,
        audit: Vec<Record>,
        reply: Reply<Vec<InsertOutcome>>,
    },
    Delete {
        namespace: String,
        token: String,
        audit: Box<Record>,
        reply: Reply<bool>,
    },
    Audit {
        records: Vec<Record>,
        touch: Option<Touch>,
        spending: Option<(String, Spending)>,
        reply: Reply<()>,
    },
    Sweep {
        sweep: Sweep,
        audit: Vec<Record>,
        reply: Reply<Vec<String>>,
    },
    Activation {
        write: ActivationWrite,
        audit: Vec<Record>,
        reply: Reply<bool>,
    },
    Subjects {
        write: SubjectWrite,
        audit: Vec<Record>,
        reply: Reply<SubjectOutcome>,
    },
    Rekey {
        rekey: Rekey,
        audit: Vec<Record>,
        reply: Reply<RekeyOutcome>,
    },
}

impl Job {
    /// True when the job only appends audit records: in `vault.db` it
    /// changes nothing but the audit head.
    pub(super) fn appends_only(&self) -> bool {
        matches!(
            self,
            Self::Audit {
                touch: None,
                spending: None,
                ..
            }
        )
    }
}

pub(super) enum Done {
    Insert(Reply<Vec<InsertOutcome>>, Vec<InsertOutcome>),
    Delete(Reply<bool>, bool),
    Audit(Reply<()>),
    Activation(Reply<bool>, bool),
    Subjects(Reply<SubjectOutcome>, SubjectOutcome),
    Sweep(Reply<Vec<String>>, Vec<String>),
    Rekey(Reply<RekeyOutcome>, RekeyOutcome),
}

impl Done {
    /// True when the job deleted values (a token, or a subject's tokens).
    pub(super) fn erased(&self) -> bool {
        match self {
            Self::Delete(_, deleted) => *deleted,
            Self::Subjects(_, SubjectOutcome::Erased(erasure)) => {
                !erasure.deleted_tokens.is_empty()
            }
            // The old value's bytes go as an erased one's do.
            Self::Subjects(_, SubjectOutcome::Corrected(Ok(()))) => true,
            Self::Sweep(_, deleted) => !deleted.is_empty(),
            _ => false,
        }
    }

    /// True when the job may have changed what a value's blind index finds:
    /// it erased values, or re-keyed rows (new indexes for the same tokens).
    pub(super) fn changes_lookups(&self) -> bool {
        self.erased() || matches!(self, Self::Rekey(..))
    }

    pub(super) fn succeed(self) {
        match self {
            Self::Insert(reply, outcomes) => drop(reply.send(Ok(outcomes))),
            Self::Delete(reply, deleted) => drop(reply.send(Ok(deleted))),
            Self::Audit(reply) => drop(reply.send(Ok(()))),
            Self::Activation(reply, result) => drop(reply.send(Ok(result))),
            Self::Subjects(reply, result) => drop(reply.send(Ok(result))),
            Self::Sweep(reply, deleted) => drop(reply.send(Ok(deleted))),
            Self::Rekey(reply, outcome) => drop(reply.send(Ok(outcome))),
        }
    }

    pub(super) fn fail(self, failure: &Failure) {
        match self {
            Self::Insert(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Delete(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Audit(reply) => drop(reply.send(Err(failure.clone()))),
            Self::Activation(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Subjects(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Sweep(reply, _) => drop(reply.send(Err(failure.clone()))),
            Self::Rekey(reply, _) => drop(reply.send(Err(failure.clone()))),
        }
    }
}

enum Work {
    Insert {
        namespace: String,
        rows: Vec<NewRow>,
        audit: Vec<Record>,
    },
    Delete {
        namespace: String,
        token: String,
        audit: Box<Record>,
    },
    Audit {
        records: Vec<Record>,
        touch: Option<Touch>,
        spending: Option<(String, Spending)>,
    },
    Sweep {
        sweep: Sweep,
        audit: Vec<Record>,
    },
    Activation {
        write: ActivationWrite,
        audit: Vec<Record>,
    },
    Subjects {
        write: SubjectWrite,
        audit: Vec<Record>,
    },
    Rekey {
        rekey: Rekey,
        audit: Vec<Record>,
    },
}

/// The records of an insert, naming the stored tokens (the existing one
/// where the value was already stored). A taken token is minted again by
/// the engine and recorded then: an insert with one records nothing.
pub(super) fn records_for_insert(
    rows: &[NewRow],
    outcomes: &[InsertOutcome],
    audit: Vec<Record>,
) -> Vec<Record> {
    if outcomes.contains(&InsertOutcome::TokenTaken) {
        return Vec::new();
    }
    let tokens: Vec<&String> = rows
        .iter()
        .zip(outcomes)
        .map(|(row, outcome)| match outcome {
            InsertOutcome::Existing(token) => token,
            _ => &row.token,
        })
        .collect();
    audit
        .into_iter()
        .map(|mut record| {
            record.tokens.extend(tokens.iter().map(|t| (*t).clone()));
            record
        })
        .collect()
}

impl Work {
    /// Whether the job must see the inserts queued before it, and they
    /// must not see it: deletions, erasures, corrections, sweeps and key
    /// moves. Every other job commutes with inserts.
    fn orders_inserts(&self) -> bool {
        matches!(
            self,
            Self::Delete { .. } | Self::Sweep { .. } | Self::Subjects { .. } | Self::Rekey { .. }
        )
    }
}

/// Registers every job's answer slot before any work, so that each hears
/// the outcome whatever fails.
fn register(batch: Vec<Job>, done: &mut Vec<Done>) -> Vec<Work> {
    let mut work = Vec::with_capacity(batch.len());
    for job in batch {
        match job {
            Job::Insert {
                namespace,
                rows,
                audit,
                reply,
            } => {
                done.push(Done::Insert(reply, Vec::new()));
                work.push(Work::Insert {
                    namespace,
                    rows,
                    audit,
                });
            }
            Job::Delete {
                namespace,
                token,
                audit,
                reply,
            } => {
                done.push(Done::Delete(reply, false));
                work.push(Work::Delete {
                    namespace,
                    token,
                    audit,
                });
            }
            Job::Audit {
                records,
                touch,
                spending,
                reply,
            } => {
                done.push(Done::Audit(reply));
                work.push(Work::Audit {
                    records,
                    touch,
                    spending,
                });
            }
            Job::Sweep {
                sweep,
                audit,
                reply,
            } => {
                done.push(Done::Sweep(reply, Vec::new()));
                work.push(Work::Sweep { sweep, audit });
            }
            Job::Activation {
                write,
                audit,
                reply,
            } => {
                done.push(Done::Activation(reply, false));
                work.push(Work::Activation { write, audit });
            }
            Job::Subjects {
                write,
                audit,
                reply,
            } => {
                done.push(Done::Subjects(reply, SubjectOutcome::Linked));
                work.push(Work::Subjects { write, audit });
            }
            Job::Rekey {
                rekey,
                audit,
                reply,
            } => {
                done.push(Done::Rekey(reply, RekeyOutcome::default()));
                work.push(Work::Rekey { rekey, audit });
            }
        }
    }
    work
}

/// Stores the rows of the insert jobs `pending` in one call, in the order
/// of their tokens (see `key_order`): new tokens are random, and stored in
/// arrival order each would land on a leaf of `tokens`, and of the links'
/// by-token index, that the writer's cache has dropped since. When two
/// rows of one call hold the same value (two concurrent requests), the
/// one with the lesser token is stored and the other answered with it.
fn flush_inserts(
    tx: &mut impl Batch,
    work: &[Work],
    done: &mut [Done],
    pending: &mut Vec<usize>,
    now: i64,
) -> Result<(), Failure> {
    if pending.is_empty() {
        return Ok(());
    }
    let items: Vec<(&str, &NewRow)> = pending
        .iter()
        .filter_map(|&index| match &work[index] {
            Work::Insert {
                namespace, rows, ..
            } => Some((namespace.as_str(), rows)),
            _ => None,
        })
        .flat_map(|(namespace, rows)| rows.iter().map(move |row| (namespace, row)))
        .collect();
    let order = key_order(&items, |(namespace_a, a), (namespace_b, b)| {
        (namespace_a, &a.token).cmp(&(namespace_b, &b.token))
    });
    let sorted: Vec<(&str, &NewRow)> = order.iter().map(|&at| items[at]).collect();
    let mut outcomes = in_input_order(&order, tx.insert(&sorted, now)?).into_iter();
    for &index in pending.iter() {
        if let (Done::Insert(_, answered), Work::Insert { rows, .. }) =
            (&mut done[index], &work[index])
        {
            *answered = outcomes.by_ref().take(rows.len()).collect();
        }
    }
    pending.clear();
    Ok(())
}

/// Applies a batch in one transaction (opened by `open` once every job
/// has its answer slot): every job in queue order
/// (the inserts of a run of jobs that commute with them stored in one
/// call), then every job's records in queue order, the audit append and
/// the commit, then the metrics of what was committed (new rows per
/// namespace, refusals, the audit write's time) on either backend. Each
/// job's answer is in `done` once this returns `Ok`.
pub(super) fn apply<B: Batch>(
    open: impl FnOnce() -> Result<B, Failure>,
    batch: Vec<Job>,
    done: &mut Vec<Done>,
) -> Result<(), Failure> {
    let mut work = register(batch, done);
    let mut tx = open()?;
    let now = super::unix_now();
    let mut pending = Vec::new();
    for index in 0..work.len() {
        if work[index].orders_inserts() {
            flush_inserts(&mut tx, &work, done, &mut pending, now)?;
        }
        match (&mut done[index], &mut work[index]) {
            (Done::Insert(..), Work::Insert { .. }) => pending.push(index),
            (
                Done::Delete(_, deleted),
                Work::Delete {
                    namespace,
                    token,
                    audit,
                },
            ) => {
                *deleted = tx.delete(namespace, token)?;
                if !*deleted {
                    audit.outcome = audit::Outcome::Error;
                    audit.reason = Some("not_found".to_owned());
                }
            }
            (
                Done::Audit(_),
                Work::Audit {
                    touch, spending, ..
                },
            ) => {
                if let Some(touch) = touch {
                    tx.touch(touch)?;
                }
                if let Some((client, spending)) = spending {
                    tx.save_budget(client, spending)?;
                }
            }
            (Done::Sweep(_, deleted), Work::Sweep { sweep, audit }) => {
                *deleted = tx.sweep(sweep)?;
                // Counts only: the tokens of expired rows are not worth a
                // record each.
                for record in audit.iter_mut() {
                    record.item_count = deleted.len() as u64;
                }
            }
            (Done::Activation(_, result), Work::Activation { write, .. }) => {
                *result = tx.activation(write, now)?;
            }
            (Done::Subjects(_, result), Work::Subjects { write, audit }) => {
                *result = tx.subjects(write, now)?;
                match &*result {
                    // The record says what was erased: the tokens and how
                    // many.
                    SubjectOutcome::Erased(erasure) => {
                        for record in audit.iter_mut() {
                            record.tokens = erasure.deleted_tokens.clone();
                            record.item_count = erasure.deleted_total();
                        }
                    }
                    // A refused correction changed nothing.
                    SubjectOutcome::Corrected(Err(refused)) => {
                        for record in audit.iter_mut() {
                            record.outcome = audit::Outcome::Error;
                            record.reason = Some(refused.code().to_owned());
                        }
                    }
                    _ => {}
                }
            }
            (Done::Rekey(_, outcome), Work::Rekey { rekey, .. }) => {
                *outcome = tx.rekey(rekey, now)?;
            }
            _ => return Err(Failure::Write("writer jobs out of step".to_owned())),
        }
    }
    flush_inserts(&mut tx, &work, done, &mut pending, now)?;

    let mut records = Vec::new();
    let mut created: BTreeMap<String, u64> = BTreeMap::new();
    // Erasures answer the sequence number of their first audit record (for
    // the receipt): (slot, index in `records`).
    let mut erasure_records: Vec<(usize, usize)> = Vec::new();
    for (slot, item) in work.into_iter().enumerate() {
        match (&done[slot], item) {
            (
                Done::Insert(_, outcomes),
                Work::Insert {
                    namespace,
                    rows,
                    audit,
                },
            ) => {
                let new = outcomes
                    .iter()
                    .filter(|o| **o == InsertOutcome::Inserted)
                    .count();
                *created.entry(namespace).or_default() += new as u64;
                records.extend(records_for_insert(&rows, outcomes, audit));
            }
            (Done::Delete(..), Work::Delete { audit, .. }) => records.push(*audit),
            (Done::Audit(_), Work::Audit { records: more, .. }) => records.extend(more),
            (Done::Sweep(..), Work::Sweep { audit, .. })
            | (Done::Activation(..), Work::Activation { audit, .. }) => records.extend(audit),
            (Done::Subjects(..), Work::Subjects { audit, .. }) => {
                if !audit.is_empty() {
                    erasure_records.push((slot, records.len()));
                }
                records.extend(audit);
            }
            (Done::Rekey(_, outcome), Work::Rekey { rekey, audit }) => {
                // A `Finish` that found rows left records nothing.
                if outcome.finished || matches!(rekey, Rekey::Move { .. }) {
                    records.extend(audit);
                }
            }
            _ => return Err(Failure::Write("writer jobs out of step".to_owned())),
        }
    }
    let (head, audit_write) = tx.commit(&records)?;
    if let Some(head) = head {
        let last = records.len() as u64;
        for (slot, index) in erasure_records {
            if let Done::Subjects(_, SubjectOutcome::Erased(erasure)) = &mut done[slot] {
                erasure.audit_seq = Some(head.seq + 1 + index as u64 - last);
            }
        }
    }
    crate::metrics::batch_committed(
        created
            .iter()
            .map(|(namespace, count)| (namespace.as_str(), *count)),
        &records,
        audit_write,
    );
    Ok(())
}

/// Answers every job of a batch with its result, and keeps the audit
/// state `/readyz` reports: ok after a commit, failing after an audit write
/// failed, broken when the trail no longer ends at its recorded head.
pub(super) fn settle(result: Result<(), Failure>, done: Vec<Done>, audit_state: &AtomicU8) {
    let set = |state: AuditState| audit_state.store(state.as_u8(), Ordering::SeqCst);
    match result {
        Ok(()) => {
            set(AuditState::Ok);
            done.into_iter().for_each(Done::succeed);
        }
        Err(failure) => {
            match &failure {
                Failure::Audit(detail) => {
                    set(AuditState::Failing);
                    tracing::error!(
                        detail,
                        jobs = done.len(),
                        "audit append failed; batch rolled back"
                    );
                }
                Failure::Mismatch(detail) => {
                    // Logged once per change of state, not once per batch.
                    let was = audit_state.swap(AuditState::Broken.as_u8(), Ordering::SeqCst);
                    if was != AuditState::Broken.as_u8() {
                        super::log_mismatch(detail);
                    }
                }
                Failure::Write(detail) | Failure::Stale(detail) => {
                    tracing::error!(detail, jobs = done.len(), "write batch failed; rolled back");
                }
            }
            done.into_iter().for_each(|job| job.fail(&failure));
        }
    }
}
