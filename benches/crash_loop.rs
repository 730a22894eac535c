//! Crash loop: concurrent clients write new values while the server is
//! killed with SIGKILL at random moments. After each restart:
//! - every token acknowledged with 200 since the last check must reveal its
//!   value (and, at the end, every token acknowledged in the whole run);
//! - `PRAGMA integrity_check` must be clean on `vault.db` and `audit.db`;
//! - `tokenvault audit verify` must pass.
//!
//! Run: `cargo bench --bench crash_loop`
//! Knobs: CRASH_CYCLES (10), CRASH_CLIENTS (4), CRASH_BATCH (50 values per
//! request), CRASH_MAX_MS (1500: the longest a cycle runs before the kill;
//! the shortest is 100), CRASH_SEED (from the clock; printed, to repeat a
//! run).
//!
//! Exits non-zero when anything acknowledged was lost or a check failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_tokenvault");

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(config: &Path) -> Self {
        let log = config.with_file_name("server.log");
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("tokenvault listening on ") {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, base, log }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "not a clean stop ({status}): {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// Writes the configuration and the key file, mints the client key, and
/// runs `init`; answers the configuration's path and the API key.
fn prepare(dir: &Path) -> (PathBuf, String) {
    let out = Command::new(BIN)
        .args(["client", "new", "loop", "--role", "loop"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tv.").map(|k| format!("tv.{k}")))
        .unwrap();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("api_key_hash = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let key_file = dir.join("master.key");
    std::fs::write(&key_file, rand::random::<[u8; 32]>()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("vault.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[storage]
data_dir = "{data}"

[keys]
source = "keyfile"
key_file = "{key_file}"

[namespaces.retail]
token_domain = "tok.retail.invalid"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"

[roles.loop]
operations = ["tokenize", "detokenize"]
namespaces = ["retail"]
purposes = ["crash_check"]
reveal = "plain"

[clients.loop]
role = "loop"
api_key_hash = "{hash}"
"#,
            data = dir.join("data").display(),
            key_file = key_file.display(),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (config, key)
}

/// Clients writing new values until the server goes away: every
/// `(value, token)` acknowledged with 200.
fn write_until_killed(
    base: &str,
    key: &str,
    clients: u64,
    batch: u64,
    next: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, String)>>> {
    (0..clients)
        .map(|_| {
            let (base, key, next, stop) =
                (base.to_owned(), key.to_owned(), next.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut acknowledged = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let first = next.fetch_add(batch, Ordering::SeqCst);
                    let values: Vec<String> = (first..first + batch)
                        .map(|i| format!("crash{i}@example.com"))
                        .collect();
                    let items: Vec<Value> = values
                        .iter()
                        .map(|v| json!({"class": "email", "value": v}))
                        .collect();
                    let Ok(response) = http
                        .post(format!("{base}/v1/tokenize"))
                        .bearer_auth(&key)
                        .json(&json!({"namespace": "retail", "items": items}))
                        .send()
                    else {
                        break;
                    };
                    if response.status() != 200 {
                        break;
                    }
                    let Ok(body) = response.json::<Value>() else {
                        break;
                    };
                    for (value, token) in values.into_iter().zip(body["tokens"].as_array().unwrap())
                    {
                        acknowledged.push((value, token["token"].as_str().unwrap().to_owned()));
                    }
                }
                acknowledged
            })
        })
        .collect()
}

/// How many of `acknowledged` do not reveal their value.
fn lost(base: &str, key: &str, acknowledged: &[(String, String)]) -> usize {
    let http = reqwest::blocking::Client::new();
    let mut lost = 0;
    for chunk in acknowledged.chunks(1000) {
        let tokens: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
        let response = http
            .post(format!("{base}/v1/detokenize"))
            .bearer_auth(key)
            .json(&json!({"namespace": "retail", "purpose": "crash_check", "tokens": tokens}))
            .send()
            .unwrap();
        let status = response.status();
        let body: Value = response.json().unwrap();
        if status != 200 {
            eprintln!("detokenize answered {status}: {body}");
            lost += chunk.len();
            continue;
        }
        let values = body["values"].as_array().unwrap();
        lost += chunk
            .iter()
            .zip(values)
            .filter(|((value, _), revealed)| revealed["value"] != value.as_str())
            .count();
    }
    lost
}

fn integrity_ok(path: &Path) -> bool {
    let connection = rusqlite::Connection::open(path).unwrap();
    let answer: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    answer == "ok"
}

fn main() {
    let cycles = env("CRASH_CYCLES", 10);
    let clients = env("CRASH_CLIENTS", 4);
    let batch = env("CRASH_BATCH", 50);
    let max_ms = env("CRASH_MAX_MS", 1500).max(101);
    let seed = env(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (config, key) = prepare(dir.path());
    let data = dir.path().join("data");
    println!(
        "crash loop: {cycles} cycles, {clients} clients, batches of {batch}, kill after 100..{max_ms} ms, seed {seed}"
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut all: Vec<(String, String)> = Vec::new();
    let (mut lost_total, mut integrity_failures, mut verify_failures) = (0usize, 0u64, 0u64);
    for cycle in 1..=cycles {
        let server = Server::start(&config);
        let stop = Arc::new(AtomicBool::new(false));
        let writers = write_until_killed(&server.base, &key, clients, batch, &next, &stop);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..max_ms)));
        server.kill();
        stop.store(true, Ordering::SeqCst);
        let fresh: Vec<(String, String)> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        // Restart: what was acknowledged in this cycle must be there.
        let server = Server::start(&config);
        let lost_now = lost(&server.base, &key, &fresh);
        server.stop();
        let integrity =
            integrity_ok(&data.join("vault.db")) && integrity_ok(&data.join("audit.db"));
        let verified = Command::new(BIN)
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .output()
            .unwrap()
            .status
            .success();
        lost_total += lost_now;
        integrity_failures += u64::from(!integrity);
        verify_failures += u64::from(!verified);
        all.extend(fresh);
        if cycle % 10 == 0 || lost_now > 0 || !integrity || !verified || cycle == cycles {
            println!(
                "cycle {cycle}: {} acknowledged in all, {lost_total} lost, {integrity_failures} integrity failures, {verify_failures} verify failures, {:.0} s",
                all.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Every token of the whole run, once more.
    let server = Server::start(&config);
    let lost_at_end = lost(&server.base, &key, &all);
    server.stop();
    println!();
    println!("| cycles | clients | batch | tokens acknowledged | lost after their restart | lost at the end | integrity failures | verify failures | minutes |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {cycles} | {clients} | {batch} | {} | {lost_total} | {lost_at_end} | {integrity_failures} | {verify_failures} | {:.1} |",
        all.len(),
        started.elapsed().as_secs_f64() / 60.0
    );
    if all.is_empty() || lost_total + lost_at_end > 0 || integrity_failures + verify_failures > 0 {
        eprintln!("crash loop FAILED (or acknowledged nothing)");
        std::process::exit(1);
    }
}
