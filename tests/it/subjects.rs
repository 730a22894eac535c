//! Data subjects on every path: tokens made by an egress route are bound to
//! the customer of their own record, a value may belong to several
//! customers, and consent by subject reaches every path.

use std::fs;

use serde_json::{json, Value};

use crate::activation::{callback_body, put_consent, rig_with, send, signed, People, Rig};
use crate::support::*;
use crate::upstream::Upstream;

/// A route that binds each record's fields to its `identity`.
fn subject_route(upstream: &Upstream) -> String {
    format!(
        r#"
[[routes]]
name = "uploads"
path_prefix = "/uploads"
upstream = "{}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
subject = "$.d[*].identity"
fields = [
  {{ select = "$.d[*].identity", class = "name" }},
  {{ select = "$.d[*].profileData.Email", class = "email" }},
  {{ select = "$.d[*].profileData.Phone", class = "phone" }},
  {{ select = "$.d[*].profileData.Name", class = "name" }},
]
"#,
        upstream.url
    )
}

/// Uploads the ten-profile fixture through the route and answers the
/// tokens the platform received, per profile, with the profile's identity.
fn upload(rig: &Rig, upstream: &Upstream) -> Vec<(String, People)> {
    let body = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    let response = http()
        .post(rig.server.url("/uploads/1/upload"))
        .bearer_auth(key("crm"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().unwrap()
    );
    let sent: Value = serde_json::from_slice(&body).unwrap();
    let received = upstream.take();
    assert_eq!(received.len(), 1);
    let forwarded: Value = serde_json::from_slice(&received[0].body).unwrap();
    let token = |record: &Value, pointer: &str| {
        record
            .pointer(pointer)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    sent["d"]
        .as_array()
        .unwrap()
        .iter()
        .zip(forwarded["d"].as_array().unwrap())
        .map(|(original, record)| {
            (
                original["identity"].as_str().unwrap().to_owned(),
                People {
                    phone: token(record, "/profileData/Phone"),
                    identity: token(record, "/identity"),
                    name: token(record, "/profileData/Name"),
                },
            )
        })
        .collect()
}

/// What each path answers for a profile's phone token, for `sms_delivery`:
/// `/v1`, the CleverTap surface, and a signed callback.
fn reveals(rig: &Rig, people: &People, message_id: &str) -> (bool, bool, bool) {
    let values = detokenize(
        &rig.server,
        "sms",
        "retail",
        "sms_delivery",
        std::slice::from_ref(&people.phone),
    );
    let v1 = values[0]["value"].is_string();
    let (status, ct) = post(
        &rig.server,
        "/ct-vault/api/tokenization/getRawValue",
        &key("dispatcher"),
        &json!({"token": people.phone, "metadata": {"purpose": "sms_delivery"}}),
    );
    assert_eq!(status, 200, "{ct}");
    assert_eq!(ct["exists"], true);
    let body = callback_body(people);
    let (status, answer) = send(rig, "sms", &body, signed("sms", message_id, &body));
    let delivered = rig.provider.take();
    match status {
        200 => assert_eq!(delivered.len(), 1),
        403 => assert!(delivered.is_empty(), "{answer}"),
        other => panic!("callback answered {other}: {answer}"),
    }
    (v1, ct["value"].is_string(), status == 200)
}

#[test]
pub(crate) fn consent_withdrawn_for_an_identity_blocks_exactly_its_profiles_tokens_on_every_path() {
    let upstream = Upstream::start();
    let rig = rig_with(&subject_route(&upstream));
    let profiles = upload(&rig, &upstream);
    assert_eq!(profiles.len(), 10);
    let (identity, withdrawn) = &profiles[3];
    let (_, neighbour) = &profiles[4];
    assert_eq!(reveals(&rig, withdrawn, "msg_s_1"), (true, true, true));

    let (status, answer) = put_consent(
        &rig.server,
        &key("consent"),
        &json!({"namespace": "retail", "subject": identity, "purpose": "*", "withdrawn": true, "source": "app-settings"}),
    );
    assert_eq!(status, 200, "{answer}");

    assert_eq!(
        reveals(&rig, withdrawn, "msg_s_2"),
        (false, false, false),
        "every path refuses the withdrawn identity's phone"
    );
    assert_eq!(
        reveals(&rig, neighbour, "msg_s_3"),
        (true, true, true),
        "the next profile's tokens are untouched"
    );
}

#[test]
pub(crate) fn a_value_sent_again_for_another_subject_belongs_to_both() {
    let upstream = Upstream::start();
    let rig = rig_with(&subject_route(&upstream));
    // A family phone: first CUST-A's, then CUST-B sends the same number.
    let tokenize_for = |subject: &str| {
        let (status, body) = post(
            &rig.server,
            "/v1/tokenize",
            &key("crm"),
            &json!({"namespace": "retail", "items": [{"class": "phone", "value": "+14155550142", "subject": subject}]}),
        );
        assert_eq!(status, 200, "{body}");
        body["tokens"][0]["token"].as_str().unwrap().to_owned()
    };
    let token = tokenize_for("CUST-A");
    assert_eq!(tokenize_for("CUST-B"), token, "deterministic: one token");
    let revealed = || {
        detokenize(
            &rig.server,
            "sms",
            "retail",
            "sms_delivery",
            std::slice::from_ref(&token),
        )[0]["value"]
            .is_string()
    };
    assert!(revealed());
    // The second subject's withdrawal reaches the token, although the first
    // subject sent it first.
    let (status, answer) = put_consent(
        &rig.server,
        &key("consent"),
        &json!({"namespace": "retail", "subject": "CUST-B", "purpose": "sms_delivery", "withdrawn": true}),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(!revealed(), "CUST-B's withdrawal blocks the shared phone");
}

#[test]
pub(crate) fn the_clevertap_surface_binds_values_to_the_subject_in_its_metadata() {
    let setup = Setup::new_with(
        "",
        "[clevertap]\nenabled = true\nnamespace = \"retail\"\ndefault_class = \"name\"\nphone_class = \"phone\"\nsubject_metadata_key = \"customerId\"\n",
    );
    let server = setup.serve();
    let get_token = |value: &str, metadata: Value| {
        let (status, body) = post(
            &server,
            "/ct-vault/api/tokenization/getToken",
            &key("crm"),
            &json!({"value": value, "metadata": metadata}),
        );
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let bound = get_token("+14155550177", json!({"customerId": "CUST-Z"}));
    let unbound = get_token("+14155550178", json!({"campaign": "CUST-Z"}));
    let (status, answer) = put_consent(
        &server,
        &key("consent"),
        &json!({"namespace": "retail", "subject": "CUST-Z", "purpose": "*", "withdrawn": true}),
    );
    assert_eq!(status, 200, "{answer}");
    let values = detokenize(&server, "sms", "retail", "sms_delivery", &[bound, unbound]);
    assert_eq!(
        values[0]["error"]["code"], "consent_withdrawn",
        "{values:?}"
    );
    assert_eq!(values[1]["value"], "+14155550178");
}

/// The sealed bytes stored for `token`, read from the store directly.
fn sealed_bytes(setup: &Setup, token: &str) -> Vec<u8> {
    if let Some(cluster) = &setup.postgres {
        let hex = cluster.psql_in(
            "vault",
            &format!(
                "SELECT encode(sealed, 'hex') FROM tokenvault.tokens WHERE namespace = 'retail' AND token = '{token}'"
            ),
        );
        return hex::decode(hex.trim()).unwrap();
    }
    let db = rusqlite::Connection::open_with_flags(
        setup.data_dir.join("vault.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT sealed FROM tokens WHERE namespace = 'retail' AND token = ?1",
        [token],
        |row| row.get(0),
    )
    .unwrap()
}

fn b64url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// Checks a receipt as its holder would: with the published key and an
/// Ed25519 implementation of its own (ed25519-dalek, RFC 8032), not the
/// vault's (ring).
fn receipt_verifies(server: &Server, receipt: &Value) -> bool {
    let key: Value = http()
        .get(server.url("/v1/receipts/key"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(key["algorithm"], "Ed25519");
    assert_eq!(key["key_id"], receipt["key_id"]);
    let public: [u8; 32] = b64url(key["public_key"].as_str().unwrap())
        .try_into()
        .unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let signature: [u8; 64] = b64url(receipt["signature"].as_str().unwrap())
        .try_into()
        .unwrap();
    let payload = b64url(receipt["payload"].as_str().unwrap());
    public
        .verify_strict(&payload, &ed25519_dalek::Signature::from_bytes(&signature))
        .is_ok()
}

#[test]
pub(crate) fn forgetting_a_subject_erases_its_own_values_keeps_shared_ones_and_signs_a_receipt() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let tokenize_for = |subject: &str, items: &[(&str, &str)]| -> Vec<String> {
        let items: Vec<Value> = items
            .iter()
            .map(|(class, value)| json!({"class": class, "value": value, "subject": subject}))
            .collect();
        let (status, body) = post(
            &server,
            "/v1/tokenize",
            &key("crm"),
            &json!({"namespace": "retail", "items": items}),
        );
        assert_eq!(status, 200, "{body}");
        body["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token"].as_str().unwrap().to_owned())
            .collect()
    };
    let a = tokenize_for(
        "CUST-A",
        &[
            ("phone", "+14155550190"),
            ("email", "erase.me.7q@example.com"),
            ("name", "Erased Person"),
        ],
    );
    let b = tokenize_for(
        "CUST-B",
        &[
            ("phone", "+14155550190"),
            ("email", "keep.me.7q@example.com"),
        ],
    );
    assert_eq!(a[0], b[0], "the family phone is one token");
    let subject_call = |path: &str, client: &str, subject: &str| {
        post(
            &server,
            path,
            &key(client),
            &json!({"namespace": "retail", "subject": subject}),
        )
    };

    // Negative: the operations are granted, never implied.
    for client in ["crm", "admin", "consent"] {
        let (status, body) = subject_call("/v1/subjects/forget", client, "CUST-A");
        assert_eq!(status, 403, "{client}: {body}");
        let (status, body) = subject_call("/v1/subjects/export", client, "CUST-A");
        assert_eq!(status, 403, "{client}: {body}");
    }
    let (status, body) = subject_call("/v1/subjects/export", "dpo_masked", "CUST-A");
    assert_eq!(status, 403, "export needs plain reveal: {body}");
    let (status, _) = subject_call("/v1/subjects/forget", "dpo_masked", "CUST-A");
    assert_eq!(status, 403, "export does not grant forget");

    // Access: exactly the subject's values.
    let (status, export) = subject_call("/v1/subjects/export", "dpo", "CUST-A");
    assert_eq!(status, 200, "{export}");
    let mut held: Vec<(String, String)> = export["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["token"].as_str().unwrap().to_owned(),
                v["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    held.sort();
    let mut expected = vec![
        (a[0].clone(), "+14155550190".to_owned()),
        (a[1].clone(), "erase.me.7q@example.com".to_owned()),
        (a[2].clone(), "Erased Person".to_owned()),
    ];
    expected.sort();
    assert_eq!(held, expected);

    // Erasure.
    let sealed = sealed_bytes(&setup, &a[1]);
    let (status, receipt) = subject_call("/v1/subjects/forget", "dpo", "CUST-A");
    assert_eq!(status, 200, "{receipt}");
    let statement = &receipt["receipt"];
    assert_eq!(statement["type"], "tokenvault.erasure.v1");
    assert_eq!(statement["deleted"], json!({"email": 1, "name": 1}));
    assert_eq!(statement["deleted_total"], 2);
    assert_eq!(statement["unlinked_shared"], 1);
    assert!(!statement.to_string().contains("CUST-A"), "{statement}");
    assert!(receipt_verifies(&server, &receipt));
    let parsed: Value =
        serde_json::from_slice(&b64url(receipt["payload"].as_str().unwrap())).unwrap();
    assert_eq!(&parsed, statement, "the payload is the statement");
    // A changed statement does not verify.
    let mut forged = receipt.clone();
    let mut payload = b64url(receipt["payload"].as_str().unwrap());
    let at = payload.iter().position(|b| *b == b'2').unwrap();
    payload[at] = b'0';
    forged["payload"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &payload
    ));
    assert!(!receipt_verifies(&server, &forged));

    // The subject's own values are gone; the shared phone and the other
    // subject's values stay.
    let values = detokenize(
        &server,
        "admin",
        "retail",
        "support",
        &[a[1].clone(), a[2].clone(), a[0].clone(), b[1].clone()],
    );
    assert_eq!(values[0]["error"]["code"], "not_found");
    assert_eq!(values[1]["error"]["code"], "not_found");
    assert_eq!(values[2]["value"], "+14155550190");
    assert_eq!(values[3]["value"], "keep.me.7q@example.com");
    let (status, export) = subject_call("/v1/subjects/export", "dpo", "CUST-B");
    assert_eq!(status, 200);
    assert_eq!(export["values"].as_array().unwrap().len(), 2);
    let (_, export) = subject_call("/v1/subjects/export", "dpo", "CUST-A");
    assert_eq!(export["values"], json!([]), "nothing is left for CUST-A");

    // Not in vault.db, its WAL, or anywhere else in the data directory
    // while the vault runs: not even the sealed bytes.
    let needle = &sealed[..];
    for (name, bytes) in crate::scan::files(&setup.data_dir, "data") {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the erased value's sealed bytes linger in {name}"
        );
    }

    // The audit record names the erased tokens, at the receipt's sequence.
    let seq = statement["audit_seq"].as_u64().unwrap();
    server.stop();
    let record = audit_records(&setup)
        .into_iter()
        .find(|r| r["seq"].as_u64() == Some(seq))
        .unwrap();
    assert_eq!(record["action"], "subject_forget");
    assert_eq!(record["item_count"], 2);
    let mut erased: Vec<&str> = record["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    erased.sort();
    let mut wanted = vec![a[1].as_str(), a[2].as_str()];
    wanted.sort();
    assert_eq!(erased, wanted);
}

#[test]
pub(crate) fn the_cli_exports_and_forgets_a_subject_beside_a_running_vault() {
    let setup = Setup::new("");
    let server = setup.serve();
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [
            {"class": "email", "value": "cli.subject.7q@example.com", "subject": "CUST-CLI"},
            {"class": "name", "value": "Someone Else", "subject": "CUST-OTHER"},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let email = body["tokens"][0]["token"].as_str().unwrap().to_owned();
    let other = body["tokens"][1]["token"].as_str().unwrap().to_owned();
    let run = |command: &str, subject: &str| -> Value {
        let out = std::process::Command::new(BIN)
            .args([
                "subject",
                command,
                "--namespace",
                "retail",
                "--subject-stdin",
                "--config",
            ])
            .arg(&setup.config)
            .output_with_stdin(&format!("{subject}\n"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let export = run("export", "CUST-CLI");
    assert_eq!(
        export["values"],
        json!([{"token": email, "class": "email", "value": "cli.subject.7q@example.com"}])
    );
    let receipt = run("forget", "CUST-CLI");
    assert_eq!(receipt["receipt"]["deleted"], json!({"email": 1}));
    // Signed by the same key the server publishes: it derives from the
    // master key, not from the process.
    assert!(receipt_verifies(&server, &receipt));
    // Correct: the subject, then the new value, on standard input.
    let out = std::process::Command::new(BIN)
        .args([
            "subject",
            "correct",
            "--namespace",
            "retail",
            "--subject-stdin",
            "--token",
            &other,
            "--config",
        ])
        .arg(&setup.config)
        .output_with_stdin("CUST-OTHER\nSomeone Renamed\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values = detokenize(&server, "admin", "retail", "support", &[email, other]);
    assert_eq!(values[0]["error"]["code"], "not_found");
    assert_eq!(values[1]["value"], "Someone Renamed");
    // Without a subject on stdin, nothing happens.
    let out = std::process::Command::new(BIN)
        .args([
            "subject",
            "forget",
            "--namespace",
            "retail",
            "--subject-stdin",
            "--config",
        ])
        .arg(&setup.config)
        .output_with_stdin("\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no subject"));
}

#[test]
pub(crate) fn a_correction_keeps_the_token_and_moves_the_deterministic_mapping() {
    let setup = Setup::new("");
    let server = setup.serve();
    let tokenize_for = |subject: &str, class: &str, value: &str| -> String {
        let (status, body) = post(
            &server,
            "/v1/tokenize",
            &key("crm"),
            &json!({"namespace": "retail", "items": [{"class": class, "value": value, "subject": subject}]}),
        );
        assert_eq!(status, 200, "{body}");
        body["tokens"][0]["token"].as_str().unwrap().to_owned()
    };
    let correct = |client: &str, subject: &str, token: &str, value: &str| {
        post(
            &server,
            "/v1/subjects/correct",
            &key(client),
            &json!({"namespace": "retail", "subject": subject, "token": token, "value": value}),
        )
    };
    let old = tokenize_for("CUST-C", "email", "old.addr.7q@example.com");
    let taken = tokenize_for("CUST-D", "email", "taken.7q@example.com");
    let shared = tokenize_for("CUST-C", "phone", "+14155550160");
    assert_eq!(tokenize_for("CUST-D", "phone", "+14155550160"), shared);
    let card = tokenize_for("CUST-C", "card", "4111111111111111");

    // Negative: the operation is granted, never implied.
    for client in ["crm", "admin", "dpo_masked"] {
        let (status, body) = correct(client, "CUST-C", &old, "new.addr.7q@example.com");
        assert_eq!(status, 403, "{client}: {body}");
    }

    let (status, body) = correct("dpo", "CUST-C", &old, "New.Addr.7q@Example.com");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"token": old, "class": "email"}));
    let values = detokenize(
        &server,
        "admin",
        "retail",
        "support",
        std::slice::from_ref(&old),
    );
    assert_eq!(
        values[0]["value"], "new.addr.7q@example.com",
        "normalized as the class says"
    );
    assert_eq!(
        tokenize_for("CUST-C", "email", "new.addr.7q@example.com"),
        old,
        "the new value maps to the kept token"
    );
    assert_ne!(
        tokenize_for("CUST-X", "email", "old.addr.7q@example.com"),
        old,
        "the old value maps to nothing"
    );

    // Refusals change nothing.
    let refused = [
        (
            correct("dpo", "CUST-C", &old, "taken.7q@example.com"),
            "another token",
        ),
        (
            correct("dpo", "CUST-C", &taken, "mine.7q@example.com"),
            "not one of this subject",
        ),
        (correct("dpo", "CUST-C", &shared, "+14155550161"), "share"),
        (
            correct("dpo", "CUST-C", &card, "4000000000002222"),
            "last four",
        ),
    ];
    for ((status, body), says) in refused {
        assert_eq!(status, 409, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(body["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_"));
    }
    let values = detokenize(
        &server,
        "admin",
        "retail",
        "support",
        &[taken.clone(), shared.clone(), card.clone()],
    );
    assert_eq!(values[0]["value"], "taken.7q@example.com");
    assert_eq!(values[1]["value"], "+14155550160");
    assert_eq!(values[2]["value"], "4111111111111111");
    // Same last four: allowed.
    let (status, body) = correct("dpo", "CUST-C", &card, "4000000000001111");
    assert_eq!(status, 200, "{body}");
    let (status, _) = correct("dpo", "CUST-C", "TKN_doesnotexist", "x@example.com");
    assert_eq!(status, 404);
}

fn run_backup(args: &[&str], config: &std::path::Path) {
    let out = std::process::Command::new(BIN)
        .arg("backup")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_erasure_reaches_later_backups_and_is_applied_again_to_an_earlier_one() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [
            {"class": "email", "value": "gone.after.7q@example.com", "subject": "CUST-GONE"},
            {"class": "email", "value": "stays.7q@example.com", "subject": "CUST-STAYS"},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let gone = body["tokens"][0]["token"].as_str().unwrap().to_owned();
    let stays = body["tokens"][1]["token"].as_str().unwrap().to_owned();
    let sealed = sealed_bytes(&setup, &gone);
    let earlier = setup.dir.path().join("earlier.backup");
    run_backup(
        &["create", "--out", earlier.to_str().unwrap()],
        &setup.config,
    );

    let (status, receipt) = post(
        &server,
        "/v1/subjects/forget",
        &key("dpo"),
        &json!({"namespace": "retail", "subject": "CUST-GONE"}),
    );
    assert_eq!(status, 200, "{receipt}");
    let later = setup.dir.path().join("later.backup");
    run_backup(&["create", "--out", later.to_str().unwrap()], &setup.config);
    let contains = |bytes: &[u8]| bytes.windows(sealed.len()).any(|w| w == &sealed[..]);
    assert!(
        contains(&std::fs::read(&earlier).unwrap()),
        "control: the earlier backup holds it"
    );
    assert!(
        !contains(&std::fs::read(&later).unwrap()),
        "a backup taken after the erasure does not"
    );
    server.stop();

    // The earlier backup restored in place of the live directory, with its
    // tombstone list: the erasure is applied again before anything is
    // served.
    let restored_dir = setup.dir.path().join("restored");
    let out = std::process::Command::new(BIN)
        .args(["backup", "restore"])
        .arg(&earlier)
        .arg("--data-dir")
        .arg(&restored_dir)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a restore must say what happens to newer erasures"
    );
    assert!(!restored_dir.join("vault.db").exists());
    run_backup(
        &[
            "restore",
            earlier.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
            "--erasures-from",
            setup.data_dir.to_str().unwrap(),
        ],
        &setup.config,
    );
    let config_text = std::fs::read_to_string(&setup.config).unwrap().replace(
        &format!("data_dir = \"{}\"", setup.data_dir.display()),
        &format!("data_dir = \"{}\"", restored_dir.display()),
    );
    let restored_config = setup.dir.path().join("restored.toml");
    std::fs::write(&restored_config, config_text).unwrap();
    let restored = Server::spawn(
        &["serve", "--config", restored_config.to_str().unwrap()],
        &[],
        setup.dir.path(),
    );
    let values = detokenize(&restored, "admin", "retail", "support", &[gone, stays]);
    assert_eq!(
        values[0]["error"]["code"], "not_found",
        "the erased value stays erased"
    );
    assert_eq!(values[1]["value"], "stays.7q@example.com");
    for (name, bytes) in crate::scan::files(&restored_dir, "restored") {
        assert!(
            !contains(&bytes),
            "the erased value's sealed bytes are back in {name}"
        );
    }
}
