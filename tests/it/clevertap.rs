//! The CleverTap Token Vault API, driven from the spec alone: request bytes
//! assembled here, AES-256-GCM done here with ring (the server uses the
//! RustCrypto `aes-gcm` crate), every field and status of the spec checked.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde_json::{json, Value};

use crate::support::*;
use crate::upstream::Upstream;

const SECTION: &str = r#"
[clevertap]
enabled = true
namespace = "retail"
default_class = "name"
access_token_ttl_secs = 2
"#;

const GET_TOKEN: &str = "/ct-vault/api/tokenization/getToken";
const TOKENIZE_V2: &str = "/ct-vault/api/v2/tokenize";
const GET_RAW_VALUE: &str = "/ct-vault/api/tokenization/getRawValue";
const TOKENS_BATCH: &str = "/ct-vault/api/tokenization/tokens/batch";
const TOKENIZE_BATCH_V2: &str = "/ct-vault/api/v2/tokenize/batch";
const VALUES_BATCH: &str = "/ct-vault/api/tokenization/tokens/values/batch";
const TOKEN_ENDPOINT: &str = "/auth/realms/ct-vault/protocol/openid-connect/token";

/// A plaintext call: status, raw body text, parsed body.
fn call(server: &Server, path: &str, bearer: &str, body: &Value) -> (u16, String, Value) {
    let response = http()
        .post(server.url(path))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    let parsed = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, text, parsed)
}

/// Asserts that the top-level object in `raw` has exactly `keys`, in order.
fn assert_keys_in_order(raw: &str, keys: &[&str]) {
    let parsed: serde_json::Map<String, Value> = serde_json::from_str(raw).unwrap();
    let mut got: Vec<&str> = parsed.keys().map(String::as_str).collect();
    let mut want = keys.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{raw}");
    let positions: Vec<usize> = keys
        .iter()
        .map(|key| raw.find(&format!("\"{key}\":")).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "order of {keys:?} in {raw}"
    );
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap())
}

/// `{itp, itk, itv}` of `plain` under `key` and `nonce`.
fn seal(key: &[u8; 32], nonce: [u8; 12], plain: &Value) -> Value {
    let mut sealed = serde_json::to_vec(plain).unwrap();
    cipher(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed,
        )
        .unwrap();
    json!({"itp": B64.encode(sealed), "itk": B64.encode(key), "itv": B64.encode(nonce)})
}

/// Opens a `{itp, itv}` answer.
fn open(key: &[u8; 32], answer: &Value) -> (Vec<u8>, Value) {
    let nonce = B64.decode(answer["itv"].as_str().unwrap()).unwrap();
    let mut sealed = B64.decode(answer["itp"].as_str().unwrap()).unwrap();
    let plain = cipher(key)
        .open_in_place(
            Nonce::try_assume_unique_for_key(&nonce).unwrap(),
            Aad::empty(),
            &mut sealed,
        )
        .unwrap()
        .to_vec();
    let parsed = serde_json::from_slice(&plain).unwrap();
    (nonce, parsed)
}

