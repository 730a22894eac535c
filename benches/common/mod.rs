//! What the engine benchmarks share.

use std::sync::Arc;

use tokenvault::audit::Context;
use tokenvault::policy::Caller;
use tokenvault::vault::Vault;

/// Detokenizes each group of batches on a task of its own, against the
/// vault `vault_of(group)` picks, for purpose `bench` in `namespace`, and
/// checks that every token got an answer.
pub async fn detokenize_groups(
    groups: Vec<Vec<Vec<String>>>,
    vault_of: impl Fn(usize) -> Arc<Vault>,
    caller: &Caller,
    namespace: &str,
) {
    let tasks: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(group, batches)| {
            let (vault, caller, namespace) =
                (vault_of(group), caller.clone(), namespace.to_owned());
            tokio::spawn(async move {
                let context = Context::cli("bench");
                for batch in batches {
                    let asked = batch.len();
                    let answers = vault
                        .detokenize(&context, &caller, &namespace, "bench", batch)
                        .await
                        .unwrap();
                    assert_eq!(answers.len(), asked);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// One namespace, `name`, with a deterministic email class `email`.
pub fn email_namespace(
    name: &str,
) -> std::collections::BTreeMap<String, tokenvault::config::NamespaceSpec> {
    std::collections::BTreeMap::from([(
        name.to_owned(),
        tokenvault::config::NamespaceSpec {
            token_domain: "tokens.invalid".to_owned(),
            classes: std::collections::BTreeMap::from([(
                "email".to_owned(),
                tokenvault::config::ClassSpec {
                    normalize: tokenvault::normalize::Normalization::Email,
                    format: tokenvault::crypto::tokens::TokenFormat::Email,
                    deterministic: true,
                    token_prefixes: Vec::new(),
                    retain_days: None,
                },
            )]),
        },
    )])
}

/// `values` as items of the class `email`.
pub fn email_items(values: impl Iterator<Item = String>) -> Vec<tokenvault::vault::TokenizeItem> {
    values
        .map(|value| tokenvault::vault::TokenizeItem {
            class: "email".to_owned(),
            value: tokenvault::pii::Pii::new(value),
            subject: None,
            number: false,
        })
        .collect()
}

/// `VmRSS` and `VmHWM` of this process, in MiB.
#[allow(dead_code)] // not every benchmark reports memory
pub fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}
