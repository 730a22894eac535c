//! The PostgreSQL store against a real, throwaway cluster: `storage
//! check`, migrations applied once by nodes starting together, the
//! insert-or-read by which two nodes mint one token per value, TLS verified
//! against the configured CA, and the refusal to serve until the store is
//! complete.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};

use tokenvault::audit::{Action, Context, Outcome, Record};
use tokenvault::config::{DatabaseUrl, PostgresSettings, SchemaName, SecretRef};
use tokenvault::crypto::keys::{AuditKey, MasterKey};
use tokenvault::store::activation::{ActivationWrite, ConsentEvent, ConsentTarget};
use tokenvault::store::pg::PgStore;
use tokenvault::store::{InsertOutcome, NewRow};

use crate::pg_cluster::{PgCluster, ServerTls};
use crate::support::*;
use std::os::unix::fs::PermissionsExt;

/// A configuration whose `[storage]` uses `cluster` with `extra` lines.
fn postgres_setup(cluster: &PgCluster, extra: &str) -> Setup {
    let setup = Setup::configure("", STANDARD);
    let password = cluster.password_file(setup.dir.path());
    let text = fs::read_to_string(&setup.config).unwrap().replace(
        "[storage]\n",
        &format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n{extra}\n",
            cluster.url(),
            password.display()
        ),
    );
    fs::write(&setup.config, text).unwrap();
    setup
}

fn settings(cluster: &PgCluster, schema: &str, ca_file: Option<&Path>) -> PostgresSettings {
    PostgresSettings {
        url: DatabaseUrl::parse(&cluster.url()).unwrap(),
        password: Some(SecretRef::File(cluster.password_file(cluster.dir()))),
        pool_size: 4,
        statement_timeout: std::time::Duration::from_secs(5),
        schema: SchemaName::parse(schema).unwrap(),
        ca_file: ca_file.map(Path::to_owned),
    }
}

#[test]
fn storage_check_migrates_once_reports_versions_and_sqlite_only_commands_refuse() {
    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "schema = \"vault_a\"");
    let out = setup.run(&["config", "check", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let out = setup.run(&["storage", "check", "--config"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("schema: audit 4, keyring 1, vault 9 (up to date)"),
            "{stdout}"
        );
        assert!(
            stdout.contains("plain TCP on this machine's loopback"),
            "{stdout}"
        );
    }
    let versions = cluster.psql_in(
        "vault",
        "SELECT component || '=' || version FROM vault_a.schema_versions ORDER BY component",
    );
    assert_eq!(versions, "audit=4\nkeyring=1\nvault=9\n");
    let tables = cluster.psql_in(
        "vault",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
         WHERE table_schema = 'vault_a'",
    );
    assert_eq!(
        tables.trim(),
        "audit_head,budget_spent,callback_message_ids,consent_events,keyring,namespace_keys,\
         records,schema_versions,subject_links,tokens"
    );

    // A wrong password is refused, and the password is not repeated.
    fs::write(setup.dir.path().join("db-password"), "not the password").unwrap();
    let out = setup.run(&["storage", "check", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("not the password"), "{stderr}");

    // `backup`, which copies the data directory's SQLite files, refuses
    // postgres (exit 78) and names the database's own tools, rather than
    // answer from files no node writes.
    let out_file = setup.dir.path().join("refused.out");
    let out = setup.run(&[
        "backup",
        "create",
        "--out",
        out_file.to_str().unwrap(),
        "--config",
    ]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("storage.backend") && stderr.contains("pg_dump"),
        "{stderr}"
    );
    assert!(!out_file.exists());
    assert!(!setup.data_dir.join("vault.db").exists());
}

/// A newer build's schema is refused, not altered.
#[test]
fn nodes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let cluster = PgCluster::start(None);
    for round in 0..4 {
        let schema = format!("race_{round}");
        let barrier = Arc::new(Barrier::new(3));
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                let settings = settings(&cluster, &schema, None);
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let store = PgStore::connect(&settings).unwrap();
                    barrier.wait();
                    store.migrate().unwrap()
                })
            })
            .collect();
        for node in nodes {
            let versions = node.join().unwrap();
            assert_eq!(versions["vault"], 9);
            assert_eq!(versions["audit"], 4);
        }
    }
    let store = PgStore::connect(&settings(&cluster, "race_0", None)).unwrap();
    cluster.psql_in(
        "vault",
        "UPDATE race_0.schema_versions SET version = 10 WHERE component = 'vault'",
    );
    let error = store.migrate().unwrap_err().to_string();
    assert!(error.contains("newer than this build's 9"), "{error}");
}

fn row(token: String, index: [u8; 32], subject: Option<[u8; 32]>) -> NewRow {
    NewRow {
        token,
        class: "email".to_owned(),
        key_version: 1,
        sealed: vec![7; 40],
        blind_index: Some(index),
        subject_hash: subject,
        used_day: 20_000,
    }
}

fn index_of(value: usize) -> [u8; 32] {
    let mut index = [0u8; 32];
    index[..8].copy_from_slice(&(value as u64).to_be_bytes());
    index
}

fn record(node: &str) -> Record {
    Context::cli(node).record(Action::Tokenize, Outcome::Ok)
}

/// Both nodes hold the same master key, so the same audit key.
fn audit_key() -> Arc<AuditKey> {
    Arc::new(master().audit_key())
}

fn master() -> &'static MasterKey {
    static MASTER: std::sync::OnceLock<MasterKey> = std::sync::OnceLock::new();
    MASTER.get_or_init(|| MasterKey::generate(1))
}

#[test]
fn two_nodes_storing_the_same_new_values_at_once_return_the_same_tokens_in_one_chain() {
    let cluster = PgCluster::start(None);
    PgStore::connect(&settings(&cluster, "tokenvault", None))
        .unwrap()
        .migrate()
        .unwrap();
    const VALUES: usize = 1_000;
    const BATCH: usize = 10;
    let barrier = Arc::new(Barrier::new(2));
    let nodes: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|node| {
            let settings = settings(&cluster, "tokenvault", None);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let store = PgStore::connect(&settings).unwrap();
                let mut answered = Vec::with_capacity(VALUES);
                for start in (0..VALUES).step_by(BATCH) {
                    // Each node minted its own token for the same values.
                    let rows: Vec<NewRow> = (start..start + BATCH)
                        .map(|v| {
                            row(
                                format!("{node}-{v}"),
                                index_of(v),
                                Some([node.as_bytes()[0]; 32]),
                            )
                        })
                        .collect();
                    barrier.wait();
                    let outcomes = store
                        .store(&audit_key(), "retail", &rows, vec![record(node)])
                        .unwrap();
                    for (row, outcome) in rows.iter().zip(outcomes) {
                        answered.push(match outcome {
                            InsertOutcome::Inserted => (row.token.clone(), true),
                            InsertOutcome::Existing(token) => (token, false),
                            InsertOutcome::TokenTaken => panic!("token {} taken", row.token),
                        });
                    }
                }
                answered
            })
        })
        .collect();
    let answers: Vec<Vec<(String, bool)>> = nodes.into_iter().map(|n| n.join().unwrap()).collect();
    let mut inserted_by_a = 0;
    for (value, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(
            a.0, b.0,
            "value {value}: the nodes answered different tokens"
        );
        assert!(a.1 != b.1, "value {value}: exactly one node inserts");
        inserted_by_a += usize::from(a.1);
    }
    let count = cluster.psql_in("vault", "SELECT count(*) FROM tokenvault.tokens");
    assert_eq!(count.trim(), VALUES.to_string());
    // Both subjects are linked to the one stored token.
    let links = cluster.psql_in("vault", "SELECT count(*) FROM tokenvault.subject_links");
    assert_eq!(links.trim(), (2 * VALUES).to_string());
    eprintln!("node a inserted {inserted_by_a} of {VALUES}, node b the rest");

    // One chain: a record per batch per node, each naming its tokens.
    let store = PgStore::connect(&settings(&cluster, "tokenvault", None)).unwrap();
    let verified = store.verify_audit(&audit_key()).unwrap();
    assert_eq!(verified.count, 2 * (VALUES / BATCH) as u64);
    assert_eq!(verified.head.unwrap().seq, verified.count);

    // A token already taken by another value is reported, not overwritten.
    let taken = store
        .store(
            &audit_key(),
            "retail",
            &[row(answers[0][0].0.clone(), index_of(VALUES + 1), None)],
            vec![record("a")],
        )
        .unwrap();
    assert_eq!(taken, [InsertOutcome::TokenTaken]);
    let (version, sealed) = store
        .fetch_sealed("retail", &answers[0][0].0)
        .unwrap()
        .unwrap();
    assert_eq!((version, sealed), (1, vec![7; 40]));
}

