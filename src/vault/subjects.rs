//! Per-subject operations of the engine: erasure (with a signed receipt) and
//! export. Each is a role operation and writes one audit record.

use serde_json::{json, Value};

use super::receipts::{self, Receipt};
use super::{normalize, ItemProblem, Uncorrectable, Vault, VaultError};
use crate::audit::{Action, Context};
use crate::crypto::seal::Binding;
use crate::crypto::tokens::TokenFormat;
use crate::pii::Pii;
use crate::policy::{Caller, Denied, Operation, Reveal};
use crate::store::{Correction, StoreError, SubjectOutcome, SubjectWrite};

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
            let hash = ns.subject.hash(subject.expose());
            // On the tombstone list before anything is deleted: if the
            // erasure does not commit, the next start applies it.
            if let Some(tombstones) = &self.tombstones {
                tombstones.add(namespace, &hash)?;
            }
            let write = SubjectWrite::Forget {
                namespace: namespace.to_owned(),
                subject: hash,
            };
            let SubjectOutcome::Erased(erasure) =
                self.store.subjects(write, vec![record.clone()]).await?
            else {
                return Err(StoreError::Write("a forget answered no erasure".into()).into());
            };
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
            let hash = ns.subject.hash(subject.expose());
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

    /// Rectification: replaces the value of one of `subject`'s tokens,
    /// keeping the token, so that the platform's copies stay valid. For a
    /// deterministic class the new value then maps to that token and the
    /// old value to nothing. Needs `subject_correct`; answers the class.
    pub async fn correct_subject(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        subject: &Pii,
        token: &str,
        value: &Pii,
    ) -> Result<String, VaultError> {
        let record = self.start_record(context, Action::SubjectCorrect, namespace);
        let asked = [token.to_owned()];
        let record = self.with_tokens(record, &asked, &self.existing(namespace, &asked).await);
        let result = self
            .correct_audited(record.clone(), caller, namespace, subject, token, value)
            .await;
        match &result {
            // The writer recorded a refused correction with its reason.
            Err(VaultError::Uncorrectable(Uncorrectable::Store(_))) => {}
            Err(error) => self.record_failure(record, error).await,
            Ok(_) => {}
        }
        result
    }

    async fn correct_audited(
        &self,
        record: crate::audit::Record,
        caller: &Caller,
        namespace: &str,
        subject: &Pii,
        token: &str,
        value: &Pii,
    ) -> Result<String, VaultError> {
        caller.role.check(Operation::SubjectCorrect, namespace)?;
        let ns = self.namespace(namespace)?;
        let store = self.store.clone();
        let (owned_namespace, owned_token) = (namespace.to_owned(), vec![token.to_owned()]);
        let stored =
            tokio::task::spawn_blocking(move || store.fetch(&owned_namespace, &owned_token))
                .await
                .map_err(|_| StoreError::ReadTask)??
                .pop()
                .flatten()
                .ok_or(VaultError::UnknownToken)?;
        let class_name = stored.class.clone();
        let class = ns
            .spec
            .classes
            .get(&class_name)
            .ok_or(VaultError::UnknownToken)?;
        let item_error = |problem: ItemProblem| VaultError::Item { index: 0, problem };
        if value.expose().chars().count() > super::MAX_VALUE_CHARS {
            return Err(VaultError::ValueTooLarge { index: 0 });
        }
        let normalized = normalize::normalize(class.normalize, value.expose())
            .map_err(|e| item_error(e.into()))?;
        if class.format == TokenFormat::KeepLast4 {
            let old = ns
                .unseal(namespace, token, &stored)
                .ok_or(VaultError::Integrity)?;
            let last4 = |text: &str| text.chars().rev().take(4).collect::<String>();
            if last4(&old) != last4(normalized.expose()) {
                return Err(VaultError::Uncorrectable(Uncorrectable::LastFourDiffer));
            }
        }
        // Held until the row is committed (see `Namespace::keys`).
        let keyset = ns.keys();
        let keys = keyset.writer();
        if class.deterministic && keyset.rotating() {
            // The store sees only the write version's index; during a
            // rotation the value may stand under an older one.
            let found = self
                .find_known(
                    namespace,
                    &keyset,
                    vec![super::Lookup {
                        position: 0,
                        class: &class_name,
                        value: normalized.expose(),
                        write_index: None,
                    }],
                )
                .await?;
            if found
                .into_iter()
                .any(|(_, found)| found.is_some_and(|found| found.token != token))
            {
                return Err(VaultError::Uncorrectable(Uncorrectable::Store(
                    crate::store::CorrectionRefused::ValueHasAnotherToken,
                )));
            }
        }
        let binding = Binding {
            namespace,
            class: &class_name,
            token,
        };
        let correction = Correction {
            namespace: namespace.to_owned(),
            subject: ns.subject.hash(subject.expose()),
            token: token.to_owned(),
            class: class_name.clone(),
            key_version: keys.sealer().version(),
            sealed: keys.sealer().seal(binding, normalized.expose().as_bytes()),
            blind_index: class
                .deterministic
                .then(|| keys.blind_index(&class_name, normalized.expose())),
        };
        match self
            .store
            .subjects(SubjectWrite::Correct(correction), vec![record])
            .await?
        {
            SubjectOutcome::Corrected(Ok(())) => Ok(class_name),
            SubjectOutcome::Corrected(Err(refused)) => {
                Err(VaultError::Uncorrectable(refused.into()))
            }
            _ => Err(StoreError::Write("a correction answered something else".into()).into()),
        }
    }

    /// Erases again every subject on the tombstone list that still has
    /// tokens (a restored copy older than its erasure). Each re-applied
    /// erasure is recorded; answers the tokens deleted.
    pub async fn apply_tombstones(&self) -> Result<u64, VaultError> {
        let Some(tombstones) = &self.tombstones else {
            return Ok(0);
        };
        let context = Context {
            request_id: format!("sys_{}", hex::encode(crate::crypto::random_bytes::<12>())),
            actor: "system:tombstones".to_owned(),
            auth: "system",
            source: None,
            route: "start".to_owned(),
        };
        let mut deleted = 0;
        for (namespace, hash) in tombstones.list()? {
            if !self.namespaces.contains_key(&namespace) {
                continue;
            }
            let store = self.store.clone();
            let owned_namespace = namespace.clone();
            let (tokens, _) = tokio::task::spawn_blocking(move || {
                store.subject_holdings(&owned_namespace, &hash)
            })
            .await
            .map_err(|_| StoreError::ReadTask)??;
            if tokens.is_empty() {
                continue;
            }
            let record = context
                .record(Action::SubjectForget, crate::audit::Outcome::Ok)
                .namespace(&namespace)
                .reason("tombstone_reapplied");
            let write = SubjectWrite::Forget {
                namespace: namespace.clone(),
                subject: hash,
            };
            if let SubjectOutcome::Erased(erasure) =
                self.store.subjects(write, vec![record]).await?
            {
                deleted += erasure.deleted_total();
            }
        }
        Ok(deleted)
    }

    /// The published half of the receipt key.
    pub fn receipt_public_key(&self) -> Value {
        receipts::public_key(&self.receipt_key)
    }
}