/// An encrypted call with the newer SDK's header (or the older one's).
fn call_encrypted(
    server: &Server,
    path: &str,
    bearer: &str,
    body: Value,
    old_header: bool,
) -> (u16, Value) {
    let (name, value) = if old_header {
        ("X-Clevertap-Encryption-Enabled", "TRUE")
    } else {
        ("Encrypted", "true")
    };
    let response = http()
        .post(server.url(path))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .header(name, value)
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn access_token(server: &Server, form: &[(&str, &str)]) -> (u16, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http()
        .post(server.url(TOKEN_ENDPOINT))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn is_e164(token: &str) -> bool {
    token.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[test]
pub(crate) fn plaintext_operations_answer_as_the_spec_says() {
    let setup = Setup::new_with("", SECTION);
    let server = setup.serve();
    let crm = key("crm");

    // Tokenize one: a new value, then the same value on the v2 alias.
    let (status, raw, first) = call(
        &server,
        GET_TOKEN,
        &crm,
        &json!({"value": "Ct.Canary.4471@Example.com", "metadata": {"source": "android"}}),
    );
    assert_eq!(status, 200, "{raw}");
    assert_keys_in_order(&raw, &["token", "exists", "newlyCreated", "dataType"]);
    assert_eq!(
        (&first["exists"], &first["newlyCreated"], &first["dataType"]),
        (&json!(false), &json!(true), &json!("string"))
    );
    let email_token = first["token"].as_str().unwrap().to_owned();
    assert!(
        email_token.ends_with("@tok.retail.invalid"),
        "{email_token}"
    );
    let (status, _, again) = call(
        &server,
        TOKENIZE_V2,
        &crm,
        &json!({"value": "Ct.Canary.4471@Example.com"}),
    );
    assert_eq!(status, 200);
    assert_eq!(again["token"], email_token.as_str());
    assert_eq!(
        (&again["exists"], &again["newlyCreated"]),
        (&json!(true), &json!(false))
    );

    // Classification: phone, plain number, anything else.
    let (_, _, phone) = call(&server, GET_TOKEN, &crm, &json!({"value": "+14155550143"}));
    let phone_token = phone["token"].as_str().unwrap();
    assert!(
        is_e164(phone_token) && phone_token.starts_with("+1"),
        "{phone}"
    );
    assert_eq!(phone["dataType"], "string");
    let (_, _, number) = call(&server, GET_TOKEN, &crm, &json!({"value": "99812034"}));
    assert_eq!(number["dataType"], "number");
    assert!(
        number["token"].as_str().unwrap().starts_with("TKN_"),
        "{number}"
    );

    // Detokenize one, and an unknown token (200, exists false, nulls).
    let (status, raw, value) = call(
        &server,
        GET_RAW_VALUE,
        &key("admin"),
        &json!({"token": email_token, "metadata": {"purpose": "email_dispatch", "request_id": "req_789"}}),
    );
    assert_eq!(status, 200, "{raw}");
    assert_keys_in_order(&raw, &["value", "exists", "dataType"]);
    assert_eq!(
        value,
        json!({"value": "ct.canary.4471@example.com", "exists": true, "dataType": "string"})
    );
    let (status, raw, missing) = call(
        &server,
        GET_RAW_VALUE,
        &key("admin"),
        &json!({"token": "TKN_doesnotexist0000000000", "metadata": {"purpose": "email_dispatch"}}),
    );
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        missing,
        json!({"value": null, "exists": false, "dataType": null})
    );
    let (_, _, number_value) = call(
        &server,
        GET_RAW_VALUE,
        &key("admin"),
        &json!({"token": number["token"], "metadata": {"purpose": "email_dispatch"}}),
    );
    assert_eq!(
        number_value,
        json!({"value": "99812034", "exists": true, "dataType": "number"})
    );

    // A batch of 1,000 in input order, echoed exactly as sent.
    let values: Vec<String> = (0..1000)
        .map(|i| match i % 10 {
            0 => format!("Mixed.Case.{i}@Example.COM"),
            1 => format!("  spaced value {i}  "),
            2 => format!("emoji {i} 😀🎉"),
            3 => String::new(),
            4 => format!("+1415555{:04}", i),
            5 => format!("{i}"),
            6 => format!("line\nbreak {i}"),
            7 => format!("Ünïcödé Näme {i}"),
            8 => "   ".to_owned(),
            _ => format!("tab\tseparated\t{i}"),
        })
        .collect();
    let (status, raw, batch) = call(&server, TOKENS_BATCH, &crm, &json!({"values": values}));
    assert_eq!(status, 200, "{raw}");
    assert_keys_in_order(&raw, &["results", "summary"]);
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    for (i, (result, value)) in results.iter().zip(&values).enumerate() {
        assert_eq!(result["originalValue"], value.as_str(), "result {i}");
        let keys: Vec<&str> = result
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 5, "{result}");
        let token = result["token"].as_str().unwrap();
        match i % 10 {
            0 => assert!(token.ends_with("@tok.retail.invalid"), "{result}"),
            4 => assert!(is_e164(token), "{result}"),
            _ => assert!(token.starts_with("TKN_"), "{result}"),
        }
        let expected_type = if i % 10 == 5 { "number" } else { "string" };
        assert_eq!(result["dataType"], expected_type, "{result}");
        assert_eq!(result["exists"], !result["newlyCreated"].as_bool().unwrap());
    }
    // "" and "   " trim to one value: one token for all of them.
    assert_eq!(results[3]["token"], results[8]["token"]);
    assert_eq!(results[3]["token"], results[13]["token"]);
    let summary = &batch["summary"];
    let (processed, existing, created) = (
        summary["processedCount"].as_u64().unwrap(),
        summary["existingCount"].as_u64().unwrap(),
        summary["newlyCreatedCount"].as_u64().unwrap(),
    );
    assert_eq!((processed, existing + created), (1000, 1000), "{summary}");
    let created_flags = results.iter().filter(|r| r["newlyCreated"] == true).count() as u64;
    assert_eq!(created, created_flags);
    assert!(created > 800, "{summary}");
    // The same batch again, on the v2 alias: the same tokens, all existing.
    let (status, _, repeat) = call(&server, TOKENIZE_BATCH_V2, &crm, &json!({"values": values}));
    assert_eq!(status, 200);
    assert_eq!(
        repeat["summary"],
        json!({"processedCount": 1000, "existingCount": 1000, "newlyCreatedCount": 0})
    );
    for (a, b) in results.iter().zip(repeat["results"].as_array().unwrap()) {
        assert_eq!(a["token"], b["token"]);
    }

    // Detokenize the batch's tokens and one unknown, in order.
    let mut tokens: Vec<Value> = results.iter().map(|r| r["token"].clone()).collect();
    tokens.push(json!("TKN_unknownunknownunknown00"));
    let (status, raw, revealed) = call(
        &server,
        VALUES_BATCH,
        &key("admin"),
        &json!({"tokens": tokens, "metadata": {"purpose": "email_dispatch"}}),
    );
    assert_eq!(status, 200, "{raw}");
    assert_keys_in_order(&raw, &["results", "summary"]);
    assert_eq!(
        revealed["summary"],
        json!({"processedCount": 1001, "foundCount": 1000, "notFoundCount": 1})
    );
    let revealed = revealed["results"].as_array().unwrap();
    assert_eq!(
        revealed[0],
        json!({"token": tokens[0], "value": "mixed.case.0@example.com", "exists": true, "dataType": "string"})
    );
    assert_eq!(revealed[1]["value"], "spaced value 1");
    assert_eq!(revealed[2]["value"], "emoji 2 😀🎉");
    assert_eq!(revealed[5]["dataType"], "number");
    assert_eq!(revealed[6]["value"], "line\nbreak 6");
    assert_eq!(
        revealed[1000],
        json!({"token": "TKN_unknownunknownunknown00", "value": null, "exists": false, "dataType": null})
    );

    // Limits: 1,001 values and 10,001 tokens are too large (413, as on /v1);
    // empty batches and wrong shapes are bad requests (400); a value over
    // 4 KiB is 413.
    let over: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
    for (path, body) in [
        (TOKENS_BATCH, json!({"values": over})),
        (
            VALUES_BATCH,
            json!({"tokens": vec!["TKN_x"; 10_001], "metadata": {"purpose": "email_dispatch"}}),
        ),
    ] {
        let (status, raw, body) = call(&server, path, &key("admin"), &body);
        assert_eq!(status, 413, "{path}: {raw}");
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
    for (path, body) in [
        (TOKENIZE_BATCH_V2, json!({"values": []})),
        (
            VALUES_BATCH,
            json!({"tokens": [], "metadata": {"purpose": "email_dispatch"}}),
        ),
        (GET_TOKEN, json!({"value": 42})),
        (GET_TOKEN, json!({"values": ["x"]})),
    ] {
        let (status, raw, body) = call(&server, path, &key("admin"), &body);
        assert_eq!(status, 400, "{path}: {raw}");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_"));
    }
    let (status, _, body) = call(
        &server,
        GET_TOKEN,
        &crm,
        &json!({"value": "x".repeat(4097)}),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!("payload_too_large"))
    );
    let (status, _, _) = call(
        &server,
        GET_TOKEN,
        &crm,
        &json!({"value": "y".repeat(4096)}),
    );
    assert_eq!(status, 200);

    // None of the values reached the log.
    let logs = server.logs();
    for value in [
        "ct.canary.4471",
        "Ct.Canary.4471",
        "4155550143",
        "Ünïcödé",
        "emoji 2",
    ] {
        assert!(!logs.contains(value), "{value} in the log");
    }
}

#[test]
pub(crate) fn encrypted_requests_get_encrypted_answers_and_bad_envelopes_get_419() {
    let setup = Setup::new_with("", SECTION);
    let server = setup.serve();
    let crm = key("crm");
    let session: [u8; 32] = rand::random();

    let request_nonce: [u8; 12] = rand::random();
    let body = seal(
        &session,
        request_nonce,
        &json!({"value": "sealed.person@example.com"}),
    );
    let (status, answer) = call_encrypted(&server, GET_TOKEN, &crm, body, false);
    assert_eq!(status, 200, "{answer}");
    let keys: Vec<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["itp", "itv"], "only the sealed body and its nonce");
    let (nonce, plain) = open(&session, &answer);
    assert_ne!(nonce, request_nonce, "the answer takes a fresh nonce");
    assert_eq!(
        (&plain["exists"], &plain["newlyCreated"]),
        (&json!(false), &json!(true))
    );
    let token = plain["token"].as_str().unwrap().to_owned();
    // The same value in plaintext: the same token.
    let (_, _, plain_again) = call(
        &server,
        GET_TOKEN,
        &crm,
        &json!({"value": "sealed.person@example.com"}),
    );
    assert_eq!(plain_again["token"], token.as_str());

    // Older SDK header, batch tokenize and both detokenize operations.
    let body = seal(
        &session,
        rand::random(),
        &json!({"values": ["sealed.person@example.com", "Sealed Name"]}),
    );
    let (status, answer) = call_encrypted(&server, TOKENS_BATCH, &crm, body, true);
    assert_eq!(status, 200, "{answer}");
    let (_, batch) = open(&session, &answer);
    assert_eq!(batch["results"][0]["token"], token.as_str());
    assert_eq!(batch["summary"]["processedCount"], 2);
    let name_token = batch["results"][1]["token"].clone();
    let body = seal(
        &session,
        rand::random(),
        &json!({"token": token, "metadata": {"purpose": "email_dispatch"}}),
    );
    let (status, answer) = call_encrypted(&server, GET_RAW_VALUE, &key("dispatcher"), body, false);
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer.to_string().contains("sealed.person"),
        "revealed in the clear"
    );
    let (_, value) = open(&session, &answer);
    assert_eq!(
        value,
        json!({"value": "sealed.person@example.com", "exists": true, "dataType": "string"})
    );
    let body = seal(
        &session,
        rand::random(),
        &json!({"tokens": [token, name_token], "metadata": {"purpose": "email_dispatch"}}),
    );
    let (status, answer) = call_encrypted(&server, VALUES_BATCH, &key("dispatcher"), body, false);
    assert_eq!(status, 200, "{answer}");
    let (_, values) = open(&session, &answer);
    assert_eq!(values["results"][1]["value"], "Sealed Name");
    assert_eq!(values["summary"]["foundCount"], 2);

    // Envelopes that cannot be opened: 419 with a plaintext JSON error.
    let good = seal(&session, rand::random(), &json!({"value": "x"}));
    let mut corrupted_itp = B64.decode(good["itp"].as_str().unwrap()).unwrap();
    corrupted_itp[0] ^= 0x01;
    let short_key: [u8; 16] = rand::random();
    let cases = [
        (
            "corrupted itp",
            json!({"itp": B64.encode(&corrupted_itp), "itk": good["itk"], "itv": good["itv"]}),
        ),
        (
            "16-byte itk",
            json!({"itp": good["itp"], "itk": B64.encode(short_key), "itv": good["itv"]}),
        ),
        (
            "33-byte itk",
            json!({"itp": good["itp"], "itk": B64.encode([7u8; 33]), "itv": good["itv"]}),
        ),
        (
            "other key",
            json!({"itp": good["itp"], "itk": B64.encode([9u8; 32]), "itv": good["itv"]}),
        ),
        (
            "8-byte itv",
            json!({"itp": good["itp"], "itk": good["itk"], "itv": B64.encode([1u8; 8])}),
        ),
        (
            "not base64",
            json!({"itp": "%%%", "itk": good["itk"], "itv": good["itv"]}),
        ),
        (
            "missing itk",
            json!({"itp": good["itp"], "itv": good["itv"]}),
        ),
        ("plaintext body", json!({"value": "x"})),
    ];
    for (what, body) in cases {
        let (status, answer) = call_encrypted(&server, GET_TOKEN, &crm, body, false);
        assert_eq!(status, 419, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "decryption_failed", "{what}");
        assert!(answer["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_"));
    }
    // Decrypted, but not a valid request: a plaintext 400.
    let body = seal(&session, rand::random(), &json!({"tokens": "not a list"}));
    let (status, answer) = call_encrypted(&server, VALUES_BATCH, &key("admin"), body, false);
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_request"))
    );
    // Authentication comes first: a bad key is 401 even with a good envelope.
    let body = seal(&session, rand::random(), &json!({"value": "x"}));
    let (status, _) = call_encrypted(&server, GET_TOKEN, "tv.crm.wrong", body, false);
    assert_eq!(status, 401);
}

