//! Bulk file runs (`file tokenize`, `POST /v1/files/tokenize`): a file's
//! rows go through the same group commit as the API in large batches, and
//! the whole run is one audit record, written when the run ends.
//!
//! A run's batches commit their rows without a record of their own: the
//! tokens they give out are not values, and the record that names the file
//! (its digest, counts, classes and column fingerprints) is written by
//! [`FileTokenizeRun::finish`]. The caller publishes its output only after
//! that record is durable.

use super::{ItemProblem, TokenizeItem, Tokenized, Vault, VaultError, MAX_VALUE_CHARS};
use crate::audit::{Action, Context, FileRun, Outcome, Record, TextKind, Unrecognized};
use crate::normalize;
use crate::pii::Pii;
use crate::policy::{Caller, Denied, Operation};

/// A file tokenization in progress. Dropping it without
/// [`finish`](Self::finish) leaves the run unrecorded; the committed rows
/// stay (their tokens are found again by a rerun or `--resume`).
pub struct FileTokenizeRun<'a> {
    vault: &'a Vault,
    caller: Caller,
    namespace: String,
    record: Record,
}

impl Vault {
    /// Starts a file tokenization of `columns` (caller text, each with its
    /// class) in `namespace`. Refuses before any row is read when the
    /// caller may not tokenize there, a class is unknown or not granted, or
    /// the audit trail cannot take the run's record.
    pub async fn start_file_tokenize(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        columns: &[(String, String)],
    ) -> Result<FileTokenizeRun<'_>, VaultError> {
        let mut record = self.start_record(context, Action::FileTokenize, namespace);
        for (column, _) in columns {
            record
                .unrecognized
                .push(Unrecognized::of(&self.audit_key, TextKind::Column, column));
        }
        let checked = (|| {
            caller.role.check(Operation::Tokenize, namespace)?;
            let ns = self.namespace(namespace)?;
            for (index, (_, class)) in columns.iter().enumerate() {
                if !ns.spec.classes.contains_key(class) {
                    return Err(VaultError::Item {
                        index,
                        problem: ItemProblem::UnknownClass,
                    });
                }
                if !caller.role.classes.allows(class) {
                    return Err(Denied::Class(index).into());
                }
            }
            match self.audit_state() {
                crate::store::AuditState::Ok => Ok(()),
                _ => Err(VaultError::Store(crate::store::StoreError::Audit(
                    "the audit trail is not appending".to_owned(),
                ))),
            }
        })();
        if let Err(error) = checked {
            let facts = FileRun {
                classes: columns.iter().map(|(_, class)| class.clone()).collect(),
                ..FileRun::default()
            };
            let record = Record {
                file: Some(facts),
                ..record
            };
            // Recorded now: a refused run never reaches `finish`.
            self.record_failure(record, &error).await;
            return Err(error);
        }
        Ok(FileTokenizeRun {
            vault: self,
            caller: caller.clone(),
            namespace: namespace.to_owned(),
            record,
        })
    }
}

impl FileTokenizeRun<'_> {
    /// The normalized form of one cell of `class`, or why the row holding it
    /// is rejected. `number`: the cell was a JSON number.
    pub fn check(&self, class: &str, value: &str, number: bool) -> Result<Pii, ItemProblem> {
        let spec = self
            .vault
            .namespace_spec(&self.namespace)
            .and_then(|ns| ns.classes.get(class))
            .ok_or(ItemProblem::UnknownClass)?;
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(ItemProblem::TooLong);
        }
        let normalized = if number {
            normalize::normalize_number(spec.normalize, value)
        } else {
            normalize::normalize(spec.normalize, value)
        }?;
        Ok(normalized)
    }

    /// Tokenizes one batch, committed (durably) before it answers, without
    /// a record of its own. Items should have passed [`check`](Self::check);
    /// one that fails still fails the batch with its index.
    pub async fn tokenize(&self, items: &[TokenizeItem]) -> Result<Vec<Tokenized>, VaultError> {
        self.vault
            .tokenize_audited(Vec::new(), &self.caller, &self.namespace, items, None)
            .await
    }

    /// Writes the run's one record: `facts` and how it ended. Answers once
    /// the record is durable.
    pub async fn finish(self, facts: FileRun, ended: Ended<'_>) -> Result<(), VaultError> {
        let record = Record {
            item_count: facts.rows + facts.rejected,
            file: Some(facts),
            ..self.record
        };
        let record = match ended {
            Ended::Completed => record,
            Ended::Failed(error) => {
                self.vault.record_failure(record, error).await;
                return Ok(());
            }
            Ended::Stopped(reason) => Record {
                outcome: Outcome::Error,
                ..record
            }
            .reason(reason),
        };
        Ok(self.vault.store.append_audit(vec![record]).await?)
    }
}

/// How a file run ended, for its record.
pub enum Ended<'e> {
    /// Every row was read and written.
    Completed,
    /// The engine failed or refused.
    Failed(&'e VaultError),
    /// Stopped for another reason: `interrupted`, `too_many_rejects`,
    /// `input_unreadable`, `output_failed`.
    Stopped(&'static str),
}
