//! A phone-shaped token is never a stored person's number, and tokens of a
//! class with number blocks stay inside them.

use serde_json::{json, Value};

use crate::support::*;

const BLOCK: &str = "+4477009001";

fn setup() -> Setup {
    Setup::new_with(
        "",
        &format!(
            "[namespaces.retail.classes.drama]\nnormalize = \"e164\"\nformat = \"phone\"\ntoken_prefixes = [\"{BLOCK}\"]\n"
        ),
    )
}

#[test]
pub fn phone_tokens_avoid_stored_numbers_and_stay_in_their_block() {
    let setup = setup();
    let server = setup.serve();
    // 30 numbers of a 100-number block, in one request: every token must
    // come from the other 70, so minting hits a stored number again and again.
    let values: Vec<String> = (0..30).map(|i| format!("{BLOCK}{i:02}")).collect();
    let items: Vec<(&str, &str)> = values.iter().map(|v| ("drama", v.as_str())).collect();
    let tokens = tokenize(&server, "crm", "retail", &items);
    let mut seen = std::collections::BTreeSet::new();
    for token in &tokens {
        assert!(
            token.starts_with(BLOCK) && token.len() == BLOCK.len() + 2,
            "{token}"
        );
        assert!(
            !values.contains(token),
            "{token} is a stored person's number"
        );
        assert!(seen.insert(token.clone()), "{token} twice");
    }
    // The same numbers again: the same tokens, no new rows.
    assert_eq!(tokenize(&server, "crm", "retail", &items), tokens);
    // The collision path was taken, and retried to success.
    let metrics = scrape_metrics(&server);
    let collisions: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokenvault_phone_token_collisions_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no collision counter in {metrics}"));
    assert!(collisions > 0.0, "{collisions}");
    // A number the block cannot hold (too short) is refused, not minted
    // outside the block.
    let (status, body): (u16, Value) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [{"class": "drama", "value": "+14155550123"}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no token block"),
        "{body}"
    );
}

#[test]
fn number_blocks_are_checked_at_config_load() {
    for (blocks, class_format, expected) in [
        (
            "\"+4477009001234567\"",
            "phone",
            "is not a usable number block",
        ),
        ("\"+999123\"", "phone", "is not a usable number block"),
        ("\"4477009001\"", "phone", "is not a usable number block"),
        (
            "\"+447700900\"",
            "opaque",
            "number blocks apply to format = \"phone\" only",
        ),
    ] {
        let normalize = if class_format == "phone" {
            "e164"
        } else {
            "trim"
        };
        let setup = Setup::configure(
            "",
            &format!(
                "{STANDARD}\n[namespaces.retail.classes.drama]\nnormalize = \"{normalize}\"\nformat = \"{class_format}\"\ntoken_prefixes = [{blocks}]\n"
            ),
        );
        let out = setup.run(&["config", "check", "--config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{blocks}: {stderr}");
        assert!(
            stderr.contains("namespaces.retail.classes.drama.token_prefixes")
                && stderr.contains(expected),
            "{blocks}: {stderr}"
        );
    }
}