#[test]
pub(crate) fn access_tokens_are_issued_verified_and_expire() {
    let setup = Setup::new_with("", SECTION);
    let server = setup.serve();
    let crm = key("crm");
    let (status, issued) = access_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "crm"),
            ("client_secret", &crm),
        ],
    );
    assert_eq!(status, 200, "{issued}");
    let mut keys: Vec<&str> = issued
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "refresh_expires_in",
            "scope",
            "token_type"
        ]
    );
    assert_eq!(
        (
            &issued["expires_in"],
            &issued["refresh_expires_in"],
            &issued["token_type"],
            &issued["scope"]
        ),
        (&json!(2), &json!(0), &json!("Bearer"), &json!(""))
    );
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let (status, raw, _) = call(
        &server,
        GET_TOKEN,
        &token,
        &json!({"value": "via.access.token@example.com"}),
    );
    assert_eq!(status, 200, "{raw}");

    // Refused: a forged token, an access token on /v1, and one past expiry.
    let forged = token.replacen("ctv1.crm.", "ctv1.admin.", 1);
    let (status, _, body) = call(&server, GET_TOKEN, &forged, &json!({"value": "x"}));
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = post(
        &server,
        "/v1/tokenize",
        &token,
        &json!({"namespace": "retail", "items": [{"class": "name", "value": "x"}]}),
    );
    assert_eq!(
        status, 401,
        "access tokens are for the CleverTap surface only"
    );
    // The TTL is 2 s: the same token stops working once it has passed
    // (polled, not slept: the vault's clock decides, not the test's).
    let issued = std::time::Instant::now();
    eventually("the access token expired", || {
        call(&server, GET_TOKEN, &token, &json!({"value": "x"})).0 == 401
    });
    assert!(issued.elapsed() < Duration::from_secs(10), "expired late");
    let (status, fresh) = access_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "crm"),
            ("client_secret", &crm),
        ],
    );
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &server,
        GET_TOKEN,
        fresh["access_token"].as_str().unwrap(),
        &json!({"value": "x"}),
    );
    assert_eq!(status, 200, "a fresh token works");

    // The token endpoint's refusals.
    for (what, form, expected_status, expected_error) in [
        (
            "wrong secret",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "crm"),
                ("client_secret", "tv.crm.wrong"),
            ],
            401,
            "invalid_client",
        ),
        (
            "another client's key",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "crm"),
                ("client_secret", key("admin").as_str()),
            ],
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
                ("client_secret", "tv.nobody.x"),
            ],
            401,
            "invalid_client",
        ),
        (
            "password grant",
            vec![
                ("grant_type", "password"),
                ("client_id", "crm"),
                ("client_secret", crm.as_str()),
            ],
            400,
            "unsupported_grant_type",
        ),
        (
            "no secret",
            vec![("grant_type", "client_credentials"), ("client_id", "crm")],
            400,
            "invalid_request",
        ),
        (
            "repeated",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "crm"),
                ("client_id", "crm"),
                ("client_secret", crm.as_str()),
            ],
            400,
            "invalid_request",
        ),
    ] {
        let (status, body) = access_token(&server, &form);
        assert_eq!(
            (status, body["error"].as_str()),
            (expected_status, Some(expected_error)),
            "{what}: {body}"
        );
        assert!(
            body["request_id"].as_str().unwrap().starts_with("req_"),
            "{what}"
        );
    }

    drop(server);
    let records = audit_records(&setup);
    let issued: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "issue_access_token")
        .collect();
    assert_eq!(issued.len(), 2);
    assert_eq!(
        (&issued[0]["actor"], &issued[0]["auth"]),
        (&json!("crm"), &json!("client_credentials"))
    );
    let tokenized = records
        .iter()
        .find(|r| r["action"] == "tokenize" && r["auth"] == "access_token")
        .unwrap();
    assert_eq!(tokenized["route"], format!("clevertap:{GET_TOKEN}"));
    assert!(records
        .iter()
        .any(|r| r["action"] == "authenticate" && r["reason"] == "expired_credentials"));
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains(&crm) && !text.contains(&token),
        "a credential in the audit trail"
    );
    assert_chain_verifies(&setup);
}

