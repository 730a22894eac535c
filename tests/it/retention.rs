//! Retention, through the engine over a real store in a temporary
//! directory, with a clock the test moves (no sleeps): a class with
//! `retain_days` loses exactly the rows unused for that long.

use std::sync::Arc;

use crate::support::{email_class, engine_caller, namespace_of, test_store};
use tokenvault::audit::Context;
use tokenvault::crypto::wrapping::Keyring;
use tokenvault::pii::Pii;
use tokenvault::policy::Operation;
use tokenvault::vault::clock::ManualClock;
use tokenvault::vault::{Detokenized, TokenizeItem, Vault};

#[test]
pub fn a_retention_sweep_deletes_exactly_the_rows_unused_for_retain_days() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::ephemeral();
    let (store, _cluster) = test_store(dir.path(), keyring.audit_key());
    let store = Arc::new(store);
    let namespaces = namespace_of(
        "retail",
        &[("email", email_class(Some(1))), ("kept", email_class(None))],
    );
    let clock = Arc::new(ManualClock::new());
    let mut vault = Vault::new(store.clone(), &keyring, &namespaces);
    vault.set_clock(clock.clone());
    let caller = engine_caller("test", &[Operation::Tokenize, Operation::Detokenize]);
    let context = Context::cli("test");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokenize = |class: &str, value: &str| -> String {
        let item = TokenizeItem {
            class: class.to_owned(),
            value: Pii::new(value.to_owned()),
            subject: None,
            number: false,
        };
        runtime
            .block_on(vault.tokenize(&context, &caller, "retail", vec![item]))
            .unwrap()
            .remove(0)
            .token
    };
    let revealed = |token: &str| -> bool {
        let answers = runtime
            .block_on(vault.detokenize(
                &context,
                &caller,
                "retail",
                "support",
                vec![token.to_owned()],
            ))
            .unwrap();
        matches!(answers[0], Detokenized::Value { .. })
    };
    let sweep = || -> u64 {
        runtime
            .block_on(vault.sweep_retention())
            .unwrap()
            .iter()
            .map(|s| s.deleted)
            .sum()
    };

    // Day 0: four rows.
    let idle = tokenize("email", "idle@example.com");
    let revealed_later = tokenize("email", "revealed@example.com");
    let tokenized_later = tokenize("email", "tokenized@example.com");
    let unlimited = tokenize("kept", "kept@example.com");
    assert_eq!(sweep(), 0, "nothing is a day old yet");

    // Day 1: two of them used again.
    clock.advance_days(1);
    assert!(revealed(&revealed_later));
    assert_eq!(tokenize("email", "tokenized@example.com"), tokenized_later);
    assert_eq!(
        sweep(),
        0,
        "unused for one day is not more than retain_days"
    );

    // Day 2: only the row unused since day 0 goes.
    clock.advance_days(1);
    assert_eq!(sweep(), 1);
    assert!(!revealed(&idle), "an erased token answers not_found");
    assert!(revealed(&revealed_later));
    assert!(revealed(&tokenized_later));
    assert!(revealed(&unlimited));
    // A value tokenized again after its row expired gets a new token.
    assert_ne!(tokenize("email", "idle@example.com"), idle);

    // Day 30: the class without retain_days keeps its row.
    clock.advance_days(28);
    assert_eq!(sweep(), 3, "every email row is idle by now, none of `kept`");
    assert!(revealed(&unlimited));
    // Every sweep is on the record, with its count.
    let filter = tokenvault::audit::Filter {
        action: Some("retention_sweep".to_owned()),
        ..Default::default()
    };
    let counts: Vec<u64> = store
        .query_audit(&filter, 0, 100)
        .unwrap()
        .iter()
        .map(|stored| stored.record.item_count)
        .collect();
    assert_eq!(counts, [0, 0, 1, 3]);
    store.shutdown();
}
