//! Activation: signed callbacks delivered to a recording "SMS provider" on
//! 127.0.0.1, every refusal on its own, consent on every path, budgets.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::*;
use crate::upstream::{Behaviour, Upstream};

/// Each callback's own signing secret: callbacks never share one.
fn secret_of(callback: &str) -> Vec<u8> {
    format!("callback secret of {callback:>13}").into_bytes()
}
const PROVIDER_KEY: &str = "provider-api-key-from-env";

pub(crate) struct Rig {
    pub(crate) provider: Upstream,
    _secrets: tempfile::TempDir,
    pub(crate) setup: Setup,
    pub(crate) server: Server,
}

fn callback(
    name: &str,
    role: &str,
    extra: &str,
    provider: &str,
    secret: &std::path::Path,
) -> String {
    format!(
        r#"
[[callbacks]]
name = "{name}"
path = "/callbacks/{name}"
namespace = "retail"
purpose = "sms_delivery"
role = "{role}"
secret_file = "{}"
forward = "{provider}/send"
insecure_allow_http_upstream = true
timeout_ms = 3000
headers = {{ "X-Provider-Key" = {{ env = "TV_TEST_PROVIDER_KEY" }} }}
fields = [
  {{ select = "$.to" }},
  {{ select = "$.profile.identity" }},
  {{ select = "$.profile.name" }},
  {{ select = "$.message.template", placeholders = true }},
]
{extra}
"#,
        secret.display()
    )
}

