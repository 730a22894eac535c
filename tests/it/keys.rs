//! Master keys: a rewrap changes the passphrase and touches no row.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use sha2::{Digest, Sha256};

use crate::support::*;

/// A digest of every token row as stored (sealed bytes included).
fn rows_digest(setup: &Setup) -> String {
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
fn a_rewrap_changes_the_passphrase_and_rewrites_no_row() {
    let setup = Setup::new("");
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
        status_text.contains("master key v1 (current: new values): 2 rows"),
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
