//! A forward through an egress route, as the engine sees it: the values
//! the route found to tokenize, or the reason the request was refused
//! before that. Either way the engine writes exactly one audit record, a
//! `forward`, and writes it before the caller may send anything upstream.

use super::{TokenizeItem, Tokenized, Vault, VaultError};
use crate::audit::{Action, Context, Outcome};
use crate::policy::Caller;

/// What a route asks of the engine for one request it may forward.
#[derive(Debug)]
pub struct ForwardPlan {
    /// The values to tokenize, in the order the route places them.
    pub items: Vec<TokenizeItem>,
    /// Why the forward goes out noted (`unselected_pii_reported`), if it is.
    pub note: Option<&'static str>,
    /// The largest token the platform takes, in bytes.
    pub max_token_bytes: usize,
}

/// A refusal made before the engine was asked: what to record of it.
pub trait AuditedRefusal {
    /// The record's outcome and reason (a fixed code, never caller text).
    fn audit(&self) -> (Outcome, &'static str);
}

/// Why a forward may not go out.
#[derive(Debug)]
pub enum ForwardError<R> {
    /// The route refused the request (recorded as such).
    Refused(R),
    /// The engine refused or failed (recorded as such).
    Vault(VaultError),
}

impl Vault {
    /// Records one forward through the route of `context`, to `namespace`:
    /// for a plan, tokenizes its items (the record lists the tokens and is
    /// committed with them) and answers the tokens in order; for a refusal,
    /// records it and answers it back. Exactly one record, whatever the
    /// outcome; nothing may be forwarded unless this answers `Ok`.
    pub async fn forward<R: AuditedRefusal>(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        plan: Result<ForwardPlan, R>,
    ) -> Result<Vec<String>, ForwardError<R>> {
        let record = self.start_record(context, Action::Forward, namespace);
        let plan = match plan {
            Ok(plan) => plan,
            Err(refusal) => {
                let (outcome, reason) = refusal.audit();
                let record = crate::audit::Record { outcome, ..record }.reason(reason);
                if let Err(error) = self.store.append_audit(vec![record]).await {
                    tracing::error!(%error, "could not record a refused forward");
                }
                return Err(ForwardError::Refused(refusal));
            }
        };
        let record = match plan.note {
            Some(note) => record.reason(note),
            None => record,
        };
        if plan.items.is_empty() {
            self.store
                .append_audit(vec![record])
                .await
                .map_err(|error| ForwardError::Vault(error.into()))?;
            return Ok(Vec::new());
        }
        let tokens = self
            .tokenize_recorded(
                record,
                caller,
                namespace,
                plan.items,
                Some(plan.max_token_bytes),
            )
            .await
            .map_err(ForwardError::Vault)?;
        Ok(tokens
            .into_iter()
            .map(|Tokenized { token, .. }| token)
            .collect())
    }
}
