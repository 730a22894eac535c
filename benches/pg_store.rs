//! What group commit gains on PostgreSQL, at the store level: concurrent
//! callers each store one new value (one row and its audit record) at a
//! time, answered after the commit, through
//! - the SQLite store's writer (the baseline, in the same run);
//! - PostgreSQL, one transaction per call (`PgStore::store`);
//! - PostgreSQL through the node's writer (`PgStore::insert`: group
//!   commit).
//!
//! The cluster is a throwaway one started from Debian's `postgresql`
//! binaries with PostgreSQL's default durability (fsync and synchronous
//! commit on), on the same machine, so the database shares the CPU.
//!
//! Then the engine itself (tokenize new values, the same values again,
//! detokenize them; 1,000-item batches from concurrent workers) on SQLite,
//! on PostgreSQL through one node, and through two nodes sharing the
//! database (workers alternate between them).
//!
//! Run: `cargo bench --bench pg_store` (optional env: BENCH_CALLERS,
//! BENCH_CALLS, BENCH_ROUNDS, BENCH_WORKERS, BENCH_BATCHES).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../tests/it/pg_cluster.rs"]
#[allow(dead_code)]
mod pg_cluster;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;

use tokenvault::audit::{Action, Context, Outcome, Record};
use tokenvault::config::NamespaceSpec;
use tokenvault::config::{DatabaseUrl, PostgresSettings, SchemaName, SecretRef};
use tokenvault::crypto::keys::{AuditKey, MasterKey};
use tokenvault::crypto::wrapping::Keyring;
use tokenvault::policy::{Caller, Operation, Role};
use tokenvault::store::pg::PgStore;
use tokenvault::store::{NewRow, Store};
use tokenvault::vault::{TokenizeItem, Vault};

use pg_cluster::PgCluster;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct values across every round and variant.
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn one_row() -> (Vec<NewRow>, Vec<Record>) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut index = [0u8; 32];
    index[..8].copy_from_slice(&(n as u64).to_be_bytes());
    let row = NewRow {
        token: format!("tok-{n}"),
        class: "email".to_owned(),
        key_version: 1,
        sealed: vec![7; 60],
        blind_index: Some(index),
        subject_hash: None,
        used_day: 20_000,
    };
    let record = Context::cli("bench").record(Action::Tokenize, Outcome::Ok);
    (vec![row], vec![record])
}

/// Rows per second for `callers` async callers making `calls` each.
fn run_async<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    callers: usize,
    calls: usize,
    call: F,
) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let call = call.clone();
                tokio::spawn(async move {
                    for _ in 0..calls {
                        call().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    (callers * calls) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// Transactions committed in the vault database so far. Backends report
/// their counts when idle, at most once a second: wait for that first.
fn commits(cluster: &PgCluster) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    cluster
        .psql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'vault'")
        .trim()
        .parse()
        .unwrap()
}

fn main() {
    let callers = env("BENCH_CALLERS", 32);
    let calls = env("BENCH_CALLS", 100);
    let rounds = env("BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let master = MasterKey::generate(1);
    let key: Arc<AuditKey> = Arc::new(master.audit_key());

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        Store::open(
            &dir.path().join("vault.db"),
            &dir.path().join("audit.db"),
            master.audit_key(),
            16,
        )
        .unwrap(),
    );

    let cluster = PgCluster::start_durable();
    let settings = PostgresSettings {
        url: DatabaseUrl::parse(&cluster.url()).unwrap(),
        password: Some(SecretRef::File(cluster.password_file(dir.path()))),
        pool_size: u32::try_from(callers.min(64)).unwrap(),
        statement_timeout: std::time::Duration::from_secs(30),
        schema: SchemaName::parse("tokenvault").unwrap(),
        ca_file: None,
    };
    let postgres = Arc::new(PgStore::connect(&settings).unwrap());
    postgres.migrate().unwrap();
    // The engine's store on PostgreSQL: its writer batches the grouped run.
    let engine_store =
        Arc::new(Store::open_postgres(postgres.clone(), master.audit_key()).unwrap());
    let version: String = postgres
        .borrow()
        .unwrap()
        .query_one("SHOW server_version", &[])
        .unwrap()
        .get(0);

    println!(
        "{callers} concurrent callers x {calls} calls, one new value per call, {rounds} rounds (median); PostgreSQL {version}, fsync on"
    );
    let (mut lite, mut single, mut grouped) = (Vec::new(), Vec::new(), Vec::new());
    let (mut single_commits, mut grouped_commits) = (0, 0);
    for _ in 0..rounds {
        let store = sqlite.clone();
        lite.push(run_async(&runtime, callers, calls, move || {
            let store = store.clone();
            async move {
                let (rows, audit) = one_row();
                store.insert("retail", rows, audit).await.unwrap();
            }
        }));

        let before = commits(&cluster);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..callers {
                let (postgres, key) = (&postgres, &key);
                scope.spawn(move || {
                    for _ in 0..calls {
                        let (rows, audit) = one_row();
                        postgres.store(key, "retail", &rows, audit).unwrap();
                    }
                });
            }
        });
        single.push((callers * calls) as f64 / started.elapsed().as_secs_f64());
        single_commits = commits(&cluster) - before;

        let before = postgres.batches_committed();
        let store = engine_store.clone();
        grouped.push(run_async(&runtime, callers, calls, move || {
            let store = store.clone();
            async move {
                let (rows, audit) = one_row();
                store.insert("retail", rows, audit).await.unwrap();
            }
        }));
        grouped_commits = postgres.batches_committed() - before;
    }
    let (lite, single, grouped) = (median(lite), median(single), median(grouped));
    println!("sqlite, writer (group commit):        {lite:>9.0} values/s  (baseline)");
    println!(
        "postgres, a transaction per call:      {single:>9.0} values/s  {:.2}x sqlite  ({single_commits} commits in the last round)",
        single / lite
    );
    println!(
        "postgres, writer (group commit):       {grouped:>9.0} values/s  {:.2}x sqlite, {:.2}x per-call  ({grouped_commits} commits in the last round)",
        grouped / lite,
        grouped / single
    );
    engine_store.shutdown();
    sqlite.shutdown();

    engine(&runtime, &cluster, &settings);
}

