//! I/O faults under the data directory: a disk that fills up. (A trail made
//! unwritable is `audit::an_unwritable_audit_trail_reveals_nothing_and_recovers_without_restart`.)
//!
//! Mounting a tmpfs needs root: CI runs as root, and anywhere else the test
//! says it skipped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::support::*;

/// A tmpfs of a fixed size mounted at a directory; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed as root");
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `PRAGMA integrity_check` of a database file.
fn integrity(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

/// Tokenizes 200 new emails numbered from `first`: the status, and the
/// tokens when it is 200.
fn tokenize_batch(server: &Server, first: usize) -> (u16, Value) {
    let items: Vec<Value> = (first..first + 200)
        .map(|i| json!({"class": "email", "value": format!("full{i}@example.com")}))
        .collect();
    post(
        server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": items}),
    )
}

#[test]
fn a_full_disk_answers_503_loses_nothing_and_recovers_without_a_restart() {
    if !is_root() {
        eprintln!("SKIPPED (not root): mounting a small tmpfs for the data directory needs root");
        return;
    }
    let setup = Setup::configure("", STANDARD);
    let _tmpfs = Tmpfs::mount(&setup.data_dir, "24m");
    setup.append_and_init("");
    let server = setup.serve();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut next = 0;
    let mut take = |server: &Server, acknowledged: &mut Vec<(String, String)>| {
        let first = next;
        next += 200;
        let (status, body) = tokenize_batch(server, first);
        if status == 200 {
            for (i, token) in body["tokens"].as_array().unwrap().iter().enumerate() {
                acknowledged.push((
                    format!("full{}@example.com", first + i),
                    token["token"].as_str().unwrap().to_owned(),
                ));
            }
        }
        (status, body)
    };
    for _ in 0..5 {
        assert_eq!(take(&server, &mut acknowledged).0, 200);
    }

    // Fill the file system.
    let filler_path = setup.data_dir.join("filler");
    let mut filler = fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    // New rows stop with a clear 503; nothing is half-acknowledged.
    let mut refused = None;
    for _ in 0..200 {
        let (status, body) = take(&server, &mut acknowledged);
        if status != 200 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("writes kept succeeding on a full disk");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(body["error"]["request_id"].is_string(), "{body}");
    assert!(!body.to_string().contains("@example.com"), "{body}");

    // Space returns: the same process takes writes again.
    fs::remove_file(&filler_path).unwrap();
    eventually("the vault took writes again after space returned", || {
        take(&server, &mut acknowledged).0 == 200
    });
    assert_eq!(take(&server, &mut acknowledged).0, 200);

    // Every token acknowledged with 200 still reveals its value.
    for chunk in acknowledged.chunks(100) {
        let tokens: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
        let (status, body) = post(
            &server,
            "/v1/detokenize",
            &key("admin"),
            &json!({"namespace": "retail", "purpose": "support", "tokens": tokens}),
        );
        assert_eq!(status, 200, "{body}");
        for ((value, _), revealed) in chunk.iter().zip(body["values"].as_array().unwrap()) {
            assert_eq!(revealed["value"], value.as_str());
        }
    }
    eprintln!(
        "disk full: {} tokens acknowledged, all revealed after recovery",
        acknowledged.len()
    );
    drop(server);
    assert_eq!(integrity(&setup.data_dir.join("vault.db")), "ok");
    assert_eq!(integrity(&setup.data_dir.join("audit.db")), "ok");
    assert_chain_verifies(&setup);
}
