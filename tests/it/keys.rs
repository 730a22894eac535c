//! Master keys: a rewrap changes the passphrase and touches no row; a
//! rotation moves every row under load, survives a restart, and ends in a
//! retired version.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::*;

/// A digest of every token row as stored (sealed bytes included).
fn rows_digest(setup: &Setup) -> String {
    if let Some(cluster) = &setup.postgres {
        return cluster.psql_in(
            "vault",
            "SELECT md5(string_agg(namespace || '|' || token || '|' || class || '|' || key_version \
             || '|' || encode(sealed, 'hex') || '|' || coalesce(encode(blind_index, 'hex'), ''), \
             ',' ORDER BY namespace, token)) FROM tokenvault.tokens",
        );
    }
    let db = rusqlite::Connection::open_with_flags(
        setup.data_dir.join("vault.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = db
        .prepare("SELECT namespace, token, class, key_version, sealed, blind_index FROM tokens ORDER BY namespace, token")
        .unwrap();
    let mut rows = statement.query([]).unwrap();
    let mut hasher = Sha256::new();
    while let Some(row) = rows.next().unwrap() {
        for i in 0..6 {
            let value: rusqlite::types::Value = row.get(i).unwrap();
            hasher.update(format!("{value:?}|").as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

fn keys(args: &[&str], setup: &Setup) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .unwrap()
}

#[test]
pub fn a_rewrap_changes_the_passphrase_and_rewrites_no_row() {
    let setup = Setup::new_passphrase("");
    let mut server = setup.serve();
    let tokens = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "rewrap@example.com"), ("name", "Re Wrap")],
    );
    server.stop();
    let before = rows_digest(&setup);
    let status = keys(&["status"], &setup);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        status_text.contains("master key v1 (newest): 2 rows"),
        "{status_text}"
    );

    let new_passphrase = setup.dir.path().join("new-passphrase");
    fs::write(&new_passphrase, "an entirely new passphrase\n").unwrap();
    fs::set_permissions(&new_passphrase, fs::Permissions::from_mode(0o600)).unwrap();
    let out = keys(
        &[
            "rewrap",
            "--new-passphrase-file",
            new_passphrase.to_str().unwrap(),
        ],
        &setup,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The old passphrase no longer opens the vault.
    let old = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        !old.status.success(),
        "the old passphrase still opens the vault"
    );
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("unwrap"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );

    // The new one does, and every token still detokenizes.
    let config = fs::read_to_string(&setup.config).unwrap();
    let old_line = config
        .lines()
        .find(|line| line.starts_with("passphrase_file"))
        .unwrap()
        .to_owned();
    fs::write(
        &setup.config,
        config.replace(
            &old_line,
            &format!("passphrase_file = \"{}\"", new_passphrase.display()),
        ),
    )
    .unwrap();
    let server = setup.serve();
    let values = detokenize(&server, "admin", "retail", "support", &tokens);
    assert_eq!(values[0]["value"], "rewrap@example.com");
    assert_eq!(values[1]["value"], "Re Wrap");
    drop(server);

    // No row was rewritten: the rows are byte for byte the same, and the
    // counts per key version too.
    assert_eq!(rows_digest(&setup), before);
    let status = keys(&["status"], &setup);
    assert_eq!(String::from_utf8_lossy(&status.stdout), status_text);
    assert!(audit_records(&setup)
        .iter()
        .any(|r| r["action"] == "key_rewrap"));
}

#[test]
fn status_reports_the_running_vault_keys_tokens_and_last_backup() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let status = |setup: &Setup| -> serde_json::Value {
        let out = std::process::Command::new(BIN)
            .args(["status", "--format", "json", "--config"])
            .arg(&setup.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = status(&setup);
    assert_eq!(before["last_backup"], serde_json::Value::Null);
    tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "status@example.com"), ("name", "Stat Us")],
    );
    let file = setup.dir.path().join("status.backup");
    let out = std::process::Command::new(BIN)
        .args(["backup", "create", "--out"])
        .arg(&file)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    // The running vault was started with a port of its own choosing, not
    // the configured 127.0.0.1:0: point the configuration at it.
    let address = server.base.trim_start_matches("http://").to_owned();
    let text = fs::read_to_string(&setup.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{address}\""),
    );
    fs::write(&setup.config, text).unwrap();
    let now = status(&setup);
    assert_eq!(now["vault"]["running"], true, "{now}");
    assert_eq!(now["vault"]["ready"], true);
    assert!(now["vault"]["uptime_seconds"].is_u64(), "{now}");
    assert_eq!(now["tokens"]["retail"], 2);
    assert_eq!(now["master_keys"]["versions"], serde_json::json!([1]));
    assert_eq!(now["master_keys"]["rows"]["v1"], 2);
    assert!(now["last_backup"].is_string());
    assert!(now["audit_head"].as_u64().unwrap() > before["audit_head"].as_u64().unwrap_or(0));
    assert_eq!(now["config"]["sha256"].as_str().unwrap().len(), 64);
    server.stop();
    assert_eq!(status(&setup)["vault"]["running"], false);
}

