//! Egress routes against a real recording upstream on 127.0.0.1.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::upstream::{Behaviour, Upstream};

const ACCOUNT: &str = "TEST-ACCOUNT-123";
const PASSCODE: &str = "passcode-from-a-file";

const FIELDS: &str = r#"fields = [
  { select = "$.d[*].identity", class = "name" },
  { select = "$.d[*].profileData.Email", class = "email" },
  { select = "$.d[*].profileData.Phone", class = "phone" },
  { select = "$.d[*].profileData.Name", class = "name" },
  { select = "$.d[*].evtData['Delivery Email']", class = "email" },
  { select = "$.d[*].evtData['Contact Phone']", class = "phone" },
]"#;

struct Rig {
    upstream: Upstream,
    _down: ClosedPort,
    _secrets: tempfile::TempDir,
    setup: Setup,
    server: Server,
}

fn rig() -> Rig {
    let upstream = Upstream::start();
    let down = closed_port();
    let secrets = tempfile::tempdir().unwrap();
    let passcode = secrets.path().join("passcode");
    fs::write(&passcode, format!("{PASSCODE}\n")).unwrap();
    fs::set_permissions(&passcode, fs::Permissions::from_mode(0o600)).unwrap();
    let route = |name: &str, prefix: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\", \"admin\"]\ntimeout_ms = 1500\n{extra}\nheaders = {{ \"X-CleverTap-Account-Id\" = {{ env = \"TV_TEST_CT_ACCOUNT\" }}, \"X-CleverTap-Passcode\" = {{ file = \"{}\" }} }}\n{FIELDS}\n\n",
            passcode.display()
        )
    };
    let sections = [
        route("clevertap", "/clevertap", &upstream.url, ""),
        route(
            "tokenizing",
            "/ct-tokenize",
            &upstream.url,
            "unselected_pii = \"tokenize\"\nunselected_class = \"note\"",
        ),
        route(
            "reporting",
            "/ct-report",
            &upstream.url,
            "unselected_pii = \"report\"",
        ),
        route("down", "/down", &format!("http://{down}"), ""),
    ]
    .concat();
    let setup = Setup::new_with("", &sections);
    let server = setup.serve_with_env(&[("TV_TEST_CT_ACCOUNT", ACCOUNT)]);
    Rig {
        upstream,
        _down: down,
        _secrets: secrets,
        setup,
        server,
    }
}

fn send(rig: &Rig, path: &str, body: Vec<u8>, gzip: bool) -> (u16, Value) {
    let mut request = http()
        .post(rig.server.url(path))
        .bearer_auth(key("crm"))
        .header("content-type", "application/json")
        .header("x-client-trace", "kept")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "must not travel");
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.body(body).send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn is_e164(text: &str) -> bool {
    text.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks that `sent` is `original` with exactly the selected fields replaced
/// by tokens of the right shape.
fn check_rewrite(original: &Value, sent: &Value) {
    let (records, forwarded) = (
        original["d"].as_array().unwrap(),
        sent["d"].as_array().unwrap(),
    );
    assert_eq!(records.len(), forwarded.len());
    for (record, out) in records.iter().zip(forwarded) {
        let out = out.as_object().unwrap();
        assert_eq!(
            out.len(),
            record.as_object().unwrap().len(),
            "no field added or dropped"
        );
        for (key, value) in record.as_object().unwrap() {
            match key.as_str() {
                "identity" => assert!(out[key].as_str().unwrap().starts_with("TKN_")),
                "profileData" | "evtData" => {
                    for (field, inner) in value.as_object().unwrap() {
                        let token = &out[key][field];
                        match field.as_str() {
                            "Email" | "Delivery Email" => {
                                let token = token.as_str().unwrap();
                                let address: email_address::EmailAddress = token.parse().unwrap();
                                assert_eq!(address.domain(), "tok.retail.invalid");
                            }
                            "Phone" | "Contact Phone" => {
                                let token = token.as_str().unwrap();
                                assert!(is_e164(token), "{token}");
                                let original = inner
                                    .as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| format!("+{inner}"));
                                assert_eq!(token.len(), original.len());
                                assert_ne!(token, original);
                            }
                            "Name" => assert!(token.as_str().unwrap().starts_with("TKN_")),
                            _ => assert_eq!(token, inner, "{field} changed"),
                        }
                    }
                }
                _ => assert_eq!(&out[key], value, "{key} changed"),
            }
        }
    }
}

