//! The /v1 token API against a real server with the standard configuration.

use serde_json::{json, Value};

use crate::support::*;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A vault with the token API's limits raised for the limit tests.
fn api_server() -> (Setup, Server) {
    let setup = Setup::new("max_body_bytes = 1048576\nmax_batch_items = 2000");
    let server = setup.serve();
    (setup, server)
}

/// Two spellings each of an email, a phone and a name, tokenized.
fn standard_tokens(server: &Server) -> Vec<String> {
    tokenize(
        server,
        "crm",
        "retail",
        &[
            ("email", " Alice@Example.COM"),
            ("email", "alice@example.com"),
            ("phone", "+91 98765-43210"),
            ("phone", "+919876543210"),
            ("name", "  Olivia Nair "),
            ("name", "Olivia Nair"),
        ],
    )
}

#[test]
pub(crate) fn token_api_formats_round_trip_and_isolation() {
    let (_setup, server) = api_server();
    // Deterministic classes: one token per normalized value.
    let tokens = standard_tokens(&server);
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[2], tokens[3]);
    assert_eq!(tokens[4], tokens[5]);
    assert_ne!(tokens[0], tokens[2]);
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [{"class": "email", "value": "ALICE@example.com"}, {"class": "email", "value": "new.person@example.com"}]}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        body["tokens"][0],
        json!({"token": tokens[0], "created": false})
    );
    assert_eq!(body["tokens"][1]["created"], json!(true));

    // Random classes: a new token every time.
    let random = tokenize(
        &server,
        "crm",
        "retail",
        &[("note", "same text"), ("note", "same text")],
    );
    assert_ne!(random[0], random[1]);
    assert_ne!(
        random[0],
        tokenize(&server, "crm", "retail", &[("note", "same text")])[0]
    );
    assert!(random[0].starts_with("TKN_") && random[0].len() >= 26);

    // Email tokens are addresses under the token domain.
    let email_token = &tokens[0];
    let parsed: email_address::EmailAddress =
        email_token.parse().expect("email token is a valid address");
    assert_eq!(parsed.domain(), "tok.retail.invalid");
    assert!(
        !parsed.local_part().contains("alice"),
        "the token does not carry the value: {email_token}"
    );
    // An opaque token is not its value either.
    assert!(tokens[4].starts_with("TKN_") && !tokens[4].contains("Olivia"));

    // Phone tokens keep the country code and the length, and are E.164.
    let phones = [
        "+15550109494",
        "+447700900038",
        "+919000700001",
        "+61491570156",
        "+353851234567",
    ];
    let pairs: Vec<(&str, &str)> = phones.iter().map(|p| ("phone", *p)).collect();
    for (phone, token) in phones
        .iter()
        .zip(tokenize(&server, "crm", "retail", &pairs))
    {
        assert_eq!(token.len(), phone.len(), "{token}");
        let code_len = if phone.starts_with("+1") {
            2
        } else if phone.starts_with("+353") {
            4
        } else {
            3
        };
        assert_eq!(token[..code_len], phone[..code_len], "{token}");
        assert!(
            token[1..].bytes().all(|b| b.is_ascii_digit()) && (8..=15).contains(&(token.len() - 1))
        );
        assert_ne!(&token, phone);
    }

    // Length-preserving formats.
    let shaped = tokenize(
        &server,
        "crm",
        "retail",
        &[("card", "4111 1111 1111 1234"), ("account", "AC-99812345")],
    );
    assert!(
        shaped[0].ends_with("1234") && shaped[0].len() == 19 && shaped[0] != "4111 1111 1111 1234"
    );
    assert!(shaped[1].starts_with("AC-") || shaped[1].chars().nth(2) == Some('-'));
    assert_eq!(shaped[1].len(), 11);
    assert_ne!(
        shaped[1], "AC-99812345",
        "a length-preserving token is still not the value"
    );

    // Round trip with a plain-reveal role, values in normalized form.
    let values = detokenize(
        &server,
        "admin",
        "retail",
        "support",
        &[tokens[0].clone(), tokens[2].clone(), shaped[0].clone()],
    );
    assert_eq!(
        values[0],
        json!({"token": tokens[0], "value": "alice@example.com", "class": "email"})
    );
    assert_eq!(values[1]["value"], "+919876543210");
    assert_eq!(values[2]["value"], "4111 1111 1111 1234");

    // Namespace isolation: a retail token is not_found in health.
    let health = detokenize(&server, "admin", "health", "support", &[tokens[0].clone()]);
    assert_eq!(
        health[0],
        json!({"token": tokens[0], "error": {"code": "not_found"}})
    );

    // Masked reveal.
    let masked = detokenize(
        &server,
        "helpdesk",
        "retail",
        "support",
        &[tokens[0].clone(), tokens[2].clone()],
    );
    assert_eq!(masked[0]["value"], "a***@example.com");
    assert_eq!(masked[1]["value"], "*********3210");

    // A class the role may not see answers exactly like a missing token.
    let sms = detokenize(
        &server,
        "sms",
        "retail",
        "sms_delivery",
        &[
            tokens[0].clone(),
            "nope@tok.retail.invalid".to_owned(),
            tokens[2].clone(),
        ],
    );
    assert_eq!(
        sms[0],
        json!({"token": tokens[0], "error": {"code": "not_found"}})
    );
    assert_eq!(
        sms[1],
        json!({"token": "nope@tok.retail.invalid", "error": {"code": "not_found"}})
    );
    assert_eq!(sms[2]["value"], "+919876543210");
}

