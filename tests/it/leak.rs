//! No canary value reaches any file the vault wrote, or its logs.

use std::fs;
use std::path::Path;

use base64::Engine;

use crate::support::*;

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn forms(value: &str) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        value.as_bytes().to_vec(),
        value.to_lowercase().into_bytes(),
        b64.encode(value).into_bytes(),
        hex::encode(value).into_bytes(),
        hex::encode_upper(value).into_bytes(),
    ]
}

#[test]
fn canaries_never_reach_disk_or_logs() {
    let canaries: Vec<String> = fs::read_to_string(fixture("canaries.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(canaries.len(), 1000);
    let setup = Setup::new_with(
        "",
        "[clevertap]\nenabled = true\nnamespace = \"retail\"\ndefault_class = \"name\"\n",
    );
    // Logs go to daily-rotated JSON files at debug level: every one of them
    // is searched below.
    let log_dir = setup.dir.path().join("logs");
    let mut config = fs::read_to_string(&setup.config).unwrap();
    config.push_str(&format!(
        "\n[log]\nformat = \"json\"\nlevel = \"debug\"\ndirectory = \"{}\"\n",
        log_dir.display()
    ));
    fs::write(&setup.config, config).unwrap();
    let mut server = setup.serve();
    let items: Vec<(&str, &str)> = canaries
        .iter()
        .map(|value| {
            let class = if value.contains('@') {
                "email"
            } else if value.starts_with('+') {
                "phone"
            } else {
                "name"
            };
            (class, value.as_str())
        })
        .collect();
    let tokens = tokenize(&server, "crm", "retail", &items);
    // Again, through the known-value path, and into a random class.
    assert_eq!(tokenize(&server, "crm", "retail", &items), tokens);
    let notes: Vec<(&str, &str)> = canaries
        .iter()
        .take(100)
        .map(|v| ("note", v.as_str()))
        .collect();
    tokenize(&server, "crm", "retail", &notes);
    let values = detokenize(&server, "admin", "retail", "support", &tokens);
    for (value, answer) in canaries.iter().zip(&values) {
        let expected = if value.contains('@') {
            value.to_lowercase()
        } else {
            value.clone()
        };
        assert_eq!(answer["value"].as_str(), Some(expected.as_str()));
    }
    detokenize(&server, "helpdesk", "retail", "support", &tokens);
    // The CleverTap surface: a batch in, the tokens back out encrypted, a
    // refused call and an envelope that does not open, all with canaries.
    let ct = |path: &str, client: &str, body: serde_json::Value, encrypted: bool| {
        let mut request = http()
            .post(server.url(path))
            .bearer_auth(key(client))
            .header("content-type", "application/json");
        if encrypted {
            request = request.header("Encrypted", "true");
        }
        let response = request.body(body.to_string()).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let (status, answer) = ct(
        "/ct-vault/api/tokenization/tokens/batch",
        "crm",
        serde_json::json!({ "values": canaries }),
        false,
    );
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let ct_tokens: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["token"].as_str().unwrap())
        .collect();
    let session = [0x5au8; 32];
    let nonce = [0x11u8; 12];
    let mut sealed =
        serde_json::json!({"tokens": ct_tokens, "metadata": {"purpose": "email_dispatch"}})
            .to_string()
            .into_bytes();
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &session).unwrap(),
    )
    .seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::empty(),
        &mut sealed,
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let envelope = serde_json::json!({
        "itp": base64::Engine::encode(&b64, &sealed),
        "itk": base64::Engine::encode(&b64, session),
        "itv": base64::Engine::encode(&b64, nonce),
    });
    let (status, answer) = ct(
        "/ct-vault/api/tokenization/tokens/values/batch",
        "dispatcher",
        envelope,
        true,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _) = ct(
        "/ct-vault/api/tokenization/getToken",
        "intake",
        serde_json::json!({ "value": canaries[0] }),
        false,
    );
    assert_eq!(status, 403);
    let (status, _) = ct(
        "/ct-vault/api/tokenization/getToken",
        "crm",
        serde_json::json!({ "itp": canaries[1], "itk": canaries[2], "itv": canaries[3] }),
        true,
    );
    assert_eq!(status, 419);
    // Refused and malformed requests that carry canaries are logged too.
    let (status, _) = post(
        &server,
        "/v1/tokenize",
        &key("sms"),
        &serde_json::json!({"namespace": "retail", "items": [{"class": "email", "value": canaries[0]}]}),
    );
    assert_eq!(status, 403);
    let (status, _) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &serde_json::json!({"namespace": "retail", "items": [{"class": "phone", "value": canaries[0]}]}),
    );
    assert_eq!(status, 400);
    // While the server runs, the WAL and shared-memory files exist: take
    // them as they are, then everything again after a clean stop.
    let read_all = |label: &str| -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        files_under(&setup.data_dir, &mut files);
        files
            .iter()
            .map(|f| (format!("{} ({label})", f.display()), fs::read(f).unwrap()))
            .collect()
    };
    let mut contents = read_all("running");
    let names: Vec<&str> = contents.iter().map(|(name, _)| name.as_str()).collect();
    for expected in [
        "vault.db (",
        "vault.db-wal (",
        "vault.db-shm (",
        "audit.db (",
        "audit.db-wal (",
        "keyring.json (",
    ] {
        assert!(
            names.iter().any(|n| n.contains(expected)),
            "{expected} missing from {names:?}"
        );
    }
    assert!(server.stop().success());
    contents.extend(read_all("stopped"));
    contents.push((
        "server stdout and stderr".to_owned(),
        server.logs().into_bytes(),
    ));
    let mut log_files = Vec::new();
    files_under(&log_dir, &mut log_files);
    assert!(
        !log_files.is_empty(),
        "no log file in {}",
        log_dir.display()
    );
    let before = contents.len();
    for file in &log_files {
        contents.push((file.display().to_string(), fs::read(file).unwrap()));
    }
    let logged: String = contents[before..]
        .iter()
        .map(|(_, bytes)| String::from_utf8_lossy(bytes))
        .collect();
    assert!(
        logged.contains("\"route\":\"/v1/detokenize\"") && logged.contains("\"status\":403"),
        "the log files should hold the request log: {log_files:?}"
    );
    let patterns: Vec<Vec<u8>> = canaries.iter().flat_map(|canary| forms(canary)).collect();
    let searcher = aho_corasick::AhoCorasick::new(&patterns).unwrap();
    for (name, bytes) in &contents {
        if let Some(found) = searcher.find(bytes) {
            panic!(
                "canary form #{} found in {name} at byte {}",
                found.pattern().as_usize(),
                found.start()
            );
        }
    }
    // The scan itself works: a canary planted in a copy of the log is found.
    let mut planted = contents.last().unwrap().1.clone();
    planted.extend_from_slice(canaries[500].as_bytes());
    assert!(searcher.find(&planted).is_some());
}
