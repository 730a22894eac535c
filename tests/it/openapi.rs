//! `docs/openapi.yaml` is a valid OpenAPI 3.1 document (parsed whole by the
//! `oas3` crate, every `$ref` resolved), and its operations and the server's
//! routes are the same set, checked against the route table the server
//! registers and against a live server. `.ci/run` also holds a live dev
//! server to the document with schemathesis (`.ci/schemathesis`).

use std::collections::BTreeSet;

use crate::support::*;

fn document() -> oas3::Spec {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    oas3::from_yaml(text).unwrap_or_else(|error| panic!("docs/openapi.yaml: {error}"))
}

/// `(METHOD, path)` of every operation under `paths:` in the document.
fn documented() -> BTreeSet<(String, String)> {
    document()
        .operations()
        .map(|(path, method, _)| (method.as_str().to_owned(), path))
        .collect()
}

/// Every `$ref` under `value`, with where it was found.
fn references(value: &serde_json::Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", serde_json::Value::String(target)) => {
                        found.push((at.to_owned(), target.clone()))
                    }
                    _ => references(child, &format!("{at}/{key}"), found),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                references(child, &format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_description_is_valid_openapi_and_every_reference_resolves() {
    let spec = document();
    assert!(spec.openapi.starts_with("3.1."), "{}", spec.openapi);
    let whole = serde_json::to_value(&spec).unwrap();
    let mut found = Vec::new();
    references(&whole, "", &mut found);
    assert!(
        found.len() > 50,
        "the walk finds the references: {}",
        found.len()
    );
    let dangling: Vec<_> = found
        .iter()
        .filter(|(_, target)| {
            target
                .strip_prefix('#')
                .is_none_or(|pointer| whole.pointer(pointer).is_none())
        })
        .collect();
    assert!(dangling.is_empty(), "references to nothing: {dangling:?}");
    for (path, method, operation) in spec.operations() {
        let name = format!("{method} {path}");
        assert!(
            operation.operation_id.is_some(),
            "{name} has no operationId"
        );
        let responses = operation.responses.as_ref().expect("responses");
        assert!(!responses.is_empty(), "{name} documents no response");
        for (status, response) in responses {
            let response = response
                .resolve(&spec)
                .unwrap_or_else(|error| panic!("{name} {status}: {error}"));
            // Every error answer is JSON with a stable code.
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response.content.contains_key("application/json"),
                    "{name} {status} is not JSON"
                );
            }
        }
        operation
            .request_body(&spec)
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        for parameter in &operation.parameters {
            parameter
                .resolve(&spec)
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        }
    }
}

/// The audit actions the description lists are the ones the trail has.
#[test]
fn the_audit_action_filter_lists_every_action() {
    let whole = serde_json::to_value(document()).unwrap();
    let parameters = whole
        .pointer("/paths/~1v1~1audit/get/parameters")
        .and_then(|p| p.as_array())
        .expect("GET /v1/audit has parameters");
    let action = parameters
        .iter()
        .find(|p| p["name"] == "action")
        .expect("an action parameter");
    let listed: BTreeSet<&str> = action["schema"]["enum"]
        .as_array()
        .expect("an enum")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let actions: BTreeSet<&str> = tokenvault::audit::Action::ALL
        .iter()
        .map(|a| a.as_str())
        .collect();
    assert_eq!(listed, actions);
}

fn served() -> BTreeSet<(String, String)> {
    tokenvault::http::endpoints(true)
        .map(|e| (e.method.as_str().to_owned(), e.path.to_owned()))
        .collect()
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let documented = documented();
    let served = served();
    assert!(served.len() >= 15, "{served:?}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in docs/openapi.yaml but not served: {unserved:?}"
    );
}

#[test]
pub fn a_live_server_answers_every_documented_operation() {
    let setup = Setup::new_with(
        "",
        "[clevertap]\nenabled = true\nnamespace = \"retail\"\ndefault_class = \"name\"\n",
    );
    let server = setup.serve();
    let client = http();
    let not_routed = |response: reqwest::blocking::Response| -> bool {
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().unwrap_or_default();
        status == 405 || (status == 404 && body["error"]["message"] == "no such endpoint")
    };
    // Control: an undocumented path is not routed.
    let stray = client
        .get(server.url("/v1/not-an-endpoint"))
        .send()
        .unwrap();
    assert!(not_routed(stray), "the probe can tell a missing route");

    for (method, path) in documented() {
        let concrete = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "probe"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method.clone(), server.url(&concrete))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            !not_routed(response),
            "{method} {path} is not served (status {status})"
        );
    }
}