#[test]
pub(crate) fn token_api_refuses_the_unauthenticated_and_the_unauthorized() {
    let (_setup, server) = api_server();
    let tokens = standard_tokens(&server);
    let canary = "canary.7.0003.zq@example.com";
    // 401: no key, wrong key, unknown client, key from a source outside allow_from.
    let body = json!({"namespace": "retail", "items": [{"class": "name", "value": "x"}]});
    let response = http()
        .post(server.url("/v1/tokenize"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response: Value = response.json().unwrap();
    assert_eq!(error_code(&response), "unauthorized");
    assert!(response["error"]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    let wrong = format!("{}x", key("crm"));
    for bad in [
        wrong.as_str(),
        "tv.nobody.abcdefghijklmnopqrstuvwxyz",
        "garbage",
    ] {
        let (status, body) = post(&server, "/v1/tokenize", bad, &body);
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{bad}");
    }
    let (status, _) = post(&server, "/v1/tokenize", &key("office"), &body);
    assert_eq!(status, 401, "office may only connect from 10.20.0.0/16");
    // The positive control: the same role, allowed from where the test is.
    let (status, answer) = post(&server, "/v1/tokenize", &key("onsite"), &body);
    assert_eq!(
        status, 200,
        "onsite connects from inside 127.0.0.0/8: {answer}"
    );

    // 403: operation, namespace, class, purpose.
    let detokenize_body = |ns: &str, purpose: &str| json!({"namespace": ns, "purpose": purpose, "tokens": [tokens[2]]});
    let cases = [
        (
            "crm",
            "/v1/detokenize",
            detokenize_body("retail", "support"),
        ),
        ("sms", "/v1/tokenize", body.clone()),
        (
            "crm",
            "/v1/tokenize",
            json!({"namespace": "vip", "items": [{"class": "name", "value": "x"}]}),
        ),
        (
            "sms",
            "/v1/detokenize",
            detokenize_body("health", "sms_delivery"),
        ),
        (
            "sms",
            "/v1/detokenize",
            detokenize_body("retail", "marketing"),
        ),
        (
            "helpdesk",
            "/v1/detokenize",
            detokenize_body("retail", "sms_delivery"),
        ),
        (
            "auditor",
            "/v1/detokenize",
            detokenize_body("retail", "support"),
        ),
    ];
    for (client, path, request) in &cases {
        let (status, body) = post(&server, path, &key(client), request);
        assert_eq!(
            (status, error_code(&body)),
            (403, "forbidden"),
            "{client} {path} {request}"
        );
    }
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("intake"),
        &json!({"namespace": "retail", "items": [{"class": "name", "value": "ok"}, {"class": "email", "value": "canary.7.0000.zq@example.com"}]}),
    );
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("item 1"));
    let response = http()
        .delete(server.url(&format!("/v1/namespaces/retail/tokens/{}", tokens[4])))
        .bearer_auth(key("crm"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // 404: a class the namespace does not define, like an unknown namespace.
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [{"class": "email", "value": canary}, {"class": "fax", "value": canary}]}),
    );
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("item 1"));
    assert!(!body.to_string().contains("canary"), "value echoed: {body}");
    // The log records the refusals without the keys or values involved.
    let logs = server.logs();
    assert!(logs.contains("authentication failed"));
    assert!(!logs.contains(&key("crm")) && !logs.contains(canary));
}