#[test]
fn tls_is_verified_against_the_configured_ca_and_a_stranger_is_refused() {
    let tls = ServerTls::generate();
    let cluster = PgCluster::start(Some(&tls));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("db-ca.pem");
    fs::write(&ca, &tls.cert_pem).unwrap();
    let store = PgStore::connect(&settings(&cluster, "tokenvault", Some(&ca))).unwrap();
    let report = store.check().unwrap();
    assert!(report.tls);
    let ssl = store
        .borrow()
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get::<_, bool>(0);
    assert!(ssl, "the session is encrypted");

    // The CLI says so.
    let setup = postgres_setup(&cluster, &format!("ca_file = \"{}\"", ca.display()));
    let out = setup.run(&["storage", "check", "--config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("connection: TLS, certificate verified for 127.0.0.1"),
        "{stdout}"
    );

    // A server whose certificate another CA signed is refused.
    let stranger = dir.path().join("other-ca.pem");
    fs::write(&stranger, ServerTls::generate().cert_pem).unwrap();
    let error = PgStore::connect(&settings(&cluster, "tokenvault", Some(&stranger)))
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("certificate"), "{error}");
}

/// On PostgreSQL too, `verify` catches an edit, a deletion, a reorder and a
/// cut tail, and after a cut nothing more is appended (so one more write
/// does not make the cut disappear).
#[test]
fn the_chain_in_postgres_catches_edits_deletions_reorders_and_a_cut_tail() {
    let cluster = PgCluster::start(None);
    let store = PgStore::connect(&settings(&cluster, "tokenvault", None)).unwrap();
    store.migrate().unwrap();
    let key = audit_key();
    let fresh = |store: &PgStore| {
        cluster.psql_in(
            "vault",
            "TRUNCATE tokenvault.records; UPDATE tokenvault.audit_head SET seq = 0, mac = '\\x'",
        );
        for n in 0..10 {
            store
                .append_audit(&key, &[record(&format!("node{n}"))])
                .unwrap();
        }
        assert_eq!(store.verify_audit(&key).unwrap().count, 10);
    };
    let broken_at = |store: &PgStore| {
        let broken = store.verify_audit(&key).unwrap_err();
        (broken.seq, broken.reason)
    };

    fresh(&store);
    cluster.psql_in(
        "vault",
        "UPDATE tokenvault.records SET actor = 'someone else' WHERE seq = 4",
    );
    let (seq, reason) = broken_at(&store);
    assert_eq!(seq, 4, "{reason}");

    fresh(&store);
    cluster.psql_in("vault", "DELETE FROM tokenvault.records WHERE seq = 6");
    let (seq, reason) = broken_at(&store);
    assert_eq!(seq, 6, "{reason}");
    assert!(reason.contains("missing"), "{reason}");

    fresh(&store);
    cluster.psql_in(
        "vault",
        "UPDATE tokenvault.records SET seq = -1 WHERE seq = 2; \
         UPDATE tokenvault.records SET seq = 2 WHERE seq = 3; \
         UPDATE tokenvault.records SET seq = 3 WHERE seq = -1",
    );
    let (seq, reason) = broken_at(&store);
    assert_eq!(seq, 2, "{reason}");

    fresh(&store);
    cluster.psql_in("vault", "DELETE FROM tokenvault.records WHERE seq > 7");
    let (seq, reason) = broken_at(&store);
    assert_eq!(seq, 8, "{reason}");
    assert!(reason.contains("records 8..=10 are missing"), "{reason}");
    // The next write refuses, and writes nothing: the cut stays visible.
    let error = store
        .append_audit(&key, &[record("later")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("records 8..=10 are missing"), "{error}");
    let error = store
        .store(
            &key,
            "retail",
            &[row("T-after-cut".to_owned(), index_of(1), None)],
            vec![record("later")],
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("does not end at the recorded head"),
        "{error}"
    );
    assert_eq!(
        cluster
            .psql_in("vault", "SELECT count(*) FROM tokenvault.tokens")
            .trim(),
        "0",
        "the rows of a batch whose audit append failed are rolled back"
    );
    assert_eq!(broken_at(&store).0, 8);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A node: the engine's store on the shared database (with its writer),
/// and the database's own reads.
struct Node {
    store: tokenvault::store::Store,
    pg: Arc<PgStore>,
}

impl std::ops::Deref for Node {
    type Target = PgStore;
    fn deref(&self) -> &PgStore {
        &self.pg
    }
}

impl Node {
    async fn insert(
        &self,
        namespace: &str,
        rows: Vec<NewRow>,
        audit: Vec<Record>,
    ) -> Result<Vec<InsertOutcome>, tokenvault::store::StoreError> {
        self.store.insert(namespace, rows, audit).await
    }

    async fn activation(
        &self,
        write: ActivationWrite,
        audit: Vec<Record>,
    ) -> Result<bool, tokenvault::store::StoreError> {
        self.store.activation(write, audit).await
    }
}

/// Two nodes on one database, each with its writer.
fn two_nodes(cluster: &PgCluster) -> (Arc<Node>, Arc<Node>) {
    let nodes: Vec<Arc<Node>> = (0..2)
        .map(|_| {
            let pg = Arc::new(PgStore::connect(&settings(cluster, "tokenvault", None)).unwrap());
            pg.migrate().unwrap();
            let store =
                tokenvault::store::Store::open_postgres(pg.clone(), master().audit_key()).unwrap();
            Arc::new(Node { store, pg })
        })
        .collect();
    (nodes[0].clone(), nodes[1].clone())
}

#[test]
fn a_message_id_accepted_through_one_node_is_a_replay_through_the_other() {
    let cluster = PgCluster::start(None);
    let (a, b) = two_nodes(&cluster);
    let claim = |id: &str, callback: &str| ActivationWrite::Claim {
        callback: callback.to_owned(),
        message_id: id.to_owned(),
        expires_at: i64::MAX,
    };
    let rt = runtime();
    // In turn: accepted once, whichever node and callback sees it again.
    assert!(rt
        .block_on(a.activation(claim("msg_1", "sms"), vec![record("a")]))
        .unwrap());
    assert!(!rt
        .block_on(b.activation(claim("msg_1", "sms"), vec![record("b")]))
        .unwrap());
    assert!(!rt
        .block_on(b.activation(claim("msg_1", "email"), vec![record("b")]))
        .unwrap());
    // At the same moment: 200 ids claimed through both nodes at once, each
    // accepted exactly once.
    let accepted = rt.block_on(async {
        let claims = (0..200).flat_map(|n| {
            let id = format!("msg_race_{n}");
            [a.clone(), b.clone()].map(|node| {
                let write = claim(&id, "sms");
                tokio::spawn(async move { node.activation(write, vec![record("n")]).await })
            })
        });
        let mut accepted = 0;
        for claim in claims.collect::<Vec<_>>() {
            accepted += usize::from(claim.await.unwrap().unwrap());
        }
        accepted
    });
    assert_eq!(accepted, 200);
    // Released by the callback that claimed it, the id is accepted again
    // (the platform's retry after a failed delivery).
    let release = ActivationWrite::Release {
        callback: "sms".to_owned(),
        message_id: "msg_1".to_owned(),
    };
    assert!(rt.block_on(a.activation(release, vec![])).unwrap());
    assert!(rt
        .block_on(b.activation(claim("msg_1", "sms"), vec![]))
        .unwrap());
    // Every claim was recorded in the one chain.
    assert_eq!(
        a.verify_audit(&audit_key()).unwrap().count,
        3 + 400,
        "one record per claim that carried one"
    );
}

#[test]
fn consent_withdrawn_through_one_node_blocks_at_the_other_from_the_next_request() {
    let cluster = PgCluster::start(None);
    let (a, b) = two_nodes(&cluster);
    let rt = runtime();
    let subject = [9u8; 32];
    let stored = rt
        .block_on(a.insert(
            "retail",
            vec![
                row("T-own".to_owned(), index_of(1), None),
                row("T-shared".to_owned(), index_of(2), Some(subject)),
            ],
            vec![record("a")],
        ))
        .unwrap();
    assert_eq!(stored, [InsertOutcome::Inserted, InsertOutcome::Inserted]);
    let consent = |target: ConsentTarget, purpose: &str, withdrawn: bool| {
        ActivationWrite::Consent(ConsentEvent {
            namespace: "retail".to_owned(),
            target,
            purpose: purpose.to_owned(),
            withdrawn,
            changed_at: 1,
            source: "test".to_owned(),
        })
    };
    assert!(!b.consent_withdrawn("retail", "T-own", "sms").unwrap());

    // A token's withdrawal, through A, is seen by B at once; a restore
    // through B is seen by A.
    rt.block_on(a.activation(
        consent(ConsentTarget::Token("T-own".into()), "sms", true),
        vec![],
    ))
    .unwrap();
    assert!(b.consent_withdrawn("retail", "T-own", "sms").unwrap());
    assert!(!b.consent_withdrawn("retail", "T-own", "email").unwrap());
    rt.block_on(b.activation(
        consent(ConsentTarget::Token("T-own".into()), "sms", false),
        vec![],
    ))
    .unwrap();
    assert!(!a.consent_withdrawn("retail", "T-own", "sms").unwrap());

    // Every purpose (`*`) withdrawn for the subject, through B: the token
    // linked to it is blocked at A, the other token is not.
    rt.block_on(b.activation(consent(ConsentTarget::Subject(subject), "*", true), vec![]))
        .unwrap();
    assert!(a.consent_withdrawn("retail", "T-shared", "email").unwrap());
    assert!(!a.consent_withdrawn("retail", "T-own", "email").unwrap());
}

#[test]
fn the_writer_batches_concurrent_inserts_and_answers_each_after_the_commit() {
    let cluster = PgCluster::start(None);
    let (a, b) = two_nodes(&cluster);
    let rt = runtime();
    const JOBS: usize = 400;
    let answers = rt.block_on(async {
        let jobs: Vec<_> = (0..JOBS)
            .map(|n| {
                let node = if n % 2 == 0 { a.clone() } else { b.clone() };
                // Every value is sent twice, once through each node.
                let value = n / 2;
                tokio::spawn(async move {
                    node.insert(
                        "retail",
                        vec![row(format!("T-{n}"), index_of(value), None)],
                        vec![record("n")],
                    )
                    .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for job in jobs {
            answers.push(job.await.unwrap().unwrap());
        }
        answers
    });
    // Of the two sends of each value, one inserted and the other was
    // answered the token the first stored.
    let mut inserted = 0;
    for (value, pair) in answers.chunks(2).enumerate() {
        match (&pair[0][0], &pair[1][0]) {
            (InsertOutcome::Inserted, InsertOutcome::Existing(token)) => {
                assert_eq!(token, &format!("T-{}", 2 * value));
            }
            (InsertOutcome::Existing(token), InsertOutcome::Inserted) => {
                assert_eq!(token, &format!("T-{}", 2 * value + 1));
            }
            other => panic!("one insert and one existing expected, got {other:?}"),
        }
        inserted += 1;
    }
    assert_eq!(inserted, JOBS / 2);
    let rows = cluster.psql_in("vault", "SELECT count(*) FROM tokenvault.tokens");
    assert_eq!(rows.trim(), (JOBS / 2).to_string());
    assert_eq!(a.verify_audit(&audit_key()).unwrap().count, JOBS as u64);
}

#[test]
fn every_node_unwraps_the_one_keyring_in_the_database() {
    use tokenvault::crypto::wrapping::{KekSource, Keyring, KeyringError};
    use zeroize::Zeroizing;

    let cluster = PgCluster::start(None);
    let (a, b) = two_nodes(&cluster);
    let source = || KekSource::KeyFile(Zeroizing::new([42u8; 32]));
    let place = "the keyring table";

    // Two nodes initialising at once: the first stored keyring is the
    // only one, and the other node uses it.
    let (_, first) = Keyring::create_document(&source()).unwrap();
    let (_, second) = Keyring::create_document(&source()).unwrap();
    assert!(a.create_keyring(&first).unwrap());
    assert!(!b.create_keyring(&second).unwrap());
    let stored = b.keyring().unwrap().unwrap();
    assert_eq!(stored, first);
    let at_a = Keyring::open_document(&a.keyring().unwrap().unwrap(), &source(), place).unwrap();
    let at_b = Keyring::open_document(&stored, &source(), place).unwrap();
    let canonical = b"one record";
    assert_eq!(
        at_a.audit_key().mac(canonical, &[0; 32]),
        at_b.audit_key().mac(canonical, &[0; 32]),
        "both nodes chain the audit trail with one key"
    );

    // A rotation through A; B's stale change is refused, then made again
    // on what A stored.
    let (rotated, after_a) = Keyring::add_version_document(&stored, &source(), place).unwrap();
    assert_eq!(rotated.versions(), [1, 2]);
    let (_, stale) = Keyring::add_version_document(&stored, &source(), place).unwrap();
    assert!(a.replace_keyring(&stored, &after_a).unwrap());
    assert!(!b.replace_keyring(&stored, &stale).unwrap());
    let now = b.keyring().unwrap().unwrap();
    assert_eq!(now.versions(place).unwrap(), [1, 2]);
    let at_b = Keyring::open_document(&now, &source(), place).unwrap();
    assert_eq!(at_b.versions(), [1, 2]);

    // The wrong key file opens nothing.
    let wrong = KekSource::KeyFile(Zeroizing::new([7u8; 32]));
    assert!(matches!(
        Keyring::open_document(&now, &wrong, place),
        Err(KeyringError::Unwrap)
    ));
}

#[test]
fn the_reads_answer_what_either_node_committed() {
    use tokenvault::audit::Filter;

    let cluster = PgCluster::start(None);
    let (a, b) = two_nodes(&cluster);
    let rt = runtime();
    let subject = [5u8; 32];
    let mut phone = row("T-phone".to_owned(), index_of(7), Some(subject));
    phone.class = "phone".to_owned();
    let rows = vec![
        row("T-mail".to_owned(), index_of(7), None),
        phone,
        row("T-other".to_owned(), index_of(8), Some(subject)),
    ];
    let mut tagged = record("a");
    tagged.namespace = Some("retail".to_owned());
    rt.block_on(a.insert("retail", rows, vec![tagged])).unwrap();

    // By blind index: the class is part of the key; one statement answers
    // every lookup; the day is read only where retention needs it.
    let lookups = [
        ("email", index_of(7)),
        ("phone", index_of(7)),
        ("email", index_of(9)),
        ("email", index_of(8)),
    ];
    let found = b
        .find_by_blind_index("retail", &lookups, &|class| class == "phone")
        .unwrap();
    let tokens: Vec<Option<&str>> = found
        .iter()
        .map(|f| f.as_ref().map(|f| f.token.as_str()))
        .collect();
    assert_eq!(
        tokens,
        [Some("T-mail"), Some("T-phone"), None, Some("T-other")]
    );
    assert_eq!(found[1].as_ref().unwrap().used_day, 20_000);
    assert_eq!(found[0].as_ref().unwrap().used_day, i64::MAX);
    assert!(b
        .find_by_blind_index("other", &lookups[..1], &|_| false)
        .unwrap()[0]
        .is_none());

    let wanted = [
        "T-other".to_owned(),
        "T-none".to_owned(),
        "T-mail".to_owned(),
    ];
    let fetched = b.fetch("retail", &wanted).unwrap();
    assert_eq!(fetched[0].as_ref().unwrap().sealed, vec![7; 40]);
    assert!(fetched[1].is_none());
    assert_eq!(fetched[2].as_ref().unwrap().class, "email");
    assert_eq!(b.existing("retail", &wanted).unwrap(), [true, false, true]);

    // Idle tokens, in byte order after a cursor.
    let idle = b
        .idle_tokens("retail", "email", 20_001, "T-mail", 10)
        .unwrap();
    assert_eq!(idle, ["T-other"]);

    let (linked, history) = b.subject_holdings("retail", &subject).unwrap();
    assert_eq!(linked, ["T-other", "T-phone"]);
    assert!(history.is_empty());
    assert_eq!(
        b.linked(
            "retail",
            &[
                ("T-phone".to_owned(), subject),
                ("T-mail".to_owned(), subject),
                ("T-phone".to_owned(), [0; 32])
            ]
        )
        .unwrap(),
        [true, false, false]
    );

    // The audit trail, filtered by a token the record names.
    let filter = Filter {
        token: Some("T-phone".to_owned()),
        ..Filter::default()
    };
    let records = b.query_audit(&filter, 0, 10).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.tokens, ["T-mail", "T-phone", "T-other"]);
    let filter = Filter {
        token: Some("T-none".to_owned()),
        ..Filter::default()
    };
    assert!(b.query_audit(&filter, 0, 10).unwrap().is_empty());
    assert_eq!(
        b.recorded_audit_head().unwrap(),
        a.verify_audit(&audit_key()).unwrap().head
    );
}

/// The engine itself on PostgreSQL: two nodes, each with its own pool and
/// writer, sharing the keyring stored in the database.
#[test]
fn the_engine_runs_on_two_nodes_sharing_one_database() {
    use tokenvault::crypto::wrapping::{KekSource, Keyring};
    use tokenvault::pii::Pii;
    use tokenvault::policy::Operation;
    use tokenvault::store::Store;
    use tokenvault::vault::{ConsentSubject, Detokenized, TokenizeItem, Vault};
    use zeroize::Zeroizing;

    let cluster = PgCluster::start(None);
    let source = || KekSource::KeyFile(Zeroizing::new([42u8; 32]));
    let namespaces =
        crate::support::namespace_of("retail", &[("email", crate::support::email_class(None))]);
    let node = |first: bool| {
        let pg = Arc::new(PgStore::connect(&settings(&cluster, "tokenvault", None)).unwrap());
        pg.migrate().unwrap();
        if first {
            let (_, document) = Keyring::create_document(&source()).unwrap();
            assert!(pg.create_keyring(&document).unwrap());
        }
        let keyring =
            Keyring::open_document(&pg.keyring().unwrap().unwrap(), &source(), "db").unwrap();
        let store = Arc::new(Store::open_postgres(pg, keyring.audit_key()).unwrap());
        let mut vault = Vault::new(store, &keyring, &namespaces);
        vault.set_purpose_names(["sms".to_owned()].into());
        Arc::new(vault)
    };
    let (a, b) = (node(true), node(false));
    let caller = crate::support::engine_caller(
        "crm",
        &[
            Operation::Tokenize,
            Operation::Detokenize,
            Operation::Consent,
        ],
    );
    let context = Context::cli("test");
    let items = |from: usize, to: usize| -> Vec<TokenizeItem> {
        (from..to)
            .map(|n| TokenizeItem {
                class: "email".to_owned(),
                value: Pii::new(format!("Person.{n}@Example.com")),
                subject: None,
                number: false,
            })
            .collect()
    };
    let rt = runtime();
    rt.block_on(async {
        // A stores; B answers the same tokens for the same values.
        let at_a = a
            .tokenize(&context, &caller, "retail", items(0, 100))
            .await
            .unwrap();
        assert!(at_a.iter().all(|t| t.created));
        let at_b = b
            .tokenize(&context, &caller, "retail", items(0, 100))
            .await
            .unwrap();
        assert!(at_b.iter().all(|t| !t.created));
        let tokens: Vec<String> = at_a.iter().map(|t| t.token.clone()).collect();
        assert_eq!(
            tokens,
            at_b.iter().map(|t| t.token.clone()).collect::<Vec<_>>()
        );

        // Both at the same moment, 200 new values: the same tokens.
        let (x, y) = tokio::join!(
            a.tokenize(&context, &caller, "retail", items(100, 300)),
            b.tokenize(&context, &caller, "retail", items(100, 300)),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        for (x, y) in x.iter().zip(&y) {
            assert_eq!(x.token, y.token);
            assert_ne!(x.created, y.created, "exactly one node stored each value");
        }

        // B reveals what A stored (normalized).
        let values = b
            .detokenize(&context, &caller, "retail", "sms", tokens.clone())
            .await
            .unwrap();
        for (n, value) in values.iter().enumerate() {
            let Detokenized::Value { value, .. } = value else {
                panic!("{n}: {value:?}")
            };
            assert_eq!(value.expose(), format!("person.{n}@example.com"));
        }

        // Consent withdrawn through A blocks the reveal through B.
        a.set_consent(
            &context,
            &caller,
            "retail",
            ConsentSubject::Token(tokens[0].clone()),
            "sms",
            true,
            "test",
        )
        .await
        .unwrap();
        let values = b
            .detokenize(&context, &caller, "retail", "sms", tokens[..2].to_vec())
            .await
            .unwrap();
        assert!(matches!(values[0], Detokenized::ConsentWithdrawn));
        assert!(matches!(values[1], Detokenized::Value { .. }));

        // A message id claimed through A is a replay through B.
        assert!(a
            .claim_message("sms", "msg_x", i64::MAX, vec![])
            .await
            .unwrap());
        assert!(!b
            .claim_message("sms", "msg_x", i64::MAX, vec![])
            .await
            .unwrap());
    });
    let store = PgStore::connect(&settings(&cluster, "tokenvault", None)).unwrap();
    let keyring = tokenvault::crypto::wrapping::Keyring::open_document(
        &store.keyring().unwrap().unwrap(),
        &source(),
        "db",
    )
    .unwrap();
    let verified = store.verify_audit(&keyring.audit_key()).unwrap();
    assert!(verified.count >= 6, "{}", verified.count);
    assert!(a.is_ready() && b.is_ready());
}

/// A second node of `setup`'s vault: the same configuration with its own
/// data directory (its lock and logs).
fn second_node(setup: &Setup) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    let data_dir = dir.path().join("data");
    let text = fs::read_to_string(&setup.config).unwrap().replace(
        &format!("data_dir = \"{}\"", setup.data_dir.display()),
        &format!("data_dir = \"{}\"", data_dir.display()),
    );
    fs::write(&config, text).unwrap();
    fs::create_dir(&data_dir).unwrap();
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).unwrap();
    Setup {
        dir,
        config,
        data_dir,
        postgres: setup.postgres.clone(),
    }
}

fn pg_audit_key(cluster: &PgCluster, setup: &Setup) -> AuditKey {
    use tokenvault::crypto::wrapping::Keyring;
    let store = PgStore::connect(&settings(cluster, "tokenvault", None)).unwrap();
    Keyring::open_document(
        &store.keyring().unwrap().unwrap(),
        &setup.kek_source(),
        "db",
    )
    .unwrap()
    .audit_key()
}

#[test]
fn two_nodes_serve_one_vault_and_the_second_keeps_answering_when_the_first_is_killed() {
    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "");
    let out = setup.run(&["init", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second init is refused: the vault has its keyring.
    let out = setup.run(&["init", "--config"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already stored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = second_node(&setup);
    let mut a = setup.serve();
    let b = other.serve();
    for node in [&a, &b] {
        let ready = http().get(node.url("/readyz")).send().unwrap();
        assert_eq!(ready.status().as_u16(), 200, "{}", ready.text().unwrap());
    }

    // One token per value whichever node is asked; reveals across nodes.
    let first = tokenize(&a, "crm", "retail", &[("email", "Ann@Example.com")]);
    let again = tokenize(&b, "crm", "retail", &[("email", "ann@example.com")]);
    assert_eq!(first, again);
    let values = detokenize(&b, "admin", "retail", "support", &first);
    assert_eq!(values[0]["value"], "ann@example.com");

    // Load through both nodes; A is SIGKILLed in the middle; what failed on
    // A is retried on B. Every token acknowledged by either node must then
    // reveal on B.
    let acknowledged: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url_a, url_b) = (a.url("/v1/tokenize"), b.url("/v1/tokenize"));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            let urls = [url_a.clone(), url_b.clone()];
            std::thread::spawn(move || {
                let http = http();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let value = format!("load.{client}.{n}@example.com");
                    let body = serde_json::json!({
                        "namespace": "retail",
                        "items": [{"class": "email", "value": value}]
                    });
                    // Alternate nodes; on failure retry on the other one.
                    let order = if n % 2 == 0 { [0, 1] } else { [1, 0] };
                    for index in order {
                        let sent = http
                            .post(&urls[index])
                            .bearer_auth(key("crm"))
                            .json(&body)
                            .send();
                        if let Ok(response) = sent {
                            if response.status().as_u16() == 200 {
                                let answer: serde_json::Value = response.json().unwrap();
                                let token = answer["tokens"][0]["token"].as_str().unwrap();
                                acknowledged
                                    .lock()
                                    .unwrap()
                                    .push((token.to_owned(), value.clone()));
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let wait_for = |count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while acknowledged.lock().unwrap().len() < count {
            assert!(std::time::Instant::now() < deadline, "the load stalled");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for(100);
    a.kill();
    let at_kill = acknowledged.lock().unwrap().len();
    wait_for(at_kill + 100);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let done = acknowledged.lock().unwrap().clone();
    for chunk in done.chunks(500) {
        let tokens: Vec<String> = chunk.iter().map(|(token, _)| token.clone()).collect();
        let values = detokenize(&b, "admin", "retail", "support", &tokens);
        for ((token, value), answer) in chunk.iter().zip(&values) {
            assert_eq!(answer["value"], value.as_str(), "{token}");
        }
    }
    let verified = PgStore::connect(&settings(&cluster, "tokenvault", None))
        .unwrap()
        .verify_audit(&pg_audit_key(&cluster, &setup))
        .unwrap();
    assert!(
        verified.count as usize > done.len() / 2,
        "{}",
        verified.count
    );
    eprintln!(
        "{} tokens acknowledged ({at_kill} before the kill), all revealed on B; {} audit records verified",
        done.len(),
        verified.count
    );

    // The auditor's commands read the same trail from the database.
    let out = setup.run(&["audit", "verify", "--config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "audit trail OK: {} records verified",
            verified.count
        )),
        "{stdout}"
    );
    let out = setup.run(&[
        "audit", "query", "--action", "init", "--format", "json", "--config",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // An export for an auditor, checked on its own.
    let export = setup.dir.path().join("export.json");
    let out = setup.run(&[
        "audit",
        "export",
        "--since",
        "2000-01-01",
        "--out",
        export.to_str().unwrap(),
        "--config",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = setup.run(&[
        "audit",
        "verify",
        "--export",
        export.to_str().unwrap(),
        "--config",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("export OK: {} records verified", verified.count)),
        "{stdout}"
    );
    // `status` reads the shared store and asks the node in the config.
    let out = setup.run(&["status", "--format", "json", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["tokens"]["retail"],
        done.len() as u64 + 1,
        "{status}"
    );
    assert_eq!(status["audit_head"], verified.count, "{status}");
    assert_eq!(status["master_keys"]["versions"], serde_json::json!([1]));
    assert!(
        status["storage"].as_str().unwrap().starts_with("postgres "),
        "{status}"
    );
    let out = setup.run(&["keys", "status", "--config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("master key v1 (newest): {} rows", done.len() + 1)),
        "{stdout}"
    );
    let out = setup.run(&["client", "list", "--format", "json", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crm: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|client| client["client"] == "crm")
        .unwrap();
    assert!(crm["last_use"].is_string(), "{crm}");
    // An edit made in the database is named by `audit verify`.
    cluster.psql_in(
        "vault",
        "UPDATE tokenvault.records SET actor = 'x' WHERE seq = 5",
    );
    let out = setup.run(&["audit", "verify", "--config"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BROKEN at record 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn while_the_database_is_down_a_node_answers_503_and_it_recovers_without_a_restart() {
    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "");
    let out = setup.run(&["init", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = setup.serve();
    let before = tokenize(&server, "crm", "retail", &[("email", "before@example.com")]);
    let ready = |server: &Server| {
        http()
            .get(server.url("/readyz"))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let wait_until = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    assert_eq!(ready(&server), 200);

    cluster.stop();
    wait_until("/readyz never said not ready", &|| ready(&server) == 503);
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &serde_json::json!({"namespace": "retail", "items": [{"class": "email", "value": "during@example.com"}]}),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert!(!body.to_string().contains("during@example.com"));

    cluster.restart();
    wait_until("/readyz never turned ready again", &|| {
        ready(&server) == 200
    });
    let after = tokenize(&server, "crm", "retail", &[("email", "after@example.com")]);
    let values = detokenize(
        &server,
        "admin",
        "retail",
        "support",
        &[before[0].clone(), after[0].clone()],
    );
    assert_eq!(values[0]["value"], "before@example.com");
    assert_eq!(values[1]["value"], "after@example.com");
    let verified = PgStore::connect(&settings(&cluster, "tokenvault", None))
        .unwrap()
        .verify_audit(&pg_audit_key(&cluster, &setup))
        .unwrap();
    assert!(verified.count >= 4);
}

#[test]
fn storage_migrate_copies_a_stopped_sqlite_vault_of_100k_tokens_and_checks_it() {
    const TOKENS: usize = 100_000;
    let cluster = PgCluster::start(None);
    let setup = Setup::new("");
    let mut server = setup.serve();
    let mut tokens = Vec::with_capacity(TOKENS);
    for batch in 0..TOKENS / 1000 {
        let items: Vec<serde_json::Value> = (0..1000)
            .map(|i| serde_json::json!({"class": "email", "value": format!("m.{batch}.{i}@example.com")}))
            .collect();
        let (status, body) = post(
            &server,
            "/v1/tokenize",
            &key("crm"),
            &serde_json::json!({"namespace": "retail", "items": items}),
        );
        assert_eq!(status, 200, "{body}");
        tokens.extend(
            body["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["token"].as_str().unwrap().to_owned()),
        );
    }
    let (status, body) = crate::activation::put_consent(
        &server,
        &key("consent"),
        &serde_json::json!({"namespace": "retail", "token": tokens[1], "purpose": "support", "withdrawn": true, "source": "app-settings"}),
    );
    assert_eq!(status, 200, "{body}");

    // Refused while the vault serves the directory.
    let pg_config = setup.dir.path().join("pg.toml");
    let password = cluster.password_file(setup.dir.path());
    let text = fs::read_to_string(&setup.config).unwrap().replace(
        "[storage]\n",
        &format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n",
            cluster.url(),
            password.display()
        ),
    );
    fs::write(&pg_config, text).unwrap();
    let migrate = || {
        std::process::Command::new(BIN)
            .args(["storage", "migrate", "--to", "postgres", "--config"])
            .arg(&pg_config)
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the vault"));
    assert!(server.stop().success());

    let out = migrate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{TOKENS:>10} rows -> {TOKENS:>10} rows")),
        "{stdout}"
    );
    assert!(
        stdout.contains("audit chain verified on the target"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sample: 1000 values open to the same plaintext"),
        "{stdout}"
    );
    // Once is enough: the target now holds a vault.
    let out = migrate();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a vault"));

    // The same vault, served from PostgreSQL: the same values, the consent
    // withdrawal, and a chain that goes on verifying.
    let moved = Setup {
        dir: tempfile::tempdir().unwrap(),
        config: pg_config.clone(),
        data_dir: setup.data_dir.clone(),
        postgres: None,
    };
    let server = moved.serve();
    let picks: Vec<String> = [0, 2, 54_321, TOKENS - 1]
        .iter()
        .map(|&i| tokens[i].clone())
        .collect();
    let values = detokenize(&server, "admin", "retail", "support", &picks);
    assert_eq!(values[0]["value"], "m.0.0@example.com");
    assert_eq!(values[2]["value"], "m.54.321@example.com");
    assert_eq!(values[3]["value"], "m.99.999@example.com");
    let withdrawn = detokenize(&server, "admin", "retail", "support", &[tokens[1].clone()]);
    assert_eq!(
        withdrawn[0]["error"]["code"], "consent_withdrawn",
        "{withdrawn:?}"
    );
    let again = tokenize(&server, "crm", "retail", &[("email", "m.7.7@example.com")]);
    assert_eq!(again[0], tokens[7007]);
    drop(server);
    let out = moved.run(&["audit", "verify", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The backend-independent suites, run again on PostgreSQL: the same test
// functions, with every `Setup` they make storing in a throwaway cluster.
// Left out, by design: backups (PostgreSQL is backed up with its own
// tools) and the tests that cut or edit SQLite's own audit files, whose
// PostgreSQL counterparts are above (a cut tail, edits, deletions and
// reorders in the chain, a trail that cannot be written).

fn each_on_postgres(tests: &[fn()]) {
    for test in tests {
        on_postgres(*test);
    }
}

#[test]
fn the_token_api_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::api::token_api_formats_round_trip_and_isolation,
        crate::api::token_api_refuses_the_unauthenticated_and_the_unauthorized,
        crate::api::token_api_refuses_malformed_and_oversized_requests,
        crate::api::token_api_forget_health_and_process_limits,
        crate::api::sigterm_drains_in_flight_requests,
        crate::api::a_wrong_method_on_a_known_path_is_405_with_allow,
    ]);
}

#[test]
fn the_egress_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::egress::fixtures_go_upstream_with_tokens_in_every_selected_field,
        crate::egress::malformed_bodies_are_refused_and_nothing_is_forwarded,
        crate::egress::upstream_failures_answer_in_time_and_the_vault_keeps_serving,
        crate::egress::tls_upstreams_are_verified_against_the_route_ca_bundle,
        crate::egress::form_bodies_select_by_field_name,
        crate::egress::response_rules_reveal_only_to_callers_allowed_the_purpose,
        crate::egress::nothing_is_forwarded_when_the_forward_cannot_be_audited,
    ]);
}

#[test]
fn the_fidelity_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::fidelity::fixtures_and_unusual_documents_go_out_byte_exact_outside_the_selected_values,
        crate::fidelity::the_scan_covers_numbers_keys_form_names_and_query_parameters,
        crate::fidelity::paths_that_leave_the_route_are_refused_and_forwarding_headers_are_dropped,
        crate::fidelity::a_route_takes_the_vault_key_in_the_platform_header_and_never_forwards_it,
    ]);
}

#[test]
fn the_clevertap_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::clevertap::plaintext_operations_answer_as_the_spec_says,
        crate::clevertap::encrypted_requests_get_encrypted_answers_and_bad_envelopes_get_419,
        crate::clevertap::access_tokens_are_issued_verified_and_expire,
        crate::clevertap::the_same_value_gets_the_same_token_on_every_surface,
        crate::clevertap::roles_purposes_and_audit_apply_as_on_v1,
    ]);
}

#[test]
fn the_activation_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::activation::a_signed_callback_reaches_the_provider_with_real_values,
        crate::activation::a_callback_without_signature_is_refused,
        crate::activation::a_callback_signed_with_another_secret_is_refused,
        crate::activation::a_callback_changed_after_signing_is_refused,
        crate::activation::a_callback_outside_the_timestamp_tolerance_is_refused,
        crate::activation::a_replayed_message_id_is_refused_even_after_a_restart,
        crate::activation::a_callback_from_outside_its_allow_list_is_refused,
        crate::activation::a_token_from_another_namespace_is_refused,
        crate::activation::a_purpose_the_callbacks_role_lacks_is_refused,
        crate::activation::withdrawn_consent_blocks_every_path_until_restored,
        crate::activation::consent_through_the_api_needs_the_consent_operation,
        crate::activation::a_worker_over_its_budget_gets_429_and_nothing_more,
        crate::activation::a_message_accepted_at_one_callback_is_refused_at_another,
        crate::activation::a_restart_does_not_refill_a_budget,
    ]);
}

/// PostgreSQL's counterpart of the SQLite tests that lock `audit.db`: when
/// the trail cannot be written, nothing is stored or revealed, `/readyz`
/// says why, and the node recovers once it can write again.
#[test]
fn when_the_trail_cannot_be_written_nothing_is_revealed_or_stored() {
    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "");
    let out = setup.run(&["init", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = setup.serve();
    let stored = tokenize(&server, "crm", "retail", &[("email", "kept@example.com")]);

    let blocked = TrailBlocked::in_postgres(&cluster);
    let (status, body) = post(
        &server,
        "/v1/detokenize",
        &key("admin"),
        &serde_json::json!({"namespace": "retail", "purpose": "support", "tokens": stored}),
    );
    assert_eq!(status, 503, "{body}");
    assert!(!body.to_string().contains("kept@example.com"), "{body}");
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &serde_json::json!({"namespace": "retail", "items": [{"class": "email", "value": "new@example.com"}]}),
    );
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = http()
        .get(server.url("/readyz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["checks"]["audit"], "failing", "{ready}");
    assert_eq!(
        cluster
            .psql_in("vault", "SELECT count(*) FROM tokenvault.tokens")
            .trim(),
        "1",
        "the refused tokenize stored nothing"
    );

    drop(blocked);
    let values = detokenize(&server, "admin", "retail", "support", &stored);
    assert_eq!(values[0]["value"], "kept@example.com");
    let ready: serde_json::Value = http()
        .get(server.url("/readyz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
}

/// Customer rights on PostgreSQL: subject links, consent by subject,
/// erasure with its receipt, correction, and the `subject` commands beside
/// a running node. (Backups, and so the erasure-after-restore test, are
/// SQLite's: PostgreSQL is backed up with its own tools.)
#[test]
fn the_subjects_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::subjects::consent_withdrawn_for_an_identity_blocks_exactly_its_profiles_tokens_on_every_path,
        crate::subjects::a_value_sent_again_for_another_subject_belongs_to_both,
        crate::subjects::the_clevertap_surface_binds_values_to_the_subject_in_its_metadata,
        crate::subjects::forgetting_a_subject_erases_its_own_values_keeps_shared_ones_and_signs_a_receipt,
        crate::subjects::the_cli_exports_and_forgets_a_subject_beside_a_running_vault,
        crate::subjects::a_correction_keeps_the_token_and_moves_the_deterministic_mapping,
    ]);
}

/// A tail cut in the database is detected by every node, stays detected
/// after more writes are attempted, and `audit acknowledge-gap` bridges it
/// with a record that `audit verify` keeps showing.
#[test]
fn a_cut_tail_in_postgres_refuses_writes_until_acknowledged() {
    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "");
    let out = setup.run(&["init", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = setup.serve();
    for n in 0..3 {
        tokenize(
            &server,
            "crm",
            "retail",
            &[("email", &format!("cut{n}@example.com"))],
        );
    }
    let out = setup.run(&[
        "audit",
        "acknowledge-gap",
        "--reason",
        "disk_failure",
        "--config",
    ]);
    assert!(!out.status.success(), "no gap yet");

    cluster.psql_in(
        "vault",
        "DELETE FROM tokenvault.records WHERE seq > (SELECT max(seq) - 2 FROM tokenvault.records)",
    );
    for _ in 0..2 {
        let (status, body) = post(
            &server,
            "/v1/tokenize",
            &key("crm"),
            &serde_json::json!({"namespace": "retail", "items": [{"class": "email", "value": "after.cut@example.com"}]}),
        );
        assert_eq!(status, 503, "{body}");
    }
    let ready: serde_json::Value = http()
        .get(server.url("/readyz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["checks"]["audit"], "broken", "{ready}");
    let out = setup.run(&["audit", "verify", "--config"]);
    assert!(!out.status.success());

    let out = setup.run(&[
        "audit",
        "acknowledge-gap",
        "--reason",
        "disk_failure",
        "--config",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("acknowledged: records"), "{stdout}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready: serde_json::Value = http()
            .get(server.url("/readyz"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if ready["status"] == "ready" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "after.cut@example.com")],
    );
    let out = setup.run(&["audit", "verify", "--config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("are missing, acknowledged by record"),
        "{stdout}"
    );
}

/// Tokens of `values` (emails in retail) through the node at `base`, or
/// None when it did not answer 200.
fn tokenize_through(base: &str, values: &[String]) -> Option<Vec<String>> {
    let items: Vec<(&str, String)> = values.iter().map(|v| ("email", v.clone())).collect();
    tokenize_at(base, &items)
}

/// A `keys rotate` while two nodes tokenize: both adopt the new version,
/// the node that has not noticed yet has its new rows refused by the
/// database and tries again under the new keys, so the same new value
/// sent to both nodes at once gets one token before, during and after the
/// switch; known values keep theirs; every row moves; the old version
/// retires; and every token answers on either node.
#[test]
fn a_rotation_while_two_nodes_tokenize_keeps_one_token_per_value() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "");
    let out = setup.run(&["init", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = second_node(&setup);
    let (a, b) = (setup.serve(), other.serve());
    let known: Vec<String> = (0..400)
        .map(|i| format!("known-{i}@two-node-rotation.example"))
        .collect();
    let known_tokens = tokenize_through(&a.base, &known).unwrap();

    let stop = AtomicBool::new(false);
    let keys = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("keys")
            .args(args)
            .arg("--config")
            .arg(&setup.config)
            .output()
            .unwrap()
    };
    let (rounds, refused, created) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let (mut rounds, mut refused, mut created) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                rounds += 1;
                let mut values: Vec<String> = (0..8)
                    .map(|i| format!("new-{rounds}-{i}@two-node-rotation.example"))
                    .collect();
                let start = (rounds as usize * 13) % (known.len() - 8);
                values.extend(known[start..start + 8].iter().cloned());
                let barrier = Barrier::new(2);
                let (through_a, through_b) = std::thread::scope(|both| {
                    let on_a = both.spawn(|| {
                        barrier.wait();
                        tokenize_through(&a.base, &values)
                    });
                    let on_b = both.spawn(|| {
                        barrier.wait();
                        tokenize_through(&b.base, &values)
                    });
                    (on_a.join().unwrap(), on_b.join().unwrap())
                });
                for tokens in [&through_a, &through_b].into_iter().flatten() {
                    assert_eq!(&tokens[8..], &known_tokens[start..start + 8]);
                }
                match (through_a, through_b) {
                    (Some(x), Some(y)) => {
                        assert_eq!(x, y, "round {rounds}: one value, two tokens");
                        created.extend(values.into_iter().zip(x).take(8));
                    }
                    _ => refused += 1,
                }
            }
            (rounds, refused, created)
        });
        std::thread::sleep(Duration::from_millis(1500));
        let out = keys(&["rotate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = String::from_utf8_lossy(&keys(&["status"]).stdout).into_owned();
            if status.contains("retail: writes with v2\n")
                && status.contains("master key v1: 0 rows")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rotation did not finish: {status}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // A little more load after the rotation ended.
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    assert!(rounds > 10, "{rounds}");
    assert_eq!(refused, 0, "{refused} of {rounds} rounds had a refusal");

    let out = keys(&["retire", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions = cluster.psql_in(
        "vault",
        "SELECT DISTINCT key_version FROM tokenvault.tokens ORDER BY 1",
    );
    assert_eq!(versions.trim(), "2");
    // Each node adopts the keyring without v1 within a second, then every
    // token answers on both.
    std::thread::sleep(Duration::from_millis(2500));
    let all: Vec<(String, String)> = known
        .iter()
        .cloned()
        .zip(known_tokens.iter().cloned())
        .chain(created)
        .collect();
    for node in [&a, &b] {
        for chunk in all.chunks(400) {
            let tokens: Vec<String> = chunk.iter().map(|(_, t)| t.clone()).collect();
            let values = detokenize(node, "admin", "retail", "support", &tokens);
            for ((value, _), answer) in chunk.iter().zip(&values) {
                assert_eq!(answer["value"].as_str(), Some(value.as_str()));
            }
        }
    }
    drop((a, b));
    assert_chain_verifies(&setup);
    // Either node may end the rotation; it ends, and is recorded, once.
    let completed = audit_records(&setup)
        .into_iter()
        .filter(|r| {
            r["action"] == "key_rotate" && r["reason"] == "completed" && r["namespace"] == "retail"
        })
        .count();
    assert_eq!(completed, 1);
}

/// The audit trail's surfaces on PostgreSQL: every action recorded with
/// its fields and no values, exports, queries and the API's pages.
/// (Breaking the trail through SQLite's files has its counterparts above:
/// the cut tail, and the trail that cannot be written.)
#[test]
fn the_audit_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::audit::every_kind_of_action_is_recorded_with_its_fields_and_no_values,
        crate::audit::exports_for_auditors_are_safe_to_open,
        crate::audit::queries_filter_and_format_and_the_api_paginates,
        crate::audit::since_takes_durations_and_output_to_a_closed_pipe_ends_quietly,
    ]);
}

/// Key rotation under load with a restart, pause and resume, one
/// namespace alone, and a rewrap, with the keyring in the database.
#[test]
fn the_keys_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::keys::a_rewrap_changes_the_passphrase_and_rewrites_no_row,
        crate::keys::a_rotation_under_load_survives_a_restart_and_ends_in_a_retired_version,
        crate::keys::a_paused_rotation_moves_nothing_until_resumed_and_one_namespace_can_rotate_alone,
    ]);
}

/// The canary scans, with the whole cluster directory (tables, WAL, the
/// server's log) among the files searched.
#[test]
fn the_leak_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::leak::caller_strings_never_reach_the_audit_trail,
        crate::leak::canaries_never_reach_disk_or_logs,
    ]);
}

/// Reloads, client commands, metrics and logs on PostgreSQL.
#[test]
fn the_operations_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::config::init_refuses_to_overwrite_and_serve_needs_the_right_passphrase,
        crate::config::client_list_shows_roles_auth_and_last_use,
        crate::config::keyfile_source_works_end_to_end,
        crate::reload::a_broken_or_restart_only_config_keeps_the_old_one_and_budgets_survive_a_reload,
        crate::reload::a_sighup_lets_a_new_client_in_and_a_revoked_one_is_shut_out_everywhere,
        crate::mtls::sighup_serves_a_new_certificate_without_dropping_connections,
        crate::metrics::metrics_count_real_traffic_and_no_label_carries_a_value_or_token,
        crate::logs::caller_text_never_forges_a_plain_log_line_or_leaks_a_url,
        crate::logs::with_json_logs_every_line_on_stdout_is_json,
    ]);
}

/// Durability, retention, tampered rows, number blocks, refusals counted
/// into the trail, and every documented operation of a live server.
#[test]
fn the_store_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::durability::every_token_received_survives_sigkill,
        crate::retention::a_retention_sweep_deletes_exactly_the_rows_unused_for_retain_days,
        crate::tamper::flipped_and_swapped_ciphertexts_fail_cleanly,
        crate::phone_tokens::phone_tokens_avoid_stored_numbers_and_stay_in_their_block,
        crate::auth_abuse::ten_thousand_refusals_add_a_few_dozen_audit_records,
        crate::auth_abuse::a_wrong_key_costs_the_same_for_known_and_unknown_clients,
        crate::openapi::a_live_server_answers_every_documented_operation,
    ]);
}

/// docs/operations.md's promise for backups on PostgreSQL: a subject
/// forgotten through one node after a `pg_dump` does not come back when
/// the dump is restored, because that node's tombstone list erases it
/// again at its next start; the other node's list holds its own erasures.
#[test]
fn a_restored_pg_dump_older_than_an_erasure_does_not_bring_the_subject_back() {
    let cluster = PgCluster::start(None);
    let setup = postgres_setup(&cluster, "");
    let out = setup.run(&["init", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = second_node(&setup);
    let (mut a, mut b) = (setup.serve(), other.serve());
    let tokenize_for = |server: &Server, subject: &str, value: &str| -> String {
        let (status, body) = post(
            server,
            "/v1/tokenize",
            &key("crm"),
            &serde_json::json!({"namespace": "retail", "items": [
                {"class": "email", "value": value, "subject": subject}]}),
        );
        assert_eq!(status, 200, "{body}");
        body["tokens"][0]["token"].as_str().unwrap().to_owned()
    };
    let gone = tokenize_for(&b, "CUST-GONE", "gone.after.dump@example.com");
    let kept = tokenize_for(&b, "CUST-KEPT", "kept.after.dump@example.com");
    let dump = setup.dir.path().join("vault.dump");
    cluster.dump(&dump);

    let (status, body) = post(
        &a,
        "/v1/subjects/forget",
        &key("dpo"),
        &serde_json::json!({"namespace": "retail", "subject": "CUST-GONE"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(a.stop().success() && b.stop().success());

    // The dump from before the erasure holds the subject again.
    cluster.restore(&dump);
    assert_eq!(
        cluster
            .psql_in(
                "vault",
                &format!("SELECT count(*) FROM tokenvault.tokens WHERE token = '{gone}'"),
            )
            .trim(),
        "1"
    );
    // Node B starts first: its list does not hold the erasure made through
    // A, so the row is still there; A's start erases it again.
    let b = other.serve();
    drop(b);
    let a = setup.serve();
    let answers = detokenize(&a, "admin", "retail", "support", &[gone.clone(), kept]);
    assert_eq!(answers[0]["error"]["code"], "not_found", "{answers:?}");
    assert_eq!(answers[1]["value"], "kept.after.dump@example.com");
    assert_eq!(
        cluster
            .psql_in(
                "vault",
                &format!("SELECT count(*) FROM tokenvault.tokens WHERE token = '{gone}'"),
            )
            .trim(),
        "0"
    );
    assert!(audit_records(&setup)
        .iter()
        .any(|r| r["action"] == "subject_forget" && r["reason"] == "tombstone_reapplied"));
}

#[test]
fn the_bulk_file_suite_passes_on_postgres() {
    each_on_postgres(&[
        crate::files::csv_goes_through_tokenize_and_back_with_every_other_byte_kept,
        crate::files::rejected_rows_are_reported_by_number_and_reason_never_by_value,
        // Also reads a large batch in parts, on several pooled connections.
        crate::files::a_run_killed_at_a_random_moment_resumes_to_the_same_bytes,
    ]);
}
