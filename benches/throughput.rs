//! Throughput of tokenize (new and known values) and detokenize, in-process
//! (the engine called directly: the baseline) and through HTTP (the release
//! binary in `serve --dev`, driven by concurrent clients), in 1,000-item
//! batches. Rounds alternate between the two so both see the same machine
//! state; the median round is reported with the HTTP/in-process ratio.
//!
//! Run: `cargo bench --bench throughput` (optional env: BENCH_WORKERS,
//! BENCH_BATCHES, BENCH_ROUNDS).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenvault::audit::Context;
use tokenvault::crypto::wrapping::Keyring;
use tokenvault::policy::{Caller, Operation, Role};
use tokenvault::store::Store;
use tokenvault::vault::Vault;

const BATCH: usize = 1000;
const API_KEY: &str = "bench-root-key";

#[derive(Clone, Copy)]
struct Shape {
    workers: usize,
    batches: usize,
}

impl Shape {
    fn items(self) -> usize {
        self.workers * self.batches * BATCH
    }
}

struct Figures {
    new: f64,
    known: f64,
    detokenize: f64,
}

fn value(round: usize, worker: usize, batch: usize, item: usize) -> String {
    format!("bench.{round}.{worker}.{batch}.{item}@example.com")
}

fn rate(items: usize, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The engine called directly, on a tokio runtime like the server's.
struct InProcess {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    vault: Arc<Vault>,
    caller: Caller,
    runtime: tokio::runtime::Runtime,
}

impl InProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::ephemeral();
        let store = Arc::new(
            Store::open(
                &dir.path().join("vault.db"),
                &dir.path().join("audit.db"),
                keyring.audit_key(),
                tokenvault::config::Limits::default().sqlite_cache_mib,
            )
            .unwrap(),
        );
        let namespaces = common::email_namespace("default");
        let vault = Arc::new(Vault::new(
            store.clone(),
            &Keyring::ephemeral(),
            &namespaces,
        ));
        let caller = Caller {
            client: "bench".to_owned(),
            role: Arc::new(Role::unrestricted([
                Operation::Tokenize,
                Operation::Detokenize,
            ])),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            _dir: dir,
            store,
            vault,
            caller,
            runtime,
        }
    }

    /// What one concurrent caller task needs.
    fn handles(&self) -> (Arc<Vault>, Caller, Context) {
        (
            self.vault.clone(),
            self.caller.clone(),
            Context::cli("bench"),
        )
    }

    fn tokenize_phase(
        &self,
        round: usize,
        shape: Shape,
        expect_new: bool,
    ) -> (Duration, Vec<Vec<String>>) {
        self.runtime.block_on(async {
            let started = Instant::now();
            let tasks: Vec<_> = (0..shape.workers)
                .map(|worker| {
                    let (vault, caller, context) = self.handles();
                    tokio::spawn(async move {
                        let mut all = Vec::new();
                        for batch in 0..shape.batches {
                            let items = common::email_items(
                                (0..BATCH).map(|i| value(round, worker, batch, i)),
                            );
                            let tokens = vault
                                .tokenize(&context, &caller, "default", items)
                                .await
                                .unwrap();
                            assert!(tokens.iter().all(|t| t.created == expect_new));
                            all.push(tokens.into_iter().map(|t| t.token).collect::<Vec<_>>());
                        }
                        all
                    })
                })
                .collect();
            let mut tokens = Vec::new();
            for task in tasks {
                tokens.extend(task.await.unwrap());
            }
            (started.elapsed(), tokens)
        })
    }

    fn round(&self, round: usize, shape: Shape) -> Figures {
        let (new_time, tokens) = self.tokenize_phase(round, shape, true);
        let (known_time, _) = self.tokenize_phase(round, shape, false);
        let started = Instant::now();
        let groups = tokens.chunks(shape.batches).map(<[_]>::to_vec).collect();
        self.runtime.block_on(common::detokenize_groups(
            groups,
            |_| self.vault.clone(),
            &self.caller,
            "default",
        ));
        let detokenize_time = started.elapsed();
        let items = shape.items();
        Figures {
            new: rate(items, new_time),
            known: rate(items, known_time),
            detokenize: rate(items, detokenize_time),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.store.shutdown();
    }
}

/// The release binary in `serve --dev`, called by blocking HTTP clients on
/// one thread per worker.
struct ThroughHttp {
    child: Child,
    base: String,
    client: reqwest::blocking::Client,
}

