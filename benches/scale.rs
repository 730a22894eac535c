//! The store at scale: grows a vault to 10 million tokens through the
//! engine's bulk path (`Vault::tokenize` in large batches from concurrent
//! callers, the same group commit the server uses) and, at each step,
//! measures new-value inserts, known-value tokenize and detokenize, and the
//! process's resident memory idle and under that load.
//!
//! Run: `cargo bench --bench scale`
//! Knobs: SCALE_STEPS (`100000,1000000,10000000`), SCALE_WORKERS (8),
//! SCALE_BATCH (2000 items), SCALE_SAMPLE (40000 items per measurement),
//! SCALE_DIR (keep the data there instead of a temporary directory).
//!
//! Known values are measured with the engine's cache of known values off,
//! so that the figure is the store's (a cache would hide the index depth).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use tokenvault::audit::Context;
use tokenvault::crypto::wrapping::Keyring;
use tokenvault::policy::{Caller, Operation, Role};
use tokenvault::store::Store;
use tokenvault::vault::Vault;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value(i: usize) -> String {
    format!("scale.{i}@example.com")
}

/// Which value the `i`-th item is.
type ValueOf = Arc<dyn Fn(usize) -> String + Send + Sync>;

struct Bench {
    vault: Arc<Vault>,
    caller: Caller,
    runtime: tokio::runtime::Runtime,
    workers: usize,
    batch: usize,
}

impl Bench {
    /// Tokenizes `value_of(i)` for `i` in `from..to`, in batches from
    /// concurrent callers, checking that each token was created or not as
    /// `expect_new` says; answers every `keep`-th token with its index.
    fn tokenize(
        &self,
        (from, to): (usize, usize),
        value_of: ValueOf,
        expect_new: Option<bool>,
        keep: usize,
        progress: bool,
    ) -> Vec<(usize, String)> {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
        let started = Instant::now();
        self.runtime.block_on(async {
            let tasks: Vec<_> = (0..self.workers)
                .map(|_| {
                    let (vault, caller, next, value_of) = (
                        self.vault.clone(),
                        self.caller.clone(),
                        next.clone(),
                        value_of.clone(),
                    );
                    let batch = self.batch;
                    tokio::spawn(async move {
                        let context = Context::cli("bench");
                        let mut kept = Vec::new();
                        loop {
                            let start = next.fetch_add(batch, std::sync::atomic::Ordering::SeqCst);
                            if start >= to {
                                return kept;
                            }
                            let end = (start + batch).min(to);
                            let items = common::email_items((start..end).map(|i| value_of(i)));
                            let tokens = vault
                                .tokenize(&context, &caller, "default", items)
                                .await
                                .unwrap();
                            if let Some(new) = expect_new {
                                assert!(tokens.iter().all(|t| t.created == new));
                            }
                            for (i, token) in (start..end).zip(tokens) {
                                if i.is_multiple_of(keep) {
                                    kept.push((i, token.token));
                                }
                            }
                            if progress && (start / batch).is_multiple_of(250) && start > from {
                                let done = start - from;
                                let rate = done as f64 / started.elapsed().as_secs_f64();
                                eprintln!(
                                    "  fill: {start} rows, {rate:.0} rows/s, ETA {:.0} s",
                                    (to - start) as f64 / rate
                                );
                            }
                        }
                    })
                })
                .collect();
            let mut kept = Vec::new();
            for task in tasks {
                kept.extend(task.await.unwrap());
            }
            kept
        })
    }

    /// Detokenizes `tokens` in batches from concurrent callers.
    fn detokenize(&self, tokens: &[String]) {
        let batches: Vec<Vec<String>> = tokens.chunks(self.batch).map(<[_]>::to_vec).collect();
        let per_worker = batches.len().div_ceil(self.workers).max(1);
        let groups = batches.chunks(per_worker).map(<[_]>::to_vec).collect();
        self.runtime.block_on(common::detokenize_groups(
            groups,
            |_| self.vault.clone(),
            &self.caller,
            "default",
        ));
    }
}

fn main() {
    let steps: Vec<usize> = std::env::var("SCALE_STEPS")
        .unwrap_or_else(|_| "100000,1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let workers = env("SCALE_WORKERS", 8);
    let batch = env("SCALE_BATCH", 2000);
    let sample = env("SCALE_SAMPLE", 40_000);
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var("SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| temp.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();
    let keyring = Keyring::ephemeral();
    let store = Arc::new(
        Store::open(
            &dir.join("vault.db"),
            &dir.join("audit.db"),
            keyring.audit_key(),
            tokenvault::config::Limits::default().sqlite_cache_mib,
        )
        .unwrap(),
    );
    let namespaces = common::email_namespace("default");
    let mut vault = Vault::new(store, &keyring, &namespaces);
    vault.set_token_cache(0);
    let caller = Caller {
        client: "bench".to_owned(),
        role: Arc::new(Role::unrestricted([
            Operation::Tokenize,
            Operation::Detokenize,
        ])),
    };
    let bench = Bench {
        vault: Arc::new(vault),
        caller,
        runtime: tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
        workers,
        batch,
    };
    println!(
        "scale: {workers} callers, batches of {batch}, {sample} items per measurement, data in {}",
        dir.display()
    );
    println!();
    println!("| rows | fill (rows/s) | new values (items/s) | known values (items/s) | detokenize (items/s) | RSS idle (MiB) | RSS peak (MiB) |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rows = 0usize;
    // Every 97th token, for the detokenize sample across the whole store.
    let mut kept: Vec<(usize, String)> = Vec::new();
    // Values past every step, for the new-value measurement.
    let mut fresh = 1usize << 40;
    for step in steps {
        let started = Instant::now();
        if step > rows {
            kept.extend(bench.tokenize((rows, step), Arc::new(value), None, 97, true));
        }
        let fill = (step - rows) as f64 / started.elapsed().as_secs_f64();
        rows = step;
        let (idle, _) = common::memory_mib();
        // New values, past everything stored.
        let started = Instant::now();
        bench.tokenize(
            (fresh, fresh + sample),
            Arc::new(value),
            Some(true),
            usize::MAX,
            false,
        );
        let new = sample as f64 / started.elapsed().as_secs_f64();
        fresh += sample;
        // Known values, spread over the whole store.
        let stride = (rows / sample).max(1);
        let started = Instant::now();
        let spread: ValueOf = Arc::new(move |k| value((k * stride) % rows));
        bench.tokenize((0, sample), spread, Some(false), usize::MAX, false);
        let known = sample as f64 / started.elapsed().as_secs_f64();
        // Detokenize, spread over the whole store.
        let stride = (kept.len() / sample).max(1);
        let tokens: Vec<String> = kept
            .iter()
            .step_by(stride)
            .take(sample)
            .map(|(_, t)| t.clone())
            .collect();
        let started = Instant::now();
        bench.detokenize(&tokens);
        let detokenize = tokens.len() as f64 / started.elapsed().as_secs_f64();
        let (_, peak) = common::memory_mib();
        println!("| {rows} | {fill:.0} | {new:.0} | {known:.0} | {detokenize:.0} | {idle:.1} | {peak:.1} |");
    }
}
