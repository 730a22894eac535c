//! The engine's cache of known values (blind index to token) under races
//! with erasure: through the engine over a real SQLite store in a temporary
//! directory, on a multi-threaded runtime, so that a forget and a tokenize
//! of the same value really overlap.
//!
//! What must hold, whatever the interleaving:
//! - a token a caller was given detokenizes, unless it was erased after;
//! - once an erasure is acknowledged, its value is never answered with the
//!   erased token again.

use std::sync::Arc;

use crate::support::{email_class, engine_caller, namespace_of};
use tokenvault::audit::Context;
use tokenvault::crypto::wrapping::Keyring;
use tokenvault::pii::Pii;
use tokenvault::policy::{Caller, Operation};
use tokenvault::vault::{Detokenized, TokenizeItem, Vault};

/// A vault on SQLite with one deterministic email class, and a caller who
/// may do everything.
fn engine(dir: &std::path::Path) -> (Arc<Vault>, Caller) {
    let keyring = Keyring::ephemeral();
    let store = tokenvault::store::Store::open(
        &dir.join("vault.db"),
        &dir.join("audit.db"),
        keyring.audit_key(),
        8,
    )
    .unwrap();
    let namespaces = namespace_of("retail", &[("email", email_class(None))]);
    let vault = Vault::new(Arc::new(store), &keyring, &namespaces);
    let caller = engine_caller(
        "test",
        &[
            Operation::Tokenize,
            Operation::Detokenize,
            Operation::Forget,
            Operation::SubjectForget,
        ],
    );
    (Arc::new(vault), caller)
}

async fn tokenize(vault: &Vault, caller: &Caller, value: &str, subject: Option<&str>) -> String {
    let item = TokenizeItem {
        class: "email".to_owned(),
        value: Pii::new(value.to_owned()),
        subject: subject.map(|s| Pii::new(s.to_owned())),
        number: false,
    };
    vault
        .tokenize(&Context::cli("test"), caller, "retail", vec![item])
        .await
        .unwrap()
        .remove(0)
        .token
}

async fn reveals(vault: &Vault, caller: &Caller, token: &str) -> bool {
    let answers = vault
        .detokenize(
            &Context::cli("test"),
            caller,
            "retail",
            "support",
            vec![token.to_owned()],
        )
        .await
        .unwrap();
    matches!(answers[0], Detokenized::Value { .. })
}

/// How a race erases the value.
#[derive(Clone, Copy)]
enum Erase {
    Token,
    Subject,
}

/// `rounds` rounds on each of `lanes` values: cache the value's token, then
/// erase it while the same value is tokenized again, then check.
fn race(erase: Erase, lanes: usize, rounds: usize) {
    // The race is between the cache and the store's commits, not the disk:
    // on a memory file system (where there is one) a commit's fsync costs
    // nothing, and the 10,000 rounds take a fraction of the time.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let (vault, caller) = engine(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let (mut reused, mut fresh) = (0usize, 0usize);
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for lane in 0..lanes {
            let (vault, caller) = (vault.clone(), caller.clone());
            tasks.push(tokio::spawn(async move {
                let value = format!("lane{lane}@example.com");
                let subject = format!("customer-{lane}");
                let (mut reused, mut fresh) = (0usize, 0usize);
                for round in 0..rounds {
                    let before = tokenize(&vault, &caller, &value, Some(&subject)).await;
                    // Twice: the second answer comes from the cache.
                    assert_eq!(
                        tokenize(&vault, &caller, &value, Some(&subject)).await,
                        before
                    );
                    let erasing = {
                        let (vault, caller, subject) =
                            (vault.clone(), caller.clone(), subject.clone());
                        let token = before.clone();
                        tokio::spawn(async move {
                            let context = Context::cli("test");
                            match erase {
                                Erase::Token => {
                                    assert!(vault
                                        .forget(&context, &caller, "retail", &token)
                                        .await
                                        .unwrap());
                                }
                                Erase::Subject => {
                                    vault
                                        .forget_subject(
                                            &context,
                                            &caller,
                                            "retail",
                                            &Pii::new(subject),
                                        )
                                        .await
                                        .unwrap();
                                }
                            }
                        })
                    };
                    // Tokenize the value again and again while the erasure
                    // runs: once an answer is not the old token, the old
                    // token never comes back.
                    let mut during = Vec::new();
                    while !erasing.is_finished() {
                        during.push(tokenize(&vault, &caller, &value, None).await);
                    }
                    erasing.await.unwrap();
                    // Acknowledged: the erased token is never answered again,
                    // and what is answered now detokenizes.
                    let after = tokenize(&vault, &caller, &value, None).await;
                    assert_ne!(after, before, "round {round}: the erased token came back");
                    assert!(
                        reveals(&vault, &caller, &after).await,
                        "round {round}: a token just given does not detokenize"
                    );
                    let old = during.iter().take_while(|t| **t == before).count();
                    reused += old;
                    fresh += during.len() - old;
                    for token in &during[old..] {
                        // Given after the erasure took effect: the value's
                        // one live token.
                        assert_eq!(token, &after, "round {round}: the erased token came back, or one value got two live tokens");
                    }
                    // The next round starts from nothing stored.
                    vault
                        .forget(&Context::cli("test"), &caller, "retail", &after)
                        .await
                        .unwrap();
                }
                (reused, fresh)
            }));
        }
        for task in tasks {
            let (old, new) = task.await.unwrap();
            reused += old;
            fresh += new;
        }
    });
    println!(
        "{} rounds: tokenizes racing the erasure got the old token {reused} times, the new one {fresh} times",
        lanes * rounds
    );
    // The race really happened: answers on both sides of erasures.
    assert!(
        reused > 0 && fresh > 0,
        "no overlap: {reused} old, {fresh} new"
    );
}

