//! The audit trail: a record for every kind of action, tamper detection,
//! fail-closed behaviour, queries and exports.

use std::fs;
use std::process::Command;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::support::*;

fn find<'a>(records: &'a [Value], action: &str, outcome: &str, reason: Option<&str>) -> &'a Value {
    records
        .iter()
        .find(|r| {
            r["action"] == action && r["outcome"] == outcome && r["reason"].as_str() == reason
        })
        .unwrap_or_else(|| panic!("no {action}/{outcome}/{reason:?} record in {records:#?}"))
}

#[test]
pub fn every_kind_of_action_is_recorded_with_its_fields_and_no_values() {
    let setup = Setup::new("");
    let out = Command::new(BIN)
        .args(["client", "new", "extra", "--role", "backend", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = setup.serve();
    let values = ["audit.canary.0001@example.com", "+919000799991"];
    let tokens = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", values[0]), ("phone", values[1])],
    );
    detokenize(&server, "admin", "retail", "support", &tokens);
    let forget = |client: &str| {
        http()
            .delete(server.url(&format!("/v1/namespaces/retail/tokens/{}", tokens[0])))
            .bearer_auth(key(client))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(forget("admin"), 204);
    assert_eq!(forget("admin"), 404);
    let body = json!({"namespace": "retail", "items": [{"class": "email", "value": values[0]}]});
    assert_eq!(
        http()
            .post(server.url("/v1/tokenize"))
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let wrong_key = format!("{}x", key("crm"));
    assert_eq!(post(&server, "/v1/tokenize", &wrong_key, &body).0, 401);
    assert_eq!(post(&server, "/v1/tokenize", &key("office"), &body).0, 401);
    assert_eq!(post(&server, "/v1/tokenize", &key("sms"), &body).0, 403);
    let wrong_purpose =
        json!({"namespace": "retail", "purpose": "marketing", "tokens": [tokens[1]]});
    assert_eq!(
        post(&server, "/v1/detokenize", &key("sms"), &wrong_purpose).0,
        403
    );
    let invalid = json!({"namespace": "retail", "items": [{"class": "phone", "value": values[0]}]});
    assert_eq!(post(&server, "/v1/tokenize", &key("crm"), &invalid).0, 400);
    let audit_read = |client: &str| {
        http()
            .get(server.url("/v1/audit"))
            .bearer_auth(key(client))
            .send()
            .unwrap()
    };
    assert_eq!(audit_read("auditor").status().as_u16(), 200);
    assert_eq!(audit_read("crm").status().as_u16(), 403);
    assert!(server.stop().success());

    let records = audit_records(&setup);
    find(&records, "init", "ok", None);
    find(&records, "key_unwrap", "ok", Some("master_key_created"));
    let created = find(&records, "client_create", "ok", None);
    assert_eq!(created["route"], "cli client new extra --role backend");
    assert!(created["actor"].as_str().unwrap().starts_with("cli:"));
    find(&records, "config_load", "ok", None);
    find(&records, "key_unwrap", "ok", None);
    let tokenized = find(&records, "tokenize", "ok", None);
    assert_eq!(tokenized["actor"], "crm");
    assert_eq!(tokenized["auth"], "api_key");
    assert_eq!(tokenized["source"], "127.0.0.1");
    assert_eq!(tokenized["route"], "/v1/tokenize");
    assert_eq!(tokenized["namespace"], "retail");
    assert_eq!(tokenized["item_count"], 2);
    assert_eq!(tokenized["tokens"], json!(tokens));
    assert!(tokenized["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    assert!(tokenized["time"].as_str().unwrap().ends_with('Z'));
    let revealed = find(&records, "detokenize", "ok", None);
    assert_eq!(
        (revealed["actor"].as_str(), revealed["purpose"].as_str()),
        (Some("admin"), Some("support"))
    );
    assert_eq!(revealed["tokens"], json!(tokens));
    let forgotten = find(&records, "forget", "ok", None);
    assert_eq!(forgotten["tokens"], json!([tokens[0]]));
    find(&records, "forget", "error", Some("not_found"));
    assert_eq!(
        find(
            &records,
            "authenticate",
            "denied",
            Some("missing_credentials")
        )["actor"],
        "unknown"
    );
    assert_eq!(
        find(
            &records,
            "authenticate",
            "denied",
            Some("invalid_credentials")
        )["actor"],
        "crm"
    );
    assert_eq!(
        find(
            &records,
            "authenticate",
            "denied",
            Some("source_not_allowed")
        )["actor"],
        "office"
    );
    assert_eq!(
        find(
            &records,
            "tokenize",
            "denied",
            Some("operation_not_granted")
        )["actor"],
        "sms"
    );
    // `marketing` is no purpose the configuration names: the caller's text
    // is recorded as a keyed fingerprint, never as it was sent.
    let refused = find(
        &records,
        "detokenize",
        "denied",
        Some("purpose_not_granted"),
    );
    assert!(refused["purpose"].is_null(), "{refused}");
    assert!(
        refused["unrecognized"][0]
            .as_str()
            .unwrap()
            .starts_with("purpose:"),
        "{refused}"
    );
    find(&records, "tokenize", "error", Some("invalid_item"));
    find(&records, "audit_read", "ok", None);
    find(
        &records,
        "audit_read",
        "denied",
        Some("operation_not_granted"),
    );
    let text = serde_json::to_string(&records).unwrap();
    for value in values {
        assert!(!text.contains(value), "a value reached the audit trail");
    }
    let stdout = assert_chain_verifies(&setup);
    assert!(
        stdout.contains(&format!("{} records verified", records.len())),
        "{stdout}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn verify_names_the_first_bad_record_after_tampering() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let client = http();
    for i in 0..150 {
        let body = json!({"namespace": "retail", "items": [{"class": "name", "value": format!("person {i}")}]});
        let response = client
            .post(server.url("/v1/tokenize"))
            .bearer_auth(key("crm"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let token: Value = response.json().unwrap();
        let body = json!({"namespace": "retail", "purpose": "support", "tokens": [token["tokens"][0]["token"]]});
        assert_eq!(
            client
                .post(server.url("/v1/detokenize"))
                .bearer_auth(key("admin"))
                .json(&body)
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200
        );
    }
    assert!(server.stop().success());
    let total = audit_records(&setup).len() as i64;
    assert!(total > 300, "{total}");

    let verify = |dir: &std::path::Path| {
        let out = audit_cli(&setup, &["verify", "--data-dir", dir.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = verify(&setup.data_dir);
    assert!(
        ok && text.contains(&format!("{total} records verified")),
        "{text}"
    );

    // Each case: the SQL that tampers with a copy, and the first bad record.
    let cut = format!("DELETE FROM records WHERE seq > {}", total - 10);
    let cases: [(&str, Vec<&str>, i64); 4] = [
        (
            "edit one field",
            vec!["UPDATE records SET actor = 'mallory' WHERE seq = 100"],
            100,
        ),
        (
            "delete one in the middle",
            vec!["DELETE FROM records WHERE seq = 150"],
            150,
        ),
        (
            "swap two records",
            vec![
                "UPDATE records SET seq = -1 WHERE seq = 120",
                "UPDATE records SET seq = 120 WHERE seq = 121",
                "UPDATE records SET seq = 121 WHERE seq = -1",
            ],
            120,
        ),
        ("cut the last ten", vec![cut.as_str()], total - 9),
    ];
    for (name, tamper, first_bad) in cases {
        let copy = setup.dir.path().join(name.replace(' ', "-"));
        copy_dir(&setup.data_dir, &copy);
        let db = Connection::open(copy.join("audit.db")).unwrap();
        for statement in tamper {
            db.execute(statement, []).unwrap();
        }
        drop(db);
        let (ok, text) = verify(&copy);
        assert!(!ok, "{name}: tampering not detected: {text}");
        assert!(
            text.contains(&format!("BROKEN at record {first_bad}:")),
            "{name}: {text}"
        );
    }
}

fn chattr(flag: &str, paths: &[std::path::PathBuf]) -> bool {
    Command::new("chattr")
        .arg(flag)
        .args(paths)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_unwritable_audit_trail_reveals_nothing_and_recovers_without_restart() {
    let setup = Setup::new("");
    let server = setup.serve();
    let tokens = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "fail.closed@example.com")],
    );
    let detokenize_body = json!({"namespace": "retail", "purpose": "support", "tokens": tokens});
    let tokenize_body = json!({"namespace": "retail", "items": [{"class": "email", "value": "new.while.broken@example.com"}]});
    let check_refused = |what: &str| {
        let (status, body) = post(&server, "/v1/detokenize", &key("admin"), &detokenize_body);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "{what}: {body}"
        );
        assert!(
            !body.to_string().contains("fail.closed"),
            "{what}: revealed {body}"
        );
        let (status, body) = post(&server, "/v1/tokenize", &key("crm"), &tokenize_body);
        assert_eq!(status, 503, "{what}: {body}");
        let ready = http().get(server.url("/readyz")).send().unwrap();
        assert_eq!(ready.status().as_u16(), 503, "{what}");
        assert_eq!(ready.json::<Value>().unwrap()["checks"]["audit"], "failing");
    };
    let check_recovered = |what: &str| {
        let values = detokenize(&server, "admin", "retail", "support", &tokens);
        assert_eq!(values[0]["value"], "fail.closed@example.com", "{what}");
        assert_eq!(
            tokenize(
                &server,
                "crm",
                "retail",
                &[("email", "new.while.broken@example.com")]
            )
            .len(),
            1
        );
        assert_eq!(
            http()
                .get(server.url("/readyz"))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200,
            "{what}"
        );
    };

    // Locked by another process (an auditor's tool holding a write lock).
    let audit_db = setup.data_dir.join("audit.db");
    let blocked = TrailBlocked::start(&setup);
    check_refused("locked");
    drop(blocked);
    check_recovered("after the lock");

    // Made unwritable (immutable, which binds root too). Setting the flag
    // needs root: CI runs as root, and anywhere else this half says so.
    if is_root() {
        let files = vec![audit_db.clone(), setup.data_dir.join("audit.db-wal")];
        assert!(chattr("+i", &files), "chattr +i failed as root");
        // Undo even if an assertion fails, or the temporary directory could
        // not be removed.
        struct Mutable(Vec<std::path::PathBuf>);
        impl Drop for Mutable {
            fn drop(&mut self) {
                chattr("-i", &self.0);
            }
        }
        let guard = Mutable(files.clone());
        check_refused("immutable");
        assert!(chattr("-i", &files));
        drop(guard);
        check_recovered("after chattr -i");
    } else {
        eprintln!("SKIPPED (not root): the immutable-trail half of this test; the lock half ran");
    }
    // Nothing of the refused requests was committed: the chain verifies.
    drop(server);
    assert_chain_verifies(&setup);
}

#[test]
pub fn queries_filter_and_format_and_the_api_paginates() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let tokens = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "q1@example.com"), ("name", "Query Person")],
    );
    tokenize(&server, "crm", "health", &[("email", "q2@example.com")]);
    detokenize(
        &server,
        "sms",
        "retail",
        "sms_delivery",
        &[tokens[1].clone()],
    );
    assert_eq!(
        post(
            &server,
            "/v1/tokenize",
            &key("sms"),
            &json!({"namespace": "retail", "items": [{"class": "name", "value": "x"}]})
        )
        .0,
        403
    );

    // The API: filters, cursor pagination, audit_read only.
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let mut url = server.url("/v1/audit?limit=2");
        if let Some(after) = cursor {
            url.push_str(&format!("&after={after}"));
        }
        let page: Value = http()
            .get(url)
            .bearer_auth(key("auditor"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 2);
        seen.extend(records.iter().map(|r| r["seq"].as_u64().unwrap()));
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let sorted: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, sorted, "pages are contiguous and in order");
    assert!(seen.len() >= 4, "at least two full pages: {seen:?}");
    let page: Value = http()
        .get(server.url(&format!(
            "/v1/audit?action=detokenize&namespace=retail&token={}",
            tokens[1]
        )))
        .bearer_auth(key("auditor"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let found = page["records"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["actor"], "sms");
    let bad = http()
        .get(server.url("/v1/audit?action=dance"))
        .bearer_auth(key("auditor"))
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(server.stop().success());

    // The CLI: formats.
    let csv_out = audit_cli(
        &setup,
        &["query", "--action", "tokenize", "--format", "csv"],
    );
    assert!(csv_out.status.success());
    let mut reader = csv::Reader::from_reader(csv_out.stdout.as_slice());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[0], "seq");
    assert_eq!(headers.len(), 15);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3, "two ok tokenizes and one denied");
    assert!(rows.iter().all(|row| &row[6] == "tokenize"));
    let by = |args: &[&str]| audit_query(&setup, args);
    assert_eq!(by(&["--token", &tokens[0]]).len(), 1);
    assert!(by(&["--actor", "crm"]).iter().all(|r| r["actor"] == "crm"));
    assert_eq!(by(&["--actor", "crm"]).len(), 2);
    assert_eq!(by(&["--outcome", "denied"]).len(), 1);
    assert_eq!(by(&["--purpose", "sms_delivery"]).len(), 1);
    assert_eq!(by(&["--namespace", "health"]).len(), 1);
    assert!(by(&["--since", "2999-01-01"]).is_empty());
    assert_eq!(by(&["--until", "2999-01-01"]).len(), by(&[]).len());
    assert!(
        by(&["--until", "2000-01-01"]).is_empty(),
        "--until filters (an ignored filter would answer every record)"
    );
    // The pages held every record that existed then (later ones are the
    // audit reads themselves).
    assert!(by(&["--limit", "1000"])
        .iter()
        .take(seen.len())
        .zip(&seen)
        .all(|(r, seq)| r["seq"] == *seq));
    assert_eq!(by(&["--limit", "3"]).len(), 3);
    let table = audit_cli(&setup, &["query"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.lines().next().unwrap().contains("SEQ") && table.lines().count() == by(&[]).len() + 1
    );
    let bad = audit_cli(
        &setup,
        &["query", "--since", "yesterday", "--outcome", "meh"],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && stderr.contains("since `yesterday`")
            && stderr.contains("outcome `meh`"),
        "{stderr}"
    );

    // Export and verify the export.
    let export = setup.dir.path().join("export.json");
    let out = audit_cli(
        &setup,
        &[
            "export",
            "--since",
            "2000-01-01",
            "--out",
            export.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = audit_cli(&setup, &["verify", "--export", export.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("export OK"),
        "{stdout}"
    );
    let document: Value = serde_json::from_slice(&fs::read(&export).unwrap()).unwrap();
    assert_eq!(document["records"].as_array().unwrap().len(), by(&[]).len());
    let edited = fs::read_to_string(&export)
        .unwrap()
        .replacen("\"crm\"", "\"mallory\"", 1);
    fs::write(&export, edited).unwrap();
    let out = audit_cli(&setup, &["verify", "--export", export.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("export BROKEN at record"));
}

#[test]
pub fn exports_for_auditors_are_safe_to_open() {
    // Hostile strings that reach the trail legitimately: purposes the
    // configuration names, and the operator's user name.
    let hostile = [
        "=HYPERLINK(\"http://evil.invalid/\",\"open me\")",
        "@SUM(1+1)",
        "-2+3",
        "+cmd",
        "x\u{1b}[2Jy",
    ];
    let purposes: Vec<String> = hostile
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    let setup = Setup::new_with(
        "",
        &format!(
            "[roles.hostile]\noperations = [\"detokenize\"]\nnamespaces = [\"retail\"]\npurposes = [{}]\n",
            purposes.join(", ")
        ),
    );
    let out = Command::new(BIN)
        .args(["client", "new", "extra", "--role", "backend", "--config"])
        .arg(&setup.config)
        .env("USER", "ops\u{1b}]0;pwned\u{7}\ninjected")
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = setup.serve();
    let tokens = tokenize(&server, "crm", "retail", &[("phone", "+14155550123")]);
    for purpose in hostile {
        detokenize(&server, "admin", "retail", purpose, &tokens);
    }
    assert!(server.stop().success());
    // The purposes are configuration names, so they are recorded as such.
    let json = audit_query(&setup, &["--action", "detokenize"]);
    let recorded: Vec<&str> = json.iter().filter_map(|r| r["purpose"].as_str()).collect();
    assert_eq!(recorded, hostile);

    let csv_out = audit_cli(&setup, &["query", "--format", "csv"]);
    assert!(csv_out.status.success());
    let text = String::from_utf8(csv_out.stdout.clone()).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in CSV: {text:?}"
    );
    let mut reader = csv::Reader::from_reader(csv_out.stdout.as_slice());
    let mut cells = 0;
    for row in reader.records() {
        for cell in row.unwrap().iter() {
            cells += 1;
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a spreadsheet would run {cell:?}"
            );
        }
    }
    assert!(cells > 100);
    assert!(text.contains("'=HYPERLINK"), "{text}");
    // A phone-shaped token is neutralised too; JSON keeps it exact.
    assert!(text.contains(&format!("'{}", tokens[0])), "{text}");

    let table = audit_cli(&setup, &["query"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in the table: {table:?}"
    );
    assert!(table.contains("x\\u001b[2Jy"), "{table}");
    assert!(
        // Escaped, and cut to its column.
        table.contains("cli:ops\\u001b]0…"),
        "{table}"
    );
    let all = audit_records(&setup).len();
    assert_eq!(
        table.lines().count(),
        all + 1,
        "a header and one line per record"
    );
}

#[test]
pub fn since_takes_durations_and_output_to_a_closed_pipe_ends_quietly() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    tokenize(&server, "crm", "retail", &[("name", "Since Person")]);
    // `?since=24h` over the API.
    let page: Value = http()
        .get(server.url("/v1/audit?since=24h"))
        .bearer_auth(key("auditor"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(!page["records"].as_array().unwrap().is_empty(), "{page}");
    assert!(server.stop().success());
    // `--since 1h` and `--until 1h` on the command line.
    assert!(!audit_query(&setup, &["--since", "1h"]).is_empty());
    assert!(audit_query(&setup, &["--until", "1h"]).is_empty());

    // A reader that is gone before anything is written: the command ends
    // with success and says nothing (no panic, no error).
    let closed = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: {stderr}"
        );
    };
    closed(&["completions", "zsh"]);
    let config = setup.config.to_str().unwrap();
    closed(&["audit", "query", "--config", config]);
    closed(&["audit", "query", "--format", "json", "--config", config]);
}