#[test]
pub(crate) fn token_api_refuses_malformed_and_oversized_requests() {
    let (_setup, server) = api_server();
    let tokens = standard_tokens(&server);
    let detokenize_body = |ns: &str, purpose: &str| json!({"namespace": ns, "purpose": purpose, "tokens": [tokens[2]]});
    let canary = "canary.7.0003.zq@example.com";
    // 400: bad JSON, invalid value, empty purpose, empty batch; never echoing the value.
    let bad_inputs = [
        json!({"namespace": "retail", "items": [{"class": "phone", "value": "+919000700001"}, {"class": "email", "value": canary}, {"class": "phone", "value": canary}]}),
        json!({"namespace": "retail", "items": []}),
        json!({"namespace": "retail", "items": [{"class": "email", "value": 12345, "note": canary}]}),
    ];
    let expected_index = ["item 2", "items", "line"];
    for (request, expected) in bad_inputs.iter().zip(expected_index) {
        let (status, body) = post(&server, "/v1/tokenize", &key("crm"), request);
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_request"),
            "{request}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
        assert!(!body.to_string().contains("canary"), "value echoed: {body}");
    }
    let response = http()
        .post(server.url("/v1/tokenize"))
        .bearer_auth(key("crm"))
        .header("content-type", "application/json")
        .body(format!("{{\"namespace\": \"retail\", \"items\": [{{\"class\": \"email\", \"value\": \"{canary}\""))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(!response.text().unwrap().contains("canary"));
    let (status, _) = post(
        &server,
        "/v1/detokenize",
        &key("admin"),
        &detokenize_body("retail", " "),
    );
    assert_eq!(status, 400);

    // 413: batch over the limit, body over the limit, value over 4 KiB.
    let many: Vec<Value> = (0..2001)
        .map(|i| json!({"class": "name", "value": format!("n{i}")}))
        .collect();
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": many}),
    );
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));
    let huge = "x".repeat(1_100_000);
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [{"class": "name", "value": huge}]}),
    );
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));
    let big_value = "y".repeat(5000);
    let (status, body) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [{"class": "name", "value": big_value}]}),
    );
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("item 0"));
    // The limit counts characters, as the description's maxLength does:
    // 4096 three-byte characters fit, one more does not.
    for (length, expected) in [(4096, 200), (4097, 413)] {
        let (status, _) = post(
            &server,
            "/v1/tokenize",
            &key("crm"),
            &json!({"namespace": "retail", "items": [{"class": "name", "value": "\u{20ac}".repeat(length)}]}),
        );
        assert_eq!(status, expected, "{length} characters");
    }

    // 415 for a body that is not declared as JSON.
    let response = http()
        .post(server.url("/v1/tokenize"))
        .bearer_auth(key("crm"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    // No refused value reaches the log.
    assert!(!server.logs().contains(canary));
}

#[test]
pub(crate) fn token_api_forget_health_and_process_limits() {
    let (_setup, server) = api_server();
    let tokens = standard_tokens(&server);
    // A token named through another namespace is not there: 404, and the
    // token survives in its own.
    let elsewhere = server.url(&format!("/v1/namespaces/health/tokens/{}", tokens[4]));
    let response = http()
        .delete(&elsewhere)
        .bearer_auth(key("admin"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let still = detokenize(&server, "admin", "retail", "support", &[tokens[4].clone()]);
    assert_eq!(still[0]["value"], "Olivia Nair");

    // Forget: gone afterwards, 404 the second time.
    let forget_url = server.url(&format!("/v1/namespaces/retail/tokens/{}", tokens[4]));
    let response = http()
        .delete(&forget_url)
        .bearer_auth(key("admin"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let after = detokenize(&server, "admin", "retail", "support", &[tokens[4].clone()]);
    assert_eq!(after[0]["error"]["code"], "not_found");
    let response = http()
        .delete(&forget_url)
        .bearer_auth(key("admin"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    // Health, readiness, unknown routes.
    let health: Value = http()
        .get(server.url("/healthz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = http().get(server.url("/readyz")).send().unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let missing = http().get(server.url("/v2/nothing")).send().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(missing.headers().contains_key("x-request-id"));
    let missing: Value = missing.json().unwrap();
    assert_eq!(error_code(&missing), "not_found");

    // The process refuses core dumps (keys and values must not reach a core file).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
}

#[test]
pub(crate) fn sigterm_drains_in_flight_requests() {
    // A stalled upstream holds the request in flight for as long as the
    // test needs: the signal goes only once the upstream has it.
    let upstream = crate::upstream::Upstream::start();
    upstream.behave(crate::upstream::Behaviour::Stall(
        std::time::Duration::from_secs(2),
    ));
    let setup = Setup::new_with(
        "",
        &format!(
            "[[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"{}\"\ninsecure_allow_http_upstream = true\nnamespace = \"retail\"\nclients = [\"crm\"]\nfields = [ {{ select = \"$.email\", class = \"email\" }} ]\n",
            upstream.url
        ),
    );
    let mut server = setup.serve();
    let url = server.url("/slow/events");
    let api_key = key("crm");
    let request = std::thread::spawn(move || {
        http()
            .post(url)
            .bearer_auth(api_key)
            .json(&json!({"email": "drain@example.com"}))
            .send()
            .unwrap()
    });
    upstream.wait_for(1);
    assert!(signal(server.pid(), "TERM"));
    let response = request.join().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<Value>().unwrap()["status"], "late");
    assert!(server.stop().success());
    assert!(server.logs().contains("in-flight requests drained"));
}

#[test]
pub(crate) fn a_signal_right_after_the_listening_line_is_handled() {
    // The vault's handlers are in place before it says it is listening: a
    // SIGTERM (or SIGHUP) at once stops it cleanly (or is a reload), never
    // the default action. Before, a signal in that window ended the process
    // by the signal (seen in the crash loop).
    let setup = Setup::new("");
    for _ in 0..10 {
        let mut server = setup.serve();
        assert!(signal(server.pid(), "HUP"));
        assert!(signal(server.pid(), "TERM"));
        let status = server.stop();
        assert!(status.success(), "{status}: {}", server.logs());
    }
}

#[test]
pub(crate) fn a_wrong_method_on_a_known_path_is_405_with_allow() {
    let setup = Setup::new("");
    let server = setup.serve();
    let client = http();
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/v1/tokenize", "POST"),
        (reqwest::Method::POST, "/readyz", "GET"),
        (
            reqwest::Method::GET,
            "/v1/namespaces/retail/tokens/TKN_x",
            "DELETE",
        ),
        (reqwest::Method::POST, "/v1/consent", "PUT"),
    ] {
        let response = client
            .request(method.clone(), server.url(path))
            .bearer_auth(key("admin"))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        let header = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(header.as_deref(), Some(allow), "{method} {path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(body["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_"));
    }
    let missing = client.get(server.url("/v1/nothing-here")).send().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    // Counted under the path's pattern and a fixed operation.
    let metrics = scrape_metrics(&server);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tokenvault_http_requests_total{")
                && l.contains("route=\"/v1/tokenize\"")
                && l.contains("operation=\"method_not_allowed\"")
                && l.contains("status=\"405\"")),
        "{metrics}"
    );
}
