//! Per-subject operations of the engine: erasure (with a signed receipt) and
//! export. Each is a role operation and writes one audit record.

use serde_json::{json, Value};

use super::receipts::{self, Receipt};
use super::{Vault, VaultError};
use crate::audit::{Action, Context};
use crate::pii::Pii;
use crate::policy::{Caller, Denied, Operation, Reveal};
use crate::store::{StoreError, SubjectWrite};

/// Everything the vault holds for one subject.
pub struct SubjectExport {
    /// `(token, class, value)` of every token linked to the subject, by
    /// token.
    pub values: Vec<(String, String, Pii)>,
    /// The subject's consent changes, oldest first.
    pub consent: Vec<Value>,
}

impl Vault {
    /// Right to erasure: deletes every token linked only to `subject` with
    /// its sealed value, unlinks the subject from tokens other subjects
    /// share, and answers a signed receipt. Needs `subject_forget`.
    pub async fn forget_subject(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        subject: &Pii,
    ) -> Result<Receipt, VaultError> {
        let record = self.start_record(context, Action::SubjectForget, namespace);
        let result = async {
            caller.role.check(Operation::SubjectForget, namespace)?;
            let ns = self.namespace(namespace)?;
            let hash = ns.current_keys().subject_hash(subject.expose());
            let write = SubjectWrite::Forget {
                namespace: namespace.to_owned(),
                subject: hash,
            };
            let erasure = self.store.subjects(write, vec![record.clone()]).await?;
            Ok(receipts::erasure(
                &self.receipt_key,
                namespace,
                &hash,
                &erasure,
                crate::audit::now_us(),
            ))
        }
        .await;
        if let Err(error) = &result {
            self.record_failure(record, error).await;
        }
        result
    }

    /// Right of access: every value held for `subject`, with its token and
    /// class, and the subject's consent history. Needs `subject_export` and
    /// plain reveal; recorded as a reveal of every token listed.
    pub async fn export_subject(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        subject: &Pii,
    ) -> Result<SubjectExport, VaultError> {
        let mut record = self.start_record(context, Action::SubjectExport, namespace);
        let result = async {
            caller.role.check(Operation::SubjectExport, namespace)?;
            if caller.role.reveal != Reveal::Plain {
                return Err(VaultError::Denied(Denied::Operation));
            }
            let ns = self.namespace(namespace)?;
            let hash = ns.current_keys().subject_hash(subject.expose());
            let store = self.store.clone();
            let owned_namespace = namespace.to_owned();
            let (values, consent) = tokio::task::spawn_blocking(move || {
                let (tokens, consent) = store.subject_holdings(&owned_namespace, &hash)?;
                let stored = store.fetch(&owned_namespace, &tokens)?;
                Ok::<_, StoreError>((tokens.into_iter().zip(stored).collect::<Vec<_>>(), consent))
            })
            .await
            .map_err(|_| StoreError::ReadTask)??;
            let mut export = SubjectExport {
                values: Vec::with_capacity(values.len()),
                consent: consent
                    .into_iter()
                    .map(|event| {
                        json!({
                            "purpose": event.purpose,
                            "withdrawn": event.withdrawn,
                            "changed_at": crate::audit::format_time(event.changed_at),
                            "source": event.source,
                        })
                    })
                    .collect(),
            };
            for (token, stored) in values {
                let Some(stored) = stored else { continue };
                // One value that fails authentication fails the export:
                // a partial answer would pass for the whole.
                let Some(plain) = ns.unseal(namespace, &token, &stored) else {
                    return Err(VaultError::Integrity);
                };
                export.values.push((token, stored.class, Pii::new(plain)));
            }
            Ok(export)
        }
        .await;
        match result {
            Ok(export) => {
                record.tokens = export.values.iter().map(|(t, _, _)| t.clone()).collect();
                record.item_count = export.values.len() as u64;
                // Fail closed: nothing is revealed unless the reveal is on
                // the record.
                self.store.append_audit(vec![record]).await?;
                Ok(export)
            }
            Err(error) => {
                self.record_failure(record, &error).await;
                Err(error)
            }
        }
    }

    /// The published half of the receipt key.
    pub fn receipt_public_key(&self) -> Value {
        receipts::public_key(&self.receipt_key)
    }
}
