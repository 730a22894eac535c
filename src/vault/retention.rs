//! Retention sweeps: rows of a class with `retain_days` that were not used
//! (tokenized or revealed) for that many days are deleted, in small
//! transactions, each with an audit record that counts what it deleted.

use super::{Vault, VaultError};
use crate::audit::{Action, Context, Outcome};
use crate::store::Sweep;

/// Rows deleted per transaction: short, so that requests wait little.
pub const SWEEP_BATCH: u32 = 500;

/// How often the server sweeps.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a sweep deleted in one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Namespace.
    pub namespace: String,
    /// Class.
    pub class: String,
    /// Tokens deleted, with their values.
    pub deleted: u64,
}

impl Vault {
    /// Sweeps every class that sets `retain_days`, by this vault's clock.
    /// A token then answers `not_found`, as after `forget`.
    pub async fn sweep_retention(&self) -> Result<Vec<Swept>, VaultError> {
        let today = self.clock.today();
        let context = Context {
            request_id: format!("sys_{}", hex::encode(crate::crypto::random_bytes::<12>())),
            actor: "system:retention".to_owned(),
            auth: "system",
            source: None,
            route: "retention".to_owned(),
        };
        let mut swept = Vec::new();
        for (namespace, ns) in &self.namespaces {
            for (class, spec) in &ns.spec.classes {
                let Some(days) = spec.retain_days else {
                    continue;
                };
                let before = today - i64::from(days);
                let mut deleted = 0;
                let mut cursor = String::new();
                loop {
                    // Candidates are read on a read connection, in token
                    // order from the cursor (one pass over the table); the
                    // writer deletes those still idle, with the record.
                    let store = self.store.clone();
                    let (owned_namespace, owned_class, after) =
                        (namespace.clone(), class.clone(), cursor.clone());
                    let idle = tokio::task::spawn_blocking(move || {
                        store.idle_tokens(
                            &owned_namespace,
                            &owned_class,
                            before,
                            &after,
                            SWEEP_BATCH,
                        )
                    })
                    .await
                    .map_err(|_| crate::store::StoreError::ReadTask)??;
                    let last_batch = idle.len() < SWEEP_BATCH as usize;
                    if let Some(last) = idle.last() {
                        cursor = last.clone();
                    }
                    // One record per batch, and one for a sweep that found
                    // nothing: the trail shows that retention ran.
                    if !idle.is_empty() || deleted == 0 {
                        let record = context
                            .record(Action::RetentionSweep, Outcome::Ok)
                            .namespace(namespace)
                            .reason("retention_expired");
                        let sweep = Sweep {
                            namespace: namespace.clone(),
                            before,
                            tokens: idle,
                        };
                        let batch = self.store.sweep(sweep, vec![record]).await?.len() as u64;
                        deleted += batch;
                        crate::metrics::retention_deleted(namespace, class, batch);
                    }
                    if last_batch {
                        break;
                    }
                }
                swept.push(Swept {
                    namespace: namespace.clone(),
                    class: class.clone(),
                    deleted,
                });
            }
        }
        Ok(swept)
    }
}
