//! Soak: the release binary in `serve --dev` under a steady mixed load at
//! half of its measured capacity, with its resident memory sampled, to show
//! that memory levels off below the documented bound (docs/performance.md,
//! "Memory").
//!
//! 1. Capacity: `SOAK_WORKERS` clients send the mix as fast as answers come
//!    for `SOAK_PROBE_SECONDS`.
//! 2. Soak: the same clients, paced to half that rate, for `SOAK_SECONDS`
//!    (default 1800), while one more client presents wrong keys twice a
//!    second. RSS (VmRSS) and its peak (VmHWM) are read from /proc every
//!    `SOAK_SAMPLE_SECONDS`.
//!
//! The mix, per ten requests: four tokenize 10 new values (the store grows
//! all along), two tokenize 10 known ones, two detokenize 10 tokens, one
//! CleverTap getToken of a new value, one audit page of 100 records.
//!
//! Run: `cargo bench --bench soak` (optional env: SOAK_SECONDS,
//! SOAK_PROBE_SECONDS, SOAK_SAMPLE_SECONDS, SOAK_WORKERS, and the server's
//! own `TOKENVAULT_LIMITS__*` settings, which it passes through).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const API_KEY: &str = "tv.root.soak-key-0123456789abcdefghijklmnopqrstu";
const KNOWN: usize = 1000;

struct Server {
    child: Child,
    base: String,
}

impl Server {
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
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    /// `(VmRSS, VmHWM)` in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

struct Load {
    base: String,
    http: reqwest::blocking::Client,
    known_tokens: Vec<String>,
    errors: AtomicU64,
    /// Answers that were not 2xx, by status (0: no answer).
    statuses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl Load {
    fn post(&self, path: &str, body: Value) -> Option<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .json(&body)
            .send();
        let response = match response {
            Ok(response) if response.status().is_success() => response,
            other => {
                self.failed(other.map(|r| r.status().as_u16()).unwrap_or(0));
                return None;
            }
        };
        response.json().ok()
    }

    fn failed(&self, status: u16) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
    }

    /// Request `n` of worker `worker` in the mix.
    fn one(&self, worker: usize, n: u64) {
        let fresh = |i: usize| json!({"class": "email", "value": format!("soak.{worker}.{n}.{i}@example.com")});
        match n % 10 {
            0..=3 => {
                let items: Vec<Value> = (0..10).map(fresh).collect();
                self.post(
                    "/v1/tokenize",
                    json!({"namespace": "default", "items": items}),
                );
            }
            4 | 5 => {
                let items: Vec<Value> = (0..10)
                    .map(|i| json!({"class": "email", "value": known_value((n as usize * 10 + i) % KNOWN)}))
                    .collect();
                self.post(
                    "/v1/tokenize",
                    json!({"namespace": "default", "items": items}),
                );
            }
            6 | 7 => {
                let tokens: Vec<&String> = (0..10)
                    .map(|i| &self.known_tokens[(n as usize * 10 + i) % KNOWN])
                    .collect();
                self.post(
                    "/v1/detokenize",
                    json!({"namespace": "default", "purpose": "support", "tokens": tokens}),
                );
            }
            8 => {
                self.post(
                    "/ct-vault/api/tokenization/getToken",
                    json!({"value": format!("soak-ct-{worker}-{n}")}),
                );
            }
            _ => {
                let response = self
                    .http
                    .get(format!("{}/v1/audit?limit=100", self.base))
                    .bearer_auth(API_KEY)
                    .send();
                match response {
                    Ok(response) if response.status().is_success() => {}
                    other => self.failed(other.map(|r| r.status().as_u16()).unwrap_or(0)),
                }
            }
        }
    }
}

