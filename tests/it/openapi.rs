//! `docs/openapi.yaml` and the server's routes are the same set, checked
//! against the route table the server registers and against a live server.

use std::collections::BTreeSet;

use crate::support::*;

/// `(METHOD, path)` of every operation under `paths:` in the document.
/// The document is written with two-space indentation: paths at two spaces,
/// methods at four.
fn documented() -> BTreeSet<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_paths = line == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  ").filter(|r| r.starts_with('/')) {
            current = Some(rest.trim_end().trim_end_matches(':').to_owned());
        } else if let Some(rest) = line.strip_prefix("    ").filter(|r| !r.starts_with(' ')) {
            let method = rest.trim_end().trim_end_matches(':');
            if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&method) {
                let path = current.clone().expect("a method under a path");
                operations.insert((method.to_uppercase(), path));
            }
        }
    }
    operations
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
fn a_live_server_answers_every_documented_operation() {
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
