//! SIGHUP re-reads the whole configuration: a client added is let in, a
//! revoked one is shut out (on a kept-alive connection and with an access
//! token issued before), a broken or restart-only change keeps the old
//! configuration, and budgets survive the reload.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const CLEVERTAP: &str = r#"
[clevertap]
enabled = true
namespace = "retail"
default_class = "name"
access_token_ttl_secs = 600
"#;

const TOKEN_ENDPOINT: &str = "/auth/realms/ct-vault/protocol/openid-connect/token";
const GET_TOKEN: &str = "/ct-vault/api/tokenization/getToken";

/// The `[clients.intake]` section as the standard configuration writes it.
fn intake_section() -> String {
    let hash = &client_keys()["intake"].1;
    format!("\n[clients.intake]\nrole = \"names_only\"\napi_key_hash = \"{hash}\"\n\n")
}

fn tokenize_as(server: &Server, client: &str) -> u16 {
    post(
        server,
        "/v1/tokenize",
        &key(client),
        &json!({"namespace": "retail", "items": [{"class": "name", "value": "Re Load"}]}),
    )
    .0
}

/// One HTTP/1.1 request on a kept-alive connection; answers the status.
fn keep_alive_tokenize(stream: &mut BufReader<TcpStream>, api_key: &str) -> u16 {
    let body = json!({"namespace": "retail", "items": [{"class": "name", "value": "Keep Alive"}]})
        .to_string();
    write!(
        stream.get_mut(),
        "POST /v1/tokenize HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        assert!(
            !line.to_ascii_lowercase().starts_with("connection: close"),
            "the server closed the connection"
        );
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    status
}

fn access_token(server: &Server, client: &str) -> String {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", &key(client)),
        ])
        .finish();
    let response = http()
        .post(server.url(TOKEN_ENDPOINT))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let issued: Value = response.json().unwrap();
    issued["access_token"].as_str().unwrap().to_owned()
}