impl ThroughHttp {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokenvault"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env("TOKENVAULT_DEV_API_KEY", API_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(url) = line.strip_prefix("tokenvault listening on ") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        // Warm the server's API key cache outside the timed part.
        let warm = json!({"namespace": "default", "items": [{"class": "email", "value": "warm@example.com"}]});
        client
            .post(format!("{base}/v1/tokenize"))
            .bearer_auth(API_KEY)
            .json(&warm)
            .send()
            .unwrap();
        Self {
            child,
            base,
            client,
        }
    }

    fn call(client: &reqwest::blocking::Client, url: &str, body: &Value) -> Value {
        client
            .post(url)
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    fn tokenize_phase(
        &self,
        round: usize,
        shape: Shape,
        expect_new: bool,
    ) -> (Duration, Vec<Vec<String>>) {
        let started = Instant::now();
        let threads: Vec<_> = (0..shape.workers)
            .map(|worker| {
                let (client, url) = (self.client.clone(), format!("{}/v1/tokenize", self.base));
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    for batch in 0..shape.batches {
                        let items: Vec<Value> = (0..BATCH)
                            .map(|i| json!({"class": "email", "value": value(round, worker, batch, i)}))
                            .collect();
                        let body = Self::call(&client, &url, &json!({"namespace": "default", "items": items}));
                        let tokens = body["tokens"].as_array().expect("tokens");
                        assert!(tokens.iter().all(|t| t["created"] == expect_new));
                        all.push(tokens.iter().map(|t| t["token"].as_str().unwrap().to_owned()).collect());
                    }
                    all
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for thread in threads {
            tokens.extend(thread.join().unwrap());
        }
        (started.elapsed(), tokens)
    }

    fn round(&self, round: usize, shape: Shape) -> Figures {
        let (new_time, tokens) = self.tokenize_phase(round, shape, true);
        let (known_time, _) = self.tokenize_phase(round, shape, false);
        let started = Instant::now();
        let threads: Vec<_> = tokens
            .chunks(shape.batches)
            .map(<[_]>::to_vec)
            .map(|chunk| {
                let (client, url) = (self.client.clone(), format!("{}/v1/detokenize", self.base));
                std::thread::spawn(move || {
                    for batch in chunk {
                        let request =
                            json!({"namespace": "default", "purpose": "bench", "tokens": batch});
                        let body = Self::call(&client, &url, &request);
                        assert_eq!(body["values"].as_array().map(Vec::len), Some(BATCH));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let detokenize_time = started.elapsed();
        let items = shape.items();
        Figures {
            new: rate(items, new_time),
            known: rate(items, known_time),
            detokenize: rate(items, detokenize_time),
        }
    }
}

impl Drop for ThroughHttp {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then this only checks that it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let shape = Shape {
        workers: env_usize("BENCH_WORKERS", 4),
        batches: env_usize("BENCH_BATCHES", 10),
    };
    let rounds = env_usize("BENCH_ROUNDS", 5);
    println!(
        "tokenvault throughput: {} concurrent callers x {} batches x {BATCH} items per phase, \
         class email (deterministic), median of {rounds} alternating rounds",
        shape.workers, shape.batches
    );
    let in_process = InProcess::start();
    let through_http = ThroughHttp::start();
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        local.push(in_process.round(round, shape));
        remote.push(through_http.round(round, shape));
        let (l, r) = (&local[round], &remote[round]);
        println!(
            "round {round}: in-process new {:.0} known {:.0} detokenize {:.0}; http new {:.0} known {:.0} detokenize {:.0}",
            l.new, l.known, l.detokenize, r.new, r.known, r.detokenize
        );
    }
    let summary = |figures: &[Figures]| Figures {
        new: median(figures.iter().map(|f| f.new).collect()),
        known: median(figures.iter().map(|f| f.known).collect()),
        detokenize: median(figures.iter().map(|f| f.detokenize).collect()),
    };
    let (local, remote) = (summary(&local), summary(&remote));
    println!();
    println!("| operation | in-process (items/s, baseline) | through HTTP (items/s) | HTTP / in-process |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, a, b) in [
        ("tokenize, new values", local.new, remote.new),
        ("tokenize, known values", local.known, remote.known),
        ("detokenize", local.detokenize, remote.detokenize),
    ] {
        println!("| {name} | {a:.0} | {b:.0} | {:.0}% |", 100.0 * b / a);
    }
}