#[test]
pub(crate) fn fixtures_go_upstream_with_tokens_in_every_selected_field() {
    let rig = rig();
    for (name, gzip) in [
        ("clevertap-upload-profiles-10.json", false),
        ("clevertap-upload-events-10.json", false),
        ("clevertap-upload-mixed-1000.json", false),
        ("clevertap-upload-phone-as-number.json", false),
        ("clevertap-upload-profiles-10.json.gz", true),
    ] {
        let bytes = fs::read(fixture(name)).unwrap();
        let (status, body) = send(&rig, "/clevertap/1/upload?batch=1", bytes.clone(), gzip);
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["status"], "success");
        let received = rig.upstream.take();
        assert_eq!(received.len(), 1, "{name}");
        let got = &received[0];
        assert_eq!(
            (got.method.as_str(), got.path.as_str(), got.query.as_str()),
            ("POST", "/1/upload", "batch=1")
        );
        assert_eq!(got.header("x-clevertap-account-id"), Some(ACCOUNT));
        assert_eq!(got.header("x-clevertap-passcode"), Some(PASSCODE));
        assert_eq!(got.header("x-client-trace"), Some("kept"));
        assert!(
            got.header("x-hop-secret").is_none(),
            "{name}: a header named in Connection was forwarded"
        );
        assert!(
            got.header("authorization").is_none(),
            "{name}: the vault credential went upstream"
        );
        assert!(!String::from_utf8_lossy(&got.body).contains(&key("crm")));
        let (original, sent) = if gzip {
            assert_eq!(got.header("content-encoding"), Some("gzip"));
            let mut decoded = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(got.body.as_slice()),
                &mut decoded,
            )
            .unwrap();
            let mut plain = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(bytes.as_slice()),
                &mut plain,
            )
            .unwrap();
            (
                serde_json::from_slice::<Value>(&plain).unwrap(),
                serde_json::from_slice::<Value>(&decoded).unwrap(),
            )
        } else {
            (
                serde_json::from_slice(&bytes).unwrap(),
                serde_json::from_slice(&got.body).unwrap(),
            )
        };
        assert_eq!(
            got.header("content-length")
                .map(|l| l.parse::<usize>().unwrap()),
            Some(got.body.len())
        );
        check_rewrite(&original, &sent);
    }
    // The same people get the same tokens on every request.
    let bytes = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    send(&rig, "/clevertap/1/upload", bytes.clone(), false);
    send(&rig, "/clevertap/1/upload", bytes, false);
    let again = rig.upstream.take();
    assert_eq!(again[0].body, again[1].body);
    // Forwards are audited, with the tokens placed.
    drop(rig.server);
    let forwards = audit_query(&rig.setup, &["--action", "forward", "--outcome", "ok"]);
    assert_eq!(forwards.len(), 7);
    // 500 profiles (identity, Email, Phone, Name) and 500 events (identity,
    // Delivery Email, Contact Phone).
    assert_eq!(
        forwards[2]["tokens"].as_array().unwrap().len(),
        500 * 4 + 500 * 3
    );
    assert_eq!(forwards[0]["route"], "route:clevertap");
    // Exactly one record per request that reached the route, written by the
    // engine: no separate `tokenize` record, none written twice.
    let routed: Vec<Value> = audit_query(&rig.setup, &[])
        .into_iter()
        .filter(|r| r["route"] == "route:clevertap")
        .collect();
    assert!(
        routed.iter().all(|r| r["action"] == "forward"),
        "a request through the route left another kind of record"
    );
    let mut requests = std::collections::BTreeSet::new();
    for record in &routed {
        assert!(
            requests.insert(record["request_id"].as_str().unwrap().to_owned()),
            "two records for one request: {record}"
        );
    }
    assert_eq!(routed.len(), forwards.len());
}

