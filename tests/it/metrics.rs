//! `GET /metrics` after real traffic: the figures move, and no label value
//! is a value, a token or anything else a caller sent.

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::*;

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text format (comments skipped; label values with
/// `\"` and `\\` escapes).
fn parse(text: &str) -> Vec<Sample> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "text format ends with # EOF"
    );
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => value.push(chars.next().unwrap()),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    labels.insert(key, value);
                }
                (name.to_owned(), labels)
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
pub fn metrics_count_real_traffic_and_no_label_carries_a_value_or_token() {
    // A route whose upstream is a closed port: every forward fails.
    let closed = closed_port();
    let route = format!(
        r#"
[[routes]]
name = "dead"
path_prefix = "/dead"
upstream = "http://{closed}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
connect_timeout_ms = 2000
fields = [ {{ select = "$.email", class = "email" }} ]
"#
    );
    let setup = Setup::new_with("", &route);
    let server = setup.serve();

    let canaries: Vec<String> = (0..20)
        .map(|i| format!("metrics-canary-{i:02}@example.com"))
        .collect();
    let names: Vec<String> = (0..20)
        .map(|i| format!("Canary Metricsson {i:02}"))
        .collect();
    let items: Vec<(&str, &str)> = canaries
        .iter()
        .map(|c| ("email", c.as_str()))
        .chain(names.iter().map(|n| ("name", n.as_str())))
        .collect();
    let tokens = tokenize(&server, "crm", "retail", &items);
    assert_eq!(tokens.len(), 40);
    // Again: the same values, no new tokens.
    tokenize(&server, "crm", "retail", &items);
    // Allowed and refused detokenizations.
    let (status, _) = post(
        &server,
        "/v1/detokenize",
        &key("admin"),
        &json!({"namespace": "retail", "purpose": "support", "tokens": tokens}),
    );
    assert_eq!(status, 200);
    let (status, _) = post(
        &server,
        "/v1/detokenize",
        &key("helpdesk"),
        &json!({"namespace": "retail", "purpose": "sms_delivery", "tokens": [tokens[0]]}),
    );
    assert_eq!(status, 403);
    // A bad key, a forward that cannot reach its upstream, a path holding a
    // value and a token.
    let (status, _) = post(&server, "/v1/tokenize", "tv.crm.not-the-key", &json!({}));
    assert_eq!(status, 401);
    let (status, _) = post(
        &server,
        "/dead/upload",
        &key("crm"),
        &json!({"email": canaries[1]}),
    );
    assert_eq!(status, 502);
    let odd = http()
        .get(server.url(&format!("/{}/{}", canaries[2], tokens[3])))
        .send()
        .unwrap();
    assert_eq!(odd.status().as_u16(), 404);

    // Who may read: metrics_read only.
    let denied = http()
        .get(server.url("/metrics"))
        .bearer_auth(key("crm"))
        .send()
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let anonymous = http().get(server.url("/metrics")).send().unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let response = http()
        .get(server.url("/metrics"))
        .bearer_auth(key("scraper"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.text().unwrap();
    let samples = parse(&text);

    let created = value(
        &samples,
        "tokenvault_tokens_created_total",
        &[("namespace", "retail")],
    );
    assert_eq!(created, 40.0, "40 new tokens, the repeat made none");
    let tokenize_ok = value(
        &samples,
        "tokenvault_http_requests_total",
        &[
            ("route", "/v1/tokenize"),
            ("operation", "tokenize"),
            ("status", "200"),
        ],
    );
    assert_eq!(tokenize_ok, 2.0);
    assert_eq!(
        value(
            &samples,
            "tokenvault_http_requests_total",
            &[("route", "/v1/detokenize"), ("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenvault_http_requests_total",
            &[
                ("route", "route:dead"),
                ("operation", "forward"),
                ("status", "502")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenvault_http_requests_total",
            &[("route", "unmatched")]
        ),
        1.0
    );
    assert!(value(&samples, "tokenvault_detokenize_denials_total", &[]) >= 1.0);
    assert!(value(&samples, "tokenvault_authentication_failures_total", &[]) >= 2.0);
    assert_eq!(
        value(
            &samples,
            "tokenvault_upstream_errors_total",
            &[("route", "route:dead"), ("kind", "connect")]
        ),
        1.0
    );
    assert!(
        value(
            &samples,
            "tokenvault_http_request_duration_seconds_count",
            &[("route", "/v1/tokenize")]
        ) >= 2.0
    );
    assert!(
        value(
            &samples,
            "tokenvault_audit_write_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        value(
            &samples,
            "tokenvault_store_size_bytes",
            &[("file", "vault")]
        ) > 0.0
    );
    assert!(
        value(
            &samples,
            "tokenvault_store_size_bytes",
            &[("file", "audit")]
        ) > 0.0
    );

    // No label value is, or holds, a value, a token, a key or a client name.
    let mut forbidden: Vec<String> = canaries.clone();
    forbidden.extend(names.iter().cloned());
    forbidden.extend(tokens.iter().cloned());
    forbidden.extend(
        [
            "metrics-canary",
            "Canary",
            "not-the-key",
            "crm",
            "helpdesk",
            "admin",
        ]
        .map(String::from),
    );
    for sample in &samples {
        for (label, value) in &sample.labels {
            for bad in &forbidden {
                assert!(
                    !value.contains(bad.as_str()),
                    "{} label {label}={value:?} carries a caller's string",
                    sample.name
                );
            }
        }
    }
    // And nowhere else in the text either.
    for bad in canaries.iter().chain(&names).chain(&tokens) {
        assert!(!text.contains(bad.as_str()), "the metrics text holds {bad}");
    }
}