#[test]
pub fn forget_racing_tokenize_of_the_same_value_never_answers_an_erased_token() {
    race(Erase::Token, 4, 2_500);
}

#[test]
pub fn subject_erasure_racing_tokenize_never_answers_an_erased_token() {
    race(Erase::Subject, 4, 250);
}

/// The budgets' windows are the engine clock's minutes: a test crosses a
/// minute on purpose, never by accident (the HTTP test of budgets runs
/// inside one minute only by luck of the calendar).
#[test]
fn budget_windows_follow_the_engine_clock() {
    use tokenvault::policy::{Budget, ClientSpec};
    use tokenvault::vault::clock::ManualClock;

    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::ephemeral();
    let store = tokenvault::store::Store::open(
        &dir.path().join("vault.db"),
        &dir.path().join("audit.db"),
        keyring.audit_key(),
        8,
    )
    .unwrap();
    let namespaces = namespace_of("retail", &[("email", email_class(None))]);
    let mut vault = Vault::new(Arc::new(store), &keyring, &namespaces);
    let clock = Arc::new(ManualClock::new());
    // The last second of a minute: the next second is a new window.
    clock.set_secs(1_800_000_000 / 60 * 60 + 59);
    vault.set_clock(clock.clone());
    let worker = ClientSpec {
        role: "worker".to_owned(),
        api_key_hash: None,
        cert_identity: None,
        allow_from: Vec::new(),
        budget: Budget {
            per_minute: Some(5),
            per_day: None,
        },
    };
    vault.set_budgets(&std::collections::BTreeMap::from([(
        "worker".to_owned(),
        worker,
    )]));
    let admin = engine_caller("admin", &[Operation::Tokenize]);
    let worker = engine_caller("worker", &[Operation::Detokenize]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut tokens = Vec::new();
        for i in 0..6 {
            tokens.push(tokenize(&vault, &admin, &format!("budget{i}@example.com"), None).await);
        }
        let context = Context::cli("test");
        let reveal = |tokens: &[String]| {
            vault.detokenize(&context, &worker, "retail", "sms_delivery", tokens.to_vec())
        };
        assert!(reveal(&tokens[..4]).await.is_ok());
        let refused = reveal(&tokens[4..6]).await.err().unwrap();
        assert_eq!(
            refused.to_string(),
            tokenvault::vault::VaultError::BudgetExceeded.to_string()
        );
        assert!(reveal(&tokens[4..5]).await.is_ok(), "one more fits the 5");
        assert!(reveal(&tokens[5..6]).await.is_err());
        // One second on: a new minute, a new budget.
        clock.advance_secs(1);
        assert!(reveal(&tokens[..5]).await.is_ok());
        assert!(reveal(&tokens[5..6]).await.is_err());
    });
}
