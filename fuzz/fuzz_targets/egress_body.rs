//! The egress body pipeline with a fixed route: parse, select, scan, and
//! splice placeholder tokens in. For every body the route accepts:
//! - the output parses;
//! - every selected field holds a token, and no selected value survives;
//! - nothing outside the selection changed (the documents are equal once
//!   the selected fields are blanked in both);
//! - the same rules written as plain paths (selected while the bytes are
//!   walked) and as unions (`[*,*]`, selected on the parsed document) plan
//!   alike:
//!   the same places, values and findings, or the same refusal, with the
//!   route's unselected PII refused and tokenized.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenvault::egress::body::{Body, Encoding, Kind};
use tokenvault::egress::plan::{Place, RewritePlan};
use tokenvault::egress::refusal::Refusal;
use tokenvault::egress::rewrite::Rewrite;
use tokenvault::egress::Routes;
use tokenvault::payload;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "/nonexistent/tokenvault-fuzz"
[keys]
source = "passphrase"
passphrase_env = "TOKENVAULT_FUZZ_UNUSED"
[namespaces.retail]
token_domain = "tok.retail.invalid"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"
[namespaces.retail.classes.phone]
normalize = "e164"
format = "phone"
[namespaces.retail.classes.name]
normalize = "trim"
format = "opaque"
[roles.backend]
operations = ["tokenize"]
namespaces = ["retail"]
[clients.crm]
role = "backend"
api_key_hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0000000000000000000000000000000000000000000"
[[routes]]
name = "fuzz"
path_prefix = "/fuzz"
upstream = "https://platform.invalid"
namespace = "retail"
clients = ["crm"]
fields = [
  { select = "$.d[*].identity", class = "name" },
  { select = "$.d[*].profileData.Email", class = "email" },
  { select = "$.d[*].profileData.Phone", class = "phone" },
  { select = "$.d[*].profileData.Name", class = "name" },
  { select = "$.d[*].evtData['Delivery Email']", class = "email" },
  { query = "email", class = "email" },
]
"#;

/// Routes that differ from `fuzz` only in how they are written or in
/// what they do with unselected PII: `/<name>` for each.
fn twins() -> String {
    let rules = CONFIG.split("[[routes]]").nth(1).expect("the route");
    let route = |name: &str, unions: bool, tokenize: bool| {
        let mut route = rules.replace("\"fuzz\"", &format!("\"{name}\""));
        route = route.replace("\"/fuzz\"", &format!("\"/{name}\""));
        if unions {
            // The same places, each once: a place selected twice keeps the
            // first.
            route = route.replace("[*]", "[*,*]");
        }
        if tokenize {
            route = route.replace(
                "clients = [\"crm\"]",
                "clients = [\"crm\"]\nunselected_pii = \"tokenize\"\nunselected_class = \"name\"",
            );
        }
        format!("[[routes]]{route}")
    };
    [
        route("parsed", true, false),
        route("tokenizing", false, true),
        route("parsedtokenizing", true, true),
    ]
    .concat()
}

/// What a plan holds, to compare two.
fn summary(plan: &Result<RewritePlan, Refusal>) -> String {
    match plan {
        Ok(plan) => {
            let items: Vec<(&str, &str, bool)> = plan
                .items
                .iter()
                .map(|i| (i.class.as_str(), i.value.expose(), i.number))
                .collect();
            format!(
                "places {:?} items {items:?} findings {} note {:?}",
                plan.places, plan.findings, plan.note
            )
        }
        Err(refusal) => format!("refused {refusal:?}"),
    }
}

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        // The keys are never used here; validation only asks that the
        // variable exists.
        std::env::set_var("TOKENVAULT_FUZZ_UNUSED", "unused");
        let config = tokenvault::config::from_toml_str(&format!("{CONFIG}{}", twins()))
            .expect("the fuzz configuration loads");
        Routes::build(config.routes).expect("the fuzz route builds")
    })
}

/// `document` with every place's pointer set to `"-"`.
fn blanked(mut document: Value, places: &[Place]) -> Value {
    for place in places {
        if let Place::Json { pointer, .. } = place {
            assert!(payload::replace(&mut document, pointer, "-".to_owned()));
        }
    }
    document
}

fuzz_target!(|data: &[u8]| {
    let (route, _) = routes().find("/fuzz/1/upload").unwrap();
    let Ok(body) = Body::decode(
        Kind::Json,
        Encoding::Identity,
        zeroize::Zeroizing::new(data.to_vec()),
        1 << 20,
    ) else {
        return;
    };
    let plan = RewritePlan::build(route, &body, b"", "req_fuzz");
    for (plain, parsed) in [("/fuzz", "/parsed"), ("/tokenizing", "/parsedtokenizing")] {
        let plan_of = |path: &str| {
            let (route, _) = routes().find(path).expect("the route");
            RewritePlan::build(route, &body, b"", "req_fuzz")
        };
        let walked = if plain == "/fuzz" {
            summary(&plan)
        } else {
            summary(&plan_of(plain))
        };
        assert_eq!(walked, summary(&plan_of(parsed)), "{plain} and {parsed}");
    }
    let Ok(plan) = plan else {
        return;
    };
    let input = payload::parse_strict(data, route.spec.max_depth).expect("a planned body parses");
    let tokens: Vec<String> = (0..plan.items.len())
        .map(|i| format!("TKN_fuzz_{i}"))
        .collect();
    let outgoing = Rewrite::of(&plan)
        .apply(body, b"", &tokens)
        .expect("a planned rewrite applies");
    let output: Value = serde_json::from_slice(&outgoing.body).expect("the output parses");
    for (place, token) in plan.places.iter().zip(&tokens) {
        if let Place::Json { pointer, .. } = place {
            assert_eq!(output.pointer(pointer), Some(&Value::String(token.clone())));
        }
    }
    assert_eq!(
        blanked(input, &plan.places),
        blanked(output, &plan.places),
        "bytes outside the selection changed"
    );
});