fn get_token_with(server: &Server, access_token: &str) -> u16 {
    http()
        .post(server.url(GET_TOKEN))
        .bearer_auth(access_token)
        .json(&json!({"value": "Access Token"}))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// The `config_reload` records, read with a good copy of the configuration
/// (the file itself may be broken on purpose).
fn reload_records(setup: &Setup) -> Vec<Value> {
    let good = setup.dir.path().join("good.toml");
    if !good.exists() {
        fs::copy(&setup.config, &good).unwrap();
    }
    let out = std::process::Command::new(BIN)
        .args([
            "audit",
            "query",
            "--format",
            "json",
            "--action",
            "config_reload",
            "--config",
        ])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
pub fn a_sighup_lets_a_new_client_in_and_a_revoked_one_is_shut_out_everywhere() {
    let setup = Setup::new_with("", CLEVERTAP);
    let text = fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains(&intake_section()), "{text}");
    fs::write(&setup.config, text.replace(&intake_section(), "\n")).unwrap();
    let server = setup.serve();
    assert_eq!(tokenize_as(&server, "intake"), 401, "not configured yet");

    // Added; the operator's comments elsewhere must survive the
    // revocation.
    let mut text = fs::read_to_string(&setup.config).unwrap();
    text = format!("# operator notes: keep this file tidy\n{text}");
    text.push_str(&intake_section());
    fs::write(&setup.config, &text).unwrap();
    assert!(signal(server.pid(), "HUP"));
    eventually("the added client is let in", || {
        tokenize_as(&server, "intake") == 200
    });

    // Before the revocation: a kept-alive connection and access tokens.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = BufReader::new(TcpStream::connect(&address).unwrap());
    stream
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(keep_alive_tokenize(&mut stream, &key("intake")), 200);
    let revoked_token = access_token(&server, "intake");
    let kept_token = access_token(&server, "crm");
    assert_eq!(get_token_with(&server, &revoked_token), 200);

    let out = std::process::Command::new(BIN)
        .args(["client", "revoke", "intake", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("pid {}", server.pid())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = fs::read_to_string(&setup.config).unwrap();
    assert!(!after.contains("[clients.intake]"), "{after}");
    assert!(after.starts_with("# operator notes: keep this file tidy\n"));
    // Every other line is kept, in order.
    let expected: Vec<&str> = text
        .lines()
        .filter(|line| !line.is_empty() && !intake_section().contains(line))
        .collect();
    let got: Vec<&str> = after.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(got, expected, "nothing but the client's table changed");
    eventually("the revoked client is shut out", || {
        tokenize_as(&server, "intake") == 401
    });
    // On the connection it kept open, and with its access token.
    assert_eq!(keep_alive_tokenize(&mut stream, &key("intake")), 401);
    assert_eq!(get_token_with(&server, &revoked_token), 401);
    // A client that remains keeps its access token.
    assert_eq!(get_token_with(&server, &kept_token), 200);
    assert_eq!(tokenize_as(&server, "crm"), 200);

    drop(server);
    let records = reload_records(&setup);
    assert_eq!(
        records.iter().filter(|r| r["outcome"] == "ok").count(),
        2,
        "{records:?}"
    );
    assert!(audit_records(&setup)
        .iter()
        .any(|r| r["action"] == "client_revoke"));
}

#[test]
pub fn a_broken_or_restart_only_config_keeps_the_old_one_and_budgets_survive_a_reload() {
    let setup = Setup::new("");
    let server = setup.serve();
    let tokens = tokenize(&server, "crm", "retail", &[("phone", "+14155550112")]);
    let day = || unix_now() / 86_400;
    let started = day();
    let reveal = || {
        post(
            &server,
            "/v1/detokenize",
            &key("daily"),
            &json!({"namespace": "retail", "purpose": "sms_delivery", "tokens": tokens}),
        )
        .0
    };
    assert_eq!([reveal(), reveal()], [200, 200]);
    let original = fs::read_to_string(&setup.config).unwrap();
    assert!(reload_records(&setup).is_empty());

    // A valid reload: the budget keeps what was spent.
    fs::write(&setup.config, format!("{original}\n# reloaded\n")).unwrap();
    assert!(signal(server.pid(), "HUP"));
    eventually("the reload is recorded", || {
        reload_records(&setup).iter().any(|r| r["outcome"] == "ok")
    });
    assert_eq!(reveal(), 200, "the third of 3 a day");
    if day() == started {
        assert_eq!(reveal(), 429, "the reload refilled the day's budget");
    }

    // Broken TOML: refused, recorded, the old configuration serves.
    fs::write(&setup.config, format!("{original}\n[clients.broken\n")).unwrap();
    assert!(signal(server.pid(), "HUP"));
    eventually("the refused reload is recorded", || {
        reload_records(&setup)
            .iter()
            .any(|r| r["outcome"] == "error")
    });
    assert_eq!(tokenize_as(&server, "crm"), 200);

    // Valid, but a client names a role that does not exist: refused whole,
    // the other clients are not touched.
    let dangling = original.replace(
        "[clients.crm]\nrole = \"backend\"",
        "[clients.crm]\nrole = \"no_such_role\"",
    );
    assert_ne!(dangling, original);
    fs::write(&setup.config, dangling).unwrap();
    assert!(signal(server.pid(), "HUP"));
    eventually("the second refusal is recorded", || {
        reload_records(&setup)
            .iter()
            .filter(|r| r["outcome"] == "error")
            .count()
            == 2
    });
    assert_eq!(tokenize_as(&server, "crm"), 200);

    // A change only a restart can make (the data directory): refused.
    let moved = original.replace("data_dir = \"", "data_dir = \"/nonexistent");
    fs::write(&setup.config, moved).unwrap();
    assert!(signal(server.pid(), "HUP"));
    eventually("the third refusal is recorded", || {
        reload_records(&setup)
            .iter()
            .filter(|r| r["outcome"] == "error")
            .count()
            == 3
    });
    assert_eq!(tokenize_as(&server, "crm"), 200);
    // The log line is written by a background writer: it may trail the
    // audit record by a moment.
    eventually(
        "the refusal names the restart-only setting in the log",
        || {
            server
                .logs()
                .contains("storage.data_dir: changing it needs a restart")
        },
    );
}
