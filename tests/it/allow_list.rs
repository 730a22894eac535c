//! The egress allow-list: the vault sends only to the destinations its
//! configuration names, whatever an upstream answers, whatever the process
//! environment says, whatever a name resolves to.

use serde_json::{json, Value};

use crate::support::*;
use crate::upstream::{Behaviour, Upstream};

const CANARY: &str = "allow.list.canary@example.com";

/// A route to `upstream` with one email field, plus `extra` lines.
fn route(name: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{upstream}\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\"]\ntimeout_ms = 3000\n{extra}\nfields = [ {{ select = \"$.email\", class = \"email\" }} ]\n\n"
    )
}

fn send(server: &Server, name: &str) -> (u16, Value, Option<String>) {
    let response = http()
        .post(server.url(&format!("/{name}/events")))
        .bearer_auth(key("crm"))
        .json(&json!({"email": CANARY, "event": "visit"}))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().unwrap_or(Value::Null), location)
}

/// The one request `upstream` received carries a token, not the canary.
fn received_one_token(upstream: &Upstream) {
    let received = upstream.take();
    assert_eq!(received.len(), 1, "the upstream received the request");
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_ne!(body["email"], CANARY);
    assert!(body["email"].as_str().unwrap().contains('@'));
}

#[test]
fn a_redirect_is_neither_followed_nor_passed_on() {
    let (platform, elsewhere) = (Upstream::start(), Upstream::start());
    let setup = Setup::new_with("", &route("moved", &platform.url, ""));
    let server = setup.serve();
    platform.behave(Behaviour::Redirect(format!("{}/collect", elsewhere.url)));
    let (status, body, location) = send(&server, "moved");
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("redirect"),
        "{body}"
    );
    // A caller that followed a relayed Location would send its own
    // request, values and all, straight to a place the vault never vetted.
    assert_eq!(location, None, "the Location is not passed on");
    assert!(!body.to_string().contains(&elsewhere.url));
    received_one_token(&platform);
    assert!(elsewhere.take().is_empty(), "the redirect was not followed");
    server.wait_for_log("reason=\"redirect_refused\"");
}

#[test]
fn proxy_variables_in_the_environment_are_ignored() {
    let (platform, proxy) = (Upstream::start(), Upstream::start());
    let setup = Setup::new_with("", &route("direct", &platform.url, ""));
    let variables = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    let env: Vec<(&str, &str)> = variables.iter().map(|v| (*v, proxy.url.as_str())).collect();
    let server = setup.serve_with_env(&env);
    let (status, body, _) = send(&server, "direct");
    assert_eq!(status, 200, "{body}");
    received_one_token(&platform);
    assert!(proxy.take().is_empty(), "nothing went through the proxy");
}

#[test]
fn a_name_resolving_outside_the_listed_addresses_is_refused() {
    let platform = Upstream::start();
    let port = platform.url.rsplit(':').next().unwrap().to_owned();
    let by_name = format!("http://localhost:{port}");
    let sections = [
        // localhost answers loopback addresses only: outside this list.
        route(
            "pinned",
            &by_name,
            "upstream_addresses = [\"192.0.2.0/24\"]",
        ),
        // The positive control: the same name, its real addresses listed.
        route(
            "listed",
            &by_name,
            "upstream_addresses = [\"127.0.0.0/8\", \"::1/128\"]",
        ),
    ]
    .concat();
    let setup = Setup::new_with("", &sections);
    let server = setup.serve();
    let (status, body, _) = send(&server, "pinned");
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow-list"),
        "{body}"
    );
    assert!(platform.take().is_empty(), "nothing was sent");
    server.wait_for_log("reason=\"destination_refused\"");
    let (status, body, _) = send(&server, "listed");
    assert_eq!(status, 200, "{body}");
    received_one_token(&platform);
}

#[test]
fn an_address_url_outside_its_own_list_does_not_start() {
    let setup = Setup::configure(
        "",
        &format!(
            "{}\n{}",
            STANDARD,
            route(
                "literal",
                "http://127.0.0.1:9",
                "upstream_addresses = [\"10.0.0.0/8\"]"
            )
        ),
    );
    let out = setup.run(&["config", "check", "--config"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes.literal.upstream_addresses")
            && stderr.contains("127.0.0.1 is outside this list"),
        "{stderr}"
    );
}