#[test]
pub fn roles_purposes_and_audit_apply_as_on_v1() {
    let setup = Setup::new_with("", SECTION);
    let server = setup.serve();
    let (_, _, email) = call(
        &server,
        GET_TOKEN,
        &key("crm"),
        &json!({"value": "role.check@example.com"}),
    );
    let email_token = email["token"].as_str().unwrap().to_owned();
    let (_, _, phone) = call(
        &server,
        GET_TOKEN,
        &key("crm"),
        &json!({"value": "+919876543210"}),
    );
    let phone_token = phone["token"].as_str().unwrap().to_owned();
    let detokenize = |client: &str, body: Value| call(&server, GET_RAW_VALUE, &key(client), &body);

    // No credential, and an unknown one.
    let response = http()
        .post(server.url(GET_TOKEN))
        .header("content-type", "application/json")
        .body(r#"{"value":"x"}"#)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // A tokenize-only role cannot detokenize.
    let (status, _, body) = detokenize(
        "crm",
        json!({"token": email_token, "metadata": {"purpose": "email_dispatch"}}),
    );
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    // A detokenize-only role cannot tokenize.
    let (status, _, _) = call(
        &server,
        GET_TOKEN,
        &key("dispatcher"),
        &json!({"value": "x"}),
    );
    assert_eq!(status, 403);
    // A role without the class: an email is classified as email; refused.
    let (status, _, _) = call(
        &server,
        GET_TOKEN,
        &key("intake"),
        &json!({"value": "class.check@example.com"}),
    );
    assert_eq!(status, 403);
    let (status, _, _) = call(
        &server,
        GET_TOKEN,
        &key("intake"),
        &json!({"value": "A Name"}),
    );
    assert_eq!(status, 200, "the default class is granted");
    // A purpose outside the role.
    let (status, _, _) = detokenize(
        "sms",
        json!({"token": phone_token, "metadata": {"purpose": "email_dispatch"}}),
    );
    assert_eq!(status, 403);
    // The sms worker sees phones but not emails: an email token does not exist for it.
    let (status, _, body) = detokenize(
        "sms",
        json!({"token": phone_token, "metadata": {"purpose": "sms_delivery"}}),
    );
    assert_eq!((status, &body["value"]), (200, &json!("+919876543210")));
    let (status, _, body) = detokenize(
        "sms",
        json!({"token": email_token, "metadata": {"purpose": "sms_delivery"}}),
    );
    assert_eq!(
        (status, &body["exists"], &body["value"]),
        (200, &json!(false), &Value::Null)
    );
    // No purpose: the role's clevertap_purpose, or 400 when it has none.
    let (status, _, body) = detokenize("dispatcher", json!({"token": email_token}));
    assert_eq!(
        (status, &body["value"]),
        (200, &json!("role.check@example.com"))
    );
    let (status, _, body) = detokenize("sms", json!({"token": phone_token}));
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_request"))
    );
    // Masked roles get masked values here too.
    let (status, _, body) = detokenize(
        "helpdesk",
        json!({"token": email_token, "metadata": {"purpose": "support"}}),
    );
    assert_eq!(status, 200);
    assert_ne!(body["value"], "role.check@example.com");
    assert!(body["value"].as_str().unwrap().contains('*'), "{body}");

    // An audit trail that cannot be written reveals nothing.
    let blocked = TrailBlocked::start(&setup);
    let (status, raw, _) = detokenize("dispatcher", json!({"token": email_token}));
    assert_eq!(status, 503, "{raw}");
    assert!(!raw.contains("role.check"), "{raw}");
    let (status, _, _) = call(
        &server,
        GET_TOKEN,
        &key("crm"),
        &json!({"value": "while.locked@example.com"}),
    );
    assert_eq!(status, 503);
    let (status, _) = access_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "crm"),
            ("client_secret", &key("crm")),
        ],
    );
    assert_eq!(status, 503, "no access token without its record");
    drop(blocked);
    let (status, _, _) = detokenize("dispatcher", json!({"token": email_token}));
    assert_eq!(status, 200, "recovered");

    drop(server);
    let records = audit_records(&setup);
    let revealed = records
        .iter()
        .find(|r| r["action"] == "detokenize" && r["actor"] == "dispatcher" && r["outcome"] == "ok")
        .unwrap();
    assert_eq!(revealed["purpose"], "email_dispatch");
    assert_eq!(revealed["route"], format!("clevertap:{GET_RAW_VALUE}"));
    assert_eq!(revealed["tokens"], json!([email_token]));
    assert!(records.iter().any(|r| r["actor"] == "crm"
        && r["outcome"] == "denied"
        && r["reason"] == "operation_not_granted"));
    assert!(records
        .iter()
        .any(|r| r["actor"] == "sms" && r["reason"] == "purpose_not_granted"));
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains("role.check@") && !text.contains("9876543210"),
        "a value in the audit trail"
    );
    assert_chain_verifies(&setup);
}

