//! `serve --dev`: the printed curl example works as printed.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

#[test]
fn dev_mode_prints_a_working_curl_example() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(
        &["serve", "--dev", "--listen", "127.0.0.1:0"],
        &[],
        dir.path(),
    );
    let banner = server.logs();
    assert!(banner.contains("DEVELOPMENT MODE"));
    // The example names the configured address; swap in the bound port.
    let port_base = server.base.clone();
    let commands: Vec<String> = banner
        .split("  curl ")
        .skip(1)
        .map(|chunk| {
            let command: String = chunk
                .split("\n=")
                .next()
                .unwrap()
                .split("\n  curl")
                .next()
                .unwrap()
                .replace("\\\n", " ");
            format!("curl {}", command.trim()).replace("http://127.0.0.1:0", &port_base)
        })
        .collect();
    assert_eq!(commands.len(), 2, "{banner}");
    let run = |command: &str| -> Value {
        let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
        assert!(out.status.success(), "{command}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{command}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let tokenized = run(&commands[0]);
    let token = tokenized["tokens"][0]["token"].as_str().unwrap().to_owned();
    assert!(token.ends_with("@tokens.invalid"));
    let revealed = run(&commands[1].replace("<token from above>", &token));
    assert_eq!(revealed["values"][0]["value"], "alice@example.com");
}

#[test]
fn dev_mode_uses_the_key_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::spawn(
        &["serve", "--dev", "--listen", "127.0.0.1:0"],
        &[("TOKENVAULT_DEV_API_KEY", "my-dev-key")],
        dir.path(),
    );
    assert!(server.logs().contains("root API key: my-dev-key"));
    let body = serde_json::json!({"namespace": "default", "items": [{"class": "phone", "value": "+91 98765 43210"}]});
    let (status, reply) = post(&server, "/v1/tokenize", "my-dev-key", &body);
    assert_eq!(status, 200, "{reply}");
    let (status, _) = post(&server, "/v1/tokenize", "another-key", &body);
    assert_eq!(status, 401);
}
