//! CleverTap's own node library, unmodified, uploads through a route with
//! `client_key_header`: the platform sees tokens and its real passcode,
//! never the vault key. Needs Node.js and `npm ci --prefix tests/node`
//! (which `.ci/run` runs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::scan::Scan;
use crate::support::*;
use crate::upstream::Upstream;

const ACCOUNT: &str = "TEST-ACC-NODE-1";
const PASSCODE: &str = "real-platform-passcode";

#[test]
fn the_platforms_node_library_uploads_through_a_route() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules/clevertap/package.json").is_file(),
        "CleverTap's node library is not installed\nhint: npm ci --prefix tests/node (needs Node.js and npm; .ci/run does it)"
    );
    let upstream = Upstream::start();
    let setup = Setup::configure("", STANDARD);
    let cert = TestCert::write(setup.dir.path(), "vault", &["localhost"]);
    let passcode = setup.dir.path().join("passcode");
    fs::write(&passcode, PASSCODE).unwrap();
    fs::set_permissions(&passcode, fs::Permissions::from_mode(0o600)).unwrap();
    let config = fs::read_to_string(&setup.config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\n{}\n", cert.server_config()),
        1,
    ) + &format!(
        r#"
[[routes]]
name = "clevertap"
path_prefix = "/clevertap"
upstream = "{}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
client_key_header = "X-CleverTap-Passcode"
headers = {{ "X-CleverTap-Passcode" = {{ file = "{}" }} }}
fields = [
  {{ select = "$.d[*].identity", class = "name" }},
  {{ select = "$.d[*].profileData.Email", class = "email" }},
  {{ select = "$.d[*].profileData.Phone", class = "phone" }},
  {{ select = "$.d[*].profileData.Name", class = "name" }},
]
"#,
        upstream.url,
        passcode.display()
    );
    fs::write(&setup.config, config).unwrap();
    assert!(setup.run(&["init", "--config"]).status.success());
    let server = setup.serve();
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let route = format!(
        "{}/clevertap/1",
        server.base.replace("127.0.0.1", "localhost")
    );
    let profile = json!({
        "type": "profile",
        "identity": "NODE-CUSTOMER-1",
        "profileData": {"Email": "node.library@example.com", "Phone": "+14155550166", "Name": "Node Person", "Plan": "gold"},
    });
    let out = Command::new("node")
        .arg(node_dir.join("upload.js"))
        .env("NODE_PATH", node_dir.join("node_modules"))
        .env("NODE_EXTRA_CA_CERTS", &cert.cert_path)
        .env("CT_ACCOUNT_ID", ACCOUNT)
        .env("VAULT_KEY", key("crm"))
        .env("VAULT_ROUTE", &route)
        .env("PROFILE", profile.to_string())
        .current_dir(&node_dir)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );

    let received = upstream.take();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.path, "/1/upload");
    let header = |name: &str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(header("x-clevertap-passcode"), [PASSCODE]);
    assert_eq!(header("x-clevertap-account-id"), [ACCOUNT]);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    let record = &body["d"][0];
    assert!(
        record["identity"].as_str().unwrap().starts_with("TKN_"),
        "{body}"
    );
    assert!(record["profileData"]["Email"]
        .as_str()
        .unwrap()
        .ends_with("@tok.retail.invalid"));
    assert_eq!(record["profileData"]["Plan"], "gold");
    // Neither the values nor the vault key reached the platform.
    let scan = Scan::new(
        &[
            "node.library@example.com".to_owned(),
            "+14155550166".to_owned(),
            "Node Person".to_owned(),
        ],
        &[key("crm")],
    );
    assert_eq!(scan.find(&request.body), None);
    for (name, value) in &request.headers {
        assert_eq!(scan.find(value.as_bytes()), None, "in header {name}");
    }
}