#[test]
pub(crate) fn the_same_value_gets_the_same_token_on_every_surface() {
    let upstream = Upstream::start();
    let route = format!(
        "[[routes]]\nname = \"clevertap\"\npath_prefix = \"/clevertap\"\nupstream = \"{}\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\"]\nfields = [\n  {{ select = \"$.d[*].identity\", class = \"name\" }},\n  {{ select = \"$.d[*].profileData.Email\", class = \"email\" }},\n  {{ select = \"$.d[*].profileData.Phone\", class = \"phone\" }},\n  {{ select = \"$.d[*].profileData.Name\", class = \"name\" }},\n]\n",
        upstream.url
    );
    let setup = Setup::new_with("", &format!("{SECTION}\n{route}"));
    let server = setup.serve();
    let crm = key("crm");
    let (_, _, batch) = call(
        &server,
        TOKENS_BATCH,
        &crm,
        &json!({"values": ["Same.Person@Example.com", "+447700900123", "Same Person"]}),
    );
    let ct: Vec<&str> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["token"].as_str().unwrap())
        .collect();
    let v1 = tokenize(
        &server,
        "crm",
        "retail",
        &[
            ("email", "same.person@example.com"),
            ("phone", "+447700900123"),
            ("name", "Same Person"),
        ],
    );
    assert_eq!(ct, v1, "/v1/tokenize and the CleverTap surface");

    let upload = json!({"d": [{"identity": "Same Person", "type": "profile",
        "profileData": {"Email": "same.person@example.com", "Phone": "+447700900123", "Name": "Same Person"}}]});
    let (status, body) = post(&server, "/clevertap/1/upload", &crm, &upload);
    assert_eq!(status, 200, "{body}");
    let received = upstream.take();
    let sent: Value = serde_json::from_slice(&received[0].body).unwrap();
    let profile = &sent["d"][0]["profileData"];
    assert_eq!(
        (
            profile["Email"].as_str(),
            profile["Phone"].as_str(),
            profile["Name"].as_str()
        ),
        (Some(ct[0]), Some(ct[1]), Some(ct[2])),
        "the egress route and the CleverTap surface"
    );
    assert_eq!(sent["d"][0]["identity"], ct[2]);
}
