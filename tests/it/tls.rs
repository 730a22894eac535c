//! HTTPS through rustls with a certificate made in the test.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

#[test]
fn serves_https_with_the_configured_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    fs::write(&cert, certified.cert.pem()).unwrap();
    fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let setup = Setup::new(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key_path.display()
    ));
    let server = setup.serve();
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let url = server.url("/v1/tokenize").replace("127.0.0.1", "localhost");
    let response = client
        .post(&url)
        .bearer_auth(key("crm"))
        .json(&serde_json::json!({"namespace": "retail", "items": [{"class": "email", "value": "tls@example.com"}]}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // TLS 1.2 is offered too.
    let tls12 = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert_eq!(
        tls12
            .get(server.url("/healthz").replace("127.0.0.1", "localhost"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // Plain HTTP to the TLS port gets no answer.
    let plain = server.base.replace("https://", "http://");
    assert!(http().get(format!("{plain}/healthz")).send().is_err());
    // The certificate served is the configured one, byte for byte (what a
    // client then does with it is the client's business).
    let inspecting = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .tls_info(true)
        .build()
        .unwrap();
    let response = inspecting
        .get(server.url("/healthz").replace("127.0.0.1", "localhost"))
        .send()
        .unwrap();
    let served = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .unwrap()
        .to_vec();
    assert_eq!(served, certified.cert.der().to_vec());
}

#[test]
fn group_readable_tls_key_is_refused() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    fs::write(&cert, certified.cert.pem()).unwrap();
    fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
    let setup = Setup::configure(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key_path.display()
        ),
        STANDARD,
    );
    let out = setup.run(&["config", "check", "--config"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.tls_key"));
}
