//! HTTPS through rustls with a certificate made in the test.

use std::io::{Read, Write};

use crate::support::*;

#[test]
fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "vault", &["localhost", "127.0.0.1"]);
    let setup = Setup::new(&cert.server_config());
    let server = setup.serve();
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    let client = cert.trusting_client().build().unwrap();
    let url = server.url("/v1/tokenize").replace("127.0.0.1", "localhost");
    let response = client
        .post(&url)
        .bearer_auth(key("crm"))
        .json(&serde_json::json!({"namespace": "retail", "items": [{"class": "email", "value": "tls@example.com"}]}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // TLS 1.2 is offered too.
    let tls12 = cert
        .trusting_client()
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
    // Plain HTTP to the TLS port is accepted as a connection (the server is
    // there) and gets no HTTP answer: whatever comes back before the close
    // is not an HTTP response.
    let address = server.base.trim_start_matches("https://").to_owned();
    let mut plain = std::net::TcpStream::connect(&address).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    plain
        .read_to_end(&mut answer)
        .expect("the vault closes a plain-HTTP connection");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The certificate served is the configured one, byte for byte (what a
    // client then does with it is the client's business).
    let inspecting = cert.trusting_client().tls_info(true).build().unwrap();
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
    assert_eq!(served, cert.der);
}

#[test]
fn group_readable_tls_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write_with_key_mode(dir.path(), "vault", &["localhost"], 0o644);
    let setup = Setup::configure(&cert.server_config(), STANDARD);
    let out = setup.run(&["config", "check", "--config"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.tls_key"));
}
