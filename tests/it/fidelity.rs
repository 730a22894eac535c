//! Egress fidelity: a route forwards exactly what the backend sent, minus
//! its PII; the scan covers numbers, member names, form names and query
//! parameters; paths stay inside the route; caller-set forwarding headers
//! and the vault key never reach the platform.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use tokenvault::payload::splice::{self, Layout};

use crate::scan::Scan;
use crate::support::*;
use crate::upstream::{Received, Upstream};

const PASSCODE: &str = "platform-passcode-from-a-file";

const FIELDS: &str = r#"fields = [
  { select = "$.d[*].identity", class = "name" },
  { select = "$.d[*].profileData.Email", class = "email" },
  { select = "$.d[*].profileData.Phone", class = "phone" },
  { select = "$.d[*].profileData.Name", class = "name" },
  { select = "$.d[*].evtData['Delivery Email']", class = "email" },
  { select = "$.d[*].evtData['Contact Phone']", class = "phone" },
  { select = "$.Email", class = "email" },
  { query = "email", class = "email" },
]"#;

/// Member names the rules select.
const SELECTED: &[&str] = &[
    "identity",
    "Email",
    "Phone",
    "Name",
    "Delivery Email",
    "Contact Phone",
];

struct Rig {
    upstream: Upstream,
    _setup: Setup,
    server: Server,
}

fn rig() -> Rig {
    let upstream = Upstream::start();
    let setup = Setup::configure("", STANDARD);
    let passcode = setup.dir.path().join("passcode");
    fs::write(&passcode, PASSCODE).unwrap();
    fs::set_permissions(&passcode, fs::Permissions::from_mode(0o600)).unwrap();
    let route_with = |name: &str, extra: &str, fields: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{}/base\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\"]\ncontent_types = [\"application/json\", \"application/x-www-form-urlencoded\"]\nheaders = {{ \"X-CleverTap-Passcode\" = {{ file = \"{}\" }} }}\n{extra}\n{fields}\n",
            upstream.url,
            passcode.display()
        )
    };
    let route = |name: &str, extra: &str| route_with(name, extra, FIELDS);
    // The same rules in forms that are not plain paths (a slice, a union):
    // selected on the parsed document, not during the walk.
    let parsed = FIELDS
        .replace("[*]", "[0:]")
        .replace("\"$.Email\"", "\"$['Email','Email']\"");
    let sections = [
        route("block", ""),
        route(
            "tok",
            "unselected_pii = \"tokenize\"\nunselected_class = \"note\"",
        ),
        route("library", "client_key_header = \"X-CleverTap-Passcode\""),
        route_with("parsed", "", &parsed),
    ]
    .concat();
    setup.append_and_init(&sections);
    let server = setup.serve();
    Rig {
        upstream,
        _setup: setup,
        server,
    }
}

fn post(
    rig: &Rig,
    path: &str,
    content_type: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = http()
        .post(rig.server.url(path))
        .bearer_auth(key("crm"))
        .header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body.to_vec()).send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn leaf_pointers(value: &Value, pointer: String, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                leaf_pointers(item, format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(members) => {
            for (name, item) in members {
                let escaped = name.replace('~', "~0").replace('/', "~1");
                leaf_pointers(item, format!("{pointer}/{escaped}"), out);
            }
        }
        _ => out.push(pointer),
    }
}

/// Asserts that `sent` is `original` byte for byte, except the selected
/// values, which became token strings.
fn assert_byte_exact(name: &str, original: &[u8], sent: &[u8]) {
    let before: Value = serde_json::from_slice(original).unwrap();
    let after: Value =
        serde_json::from_slice(sent).unwrap_or_else(|_| panic!("{name}: upstream got no JSON"));
    let mut pointers = Vec::new();
    leaf_pointers(&before, String::new(), &mut pointers);
    let layout = Layout::scan(original);
    let mut edits = Vec::new();
    let mut changed = 0;
    for pointer in &pointers {
        let old = before.pointer(pointer).unwrap();
        let new = after
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{name}: {pointer} is gone"));
        if old == new {
            continue;
        }
        let member = pointer.rsplit('/').next().unwrap();
        assert!(
            SELECTED.contains(&member),
            "{name}: {pointer}, which no rule selects, changed"
        );
        assert!(
            new.is_string() && !old.is_null(),
            "{name}: {pointer} is not a token"
        );
        edits.push((
            layout.leaves[pointer].1,
            splice::json_string(new.as_str().unwrap()),
        ));
        changed += 1;
    }
    assert!(changed > 0, "{name}: nothing was tokenized");
    let expected = splice::splice(original, edits);
    assert!(
        expected == sent,
        "{name}: bytes outside the selected values changed:\nexpected {}\n     got {}",
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(sent)
    );
}

