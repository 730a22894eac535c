//! Online backups: taken under write load, restored into an empty
//! directory where every token acknowledged before the backup detokenizes
//! and the audit chain verifies; a byte flipped anywhere is refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::support::*;

fn backup(args: &[&str], config: &Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("backup")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// A configuration like `setup`'s whose data directory is `data_dir`.
fn setup_at(setup: &Setup, data_dir: &Path) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    let text = fs::read_to_string(&setup.config).unwrap().replace(
        &format!("data_dir = \"{}\"", setup.data_dir.display()),
        &format!("data_dir = \"{}\"", data_dir.display()),
    );
    fs::write(&config, text).unwrap();
    Setup {
        dir,
        config,
        data_dir: data_dir.to_owned(),
        postgres: setup.postgres.clone(),
    }
}

#[test]
fn a_backup_under_load_restores_every_acknowledged_token_and_its_trail() {
    let setup = Setup::new("");
    let server = setup.serve();
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop, url) = (
            acknowledged.clone(),
            stop.clone(),
            server.url("/v1/tokenize"),
        );
        std::thread::spawn(move || {
            let client = http();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let items: Vec<_> = (0..20)
                    .map(
                        |i| json!({"class": "email", "value": format!("load.{n}.{i}@example.com")}),
                    )
                    .collect();
                let response = client
                    .post(&url)
                    .bearer_auth(key("crm"))
                    .json(&json!({"namespace": "retail", "items": items}))
                    .send()
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let body: serde_json::Value = response.json().unwrap();
                let mut done = acknowledged.lock().unwrap();
                for (i, token) in body["tokens"].as_array().unwrap().iter().enumerate() {
                    done.push((
                        token["token"].as_str().unwrap().to_owned(),
                        format!("load.{n}.{i}@example.com"),
                    ));
                }
            }
        })
    };
    // Wait for the load to be running, however slow the machine is.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 40 {
        assert!(std::time::Instant::now() < deadline, "the load never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before: Vec<(String, String)> = acknowledged.lock().unwrap().clone();
    let file = setup.dir.path().join("vault.backup");
    let out = backup(&["create", "--out", file.to_str().unwrap()], &setup.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Writes go on after the backup (and went on during it).
    let at_backup = acknowledged.lock().unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() <= at_backup {
        assert!(std::time::Instant::now() < deadline, "writes stopped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Verify without a key, then with one.
    let out = std::process::Command::new(BIN)
        .args(["backup", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not checked"));
    let out = backup(
        &["verify", file.to_str().unwrap(), "--all-values"],
        &setup.config,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("audit chain verified"), "{stdout}");

    // Restore: refused into the live directory (not empty), done into a new one.
    let out = backup(
        &[
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            setup.data_dir.to_str().unwrap(),
            "--no-newer-erasures",
        ],
        &setup.config,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let restored_dir: PathBuf = setup.dir.path().join("restored");
    let out = backup(
        &[
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
            "--no-newer-erasures",
        ],
        &setup.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = setup_at(&setup, &restored_dir);
    assert_chain_verifies(&restored);
    let records = audit_records(&restored);
    assert_eq!(records.last().unwrap()["action"], "backup_restore");
    let restored_server = restored.serve();
    let tokens: Vec<String> = before.iter().map(|(t, _)| t.clone()).collect();
    let values = detokenize(&restored_server, "admin", "retail", "support", &tokens);
    for ((token, value), answer) in before.iter().zip(&values) {
        assert_eq!(answer["value"], value.as_str(), "{token}");
    }
    // The live vault recorded the backup.
    drop(server);
    assert!(audit_records(&setup)
        .iter()
        .any(|r| r["action"] == "backup_create"));
}

/// Offsets of each entry's data in the tar file.
fn entry_offsets(file: &Path) -> Vec<(String, u64, u64)> {
    let mut archive = tar::Archive::new(fs::File::open(file).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.path().unwrap().to_string_lossy().into_owned(),
                entry.raw_file_position(),
                entry.size(),
            )
        })
        .collect()
}

#[test]
fn a_byte_flipped_in_any_part_fails_verify_and_restore() {
    let setup = Setup::new("");
    let server = setup.serve();
    tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "flip@example.com"), ("name", "Flip Test")],
    );
    // A forgotten subject, so that the tombstone list has a byte to flip.
    let (status, _) = post(
        &server,
        "/v1/subjects/forget",
        &key("dpo"),
        &json!({"namespace": "retail", "subject": "CUST-FLIP"}),
    );
    assert_eq!(status, 200);
    let file = setup.dir.path().join("vault.backup");
    let out = backup(&["create", "--out", file.to_str().unwrap()], &setup.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = fs::read(&file).unwrap();
    let parts = entry_offsets(&file);
    let names: Vec<&str> = parts.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.sha256",
            "vault.db",
            "audit.db",
            "keyring.json",
            "forgotten"
        ]
    );
    assert!(parts.iter().all(|(_, _, size)| *size > 0), "{parts:?}");
    for (name, offset, size) in &parts {
        let mut bytes = original.clone();
        let at = usize::try_from(offset + size / 2).unwrap();
        bytes[at] ^= 0x01;
        let tampered = setup.dir.path().join(format!("tampered-{name}"));
        fs::write(&tampered, &bytes).unwrap();
        let out = backup(&["verify", tampered.to_str().unwrap()], &setup.config);
        assert!(
            !out.status.success(),
            "verify accepted a flipped byte in {name}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("damaged") || stderr.contains("does not"),
            "{name}: {stderr}"
        );
        let target = setup.dir.path().join(format!("restore-{name}"));
        let out = backup(
            &[
                "restore",
                tampered.to_str().unwrap(),
                "--data-dir",
                target.to_str().unwrap(),
                "--no-newer-erasures",
            ],
            &setup.config,
        );
        assert!(
            !out.status.success(),
            "restore accepted a flipped byte in {name}"
        );
        assert!(
            !target.join("vault.db").exists(),
            "{name}: nothing is restored"
        );
    }
}

#[test]
fn one_vault_per_data_directory() {
    let setup = Setup::new("");
    let _server = setup.serve();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running vault"));
}

#[test]
fn the_api_streams_a_backup_to_the_backup_role_only() {
    let setup = Setup::new("");
    let server = setup.serve();
    let tokens = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "api.backup@example.com")],
    );
    for client in ["crm", "admin", "auditor"] {
        let response = http()
            .post(server.url("/v1/admin/backup"))
            .bearer_auth(key(client))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{client}");
    }
    let response = http()
        .post(server.url("/v1/admin/backup"))
        .bearer_auth(key("backups"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let bytes = response.bytes().unwrap();
    let file = setup.dir.path().join("api.tvbackup");
    fs::write(&file, &bytes).unwrap();
    let out = backup(
        &["verify", file.to_str().unwrap(), "--all-values"],
        &setup.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored_dir = setup.dir.path().join("api-restored");
    let out = backup(
        &[
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
            "--no-newer-erasures",
        ],
        &setup.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let restored = setup_at(&setup, &restored_dir);
    let restored_server = restored.serve();
    let values = detokenize(&restored_server, "admin", "retail", "support", &tokens);
    assert_eq!(values[0]["value"], "api.backup@example.com");
    // On the record: the download, and each refusal.
    let records = audit_records(&setup);
    assert!(records.iter().any(|r| r["action"] == "backup_create"
        && r["actor"] == "backups"
        && r["outcome"] == "ok"));
    assert_eq!(
        records
            .iter()
            .filter(|r| r["action"] == "backup_create" && r["outcome"] == "denied")
            .count(),
        3
    );
}

#[test]
fn a_backup_encrypted_to_an_age_recipient_needs_its_identity() {
    use age::secrecy::ExposeSecret;
    let setup = Setup::new("");
    let server = setup.serve();
    let tokens = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "offsite@example.com")],
    );
    let identity = age::x25519::Identity::generate();
    let identity_file = setup.dir.path().join("offsite.key");
    fs::write(
        &identity_file,
        format!("# offsite\n{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let file = setup.dir.path().join("offsite.tvbackup.age");
    let out = backup(
        &[
            "create",
            "--out",
            file.to_str().unwrap(),
            "--recipient",
            &identity.to_public().to_string(),
        ],
        &setup.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    for clear in [&b"SQLite format 3"[..], b"manifest.json", b"keyring.json"] {
        assert!(
            !bytes.windows(clear.len()).any(|w| w == clear),
            "readable inside the encrypted backup"
        );
    }
    // Without the identity: refused, saying why.
    let out = backup(&["verify", file.to_str().unwrap()], &setup.config);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("encrypted with age"));
    // A wrong identity: refused.
    let wrong = setup.dir.path().join("wrong.key");
    let other = age::x25519::Identity::generate();
    fs::write(&wrong, format!("{}\n", other.to_string().expose_secret())).unwrap();
    let out = backup(
        &[
            "verify",
            file.to_str().unwrap(),
            "--identity",
            wrong.to_str().unwrap(),
        ],
        &setup.config,
    );
    assert!(!out.status.success());
    // The right one: verified, and restored.
    let out = backup(
        &[
            "verify",
            file.to_str().unwrap(),
            "--identity",
            identity_file.to_str().unwrap(),
        ],
        &setup.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored_dir = setup.dir.path().join("offsite-restored");
    let out = backup(
        &[
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
            "--no-newer-erasures",
            "--identity",
            identity_file.to_str().unwrap(),
        ],
        &setup.config,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let restored = setup_at(&setup, &restored_dir);
    let restored_server = restored.serve();
    let values = detokenize(&restored_server, "admin", "retail", "support", &tokens);
    assert_eq!(values[0]["value"], "offsite@example.com");
}
