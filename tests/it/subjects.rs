//! Data subjects on every path: tokens made by an egress route are bound to
//! the customer of their own record, a value may belong to several
//! customers, and consent by subject reaches every path.

use std::fs;

use serde_json::{json, Value};

use crate::activation::{callback_body, put_consent, rig_with, send, signed, People, Rig};
use crate::support::*;
use crate::upstream::Upstream;

/// A route that binds each record's fields to its `identity`.
fn subject_route(upstream: &Upstream) -> String {
    format!(
        r#"
[[routes]]
name = "uploads"
path_prefix = "/uploads"
upstream = "{}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
subject = "$.d[*].identity"
fields = [
  {{ select = "$.d[*].identity", class = "name" }},
  {{ select = "$.d[*].profileData.Email", class = "email" }},
  {{ select = "$.d[*].profileData.Phone", class = "phone" }},
  {{ select = "$.d[*].profileData.Name", class = "name" }},
]
"#,
        upstream.url
    )
}

/// Uploads the ten-profile fixture through the route and answers the
/// tokens the platform received, per profile, with the profile's identity.
fn upload(rig: &Rig, upstream: &Upstream) -> Vec<(String, People)> {
    let body = fs::read(fixture("clevertap-upload-profiles-10.json")).unwrap();
    let response = http()
        .post(rig.server.url("/uploads/1/upload"))
        .bearer_auth(key("crm"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().unwrap()
    );
    let sent: Value = serde_json::from_slice(&body).unwrap();
    let received = upstream.take();
    assert_eq!(received.len(), 1);
    let forwarded: Value = serde_json::from_slice(&received[0].body).unwrap();
    let token = |record: &Value, pointer: &str| {
        record
            .pointer(pointer)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    sent["d"]
        .as_array()
        .unwrap()
        .iter()
        .zip(forwarded["d"].as_array().unwrap())
        .map(|(original, record)| {
            (
                original["identity"].as_str().unwrap().to_owned(),
                People {
                    phone: token(record, "/profileData/Phone"),
                    identity: token(record, "/identity"),
                    name: token(record, "/profileData/Name"),
                },
            )
        })
        .collect()
}

/// What each path answers for a profile's phone token, for `sms_delivery`:
/// `/v1`, the CleverTap surface, and a signed callback.
fn reveals(rig: &Rig, people: &People, message_id: &str) -> (bool, bool, bool) {
    let values = detokenize(
        &rig.server,
        "sms",
        "retail",
        "sms_delivery",
        std::slice::from_ref(&people.phone),
    );
    let v1 = values[0]["value"].is_string();
    let (status, ct) = post(
        &rig.server,
        "/ct-vault/api/tokenization/getRawValue",
        &key("dispatcher"),
        &json!({"token": people.phone, "metadata": {"purpose": "sms_delivery"}}),
    );
    assert_eq!(status, 200, "{ct}");
    assert_eq!(ct["exists"], true);
    let body = callback_body(people);
    let (status, answer) = send(rig, "sms", &body, signed("sms", message_id, &body));
    let delivered = rig.provider.take();
    match status {
        200 => assert_eq!(delivered.len(), 1),
        403 => assert!(delivered.is_empty(), "{answer}"),
        other => panic!("callback answered {other}: {answer}"),
    }
    (v1, ct["value"].is_string(), status == 200)
}

#[test]
fn consent_withdrawn_for_an_identity_blocks_exactly_its_profiles_tokens_on_every_path() {
    let upstream = Upstream::start();
    let rig = rig_with(&subject_route(&upstream));
    let profiles = upload(&rig, &upstream);
    assert_eq!(profiles.len(), 10);
    let (identity, withdrawn) = &profiles[3];
    let (_, neighbour) = &profiles[4];
    assert_eq!(reveals(&rig, withdrawn, "msg_s_1"), (true, true, true));

    let (status, answer) = put_consent(
        &rig.server,
        &key("consent"),
        &json!({"namespace": "retail", "subject": identity, "purpose": "*", "withdrawn": true, "source": "app-settings"}),
    );
    assert_eq!(status, 200, "{answer}");

    assert_eq!(
        reveals(&rig, withdrawn, "msg_s_2"),
        (false, false, false),
        "every path refuses the withdrawn identity's phone"
    );
    assert_eq!(
        reveals(&rig, neighbour, "msg_s_3"),
        (true, true, true),
        "the next profile's tokens are untouched"
    );
}

#[test]
fn a_value_sent_again_for_another_subject_belongs_to_both() {
    let upstream = Upstream::start();
    let rig = rig_with(&subject_route(&upstream));
    // A family phone: first CUST-A's, then CUST-B sends the same number.
    let tokenize_for = |subject: &str| {
        let (status, body) = post(
            &rig.server,
            "/v1/tokenize",
            &key("crm"),
            &json!({"namespace": "retail", "items": [{"class": "phone", "value": "+14155550142", "subject": subject}]}),
        );
        assert_eq!(status, 200, "{body}");
        body["tokens"][0]["token"].as_str().unwrap().to_owned()
    };
    let token = tokenize_for("CUST-A");
    assert_eq!(tokenize_for("CUST-B"), token, "deterministic: one token");
    let revealed = || {
        detokenize(
            &rig.server,
            "sms",
            "retail",
            "sms_delivery",
            std::slice::from_ref(&token),
        )[0]["value"]
            .is_string()
    };
    assert!(revealed());
    // The second subject's withdrawal reaches the token, although the first
    // subject sent it first.
    let (status, answer) = put_consent(
        &rig.server,
        &key("consent"),
        &json!({"namespace": "retail", "subject": "CUST-B", "purpose": "sms_delivery", "withdrawn": true}),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(!revealed(), "CUST-B's withdrawal blocks the shared phone");
}

#[test]
fn the_clevertap_surface_binds_values_to_the_subject_in_its_metadata() {
    let setup = Setup::new_with(
        "",
        "[clevertap]\nenabled = true\nnamespace = \"retail\"\ndefault_class = \"name\"\nphone_class = \"phone\"\nsubject_metadata_key = \"customerId\"\n",
    );
    let server = setup.serve();
    let get_token = |value: &str, metadata: Value| {
        let (status, body) = post(
            &server,
            "/ct-vault/api/tokenization/getToken",
            &key("crm"),
            &json!({"value": value, "metadata": metadata}),
        );
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let bound = get_token("+14155550177", json!({"customerId": "CUST-Z"}));
    let unbound = get_token("+14155550178", json!({"campaign": "CUST-Z"}));
    let (status, answer) = put_consent(
        &server,
        &key("consent"),
        &json!({"namespace": "retail", "subject": "CUST-Z", "purpose": "*", "withdrawn": true}),
    );
    assert_eq!(status, 200, "{answer}");
    let values = detokenize(&server, "sms", "retail", "sms_delivery", &[bound, unbound]);
    assert_eq!(
        values[0]["error"]["code"], "consent_withdrawn",
        "{values:?}"
    );
    assert_eq!(values[1]["value"], "+14155550178");
}