#[test]
pub(crate) fn fixtures_and_unusual_documents_go_out_byte_exact_outside_the_selected_values() {
    let rig = rig();
    let unusual = br#"{ "z" : 1, "big":123456789012345678901234567890,
 "exp": 1e2, "Exp": 1E+2, "neg": -0, "dec": 1.50, "uni": "caf\u00e9 \ud83d\ude00 \"q\"",
 "d": [ {"profileData": {"Phone": 919000700001, "Email":"Mixed.Case@Example.com", "Age": 42,
   "Joined": 1767225600, "Order": 100000123}, "identity" : "CUST-\u0031", "ts": 1767225600123 } ],
 "a": {"y": [2E-3, true, null, "\/slash"]} }"#;
    let mut cases: Vec<(String, Vec<u8>)> = [
        "clevertap-upload-profiles-10.json",
        "clevertap-upload-events-10.json",
        "clevertap-upload-phone-as-number.json",
        "clevertap-upload-mixed-1000.json",
    ]
    .iter()
    .map(|name| (name.to_string(), fs::read(fixture(name)).unwrap()))
    .collect();
    cases.push(("unusual".to_owned(), unusual.to_vec()));
    for (name, body) in &cases {
        let (status, answer) = post(&rig, "/block/1/upload", "application/json", body, &[]);
        assert_eq!(status, 200, "{name}: {answer}");
        let received = rig.upstream.take();
        assert_eq!(received.len(), 1, "{name}");
        assert_eq!(received[0].path, "/base/1/upload");
        assert_byte_exact(name, body, &received[0].body);
        // Selected on the parsed document, the same fields get the same
        // (deterministic) tokens.
        let (status, answer) = post(&rig, "/parsed/1/upload", "application/json", body, &[]);
        assert_eq!(status, 200, "{name}: {answer}");
        let parsed = rig.upstream.take();
        assert!(
            parsed[0].body == received[0].body,
            "{name}: the two ways select alike"
        );
    }
    // Gzip: decoded, spliced, re-encoded.
    let gz = fs::read(fixture("clevertap-upload-profiles-10.json.gz")).unwrap();
    let (status, answer) = post(
        &rig,
        "/block/1/upload",
        "application/json",
        &gz,
        &[("content-encoding", "gzip")],
    );
    assert_eq!(status, 200, "{answer}");
    let received = rig.upstream.take();
    let encoding = received[0]
        .headers
        .iter()
        .find(|(n, _)| n == "content-encoding");
    assert_eq!(encoding.map(|(_, v)| v.as_str()), Some("gzip"));
    assert_byte_exact("gzip", &gunzip(&gz), &gunzip(&received[0].body));
    // Forms keep the order and the encoding of their untouched pairs.
    let form = b"z=1&Email=form%40example.com&note=caf%C3%A9+ok&a=%2B%2B&empty=&flag";
    let (status, answer) = post(
        &rig,
        "/block/1/upload",
        "application/x-www-form-urlencoded",
        form,
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    let sent = String::from_utf8(rig.upstream.take()[0].body.clone()).unwrap();
    let token = sent
        .split('&')
        .nth(1)
        .unwrap()
        .strip_prefix("Email=")
        .unwrap();
    assert!(token.ends_with("%40tok.retail.invalid"), "{sent}");
    assert_eq!(
        sent,
        format!("z=1&Email={token}&note=caf%C3%A9+ok&a=%2B%2B&empty=&flag")
    );
}

/// Each way PII used to slip past the scan: (what, path, content type, body).
fn gaps() -> Vec<(&'static str, &'static str, &'static str, Vec<u8>)> {
    let json = |value: Value| serde_json::to_vec(&value).unwrap();
    vec![
        (
            "a card number as a JSON number",
            "/1/upload",
            "application/json",
            json(json!({"d": [{"identity": "C1", "profileData": {"Card": 4111111111111111u64}}]})),
        ),
        (
            "a phone number as a JSON number",
            "/1/upload",
            "application/json",
            json(json!({"d": [{"identity": "C1", "profileData": {"Mobile": 14155550123u64}}]})),
        ),
        (
            "an email as an object key",
            "/1/upload",
            "application/json",
            json(json!({"d": [{"identity": "C1", "profileData": {"gap.key@example.com": "x"}}]})),
        ),
        (
            "an email as a form field name",
            "/1/upload",
            "application/x-www-form-urlencoded",
            b"gap.form%40example.com=1&x=2".to_vec(),
        ),
        (
            "an email in the query string",
            "/1/upload?note=gap.query%40example.com&page=2",
            "application/json",
            json(json!({"d": []})),
        ),
        (
            "an email as a query parameter name",
            "/1/upload?gap.name%40example.com=1",
            "application/json",
            json(json!({"d": []})),
        ),
    ]
}

