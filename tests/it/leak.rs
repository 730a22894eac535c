//! No canary value, API key or access token reaches any file the vault
//! wrote, or its logs, whatever surface it came through: the one wide leak
//! scan, and the audit trail's own promise that it holds no caller text.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use base64::Engine;
use serde_json::{json, Value};

use crate::scan::{self, Scan};
use crate::support::*;
use crate::upstream::Upstream;

const CALLBACK_SECRET: &[u8] = b"leak-test callback secret, 32 b.";
const PASSCODE: &str = "leak-test-upstream-passcode";

/// A vault with every surface on: /v1, the CleverTap surface, an egress
/// route to a recording upstream, a route to a dead upstream, a signed
/// callback to a recording provider; JSON logs at debug level in files.
struct Rig {
    setup: Setup,
    server: Server,
    upstream: Upstream,
    provider: Upstream,
    log_dir: PathBuf,
}

fn rig() -> Rig {
    let upstream = Upstream::start();
    let provider = Upstream::start();
    let setup = Setup::configure_keyed("", STANDARD, MasterKey::Passphrase);
    let secret = setup.dir.path().join("callback.secret");
    fs::write(
        &secret,
        format!(
            "whsec_{}\n",
            base64::engine::general_purpose::STANDARD.encode(CALLBACK_SECRET)
        ),
    )
    .unwrap();
    let passcode = setup.dir.path().join("passcode");
    fs::write(&passcode, PASSCODE).unwrap();
    for file in [&secret, &passcode] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let log_dir = setup.dir.path().join("logs");
    // The dead route reports rather than blocks, so that a canary in its
    // query reaches the failing forward (whose URL must not be logged).
    let route = |name: &str, prefix: &str, upstream: &str| {
        let mode = if name == "down" { "report" } else { "block" };
        format!(
            r#"
[[routes]]
name = "{name}"
path_prefix = "{prefix}"
upstream = "{upstream}"
unselected_pii = "{mode}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
timeout_ms = 1500
headers = {{ "X-CleverTap-Passcode" = {{ file = "{}" }} }}
fields = [
  {{ select = "$.d[*].identity", class = "name" }},
  {{ select = "$.d[*].profileData.Email", class = "email" }},
  {{ select = "$.d[*].profileData.Phone", class = "phone" }},
  {{ select = "$.d[*].profileData.Name", class = "name" }},
]
"#,
            passcode.display()
        )
    };
    let closed = closed_port();
    let sections = format!(
        r#"
[clevertap]
enabled = true
namespace = "retail"
default_class = "name"

[[callbacks]]
name = "sms"
path = "/callbacks/sms"
namespace = "retail"
purpose = "sms_delivery"
role = "sms_worker"
secret_file = "{}"
forward = "{}/send"
insecure_allow_http_upstream = true
fields = [ {{ select = "$.to" }}, {{ select = "$.message.template", placeholders = true }} ]
{}{}
[log]
format = "json"
level = "debug"
directory = "{}"
"#,
        secret.display(),
        provider.url,
        route("platform", "/platform", &upstream.url),
        route("down", "/down", &format!("http://{closed}")),
        log_dir.display(),
    );
    setup.append_and_init(&sections);
    let server = setup.serve();
    Rig {
        setup,
        server,
        upstream,
        provider,
        log_dir,
    }
}

/// Every file the store wrote, read now: the data directory, and on
/// PostgreSQL the whole cluster directory too (tables, indexes, the WAL,
/// the server's log). `stored` names files that must be among them.
fn stored_files(setup: &Setup, label: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = scan::files(&setup.data_dir, label);
    // (The files of a server named by TOKENVAULT_TEST_PG_URL are not this
    // test's to read.)
    if let Some(cluster) = setup.postgres.as_ref().filter(|c| c.is_local()) {
        files.extend(scan::files(cluster.dir(), &format!("postgres, {label}")));
    }
    files
}

/// Files a scan must have read, by backend.
fn expected_files(setup: &Setup) -> &'static [&'static str] {
    if let Some(cluster) = &setup.postgres {
        if !cluster.is_local() {
            return &[];
        }
        &["/pg_wal/", "/base/", "server.log ("]
    } else {
        &[
            "vault.db (",
            "vault.db-wal (",
            "vault.db-shm (",
            "audit.db (",
            "audit.db-wal (",
            "keyring.json (",
        ]
    }
}

