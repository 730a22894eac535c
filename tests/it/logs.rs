//! The operational log holds no URL, path, key or value a caller chose, and
//! no caller text can forge a line.

use std::fs;

use serde_json::{json, Value};

use crate::support::*;
use crate::upstream::Upstream;

const FORGED: &str = "x\n2026-12-01T00:00:00.000000Z ERROR tokenvault: forged line\u{1b}[2J";

fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
path_prefix = "{prefix}"
upstream = "{upstream}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
timeout_ms = 1500
{extra}
fields = [ {{ select = "$.d[*].profileData.Email", class = "email" }} ]
"#
    )
}

fn send(server: &Server, path: &str, body: &Value) -> u16 {
    http()
        .post(server.url(path))
        .bearer_auth(key("crm"))
        .json(body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
pub fn caller_text_never_forges_a_plain_log_line_or_leaks_a_url() {
    let upstream = Upstream::start();
    let closed = closed_port();
    let sections = [
        route(
            "reporting",
            "/report",
            &upstream.url,
            "unselected_pii = \"report\"",
        ),
        route("blocking", "/block", &upstream.url, ""),
        // Report, not block: the query's email must reach the failing
        // forward, so that its URL would be logged if anything logged it.
        route(
            "down",
            "/down",
            &format!("http://{closed}"),
            "unselected_pii = \"report\"",
        ),
    ]
    .concat();
    let setup = Setup::new_with("", &sections);
    let mut server = setup.serve();
    let secret = "log.canary.0042@example.com";
    // A key that would start a new, fake ERROR line; another that is an
    // email address; both beside an email in a field no rule selects.
    let body = json!({"d": [{
        "profileData": {"Email": "selected@example.com", FORGED: secret, secret: "x"},
    }]});
    assert_eq!(send(&server, "/report/1/upload", &body), 200);
    assert_eq!(send(&server, "/block/1/upload", &body), 422);
    // A dead upstream, with the email in the path and the query.
    let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let path = format!("/down/1/profiles/{encoded}?email={encoded}");
    assert_eq!(send(&server, &path, &json!({"d": []})), 502);
    assert!(server.stop().success());

    let logs = server.logs();
    assert!(
        logs.contains("PII found in a field no rule selects"),
        "{logs}"
    );
    assert!(
        logs.contains("upstream failed") && logs.contains("reason=\"connect\""),
        "{logs}"
    );
    for line in logs.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00.000000Z"),
            "a forged line: {line}"
        );
    }
    for needle in ["forged", "\u{1b}", "log.canary", &encoded, "/1/profiles/"] {
        assert!(!logs.contains(needle), "{needle:?} in the log:\n{logs}");
    }
    // The masked pointer names the configured field and hides the rest.
    assert!(logs.contains("path=/d/0/profileData/*"), "{logs}");
    drop(upstream);
}

#[test]
pub fn with_json_logs_every_line_on_stdout_is_json() {
    let setup = Setup::new_with("", "[log]\nformat = \"json\"\n");
    let mut server = setup.serve();
    tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "json.lines@example.com")],
    );
    let (status, _) = post(
        &server,
        "/v1/detokenize",
        &key("sms"),
        &json!({"namespace": "x\ny", "purpose": "support", "tokens": ["t"]}),
    );
    assert_eq!(status, 403);
    assert!(server.stop().success());
    let stdout = fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "stdout"))
        .unwrap();
    let stdout = fs::read_to_string(stdout).unwrap();
    assert!(stdout.lines().count() > 3, "{stdout}");
    for line in stdout.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON on stdout: {line}");
    }
    assert!(server.logs().contains("tokenvault listening on "));
}
