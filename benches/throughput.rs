//! Throughput of tokenize (new and known values) and detokenize, in-process
//! (the engine called directly: the baseline) and through HTTP (the release
//! binary in `serve --dev`, driven by concurrent clients), in 1,000-item
//! batches. Prints figures and the HTTP/in-process ratio for each.
//!
//! Run: `cargo bench --bench throughput` (optional env: BENCH_BATCHES,
//! BENCH_WORKERS).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenvault::config::{ClassSpec, NamespaceSpec};
use tokenvault::crypto::keyring::Keyring;
use tokenvault::crypto::tokens::TokenFormat;
use tokenvault::pii::Pii;
use tokenvault::policy::{Caller, Operation, Reveal, Role, Scope};
use tokenvault::store::Store;
use tokenvault::vault::normalize::Normalization;
use tokenvault::vault::{TokenizeItem, Vault};

const BATCH: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value(phase: &str, worker: usize, batch: usize, item: usize) -> String {
    format!("bench.{phase}.{worker}.{batch}.{item}@example.com")
}

struct Figures {
    new: f64,
    known: f64,
    detokenize: f64,
}

fn rate(items: usize, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64()
}

fn in_process(workers: usize, batches: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("vault.db")).unwrap());
    let classes = BTreeMap::from([(
        "email".to_owned(),
        ClassSpec {
            normalize: Normalization::Email,
            format: TokenFormat::Email,
            deterministic: true,
        },
    )]);
    let namespaces = BTreeMap::from([(
        "default".to_owned(),
        NamespaceSpec {
            token_domain: "tokens.invalid".to_owned(),
            classes,
        },
    )]);
    let vault = Arc::new(Vault::new(
        store.clone(),
        &Keyring::ephemeral(),
        &namespaces,
    ));
    let caller = Caller {
        client: "bench".to_owned(),
        role: Arc::new(Role {
            operations: [Operation::Tokenize, Operation::Detokenize].into(),
            namespaces: Scope::Any,
            classes: Scope::Any,
            purposes: Scope::Any,
            reveal: Reveal::Plain,
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let run_phase = |phase: &'static str,
                     values_phase: &'static str|
     -> (Duration, Vec<Vec<String>>) {
        runtime.block_on(async {
            let started = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|worker| {
                    let (vault, caller) = (vault.clone(), caller.clone());
                    tokio::spawn(async move {
                        let mut all = Vec::new();
                        for batch in 0..batches {
                            let items = (0..BATCH)
                                .map(|i| TokenizeItem {
                                    class: "email".to_owned(),
                                    value: Pii::new(value(values_phase, worker, batch, i)),
                                    subject: None,
                                })
                                .collect();
                            let tokens = vault.tokenize(&caller, "default", items).await.unwrap();
                            assert_eq!(tokens.len(), BATCH);
                            assert!(tokens.iter().all(|t| t.created == (phase == "new")));
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
    };
    let total = workers * batches * BATCH;
    let (new_time, tokens) = run_phase("new", "v");
    let (known_time, _) = run_phase("known", "v");
    let detokenize_time = runtime.block_on(async {
        let started = Instant::now();
        let chunks: Vec<Vec<Vec<String>>> = tokens.chunks(batches).map(<[_]>::to_vec).collect();
        let tasks: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (vault, caller) = (vault.clone(), caller.clone());
                tokio::spawn(async move {
                    for batch in chunk {
                        let values = vault
                            .detokenize(&caller, "default", "bench", batch)
                            .await
                            .unwrap();
                        assert_eq!(values.len(), BATCH);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        started.elapsed()
    });
    drop(vault);
    store.shutdown();
    Figures {
        new: rate(total, new_time),
        known: rate(total, known_time),
        detokenize: rate(total, detokenize_time),
    }
}

fn through_http(workers: usize, batches: usize) -> Figures {
    let api_key = "bench-root-key";
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenvault"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("TOKENVAULT_DEV_API_KEY", api_key)
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
    std::thread::spawn(move || for _ in lines {});
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Warm the server's key cache outside the timed part.
    client
        .post(format!("{base}/v1/tokenize"))
        .bearer_auth(api_key)
        .json(&json!({"namespace": "default", "items": [{"class": "email", "value": "warm@example.com"}]}))
        .send()
        .unwrap();
    let run_phase = |phase: &'static str| -> (Duration, Vec<Vec<String>>) {
        let started = Instant::now();
        let threads: Vec<_> = (0..workers)
            .map(|worker| {
                let (client, base) = (client.clone(), base.clone());
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    for batch in 0..batches {
                        let items: Vec<Value> = (0..BATCH)
                            .map(|i| json!({"class": "email", "value": value("v", worker, batch, i)}))
                            .collect();
                        let body: Value = client
                            .post(format!("{base}/v1/tokenize"))
                            .bearer_auth(api_key)
                            .json(&json!({"namespace": "default", "items": items}))
                            .send()
                            .unwrap()
                            .json()
                            .unwrap();
                        let tokens = body["tokens"].as_array().expect("tokens");
                        assert!(tokens.iter().all(|t| t["created"] == (phase == "new")));
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
    };
    let total = workers * batches * BATCH;
    let (new_time, tokens) = run_phase("new");
    let (known_time, _) = run_phase("known");
    let started = Instant::now();
    let threads: Vec<_> = tokens
        .chunks(batches)
        .map(<[_]>::to_vec)
        .map(|chunk| {
            let (client, base) = (client.clone(), base.clone());
            std::thread::spawn(move || {
                for batch in chunk {
                    let body: Value = client
                        .post(format!("{base}/v1/detokenize"))
                        .bearer_auth(api_key)
                        .json(&json!({"namespace": "default", "purpose": "bench", "tokens": batch}))
                        .send()
                        .unwrap()
                        .json()
                        .unwrap();
                    assert_eq!(body["values"].as_array().map(Vec::len), Some(BATCH));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let detokenize_time = started.elapsed();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    Figures {
        new: rate(total, new_time),
        known: rate(total, known_time),
        detokenize: rate(total, detokenize_time),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then this only checks that it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let workers = env_usize("BENCH_WORKERS", 4);
    let batches = env_usize("BENCH_BATCHES", 10);
    println!("tokenvault throughput: {workers} concurrent callers x {batches} batches x {BATCH} items, class email (deterministic)");
    let local = in_process(workers, batches);
    let remote = through_http(workers, batches);
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