#[test]
pub(crate) fn the_scan_covers_numbers_keys_form_names_and_query_parameters() {
    let rig = rig();
    let values: Vec<String> = [
        "4111111111111111",
        "14155550123",
        "gap.key@example.com",
        "gap.form@example.com",
        "gap.query@example.com",
        "gap.name@example.com",
    ]
    .map(String::from)
    .to_vec();
    let scan = Scan::new(&values, &[]);
    for (what, path, content_type, body) in gaps() {
        // Under block: refused, with nothing forwarded and no value echoed.
        let (status, answer) = post(&rig, &format!("/block{path}"), content_type, &body, &[]);
        assert_eq!(status, 422, "{what}: {answer}");
        assert_eq!(
            scan.find(answer.as_bytes()),
            None,
            "{what}: echoed in {answer}"
        );
        assert!(rig.upstream.take().is_empty(), "{what}: forwarded");
        // Under tokenize: forwarded, with a token in its place.
        let (status, answer) = post(&rig, &format!("/tok{path}"), content_type, &body, &[]);
        assert_eq!(status, 200, "{what}: {answer}");
        let received = rig.upstream.take();
        assert_eq!(received.len(), 1, "{what}");
        let seen = [
            received[0].body.clone(),
            received[0].query.clone().into_bytes(),
        ]
        .concat();
        assert_eq!(scan.find(&seen), None, "{what}: reached the platform");
        assert!(
            String::from_utf8_lossy(&seen).contains("TKN_"),
            "{what}: no token in {}",
            String::from_utf8_lossy(&seen)
        );
    }
    // A selected query parameter is tokenized as its class; the others and
    // their order stay.
    let (status, answer) = post(
        &rig,
        "/block/1/profile?page=2&email=Query.Person%40example.com&sort=asc",
        "application/json",
        b"{\"d\": []}",
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    let query = rig.upstream.take()[0].query.clone();
    let parts: Vec<&str> = query.split('&').collect();
    assert_eq!((parts[0], parts[2]), ("page=2", "sort=asc"), "{query}");
    assert!(
        parts[1].starts_with("email=") && parts[1].ends_with("%40tok.retail.invalid"),
        "{query}"
    );
}

/// Sends a raw request line, so that no client library resolves the path.
fn raw_request(server: &Server, path: &str) -> u16 {
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = "{\"d\": []}";
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        key("crm"),
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[test]
pub(crate) fn paths_that_leave_the_route_are_refused_and_forwarding_headers_are_dropped() {
    let rig = rig();
    for path in [
        "/block/../../admin",
        "/block/%2e%2e/%2e%2e/admin",
        "/block/%2E%2E/admin",
        "/block/./1/upload",
        "/block/1%2f..%2fadmin",
        "/block/1/%5c..%5cadmin",
    ] {
        assert_eq!(raw_request(&rig.server, path), 400, "{path}");
        assert!(
            rig.upstream.take().is_empty(),
            "{path} reached the upstream"
        );
    }
    assert_eq!(raw_request(&rig.server, "/block/1/upload"), 200);
    assert_eq!(rig.upstream.take()[0].path, "/base/1/upload");

    let (status, _) = post(
        &rig,
        "/block/1/upload",
        "application/json",
        b"{\"d\": []}",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-kept", "yes"),
        ],
    );
    assert_eq!(status, 200);
    let received: Vec<Received> = rig.upstream.take();
    let headers = &received[0].headers;
    assert!(headers.iter().any(|(n, v)| n == "x-kept" && v == "yes"));
    for (name, value) in headers {
        assert!(
            !value.contains("6.6.6.6") && !value.contains("evil.example"),
            "{name}: {value}"
        );
    }
}

#[test]
pub(crate) fn a_route_takes_the_vault_key_in_the_platform_header_and_never_forwards_it() {
    let rig = rig();
    let send = |key: &str| {
        http()
            .post(rig.server.url("/library/1/upload"))
            .header("X-CleverTap-Passcode", key)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&json!({"d": [{"identity": "LIB-1", "profileData": {"Email": "lib@example.com"}}]})).unwrap())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send(&key("crm")), 200);
    let received = rig.upstream.take();
    let passcodes: Vec<&str> = received[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "x-clevertap-passcode")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(passcodes, [PASSCODE]);
    let secrets = Scan::new(&[], &[key("crm")]);
    for (name, value) in &received[0].headers {
        assert_eq!(
            secrets.find(value.as_bytes()),
            None,
            "the vault key went upstream in {name}"
        );
    }
    // A wrong key in that header is refused like a wrong bearer key.
    assert_eq!(send("tv.crm.not-the-key"), 401);
    assert!(rig.upstream.take().is_empty());
    // Other routes do not read the header.
    let status = http()
        .post(rig.server.url("/block/1/upload"))
        .header("X-CleverTap-Passcode", key("crm"))
        .header("content-type", "application/json")
        .body("{\"d\": []}")
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 401);
}