const BATCH: usize = 1000;

fn namespaces() -> BTreeMap<String, NamespaceSpec> {
    common::email_namespace("retail")
}

fn caller() -> Caller {
    Caller {
        client: "bench".to_owned(),
        role: Arc::new(Role::unrestricted([
            Operation::Tokenize,
            Operation::Detokenize,
        ])),
    }
}

/// Items per second for new values, the same values again, and their
/// detokenization, with `workers` concurrent workers spread over `nodes`.
fn engine_round(
    runtime: &tokio::runtime::Runtime,
    nodes: &[Arc<Vault>],
    workers: usize,
    batches: usize,
    tag: &str,
) -> [f64; 3] {
    let values = |worker: usize, batch: usize| -> Vec<TokenizeItem> {
        common::email_items((0..BATCH).map(|i| format!("{tag}.{worker}.{batch}.{i}@example.com")))
    };
    let items = (workers * batches * BATCH) as f64;
    let mut figures = [0.0; 3];
    let mut tokens: Vec<Vec<String>> = Vec::new();
    for (phase, expect_new) in [(0, true), (1, false)] {
        let started = Instant::now();
        let done = runtime.block_on(async {
            let tasks: Vec<_> = (0..workers)
                .map(|worker| {
                    let vault = nodes[worker % nodes.len()].clone();
                    let batch_values: Vec<_> = (0..batches).map(|b| values(worker, b)).collect();
                    tokio::spawn(async move {
                        let (caller, context) = (caller(), Context::cli("bench"));
                        let mut all = Vec::new();
                        for items in batch_values {
                            let answered = vault
                                .tokenize(&context, &caller, "retail", items)
                                .await
                                .unwrap();
                            assert!(answered.iter().all(|t| t.created == expect_new));
                            all.push(answered.into_iter().map(|t| t.token).collect::<Vec<_>>());
                        }
                        all
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        figures[phase] = items / started.elapsed().as_secs_f64();
        tokens = done;
    }
    let started = Instant::now();
    let groups = tokens.chunks(batches).map(<[_]>::to_vec).collect();
    runtime.block_on(common::detokenize_groups(
        groups,
        |worker| nodes[worker % nodes.len()].clone(),
        &caller(),
        "retail",
    ));
    figures[2] = items / started.elapsed().as_secs_f64();
    figures
}

fn engine(runtime: &tokio::runtime::Runtime, cluster: &PgCluster, settings: &PostgresSettings) {
    let workers = env("BENCH_WORKERS", 4);
    let batches = env("BENCH_BATCHES", 5);
    let rounds = env("BENCH_ROUNDS", 3);
    let keyring = Keyring::ephemeral();
    let dir = tempfile::tempdir().unwrap();
    let vault = |store: Store| {
        let mut vault = Vault::new(Arc::new(store), &keyring, &namespaces());
        vault.set_purpose_names(["bench".to_owned()].into());
        Arc::new(vault)
    };
    let sqlite = vec![vault(
        Store::open(
            &dir.path().join("engine.db"),
            &dir.path().join("engine-audit.db"),
            keyring.audit_key(),
            16,
        )
        .unwrap(),
    )];
    let mut schema_settings = settings.clone();
    schema_settings.schema = SchemaName::parse("engine").unwrap();
    let node = || {
        let pg = Arc::new(PgStore::connect(&schema_settings).unwrap());
        pg.migrate().unwrap();
        vault(Store::open_postgres(pg, keyring.audit_key()).unwrap())
    };
    let one = vec![node()];
    let two = vec![one[0].clone(), node()];
    let _ = cluster;
    println!();
    println!(
        "engine: {workers} workers x {batches} batches of {BATCH} emails, {rounds} rounds (median), items/s"
    );
    let mut figures: BTreeMap<&str, Vec<[f64; 3]>> = BTreeMap::new();
    for round in 0..rounds {
        for (name, nodes) in [
            ("sqlite", &sqlite),
            ("postgres, 1 node", &one),
            ("postgres, 2 nodes", &two),
        ] {
            let tag = format!("{}.{round}", name.replace([' ', ','], ""));
            figures
                .entry(name)
                .or_default()
                .push(engine_round(runtime, nodes, workers, batches, &tag));
        }
    }
    let pick = |name: &str, index: usize| median(figures[name].iter().map(|f| f[index]).collect());
    println!(
        "{:<20} {:>10} {:>10} {:>12}",
        "", "new", "known", "detokenize"
    );
    for name in ["sqlite", "postgres, 1 node", "postgres, 2 nodes"] {
        println!(
            "{name:<20} {:>10.0} {:>10.0} {:>12.0}",
            pick(name, 0),
            pick(name, 1),
            pick(name, 2)
        );
    }
    for name in ["postgres, 1 node", "postgres, 2 nodes"] {
        println!(
            "{name} / sqlite:  new {:.2}x, known {:.2}x, detokenize {:.2}x",
            pick(name, 0) / pick("sqlite", 0),
            pick(name, 1) / pick("sqlite", 1),
            pick(name, 2) / pick("sqlite", 2)
        );
    }
}