/// Rows per master key version, from the database itself.
fn rows_per_version(setup: &Setup) -> BTreeMap<u32, i64> {
    if let Some(cluster) = &setup.postgres {
        return cluster
            .psql_in(
                "vault",
                "SELECT key_version || '=' || count(*) FROM tokenvault.tokens GROUP BY key_version",
            )
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(version, count)| (version.parse().unwrap(), count.parse().unwrap()))
            .collect();
    }
    let db = rusqlite::Connection::open_with_flags(
        setup.data_dir.join("vault.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let counts = db
        .prepare("SELECT key_version, count(*) FROM tokens GROUP BY key_version")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    counts
}

/// Known values must keep their tokens and new ones must be answered,
/// until `stop`; answers (requests, refused, new (value, token) pairs).
fn load(
    base: &str,
    known: &[(String, String)],
    stop: &AtomicBool,
    round: &mut u64,
) -> (u64, u64, Vec<(String, String)>) {
    let (mut requests, mut refused, mut created) = (0, 0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        *round += 1;
        let sample: Vec<&(String, String)> = known
            .iter()
            .skip((*round as usize * 7) % known.len())
            .take(20)
            .collect();
        let mut items: Vec<(&str, String)> = sample
            .iter()
            .map(|(value, _)| ("email", value.clone()))
            .collect();
        for i in 0..10 {
            items.push(("email", format!("during-{}-{i}@rotation.example", *round)));
        }
        requests += 1;
        match tokenize_at(base, &items) {
            Some(tokens) => {
                for ((value, token), got) in sample.iter().zip(&tokens) {
                    assert_eq!(got, token, "{value} changed token during the rotation");
                }
                for ((_, value), token) in items.iter().zip(&tokens).skip(sample.len()) {
                    created.push((value.clone(), token.clone()));
                }
            }
            None => refused += 1,
        }
    }
    (requests, refused, created)
}

#[test]
pub fn a_rotation_under_load_survives_a_restart_and_ends_in_a_retired_version() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    // 1,500 emails (deterministic), 300 notes (random), a few in the
    // other namespaces.
    let mut known: Vec<(String, String)> = Vec::new();
    for batch in 0..15 {
        let values: Vec<String> = (0..100)
            .map(|i| format!("person-{batch}-{i}@rotation.example"))
            .collect();
        let items: Vec<(&str, &str)> = values.iter().map(|v| ("email", v.as_str())).collect();
        let tokens = tokenize(&server, "crm", "retail", &items);
        known.extend(values.into_iter().zip(tokens));
    }
    let notes: Vec<(String, String)> = (0..3)
        .flat_map(|batch| {
            let values: Vec<String> = (0..100).map(|i| format!("note {batch}/{i}")).collect();
            let items: Vec<(&str, &str)> = values.iter().map(|v| ("note", v.as_str())).collect();
            let tokens = tokenize(&server, "crm", "retail", &items);
            values.into_iter().zip(tokens).collect::<Vec<_>>()
        })
        .collect();
    let health = tokenize(&server, "crm", "health", &[("email", "h@rotation.example")]);
    assert_eq!(rows_per_version(&setup), BTreeMap::from([(1, 1801)]));

    // Rotate at a bounded rate, so that the restart lands in the middle.
    let out = keys(&["rotate", "--rows-per-second", "400"], &setup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stop = AtomicBool::new(false);
    let mut round = 0;
    let mut created = Vec::new();
    let base = server.base.clone();
    let (requests, refused, more) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&base, &known, &stop, &mut round));
        // Wait until rows move, then check the old version cannot go yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rows_per_version(&setup).get(&2).copied().unwrap_or(0) < 300 {
            assert!(Instant::now() < deadline, "the rotation does not move rows");
            std::thread::sleep(Duration::from_millis(50));
        }
        let early = keys(&["retire", "1"], &setup);
        assert!(!early.status.success(), "retired a version rows still use");
        assert!(
            String::from_utf8_lossy(&early.stderr).contains("still in use"),
            "{}",
            String::from_utf8_lossy(&early.stderr)
        );
        let status = String::from_utf8_lossy(&keys(&["status"], &setup).stdout).into_owned();
        assert!(
            status.contains("retail: writes with v2, rotation running"),
            "{status}"
        );
        let out = std::process::Command::new(BIN)
            .args(["status", "--format", "json", "--config"])
            .arg(&setup.config)
            .output()
            .unwrap();
        let overall: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let retail = overall["master_keys"]["rotations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["namespace"] == "retail")
            .cloned()
            .unwrap();
        assert_eq!(retail["to_version"], 2, "{overall}");
        assert!(retail["left"].as_u64().unwrap() > 0, "{overall}");
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    assert_eq!(refused, 0, "{refused} of {requests} requests refused");
    created.extend(more);
    // A restart in the middle of the rotation (SIGKILL: no goodbye).
    let before_kill = rows_per_version(&setup);
    assert!(
        before_kill.get(&1).copied().unwrap_or(0) > 0,
        "the rotation ended before the restart: {before_kill:?}"
    );
    server.kill();
    let server = setup.serve();
    stop.store(false, Ordering::SeqCst);
    let base = server.base.clone();
    let (requests, refused, more) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&base, &known, &stop, &mut round));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = String::from_utf8_lossy(&keys(&["status"], &setup).stdout).into_owned();
            if status.contains("retail: writes with v2\n")
                && status.contains("health: writes with v2\n")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rotation did not finish: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    assert_eq!(refused, 0, "{refused} of {requests} requests refused");
    created.extend(more);
    let after = rows_per_version(&setup);
    assert_eq!(after.get(&1), None, "rows left under v1: {after:?}");
    let status = String::from_utf8_lossy(&keys(&["status"], &setup).stdout).into_owned();
    assert!(status.contains("master key v1: 0 rows"), "{status}");

    // The old version goes; every token, old and new, still answers.
    let out = keys(&["retire", "1"], &setup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let server = setup.serve();
    let status = String::from_utf8_lossy(&keys(&["status"], &setup).stdout).into_owned();
    assert!(!status.contains("master key v1"), "{status}");
    for chunk in known
        .chunks(500)
        .chain(created.chunks(500))
        .chain(notes.chunks(500))
    {
        let tokens: Vec<String> = chunk.iter().map(|(_, token)| token.clone()).collect();
        let values = detokenize(&server, "admin", "retail", "support", &tokens);
        for ((value, _), answer) in chunk.iter().zip(&values) {
            assert_eq!(answer["value"].as_str(), Some(value.as_str()));
        }
    }
    let values = detokenize(&server, "admin", "health", "support", &health);
    assert_eq!(values[0]["value"], "h@rotation.example");
    // Known values still get their tokens after the retirement.
    let sample: Vec<(&str, &str)> = known
        .iter()
        .take(50)
        .map(|(v, _)| ("email", v.as_str()))
        .collect();
    let again = tokenize(&server, "crm", "retail", &sample);
    let expected: Vec<String> = known.iter().take(50).map(|(_, t)| t.clone()).collect();
    assert_eq!(again, expected);
    drop(server);
    assert_chain_verifies(&setup);
    let records = audit_records(&setup);
    let rotate: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "key_rotate")
        .collect();
    assert!(rotate
        .iter()
        .any(|r| r["reason"] == "started" && r["namespace"] == "retail"));
    assert!(
        rotate
            .iter()
            .any(|r| r["reason"] == "completed" && r["namespace"] == "retail"),
        "{rotate:?}"
    );
    assert!(records.iter().any(|r| r["action"] == "key_retire"));
}

