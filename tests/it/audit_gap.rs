//! A cut audit tail stays detected: the vault refuses reveals and writes
//! until an operator acknowledges the gap, and the acknowledgement is itself
//! a record that names the missing range.

use std::fs;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::support::*;

/// `audit verify`: success, and stdout plus stderr.
fn verify(setup: &Setup) -> (bool, String) {
    let out = audit_cli(setup, &["verify"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `audit acknowledge-gap --reason REASON`: success, and stdout plus stderr.
fn acknowledge(setup: &Setup, reason: &str) -> (bool, String) {
    let out = audit_cli(setup, &["acknowledge-gap", "--reason", reason]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn readyz(server: &Server) -> (u16, Value) {
    let response = http().get(server.url("/readyz")).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// Reveals and writes answer 503 with a request id and reveal nothing;
/// `/readyz` says the audit trail is broken.
fn assert_refuses(server: &Server, tokens: &[String], secret: &str) {
    let (status, body) = post(
        server,
        "/v1/detokenize",
        &key("admin"),
        &json!({"namespace": "retail", "purpose": "support", "tokens": tokens}),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    assert!(!body.to_string().contains(secret), "revealed: {body}");
    let (status, body) = post(
        server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [{"class": "email", "value": "while.broken@example.com"}]}),
    );
    assert_eq!(status, 503, "{body}");
    let (status, body) = readyz(server);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["audit"], "broken", "{body}");
}

fn records_in(setup: &Setup) -> u64 {
    let db = Connection::open(setup.data_dir.join("audit.db")).unwrap();
    db.query_row("SELECT max(seq) FROM records", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

#[test]
fn a_cut_tail_stays_detected_after_the_vault_writes_again() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let secret = "cut.tail@example.com";
    let tokens = tokenize(&server, "crm", "retail", &[("email", secret)]);
    for i in 0..4 {
        tokenize(
            &server,
            "crm",
            "retail",
            &[("name", &format!("person {i}"))],
        );
    }
    assert!(server.stop().success());
    let last = records_in(&setup);

    // Cut the last three records.
    let db = Connection::open(setup.data_dir.join("audit.db")).unwrap();
    db.execute("DELETE FROM records WHERE seq > ?1", [last as i64 - 3])
        .unwrap();
    drop(db);
    let missing = format!("records {}..={} are missing", last - 2, last);
    let (ok, text) = verify(&setup);
    assert!(!ok && text.contains(&missing), "{text}");

    // The vault starts, says why, and refuses; nothing it was asked to do
    // continues the chain from the cut.
    let mut server = setup.serve();
    assert_refuses(&server, &tokens, secret);
    assert_refuses(&server, &tokens, secret);
    assert!(
        server.logs().contains("audit_chain_mismatch"),
        "{}",
        server.logs()
    );
    assert!(server.stop().success());
    let (ok, text) = verify(&setup);
    assert!(!ok && text.contains(&missing), "still detected: {text}");
    assert_eq!(records_in(&setup), last - 3, "nothing was appended");

    // Only the operator continues past it, and says why in a code.
    let (ok, text) = acknowledge(&setup, "Disk failure; see ticket 12");
    assert!(!ok && text.contains("hint:"), "{text}");
    let (ok, text) = acknowledge(&setup, "disk_failure");
    assert!(ok, "{text}");
    assert!(text.contains(&format!("{}..={}", last - 2, last)), "{text}");
    let (ok, text) = acknowledge(&setup, "disk_failure");
    assert!(!ok && text.contains("no gap to acknowledge"), "{text}");

    // The evidence stays: verify passes, and lists the gap with who and why.
    let (ok, text) = verify(&setup);
    assert!(ok, "{text}");
    let gap_line = format!(
        "gap: records {}..={} are missing, acknowledged by record {}",
        last - 2,
        last,
        last + 1
    );
    assert!(text.contains(&gap_line), "{text}");
    let gaps = audit_query(&setup, &["--action", "audit_gap"]);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let gap = &gaps[0];
    assert_eq!(gap["seq"], last + 1);
    assert_eq!(gap["gap"], json!({"first": last - 2, "last": last}));
    assert_eq!(gap["item_count"], 3);
    assert_eq!(gap["reason"], "disk_failure");
    assert_eq!(gap["auth"], "cli");
    assert!(gap["actor"].as_str().unwrap().starts_with("cli:"), "{gap}");

    // The vault serves again and the chain grows from the gap record.
    let mut server = setup.serve();
    assert_eq!(readyz(&server).0, 200);
    let values = detokenize(&server, "admin", "retail", "support", &tokens);
    assert_eq!(values[0]["value"], secret);
    assert!(server.stop().success());
    let (ok, text) = verify(&setup);
    assert!(ok && text.contains(&gap_line), "{text}");

    // A gap record is as tamper-evident as any other: widening the range
    // it names breaks verification.
    let db = Connection::open(setup.data_dir.join("audit.db")).unwrap();
    db.execute(
        "UPDATE records SET gap_first = gap_first - 1 WHERE action = 'audit_gap'",
        [],
    )
    .unwrap();
    drop(db);
    let (ok, text) = verify(&setup);
    assert!(!ok && text.contains("BROKEN"), "{text}");
}

#[test]
fn a_deleted_audit_db_is_refused_at_start_and_acknowledged_while_running() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let secret = "deleted.trail@example.com";
    let tokens = tokenize(&server, "crm", "retail", &[("email", secret)]);
    assert!(server.stop().success());
    let last = records_in(&setup);
    for name in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        let _ = fs::remove_file(setup.data_dir.join(name));
    }

    let server = setup.serve();
    assert_refuses(&server, &tokens, secret);
    let (ok, text) = verify(&setup);
    assert!(!ok && text.contains("BROKEN"), "{text}");

    // Acknowledged while the vault runs: it turns ready without a restart.
    let (ok, text) = acknowledge(&setup, "audit_db_deleted");
    assert!(ok, "{text}");
    assert!(text.contains(&format!("1..={last}")), "{text}");
    let (status, body) = readyz(&server);
    assert_eq!(status, 200, "{body}");
    let values = detokenize(&server, "admin", "retail", "support", &tokens);
    assert_eq!(values[0]["value"], secret);
    drop(server);
    let (ok, text) = verify(&setup);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("gap: records 1..={last} are missing")),
        "{text}"
    );
}

#[test]
fn an_emptied_trail_is_refused_by_cli_appends_too() {
    let setup = Setup::new("");
    let db = Connection::open(setup.data_dir.join("audit.db")).unwrap();
    db.execute("DELETE FROM records", []).unwrap();
    drop(db);
    // `client new --config` appends offline; it must not start a fresh chain.
    let out = std::process::Command::new(BIN)
        .args(["client", "new", "extra", "--role", "backend", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("audit"),
        "an offline append continued the chain: {stderr}"
    );
    let (ok, text) = verify(&setup);
    assert!(!ok && text.contains("BROKEN"), "{text}");
}