#[test]
pub(crate) fn malformed_bodies_are_refused_and_nothing_is_forwarded() {
    let rig = rig();
    let dir = fixture("malformed");
    // Each fixture's exact answer: 400 for bytes that are not acceptable
    // JSON, 422 for JSON that cannot be forwarded safely.
    let expected = [
        ("deep-nesting.json", 400, "invalid_request"),
        ("duplicate-keys.json", 400, "invalid_request"),
        ("email-is-object.json", 422, "unprocessable"),
        ("huge-value.json", 413, "payload_too_large"),
        ("invalid-utf8.json", 400, "invalid_request"),
        ("not-json.txt", 400, "invalid_request"),
        ("pii-in-unmapped-field.json", 422, "unprocessable"),
        ("truncated.json", 400, "invalid_request"),
    ];
    let mut ran = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path).unwrap();
        let (status, body) = send(&rig, "/clevertap/1/upload", bytes, false);
        let (_, code, error) = expected
            .iter()
            .find(|(file, _, _)| *file == name)
            .unwrap_or_else(|| panic!("{name}: a fixture without an expected answer"));
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap_or_default()),
            (*code, *error),
            "{name}: {body}"
        );
        ran += 1;
        assert!(
            body["error"]["code"].is_string() && body["error"]["request_id"].is_string(),
            "{name}: {body}"
        );
        assert!(
            !body.to_string().contains("example.com"),
            "{name}: echoed a value: {body}"
        );
        assert!(rig.upstream.take().is_empty(), "{name} was forwarded");
    }
    assert_eq!(ran, expected.len(), "every malformed fixture ran");
    // A content type the route does not declare.
    let response = http()
        .post(rig.server.url("/clevertap/1/upload"))
        .bearer_auth(key("crm"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("identity=CUST-1&Email=a%40example.com")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    // No credential, and a client the route does not list.
    let anonymous = http()
        .post(rig.server.url("/clevertap/1/upload"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, _) = post(
        &rig.server,
        "/clevertap/1/upload",
        &key("sms"),
        &serde_json::json!({"d": []}),
    );
    assert_eq!(status, 403);
    assert!(rig.upstream.take().is_empty());

    // Unselected PII: block, tokenize, report.
    let leaky = fs::read(dir.join("pii-in-unmapped-field.json")).unwrap();
    let (status, body) = send(&rig, "/clevertap/1/upload", leaky.clone(), false);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/d/0/evtData/*"),
        "member names no rule spells out are the caller's text: masked"
    );
    assert!(rig.upstream.take().is_empty());
    let (status, _) = send(&rig, "/ct-tokenize/1/upload", leaky.clone(), false);
    assert_eq!(status, 200);
    let sent: Value = serde_json::from_slice(&rig.upstream.take()[0].body).unwrap();
    assert!(sent["d"][0]["evtData"]["Comment"]
        .as_str()
        .unwrap()
        .starts_with("TKN_"));
    let (status, _) = send(&rig, "/ct-report/1/upload", leaky, false);
    assert_eq!(status, 200);
    let sent: Value = serde_json::from_slice(&rig.upstream.take()[0].body).unwrap();
    assert!(sent["d"][0]["evtData"]["Comment"]
        .as_str()
        .unwrap()
        .contains("canary.leak@example.com"));
    // Numbers from many countries, written with a trunk prefix kept after
    // the calling code, an international call prefix or no `+`, in a field
    // no rule selects: blocked.
    for number in [
        "+44 (0)20 7946 0958",
        "+33 6 31 96 65 43",
        "+49 30 901820",
        "+81 3-1234-5678",
        "+55 11 91234 5678",
        "0044 20 7946 0958",
        "919876543210",
    ] {
        let body = serde_json::to_vec(&serde_json::json!({"d": [{
            "identity": "CUST-9", "type": "event", "evtName": "Call",
            "evtData": {"Note": format!("call back on {number}")}}]}))
        .unwrap();
        let (status, answer) = send(&rig, "/clevertap/1/upload", body, false);
        assert_eq!(status, 422, "{number}: {answer}");
        assert!(!answer.to_string().contains(&number[4..]), "{answer}");
        assert!(rig.upstream.take().is_empty(), "{number} was forwarded");
    }
    let logs = rig.server.logs();
    assert!(
        logs.contains("PII found in a field no rule selects") && logs.contains("/d/0/evtData/*")
    );
    assert!(
        !logs.contains("canary.leak") && !logs.contains("9999912345"),
        "a finding logged its value"
    );
    // The reported forward is one record, with the finding noted on it.
    let reported: Vec<Value> = audit_query(&rig.setup, &["--action", "forward"])
        .into_iter()
        .filter(|r| r["route"] == "route:reporting")
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(
        (
            reported[0]["outcome"].as_str(),
            reported[0]["reason"].as_str()
        ),
        (Some("ok"), Some("unselected_pii_reported"))
    );
}

#[test]
pub(crate) fn upstream_failures_answer_in_time_and_the_vault_keeps_serving() {
    let rig = rig();
    let body = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    let (status, error) = send(&rig, "/down/1/upload", body.clone(), false);
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (502, Some("upstream_unavailable")),
        "{error}"
    );
    assert!(error["error"]["request_id"].is_string());
    rig.upstream.behave(Behaviour::Fail(500));
    let (status, relayed) = send(&rig, "/clevertap/1/upload", body.clone(), false);
    assert_eq!(
        (status, relayed["error"].as_str()),
        (500, Some("upstream says no"))
    );
    rig.upstream
        .behave(Behaviour::Stall(Duration::from_secs(5)));
    let started = Instant::now();
    let (status, error) = send(&rig, "/clevertap/1/upload", body.clone(), false);
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (504, Some("upstream_timeout")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    rig.upstream.behave(Behaviour::Succeed);
    let (status, _) = send(&rig, "/clevertap/1/upload", body, false);
    assert_eq!(status, 200);
    assert_eq!(
        http()
            .get(rig.server.url("/healthz"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[test]
pub(crate) fn tls_upstreams_are_verified_against_the_route_ca_bundle() {
    let (upstream, ca_pem) = Upstream::start_tls();
    let secrets = tempfile::tempdir().unwrap();
    let bundle = secrets.path().join("platform-ca.pem");
    fs::write(&bundle, ca_pem).unwrap();
    let route = |name: &str, prefix: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{}\"\nnamespace = \"retail\"\nclients = [\"crm\"]\n{extra}\n{FIELDS}\n\n",
            upstream.url
        )
    };
    let sections = [
        route(
            "trusted",
            "/trusted",
            &format!("ca_bundle = \"{}\"", bundle.display()),
        ),
        route("untrusted", "/untrusted", ""),
    ]
    .concat();
    let setup = Setup::new_with("", &sections);
    let server = setup.serve();
    let body = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    let call = |path: &str| {
        let response = http()
            .post(server.url(path))
            .bearer_auth(key("crm"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (status, answer) = call("/trusted/1/upload");
    assert_eq!(status, 200, "{answer}");
    let received = upstream.take();
    assert_eq!(received.len(), 1);
    let sent: Value = serde_json::from_slice(&received[0].body).unwrap();
    check_rewrite(&serde_json::from_slice(&body).unwrap(), &sent);
    // Without the bundle the self-signed certificate is refused: 502, and
    // nothing reaches the upstream.
    let (status, answer) = call("/untrusted/1/upload");
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (502, Some("upstream_unavailable")),
        "{answer}"
    );
    assert!(upstream.take().is_empty());
}

#[test]
pub(crate) fn form_bodies_select_by_field_name() {
    let upstream = Upstream::start();
    let route = format!(
        "[[routes]]\nname = \"form\"\npath_prefix = \"/form\"\nupstream = \"{}\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\"]\ncontent_types = [\"application/x-www-form-urlencoded\"]\nfields = [ {{ select = \"$.Email\", class = \"email\" }}, {{ select = \"$['Contact Phone']\", class = \"phone\" }} ]\n",
        upstream.url
    );
    let setup = Setup::new_with("", &route);
    let server = setup.serve();
    let post_form = |body: &str| {
        http()
            .post(server.url("/form/send"))
            .bearer_auth(key("crm"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post_form("identity=CUST-1&Email=Form.Person%40Example.com&Contact+Phone=%2B44+7700+900038&City=Lyon"), 200);
    let received = upstream.take();
    let fields: Vec<(String, String)> = form_urlencoded::parse(&received[0].body)
        .into_owned()
        .collect();
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["identity", "Email", "Contact Phone", "City"],
        "order kept"
    );
    assert_eq!(
        (fields[0].1.as_str(), fields[3].1.as_str()),
        ("CUST-1", "Lyon")
    );
    assert!(fields[1].1.ends_with("@tok.retail.invalid"));
    assert!(is_e164(&fields[2].1) && fields[2].1.starts_with("+44") && fields[2].1.len() == 13);
    assert!(!String::from_utf8_lossy(&received[0].body)
        .to_lowercase()
        .contains("form.person"));
    // A field given twice is refused, and JSON is not declared on this route.
    assert_eq!(
        post_form("Email=a%40example.com&Email=b%40example.com"),
        400
    );
    let json = http()
        .post(server.url("/form/send"))
        .bearer_auth(key("crm"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(json.status().as_u16(), 415);
    assert!(upstream.take().is_empty());
}

#[test]
pub(crate) fn response_rules_reveal_only_to_callers_allowed_the_purpose() {
    let upstream = Upstream::start();
    upstream.behave(Behaviour::Echo);
    let route = format!(
        "[[routes]]\nname = \"lookup\"\npath_prefix = \"/lookup\"\nupstream = \"{}\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\", \"admin\"]\npurpose = \"support\"\nresponse_fields = [ {{ select = \"$.d[*].profileData.Email\" }} ]\n{FIELDS}\n",
        upstream.url
    );
    let setup = Setup::new_with("", &route);
    let server = setup.serve();
    let body = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    let original: Value = serde_json::from_slice(&body).unwrap();
    let call = |client: &str| -> Value {
        let response = http()
            .post(server.url("/lookup/profiles"))
            .bearer_auth(key(client))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.json().unwrap()
    };
    // admin may detokenize for any purpose: the emails come back revealed
    // (normalized), the other fields stay tokens.
    let revealed = call("admin");
    for (i, record) in revealed["d"].as_array().unwrap().iter().enumerate() {
        let email = original["d"][i]["profileData"]["Email"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert_eq!(record["profileData"]["Email"], email.as_str());
        assert!(record["profileData"]["Name"]
            .as_str()
            .unwrap()
            .starts_with("TKN_"));
    }
    // crm may not: tokens only.
    let hidden = call("crm");
    assert!(hidden["d"][0]["profileData"]["Email"]
        .as_str()
        .unwrap()
        .ends_with("@tok.retail.invalid"));
    drop(server);
    let reveals = audit_query(&setup, &["--action", "detokenize", "--purpose", "support"]);
    assert_eq!(reveals.len(), 1);
    assert_eq!(reveals[0]["actor"], "admin");
    assert_eq!(reveals[0]["route"], "route:lookup");
}

#[test]
pub fn nothing_is_forwarded_when_the_forward_cannot_be_audited() {
    let rig = rig();
    let body = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    let blocked = TrailBlocked::start(&rig.setup);
    let (status, answer) = send(&rig, "/clevertap/1/upload", body.clone(), false);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{answer}"
    );
    assert!(
        rig.upstream.take().is_empty(),
        "forwarded without an audit record"
    );
    drop(blocked);
    let (status, _) = send(&rig, "/clevertap/1/upload", body, false);
    assert_eq!(status, 200);
    assert_eq!(rig.upstream.take().len(), 1);
}

#[test]
fn a_selected_value_that_cannot_be_tokenized_or_a_corrupt_body_forwards_nothing() {
    let rig = rig();
    let upload = |email: &str, phone: &str| {
        serde_json::to_vec(
            &serde_json::json!({"d": [{"identity": "CUST-9", "type": "profile",
            "profileData": {"Email": email, "Phone": phone}}]}),
        )
        .unwrap()
    };
    for (what, body) in [
        (
            "an email that is not one",
            upload("not an address", "+14155550100"),
        ),
        (
            "an unknown country code",
            upload("ok@example.com", "+999123456789"),
        ),
        (
            "a phone that is not a number",
            upload("ok@example.com", "call me"),
        ),
    ] {
        let (status, answer) = send(&rig, "/clevertap/1/upload", body, false);
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (422, Some("unprocessable")),
            "{what}: {answer}"
        );
        assert!(answer["error"]["request_id"].is_string(), "{what}");
        assert!(
            !answer.to_string().contains("not an address")
                && !answer.to_string().contains("999123"),
            "{what}: the answer echoes the value: {answer}"
        );
        assert!(rig.upstream.take().is_empty(), "{what} was forwarded");
    }
    // A body that says gzip and is cut short.
    let mut corrupt = fs::read(fixture("clevertap-upload-profiles-10.json.gz")).unwrap();
    let middle = corrupt.len() / 2;
    corrupt.truncate(middle);
    let (status, answer) = send(&rig, "/clevertap/1/upload", corrupt, true);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{answer}"
    );
    assert!(
        rig.upstream.take().is_empty(),
        "a corrupt gzip body was forwarded"
    );
}