#[test]
pub fn a_paused_rotation_moves_nothing_until_resumed_and_one_namespace_can_rotate_alone() {
    let setup = Setup::new("");
    let server = setup.serve();
    let retail = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "pause@rotation.example")],
    );
    let health = tokenize(
        &server,
        "crm",
        "health",
        &[("email", "pause@rotation.example")],
    );
    let out = keys(&["rotate", "--namespace", "retail"], &setup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keys(&["pause"], &setup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Whether the one row moved before the pause landed or not, health was
    // not rotated and stays on v1 for good.
    std::thread::sleep(Duration::from_millis(2500));
    let status = String::from_utf8_lossy(&keys(&["status"], &setup).stdout).into_owned();
    assert!(status.contains("health: writes with v1\n"), "{status}");
    let out = keys(&["resume"], &setup);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = String::from_utf8_lossy(&keys(&["status"], &setup).stdout).into_owned();
        if status.contains("retail: writes with v2\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // v1 still seals health's values: it cannot be retired.
    let out = keys(&["retire", "1"], &setup);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespace health"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tokenize(
            &server,
            "crm",
            "retail",
            &[("email", "pause@rotation.example")]
        ),
        retail
    );
    assert_eq!(
        tokenize(
            &server,
            "crm",
            "health",
            &[("email", "pause@rotation.example")]
        ),
        health
    );
    assert_eq!(rows_per_version(&setup), BTreeMap::from([(1, 1), (2, 1)]));
}