pub(crate) fn rig_with(extra_sections: &str) -> Rig {
    let provider = Upstream::start();
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str| {
        let path = secrets.path().join(format!("{name}.secret"));
        fs::write(&path, format!("whsec_{}\n", B64.encode(secret_of(name)))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let sections = format!(
        r#"
[roles.sms_callback]
operations = ["detokenize"]
namespaces = ["retail"]
classes = ["phone", "name"]
purposes = ["sms_delivery"]
reveal = "plain"

[roles.support_callback]
operations = ["detokenize"]
namespaces = ["retail"]
purposes = ["support"]
reveal = "plain"

[clevertap]
enabled = true
namespace = "retail"
default_class = "name"
{}{}{}{}
{extra_sections}
"#,
        callback("sms", "sms_callback", "", &provider.url, &secret("sms")),
        callback(
            "office",
            "sms_callback",
            "allow_from = [\"10.20.0.0/16\"]",
            &provider.url,
            &secret("office")
        ),
        callback(
            "wrongpurpose",
            "support_callback",
            "",
            &provider.url,
            &secret("wrongpurpose")
        ),
        callback(
            "short",
            "sms_callback",
            "tolerance_secs = 5",
            &provider.url,
            &secret("short")
        ),
    );
    let setup = Setup::new_with("", &sections);
    let server = setup.serve_with_env(&[("TV_TEST_PROVIDER_KEY", PROVIDER_KEY)]);
    Rig {
        provider,
        _secrets: secrets,
        setup,
        server,
    }
}

fn rig() -> Rig {
    rig_with("")
}

pub(crate) struct People {
    pub(crate) phone: String,
    pub(crate) identity: String,
    pub(crate) name: String,
}

/// Tokenizes a person through /v1 (with a subject, for consent by subject).
fn person(server: &Server, phone: &str, name: &str, identity: &str) -> People {
    let (status, body) = post(
        server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [
            {"class": "phone", "value": phone, "subject": identity},
            {"class": "name", "value": identity, "subject": identity},
            {"class": "name", "value": name, "subject": identity},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let token = |i: usize| body["tokens"][i]["token"].as_str().unwrap().to_owned();
    People {
        phone: token(0),
        identity: token(1),
        name: token(2),
    }
}

/// The activation fixture with tokens in place.
pub(crate) fn callback_body(people: &People) -> Vec<u8> {
    let text = fs::read_to_string(fixture("activation-sms-callback.json"))
        .unwrap()
        .replace("{{phone_token}}", &people.phone)
        .replace("{{identity_token}}", &people.identity)
        .replace("{{name_token}}", &people.name)
        .replace("{{name}}", &format!("{{{{{}}}}}", people.name));
    text.into_bytes()
}

/// Sends a callback; `sign` gives (id, timestamp, signature header) or none.
pub(crate) fn send(
    rig: &Rig,
    name: &str,
    body: &[u8],
    signed: Option<(&str, u64, String)>,
) -> (u16, String) {
    let mut request = http()
        .post(rig.server.url(&format!("/callbacks/{name}")))
        .header("content-type", "application/json");
    if let Some((id, timestamp, signature)) = signed {
        request = request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
    }
    let response = request.body(body.to_vec()).send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

pub(crate) fn signed<'a>(
    callback: &str,
    id: &'a str,
    body: &[u8],
) -> Option<(&'a str, u64, String)> {
    let timestamp = unix_now();
    Some((
        id,
        timestamp,
        webhook_signature(&secret_of(callback), id, timestamp, body),
    ))
}

/// Asserts a refusal: the status, a JSON error with a request id, and
/// nothing at the provider.
fn assert_refused(rig: &Rig, (status, body): (u16, String), expected: u16) {
    assert_eq!(status, expected, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    assert!(
        rig.provider.take().is_empty(),
        "something reached the provider"
    );
}

#[test]
pub(crate) fn a_signed_callback_reaches_the_provider_with_real_values() {
    let rig = rig();
    rig.provider.behave(Behaviour::Fail(202));
    let people = person(&rig.server, "+14155550199", "Priya Raman", "user-7781");
    let body = callback_body(&people);
    let (status, answer) = send(&rig, "sms", &body, signed("sms", "msg_001", &body));
    assert_eq!(
        status, 202,
        "the caller gets the provider's status: {answer}"
    );
    let received = rig.provider.take();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/send");
    assert_eq!(received[0].header("x-provider-key"), Some(PROVIDER_KEY));
    assert!(received[0].header("webhook-signature").is_none());
    let sent: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(sent["to"], "+14155550199");
    assert_eq!(sent["profile"]["identity"], "user-7781");
    assert_eq!(sent["profile"]["name"], "Priya Raman");
    assert_eq!(
        sent["message"]["template"],
        "Hi Priya Raman, your Gold points expire soon."
    );
    assert_eq!(sent["message"]["sender_id"], "EXMPL");
    assert_eq!(sent["campaign_id"], "cmp_20260105_winback");
    drop(rig.server);
    let records = audit_records(&rig.setup);
    let revealed = records
        .iter()
        .find(|r| r["action"] == "detokenize" && r["route"] == "callback:sms")
        .unwrap();
    assert_eq!(
        (&revealed["purpose"], &revealed["outcome"]),
        (&json!("sms_delivery"), &json!("ok"))
    );
    assert_eq!(revealed["actor"], "callback:sms");
    assert_chain_verifies(&rig.setup);
}

#[test]
pub(crate) fn a_provider_redirect_is_neither_followed_nor_passed_on() {
    let rig = rig();
    let elsewhere = Upstream::start();
    rig.provider
        .behave(Behaviour::Redirect(format!("{}/collect", elsewhere.url)));
    let people = person(&rig.server, "+14155550177", "Moved Away", "user-3141");
    let body = callback_body(&people);
    let (status, answer) = send(&rig, "sms", &body, signed("sms", "msg_moved", &body));
    assert_eq!(status, 502, "{answer}");
    assert!(answer.contains("redirect") && !answer.contains(&elsewhere.url));
    assert!(!answer.contains("+14155550177") && !answer.contains("Moved Away"));
    assert_eq!(rig.provider.take().len(), 1, "the provider was asked once");
    assert!(elsewhere.take().is_empty(), "the values went nowhere else");
}

#[test]
pub(crate) fn signed_but_malformed_callbacks_are_refused() {
    let rig = rig();
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let bodies: [(&str, &[u8]); 3] = [
        ("truncated", br#"{"to": "TKN_x", "profile": {"na"#),
        ("duplicate keys", br#"{"to": "TKN_a", "to": "TKN_b"}"#),
        ("deep nesting", deep.as_bytes()),
    ];
    for (what, body) in bodies {
        let id = format!("msg_{}", what.replace(' ', "_"));
        let answer = send(&rig, "sms", body, signed("sms", &id, body));
        assert_refused(&rig, answer, 400);
    }
    // Well-formed body, malformed signature headers, each correctly signed
    // as sent: only the headers' shape refuses them.
    let body = br#"{"to": "TKN_x"}"#;
    let timestamp = unix_now();
    let key = tokenvault::crypto::webhook::WebhookKey::new(&secret_of("sms"));
    for (id, stamp) in [
        ("msg with space", timestamp.to_string()),
        (&"m".repeat(129) as &str, timestamp.to_string()),
        ("msg_ok", format!("+{timestamp}")),
        ("msg_ok", "soon".to_owned()),
    ] {
        let response = http()
            .post(rig.server.url("/callbacks/sms"))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", stamp.as_str())
            .header("webhook-signature", key.sign(id, &stamp, body))
            .body(body.to_vec())
            .send()
            .unwrap();
        let status = response.status().as_u16();
        assert_refused(&rig, (status, response.text().unwrap()), 401);
    }
}

#[test]
pub(crate) fn a_callback_without_signature_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550101", "No Signature", "user-1");
    let body = callback_body(&people);
    assert_refused(&rig, send(&rig, "sms", &body, None), 401);
}

#[test]
pub(crate) fn a_callback_signed_with_another_secret_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550102", "Wrong Secret", "user-2");
    let body = callback_body(&people);
    let timestamp = unix_now();
    let wrong = webhook_signature(
        b"another secret entirely, 32 byte",
        "msg_w",
        timestamp,
        &body,
    );
    assert_refused(
        &rig,
        send(&rig, "sms", &body, Some(("msg_w", timestamp, wrong))),
        401,
    );
}

#[test]
pub(crate) fn a_callback_changed_after_signing_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550103", "Changed Body", "user-3");
    let body = callback_body(&people);
    let signed = signed("sms", "msg_c", &body);
    let changed = String::from_utf8(body)
        .unwrap()
        .replace("EXMPL", "EVIL1")
        .into_bytes();
    assert_refused(&rig, send(&rig, "sms", &changed, signed), 401);
}

#[test]
pub(crate) fn a_callback_outside_the_timestamp_tolerance_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550104", "Stale Stamp", "user-4");
    let body = callback_body(&people);
    // Ten seconds past the 300 s tolerance either way: a stamp from the
    // future comes closer to the server's clock while the request travels
    // (a loaded CI run once crossed a second boundary at +301).
    for (name, timestamp) in [
        ("sms", unix_now() - 310),
        ("sms", unix_now() + 310),
        ("short", unix_now() - 6),
    ] {
        let sig = webhook_signature(&secret_of(name), "msg_t", timestamp, &body);
        assert_refused(
            &rig,
            send(&rig, name, &body, Some(("msg_t", timestamp, sig))),
            401,
        );
    }
    // Within the tolerance it goes through.
    let timestamp = unix_now() - 200;
    let sig = webhook_signature(&secret_of("sms"), "msg_t2", timestamp, &body);
    assert_eq!(
        send(&rig, "sms", &body, Some(("msg_t2", timestamp, sig))).0,
        200
    );
}

#[test]
pub(crate) fn a_replayed_message_id_is_refused_even_after_a_restart() {
    let mut rig = rig();
    let people = person(&rig.server, "+14155550105", "Replay Person", "user-5");
    let body = callback_body(&people);
    let first = signed("sms", "msg_replay", &body);
    let (status, _) = send(&rig, "sms", &body, first.clone());
    assert_eq!(status, 200);
    assert_eq!(rig.provider.take().len(), 1);
    assert_refused(&rig, send(&rig, "sms", &body, first.clone()), 401);
    // Restart: the id is still known.
    assert!(rig.server.stop().success());
    rig.server = rig
        .setup
        .serve_with_env(&[("TV_TEST_PROVIDER_KEY", PROVIDER_KEY)]);
    assert_refused(&rig, send(&rig, "sms", &body, first), 401);
    drop(rig.server);
    assert!(audit_records(&rig.setup)
        .iter()
        .any(|r| r["reason"] == "replayed_message" && r["outcome"] == "denied"));
}

#[test]
pub(crate) fn a_callback_from_outside_its_allow_list_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550106", "Wrong Source", "user-6");
    let body = callback_body(&people);
    assert_refused(
        &rig,
        send(&rig, "office", &body, signed("office", "msg_s", &body)),
        403,
    );
}

#[test]
pub(crate) fn a_token_from_another_namespace_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550107", "Right Namespace", "user-7");
    let health = tokenize(&rig.server, "crm", "health", &[("name", "Other Namespace")]);
    let body = String::from_utf8(callback_body(&people))
        .unwrap()
        .replace(&people.name, &health[0])
        .into_bytes();
    assert_refused(
        &rig,
        send(&rig, "sms", &body, signed("sms", "msg_ns", &body)),
        403,
    );
}

#[test]
pub(crate) fn a_purpose_the_callbacks_role_lacks_is_refused() {
    let rig = rig();
    let people = person(&rig.server, "+14155550108", "Wrong Purpose", "user-8");
    let body = callback_body(&people);
    assert_refused(
        &rig,
        send(
            &rig,
            "wrongpurpose",
            &body,
            signed("wrongpurpose", "msg_p", &body),
        ),
        403,
    );
    drop(rig.server);
    assert!(audit_records(&rig.setup)
        .iter()
        .any(|r| r["actor"] == "callback:wrongpurpose" && r["reason"] == "purpose_not_granted"));
}

pub(crate) fn put_consent(server: &Server, api_key: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .put(server.url("/v1/consent"))
        .bearer_auth(api_key)
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn consent_cli(setup: &Setup, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .arg("consent")
        .args(args)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
pub(crate) fn withdrawn_consent_blocks_every_path_until_restored() {
    let rig = rig();
    let people = person(&rig.server, "+14155550109", "Consent Person", "user-9");
    let body = callback_body(&people);
    let v1 = || {
        let values = detokenize(
            &rig.server,
            "sms",
            "retail",
            "sms_delivery",
            std::slice::from_ref(&people.phone),
        );
        values[0].clone()
    };
    let ct = || {
        let (status, body) = post(
            &rig.server,
            "/ct-vault/api/tokenization/getRawValue",
            &key("dispatcher"),
            &json!({"token": people.phone, "metadata": {"purpose": "sms_delivery"}}),
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    assert_eq!(v1()["value"], "+14155550109");
    assert_eq!(ct()["value"], "+14155550109");

    // Withdrawn for the token through the API (a role with `consent`)…
    let (status, answer) = put_consent(
        &rig.server,
        &key("admin"),
        &json!({"namespace": "retail", "token": people.phone, "purpose": "sms_delivery", "withdrawn": true, "source": "ticket-123"}),
    );
    assert_eq!(status, 403, "admin lacks the consent operation: {answer}");
    consent_cli(
        &rig.setup,
        &[
            "set",
            "--namespace",
            "retail",
            "--token",
            &people.phone,
            "--purpose",
            "sms_delivery",
            "--withdraw",
            "--source",
            "ticket-123",
        ],
    );
    assert_eq!(v1()["error"]["code"], "consent_withdrawn");
    assert!(v1()["value"].is_null());
    let blocked = ct();
    assert_eq!(
        (&blocked["value"], &blocked["exists"]),
        (&Value::Null, &json!(true))
    );
    assert_refused(
        &rig,
        send(&rig, "sms", &body, signed("sms", "msg_consent_1", &body)),
        403,
    );
    // Another purpose is unaffected.
    let values = detokenize(
        &rig.server,
        "admin",
        "retail",
        "support",
        std::slice::from_ref(&people.phone),
    );
    assert_eq!(values[0]["value"], "+14155550109");

    // Restored: every path reveals again.
    consent_cli(
        &rig.setup,
        &[
            "set",
            "--namespace",
            "retail",
            "--token",
            &people.phone,
            "--purpose",
            "sms_delivery",
            "--restore",
            "--source",
            "ticket-124",
        ],
    );
    assert_eq!(v1()["value"], "+14155550109");
    assert_eq!(ct()["value"], "+14155550109");
    assert_eq!(
        send(&rig, "sms", &body, signed("sms", "msg_consent_2", &body)).0,
        200
    );
    assert_eq!(rig.provider.take().len(), 1);

    // Withdrawn for the subject, for every purpose, by subject on stdin.
    let child = std::process::Command::new(BIN)
        .args([
            "consent",
            "set",
            "--namespace",
            "retail",
            "--subject-stdin",
            "--purpose",
            "*",
            "--withdraw",
            "--source",
            "app-settings",
            "--config",
        ])
        .arg(&rig.setup.config)
        .stdin(std::process::Stdio::piped())
        .output_with_stdin("user-9\n");
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(v1()["error"]["code"], "consent_withdrawn");
    assert_refused(
        &rig,
        send(&rig, "sms", &body, signed("sms", "msg_consent_3", &body)),
        403,
    );

    let shown = consent_cli(
        &rig.setup,
        &["show", "--namespace", "retail", "--token", &people.phone],
    );
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    assert!(
        lines[0].contains("withdrawn")
            && lines[0].contains("purpose=sms_delivery")
            && lines[0].contains("ticket-123"),
        "{shown}"
    );
    assert!(
        lines[1].contains("restored") && lines[1].contains("ticket-124"),
        "{shown}"
    );
    assert!(
        lines[2].contains("withdrawn")
            && lines[2].contains("purpose=*")
            && lines[2].contains("by=subject"),
        "{shown}"
    );
    assert!(
        !shown.contains("user-9"),
        "the subject itself is not stored"
    );
    drop(rig.server);
    let records = audit_records(&rig.setup);
    assert!(records.iter().any(|r| r["action"] == "consent"
        && r["actor"] == "admin"
        && r["reason"] == "operation_not_granted"));
    let changes: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "consent" && r["outcome"] == "ok")
        .collect();
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[0]["reason"], "withdrawn");
    assert_eq!(changes[1]["reason"], "restored");
    assert_chain_verifies(&rig.setup);
}

#[test]
pub(crate) fn consent_through_the_api_needs_the_consent_operation() {
    let rig = rig();
    let people = person(&rig.server, "+14155550110", "Api Consent", "user-10");
    let body = json!({"namespace": "retail", "token": people.phone, "purpose": "sms_delivery", "withdrawn": true, "source": "ticket-9"});
    for client in ["crm", "sms", "auditor"] {
        let (status, _) = put_consent(&rig.server, &key(client), &body);
        assert_eq!(status, 403, "{client}");
    }
    let (status, answer) = put_consent(&rig.server, &key("consent"), &body);
    assert_eq!(status, 200, "{answer}");
    let values = detokenize(
        &rig.server,
        "sms",
        "retail",
        "sms_delivery",
        std::slice::from_ref(&people.phone),
    );
    assert_eq!(values[0]["error"]["code"], "consent_withdrawn");
    let (status, answer) = put_consent(
        &rig.server,
        &key("consent"),
        &json!({"namespace": "retail", "token": people.phone, "purpose": "sms_delivery", "withdrawn": false, "source": "alice@example.com"}),
    );
    assert_eq!(
        status, 400,
        "a source that could be personal data: {answer}"
    );
}

#[test]
pub(crate) fn a_worker_over_its_budget_gets_429_and_nothing_more() {
    let rig = rig();
    let phones: Vec<String> = (0..6).map(|i| format!("+1415555012{i}")).collect();
    let items: Vec<(&str, &str)> = phones.iter().map(|p| ("phone", p.as_str())).collect();
    let tokens = tokenize(&rig.server, "crm", "retail", &items);
    let body = |tokens: &[String]| json!({"namespace": "retail", "purpose": "sms_delivery", "tokens": tokens});
    // The server counts by the calendar minute: start with at least 10 s of
    // it left, so that no boundary falls between the requests below. (The
    // windows themselves are tested against a clock the test moves:
    // cache::budget_windows_follow_the_engine_clock.)
    eventually("a minute with 10 s left", || unix_now() % 60 < 50);
    let minute = unix_now() / 60;
    let (status, answer) = post(
        &rig.server,
        "/v1/detokenize",
        &key("budgeted"),
        &body(&tokens[..4]),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post(
        &rig.server,
        "/v1/detokenize",
        &key("budgeted"),
        &body(&tokens[4..6]),
    );
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "budget_exceeded");
    assert!(!answer.to_string().contains("41555501"), "{answer}");
    let (status, _) = post(
        &rig.server,
        "/v1/detokenize",
        &key("budgeted"),
        &body(&tokens[4..5]),
    );
    assert_eq!(status, 200, "one more fits the budget of 5");
    let (status, _) = post(
        &rig.server,
        "/v1/detokenize",
        &key("budgeted"),
        &body(&tokens[5..6]),
    );
    assert_eq!(status, 429);
    assert_eq!(unix_now() / 60, minute, "the requests ran in one minute");
    // Another worker without a budget is not affected.
    assert_eq!(
        detokenize(&rig.server, "sms", "retail", "sms_delivery", &tokens).len(),
        6
    );
    drop(rig.server);
    let hits = audit_records(&rig.setup)
        .into_iter()
        .filter(|r| r["actor"] == "budgeted" && r["reason"] == "budget_exceeded")
        .count();
    assert_eq!(hits, 2);
}

#[test]
pub(crate) fn a_message_accepted_at_one_callback_is_refused_at_another() {
    let secrets = tempfile::tempdir().unwrap();
    let echo_secret = secrets.path().join("echo.secret");
    fs::write(
        &echo_secret,
        format!("whsec_{}", B64.encode(secret_of("echo"))),
    )
    .unwrap();
    fs::set_permissions(&echo_secret, fs::Permissions::from_mode(0o600)).unwrap();
    let rig = rig_with(&format!(
        r#"
[[callbacks]]
name = "echo"
path = "/callbacks/echo"
namespace = "retail"
purpose = "sms_delivery"
role = "sms_callback"
secret_file = "{}"
reveal_to_caller = true
fields = [ {{ select = "$.to" }} ]
"#,
        echo_secret.display()
    ));
    let people = person(&rig.server, "+14155550177", "Once Only", "user-77");
    let body = callback_body(&people);
    let (status, _) = send(&rig, "sms", &body, signed("sms", "msg_once", &body));
    assert_eq!(status, 200);
    assert_eq!(rig.provider.take().len(), 1);

    // The same message id, genuinely signed for the echo callback (as a
    // platform that holds both secrets would sign it): refused, revealing
    // nothing to the caller.
    let echo_body = serde_json::to_vec(&json!({"to": people.phone})).unwrap();
    let (status, answer) = send(
        &rig,
        "echo",
        &echo_body,
        signed("echo", "msg_once", &echo_body),
    );
    assert_eq!(status, 401, "{answer}");
    assert!(!answer.contains("4155550177"), "{answer}");
    // A fresh id at the echo callback reveals to its caller, as configured.
    let (status, answer) = send(
        &rig,
        "echo",
        &echo_body,
        signed("echo", "msg_fresh", &echo_body),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("+14155550177"), "{answer}");
    let mut server = rig.server;
    assert!(server.stop().success());
    let replays: Vec<Value> = audit_records(&rig.setup)
        .into_iter()
        .filter(|r| r["reason"] == "replayed_message")
        .collect();
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0]["route"], "callback:echo");
}

#[test]
pub(crate) fn a_restart_does_not_refill_a_budget() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let tokens = tokenize(&server, "crm", "retail", &[("phone", "+14155550111")]);
    let day = || unix_now() / 86_400;
    let started = day();
    let reveal = |server: &Server| {
        post(
            server,
            "/v1/detokenize",
            &key("daily"),
            &json!({"namespace": "retail", "purpose": "sms_delivery", "tokens": tokens}),
        )
        .0
    };
    assert_eq!(
        [reveal(&server), reveal(&server), reveal(&server)],
        [200, 200, 200]
    );
    assert_eq!(reveal(&server), 429, "3 per day");
    server.stop();
    let server = setup.serve();
    if day() == started {
        assert_eq!(
            reveal(&server),
            429,
            "the restart did not refill the day's budget"
        );
    } else {
        // Midnight UTC passed during the test: a new day, a new budget.
        assert_eq!(reveal(&server), 200);
    }
}