fn known_value(i: usize) -> String {
    format!("known.{i}@example.com")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the mix on every worker until `until`; with `pace`, each worker
/// sends one request per `pace`. Returns the number of requests sent.
fn run(load: &Arc<Load>, workers: usize, until: Instant, pace: Option<Duration>) -> Arc<AtomicU64> {
    let sent = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let load = load.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                while Instant::now() < until {
                    load.one(worker, n);
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if let Some(pace) = pace {
                        let due = start + pace * u32::try_from(n).unwrap_or(u32::MAX);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    sent
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let seconds = env_u64("SOAK_SECONDS", 1800);
    let probe = env_u64("SOAK_PROBE_SECONDS", 20);
    let sample = env_u64("SOAK_SAMPLE_SECONDS", 30);
    let workers = usize::try_from(env_u64("SOAK_WORKERS", 8)).unwrap();

    let server = Server::start();
    let http = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(workers + 2)
        .build()
        .unwrap();
    let items: Vec<Value> = (0..KNOWN)
        .map(|i| json!({"class": "email", "value": known_value(i)}))
        .collect();
    let answer: Value = http
        .post(format!("{}/v1/tokenize", server.base))
        .bearer_auth(API_KEY)
        .json(&json!({"namespace": "default", "items": items}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let known_tokens = answer["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect();
    let load = Arc::new(Load {
        base: server.base.clone(),
        http,
        known_tokens,
        errors: AtomicU64::new(0),
        statuses: Default::default(),
    });
    let (rss, _) = server.memory();
    println!("soak: {workers} clients; RSS after start and 1,000 known values: {rss:.1} MiB");

    let started = Instant::now();
    let probed = run(&load, workers, started + Duration::from_secs(probe), None);
    let capacity = probed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let target = capacity / 2.0;
    let pace = Duration::from_secs_f64(workers as f64 / target);
    let (rss, hwm) = server.memory();
    println!(
        "capacity: {capacity:.0} requests/s over {probe} s (RSS {rss:.1} MiB, peak {hwm:.1} MiB); soaking at {target:.0}/s for {seconds} s"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let intruder = {
        let base = server.base.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let _ = http
                    .post(format!("{base}/v1/tokenize"))
                    .bearer_auth(format!(
                        "tv.intruder{}.wrong-key-aaaaaaaaaaaaaaaaaaaaaaaa",
                        n % 50
                    ))
                    .json(&json!({"namespace": "default", "items": []}))
                    .send();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let soak_start = Instant::now();
    let until = soak_start + Duration::from_secs(seconds);
    let sampler = {
        let load = load.clone();
        std::thread::spawn(move || run(&load, workers, until, Some(pace)))
    };
    println!("{:>8} {:>10} {:>10}", "seconds", "RSS MiB", "peak MiB");
    let mut samples = Vec::new();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(sample).min(until - Instant::now()));
        let (rss, hwm) = server.memory();
        let elapsed = soak_start.elapsed().as_secs();
        samples.push(rss);
        println!("{elapsed:>8} {rss:>10.1} {hwm:>10.1}");
    }
    let sent = sampler.join().unwrap().load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    intruder.join().unwrap();
    let (rss, hwm) = server.memory();
    let third = (samples.len() / 3).max(1);
    let middle_max = samples[third.min(samples.len() - 1)..samples.len() - third]
        .iter()
        .copied()
        .fold(0.0, f64::max);
    let last_max = samples[samples.len() - third..]
        .iter()
        .copied()
        .fold(0.0, f64::max);
    println!(
        "soak: {sent} requests in {:.0} s ({:.0}/s), {} not 2xx {:?}; RSS at the end {rss:.1} MiB, peak {hwm:.1} MiB; highest RSS in the middle third {middle_max:.1} MiB, in the last third {last_max:.1} MiB ({:+.1}%)",
        soak_start.elapsed().as_secs_f64(),
        sent as f64 / soak_start.elapsed().as_secs_f64(),
        load.errors.load(Ordering::Relaxed),
        load.statuses.lock().unwrap(),
        (last_max / middle_max - 1.0) * 100.0
    );
}