/// Status and body text of a request with a bearer key and a JSON body.
fn send(server: &Server, method: reqwest::Method, path: &str, key: &str, body: &Value) -> u16 {
    http()
        .request(method, server.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Sends `body` to the sms callback, signed now under message id `id`;
/// answers the status.
fn send_callback(server: &Server, id: &str, body: Vec<u8>) -> u16 {
    let timestamp = unix_now();
    http()
        .post(server.url("/callbacks/sms"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            webhook_signature(CALLBACK_SECRET, id, timestamp, &body),
        )
        .body(body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Sends caller text where a token, a purpose or a namespace belongs, on
/// every surface that takes one: /v1 detokenize, DELETE paths, consent, the
/// CleverTap surface's getRawValue and values/batch, and a signed callback.
/// `real` is a token that exists, mixed in so that records hold both.
fn probe(rig: &Rig, values: &[String], real: &str) {
    let server = &rig.server;
    let post_json =
        |path: &str, key: &str, body: Value| send(server, reqwest::Method::POST, path, key, &body);
    let mut chunks = values.chunks(values.len().div_ceil(6));
    // As tokens, beside a real one; twice, so repeated probing shows.
    for value in chunks.next().unwrap() {
        for _ in 0..2 {
            let body =
                json!({"namespace": "retail", "purpose": "support", "tokens": [value, real]});
            assert_eq!(post_json("/v1/detokenize", &key("admin"), body), 200);
        }
        let body = json!({"namespace": "retail", "purpose": "sms_delivery", "tokens": [value]});
        assert_eq!(post_json("/v1/detokenize", &key("helpdesk"), body), 403);
    }
    // As purposes: unconfigured but allowed (`*`), and refused.
    for value in chunks.next().unwrap() {
        let body = json!({"namespace": "retail", "purpose": value, "tokens": [real]});
        assert_eq!(
            post_json("/v1/detokenize", &key("admin"), body.clone()),
            200
        );
        assert_eq!(post_json("/v1/detokenize", &key("sms"), body), 403);
        let consent =
            json!({"namespace": "retail", "token": real, "purpose": value, "withdrawn": true});
        assert_eq!(
            send(
                server,
                reqwest::Method::PUT,
                "/v1/consent",
                &key("consent"),
                &consent
            ),
            404,
            "a purpose no configuration names is not found"
        );
    }
    // As namespaces.
    for value in chunks.next().unwrap() {
        let body = json!({"namespace": value, "purpose": "support", "tokens": [real]});
        assert_eq!(post_json("/v1/detokenize", &key("admin"), body), 404);
        let body =
            json!({"namespace": value, "items": [{"class": "email", "value": "x@example.com"}]});
        assert_eq!(post_json("/v1/tokenize", &key("admin"), body), 404);
    }
    // In DELETE paths, as the token and as the namespace; and as the token
    // of a consent change.
    for value in chunks.next().unwrap() {
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        for path in [
            format!("/v1/namespaces/retail/tokens/{encoded}"),
            format!("/v1/namespaces/{encoded}/tokens/{real}"),
        ] {
            let status = send(
                server,
                reqwest::Method::DELETE,
                &path,
                &key("admin"),
                &json!({}),
            );
            assert!(status == 404, "{status}");
        }
        let consent = json!({"namespace": "retail", "token": value, "purpose": "sms_delivery", "withdrawn": true});
        assert_eq!(
            send(
                server,
                reqwest::Method::PUT,
                "/v1/consent",
                &key("consent"),
                &consent
            ),
            404
        );
    }
    // On the CleverTap surface.
    for value in chunks.next().unwrap() {
        let body = json!({"token": value, "metadata": {"purpose": "email_dispatch"}});
        let path = "/ct-vault/api/tokenization/getRawValue";
        assert_eq!(post_json(path, &key("dispatcher"), body), 200);
        let body = json!({"tokens": [value, real], "metadata": {"purpose": value}});
        let path = "/ct-vault/api/tokenization/tokens/values/batch";
        assert_eq!(post_json(path, &key("dispatcher"), body), 403);
        let body = json!({"tokens": [value, real]});
        assert_eq!(post_json(path, &key("dispatcher"), body), 200);
    }
    // In a signed callback.
    for (i, value) in chunks.next().unwrap().iter().enumerate() {
        let body = serde_json::to_vec(
            &json!({"to": value, "message": {"template": format!("Hi {{{{{value}}}}}")}}),
        )
        .unwrap();
        assert_eq!(send_callback(server, &format!("msg_probe_{i}"), body), 403);
    }
    assert!(
        rig.provider.take().is_empty(),
        "a probe reached the provider"
    );
}

fn probes(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 3 {
            0 => format!("probe.{i:03}.zq@example.com"),
            1 => format!("+9190007{i:05}"),
            _ => format!("Probename Zq {i:03}"),
        })
        .collect()
}

#[test]
pub fn caller_strings_never_reach_the_audit_trail() {
    let rig = rig();
    let real = tokenize(
        &rig.server,
        "crm",
        "retail",
        &[("email", "known@example.com")],
    );
    let values = probes(60);
    probe(&rig, &values, &real[0]);

    let scan = Scan::new(&values, &[]);
    let mut haystacks = stored_files(&rig.setup, "running");
    let names: Vec<&str> = haystacks.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(trail) = match &rig.setup.postgres {
        Some(cluster) => cluster.is_local().then_some("/pg_wal/"),
        None => Some("audit.db-wal"),
    } {
        assert!(names.iter().any(|n| n.contains(trail)), "{names:?}");
    }
    haystacks.push(("server output".to_owned(), rig.server.logs().into_bytes()));
    haystacks.extend(scan::files(&rig.log_dir, "log"));
    scan.assert_clean(&haystacks);

    // What the trail holds instead: existing tokens by name, the rest as
    // fingerprints, the same for the same text.
    let records = audit_records(&rig.setup);
    let detokenizes: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "detokenize" && r["actor"] == "admin")
        .collect();
    let first = detokenizes[0];
    assert_eq!(first["tokens"], json!([real[0]]), "{first}");
    let fingerprint = first["unrecognized"][0].as_str().unwrap();
    assert!(
        fingerprint.starts_with("token:") && fingerprint.len() == 38,
        "{first}"
    );
    assert_eq!(detokenizes[1]["unrecognized"], first["unrecognized"]);
    assert_ne!(detokenizes[2]["unrecognized"], first["unrecognized"]);
    let unknown_namespace = records
        .iter()
        .find(|r| r["reason"] == "unknown_namespace")
        .unwrap();
    assert!(
        unknown_namespace["namespace"].is_null(),
        "{unknown_namespace}"
    );
    assert!(
        unknown_namespace["unrecognized"][0]
            .as_str()
            .unwrap()
            .starts_with("namespace:"),
        "{unknown_namespace}"
    );
    let unknown_purpose = records
        .iter()
        .find(|r| r["actor"] == "sms" && r["reason"] == "purpose_not_granted")
        .unwrap();
    assert!(unknown_purpose["purpose"].is_null(), "{unknown_purpose}");
    assert_chain_verifies(&rig.setup);
}

#[test]
pub fn canaries_never_reach_disk_or_logs() {
    let canaries = scan::canaries();
    let mut rig = rig();
    let server = &rig.server;
    let class_of = |value: &str| {
        if value.contains('@') {
            "email"
        } else if value.starts_with('+') {
            "phone"
        } else {
            "name"
        }
    };

    // /v1: tokenize, again through the known-value path, into a random
    // class; reveal plain and masked; refused and malformed requests.
    let items: Vec<(&str, &str)> = canaries.iter().map(|v| (class_of(v), v.as_str())).collect();
    let tokens = tokenize(server, "crm", "retail", &items);
    assert_eq!(tokenize(server, "crm", "retail", &items), tokens);
    let notes: Vec<(&str, &str)> = canaries
        .iter()
        .take(100)
        .map(|v| ("note", v.as_str()))
        .collect();
    tokenize(server, "crm", "retail", &notes);
    let values = detokenize(server, "admin", "retail", "support", &tokens);
    for (value, answer) in canaries.iter().zip(&values) {
        let expected = if value.contains('@') {
            value.to_lowercase()
        } else {
            value.clone()
        };
        assert_eq!(answer["value"].as_str(), Some(expected.as_str()));
    }
    detokenize(server, "helpdesk", "retail", "support", &tokens);
    let refused =
        json!({"namespace": "retail", "items": [{"class": "email", "value": canaries[0]}]});
    assert_eq!(post(server, "/v1/tokenize", &key("sms"), &refused).0, 403);
    let invalid =
        json!({"namespace": "retail", "items": [{"class": "phone", "value": canaries[0]}]});
    assert_eq!(post(server, "/v1/tokenize", &key("crm"), &invalid).0, 400);

    // Consent, by subject: the subject is a canary too.
    for subject in canaries.iter().skip(900).take(10) {
        let body = json!({"namespace": "retail", "subject": subject, "purpose": "sms_delivery", "withdrawn": true});
        assert_eq!(
            send(
                server,
                reqwest::Method::PUT,
                "/v1/consent",
                &key("consent"),
                &body
            ),
            200
        );
    }

    // The CleverTap surface: a batch in, the tokens back out encrypted, an
    // access token, a refused call and an envelope that does not open.
    let ct = |path: &str, bearer: &str, body: Value, encrypted: bool| {
        let mut request = http()
            .post(server.url(path))
            .bearer_auth(bearer)
            .header("content-type", "application/json");
        if encrypted {
            request = request.header("Encrypted", "true");
        }
        let response = request.body(body.to_string()).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let form: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_id", "crm"),
            ("client_secret", key("crm").as_str()),
        ])
        .finish();
    let issued: Value = http()
        .post(server.url("/auth/realms/ct-vault/protocol/openid-connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access_token = issued["access_token"].as_str().unwrap().to_owned();
    let (status, answer) = ct(
        "/ct-vault/api/tokenization/tokens/batch",
        &access_token,
        json!({ "values": canaries }),
        false,
    );
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let ct_tokens: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["token"].as_str().unwrap())
        .collect();
    let session = [0x5au8; 32];
    let nonce = [0x11u8; 12];
    let mut sealed = json!({"tokens": ct_tokens, "metadata": {"purpose": "email_dispatch"}})
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
    let envelope = json!({
        "itp": b64.encode(&sealed),
        "itk": b64.encode(session),
        "itv": b64.encode(nonce),
    });
    let path = "/ct-vault/api/tokenization/tokens/values/batch";
    let (status, answer) = ct(path, &key("dispatcher"), envelope, true);
    assert_eq!(status, 200, "{answer}");
    let path = "/ct-vault/api/tokenization/getToken";
    let (status, _) = ct(path, &key("intake"), json!({ "value": canaries[0] }), false);
    assert_eq!(status, 403);
    let bad_envelope = json!({ "itp": canaries[1], "itk": canaries[2], "itv": canaries[3] });
    let (status, _) = ct(path, &key("crm"), bad_envelope, true);
    assert_eq!(status, 419);

    // Egress: an upload through the route (the upstream must see tokens
    // only), and a canary in the query string of a route whose upstream is
    // down.
    let records: Vec<Value> = canaries
        .chunks(3)
        .enumerate()
        .map(|(i, chunk)| {
            let mut profile = serde_json::Map::new();
            for value in chunk {
                let field = match class_of(value) {
                    "email" => "Email",
                    "phone" => "Phone",
                    _ => "Name",
                };
                profile.insert(field.to_owned(), Value::String(value.clone()));
            }
            json!({"identity": format!("CANARY-{i}"), "type": "profile", "profileData": profile})
        })
        .collect();
    let upload = json!({ "d": records });
    let status = send(
        server,
        reqwest::Method::POST,
        "/platform/1/upload",
        &key("crm"),
        &upload,
    );
    assert_eq!(status, 200);
    let email = form_urlencoded::byte_serialize(canaries[3].as_bytes()).collect::<String>();
    let status = send(
        server,
        reqwest::Method::POST,
        &format!("/down/1/upload?email={email}"),
        &key("crm"),
        &json!({"d": []}),
    );
    assert_eq!(status, 502);

    // Callbacks: tokens of canary phones and names, revealed to the
    // provider only.
    let mut delivered = Vec::new();
    for i in 0..10 {
        let (phone, name) = (&canaries[3 * i + 1], &canaries[3 * i + 2]);
        let people = tokenize(server, "crm", "retail", &[("phone", phone), ("name", name)]);
        let body = serde_json::to_vec(&json!({
            "to": people[0],
            "message": {"template": format!("Hello {{{{{}}}}}", people[1])},
        }))
        .unwrap();
        assert_eq!(send_callback(server, &format!("msg_canary_{i}"), body), 200);
        delivered.extend(rig.provider.take());
    }
    let delivered: String = delivered
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        delivered.contains(&canaries[2]),
        "the provider got the values"
    );

    // Caller text where tokens, purposes and namespaces belong.
    probe(&rig, &canaries[940..1000], &tokens[0]);

    // What is searched for: every canary in every form, every API key,
    // the access token, the passphrase, the secrets a route and a callback
    // hold.
    let mut secrets: Vec<String> = client_keys().values().map(|(key, _)| key.clone()).collect();
    secrets.push(access_token);
    secrets.push(PASSPHRASE.to_owned());
    secrets.push(PASSCODE.to_owned());
    secrets.push(base64::engine::general_purpose::STANDARD.encode(CALLBACK_SECRET));
    let scan = Scan::new(&canaries, &secrets);

    // What the upstream received: tokens only (its passcode header aside).
    let received = rig.upstream.take();
    assert!(!received.is_empty());
    let upstream_scan = Scan::new(
        &canaries,
        &client_keys()
            .values()
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>(),
    );
    for request in &received {
        assert_eq!(
            upstream_scan.find(&request.body),
            None,
            "in an upstream body"
        );
        for (name, value) in &request.headers {
            assert_eq!(
                upstream_scan.find(value.as_bytes()),
                None,
                "in upstream header {name}"
            );
        }
    }

    // The data directory while the vault runs (WAL and shared memory as
    // they are), then everything again after a clean stop, with the logs.
    let mut haystacks = stored_files(&rig.setup, "running");
    let names: Vec<&str> = haystacks.iter().map(|(n, _)| n.as_str()).collect();
    for expected in expected_files(&rig.setup) {
        assert!(
            names.iter().any(|n| n.contains(expected)),
            "{expected} missing from {names:?}"
        );
    }
    haystacks.extend(scan::files(&rig.log_dir, "log, running"));
    // A backup taken while the vault runs: the file, and the data directory
    // it restores into. (PostgreSQL is backed up with its own tools.)
    if rig.setup.postgres.is_none() {
        let backup_file = rig.setup.dir.path().join("leak.backup");
        let out = std::process::Command::new(BIN)
            .args(["backup", "create", "--out"])
            .arg(&backup_file)
            .arg("--config")
            .arg(&rig.setup.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        haystacks.push((
            "backup file".to_owned(),
            std::fs::read(&backup_file).unwrap(),
        ));
        let restored = rig.setup.dir.path().join("leak-restored");
        let out = std::process::Command::new(BIN)
            .args(["backup", "restore"])
            .arg(&backup_file)
            .arg("--data-dir")
            .arg(&restored)
            .arg("--no-newer-erasures")
            .arg("--config")
            .arg(&rig.setup.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        haystacks.extend(scan::files(&restored, "restored backup"));
    }
    assert!(rig.server.stop().success());
    haystacks.extend(stored_files(&rig.setup, "stopped"));
    haystacks.push(("server output".to_owned(), rig.server.logs().into_bytes()));
    let logs = scan::files(&rig.log_dir, "log, stopped");
    assert!(!logs.is_empty(), "no log file in {}", rig.log_dir.display());
    let logged: String = logs
        .iter()
        .map(|(_, bytes)| String::from_utf8_lossy(bytes))
        .collect();
    assert!(
        logged.contains("\"route\":\"/v1/detokenize\"") && logged.contains("\"status\":403"),
        "the log files should hold the request log"
    );
    haystacks.extend(logs);
    scan.assert_clean(&haystacks);

    // The scan itself works: every form of a canary, and a key, planted in
    // a copy of a log, is found.
    let log = &haystacks.last().unwrap().1;
    scan.assert_finds_planted(log, &canaries[500]);
    scan.assert_finds_planted(log, &canaries[501]);
    let mut planted = log.clone();
    planted.extend_from_slice(key("admin").as_bytes());
    assert!(scan.find(&planted).is_some());

    // The audit trail is whole, and its files were among those searched.
    let count = audit_records(&rig.setup).len();
    assert!(count > 100, "{count}");
    assert_chain_verifies(&rig.setup);
}
