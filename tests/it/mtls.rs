//! Client certificates (mTLS), protocol versions and certificate reload on
//! SIGHUP, against the real binary with certificates made in the test.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::json;

use crate::support::*;
use crate::upstream::Upstream;

/// A certificate authority made for one test.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A client certificate for `dns_name`, as a PEM identity (cert + key).
    fn client(&self, dns_name: &str) -> reqwest::Identity {
        let mut params = CertificateParams::new(vec![dns_name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
    }
}

/// A self-signed server certificate for localhost, written to `dir`.
struct ServerCert {
    pem: String,
    der: Vec<u8>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ServerCert {
    fn write(dir: &Path) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.join("server-cert.pem");
        let key_path = dir.join("server-key.pem");
        // Replace, as an operator's certificate renewal would.
        let staged = dir.join("staged-key.pem");
        fs::write(&staged, certified.key_pair.serialize_pem()).unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&staged, &key_path).unwrap();
        fs::write(&cert_path, certified.cert.pem()).unwrap();
        Self {
            pem: certified.cert.pem(),
            der: certified.cert.der().to_vec(),
            cert_path,
            key_path,
        }
    }

    fn server_extra(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            self.cert_path.display(),
            self.key_path.display()
        )
    }
}

fn client(trust: &[&str], identity: Option<reqwest::Identity>) -> reqwest::blocking::Client {
    let mut builder = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_info(true)
        .timeout(Duration::from_secs(60));
    for pem in trust {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

fn localhost(server: &Server, path: &str) -> String {
    server.url(path).replace("127.0.0.1", "localhost")
}

fn tokenize_status(
    client: &reqwest::blocking::Client,
    server: &Server,
    bearer: Option<&str>,
) -> u16 {
    let mut request = client.post(localhost(server, "/v1/tokenize")).json(
        &json!({"namespace": "retail", "items": [{"class": "email", "value": "mtls@example.com"}]}),
    );
    if let Some(key) = bearer {
        request = request.bearer_auth(key);
    }
    request.send().unwrap().status().as_u16()
}

const WORKER: &str = "worker.mtls.test";

/// A vault with a client CA, a certificate-only client `worker`, a route and
/// a callback that require a certificate.
fn mtls_vault(dir: &Path, upstream: &str) -> (Setup, ServerCert, Authority) {
    let authority = Authority::new("tokenvault test client CA");
    let ca_path = dir.join("clients-ca.pem");
    fs::write(&ca_path, authority.cert.pem()).unwrap();
    let server_cert = ServerCert::write(dir);
    let secret = dir.join("callback.secret");
    fs::write(&secret, "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let sections = format!(
        r#"
[roles.platform]
operations = ["tokenize"]
namespaces = ["retail"]

[clients.worker]
role = "platform"
cert_identity = "{WORKER}"

[[routes]]
name = "sealed"
path_prefix = "/sealed"
upstream = "{upstream}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["worker", "crm"]
require_client_cert = true
fields = [ {{ select = "$.email", class = "email" }} ]

[[callbacks]]
name = "guarded"
path = "/callbacks/guarded"
namespace = "retail"
purpose = "sms_delivery"
role = "sms_worker"
secret_file = "{}"
require_client_cert = true
reveal_to_caller = true
fields = [ {{ select = "$.to" }} ]
"#,
        secret.display()
    );
    let setup = Setup::new_with(
        &format!(
            "{}\ntls_client_ca = \"{}\"",
            server_cert.server_extra(),
            ca_path.display()
        ),
        &sections,
    );
    (setup, server_cert, authority)
}

#[test]
fn a_certificate_client_is_accepted_with_its_certificate_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start();
    let (setup, server_cert, authority) = mtls_vault(dir.path(), &upstream.url);
    let server = setup.serve();

    let with_cert = client(&[&server_cert.pem], Some(authority.client(WORKER)));
    assert_eq!(tokenize_status(&with_cert, &server, None), 200);

    // The same server, no certificate and no key: refused.
    let without = client(&[&server_cert.pem], None);
    assert_eq!(tokenize_status(&without, &server, None), 401);
    // API-key clients keep working without a certificate.
    assert_eq!(tokenize_status(&without, &server, Some(&key("crm"))), 200);
    // A certificate from the right CA whose name maps to no client.
    let stranger = client(
        &[&server_cert.pem],
        Some(authority.client("stranger.mtls.test")),
    );
    assert_eq!(tokenize_status(&stranger, &server, None), 401);
    // worker has no API key: a key-shaped bearer naming it fails.
    assert_eq!(
        tokenize_status(
            &without,
            &server,
            Some("tv.worker.0000000000000000000000000000")
        ),
        401
    );

    let records = audit_records(&setup);
    let accepted = records
        .iter()
        .find(|r| r["action"] == "tokenize" && r["actor"] == "worker")
        .expect("the certificate client's tokenize is audited");
    assert_eq!(accepted["auth"], "client_certificate");
    let refused = records
        .iter()
        .filter(|r| r["action"] == "authenticate" && r["outcome"] == "denied")
        .count();
    assert!(refused >= 3, "{refused} refusals audited");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start();
    let (setup, server_cert, _authority) = mtls_vault(dir.path(), &upstream.url);
    let server = setup.serve();

    let impostor_ca = Authority::new("someone else's CA");
    // Same name as the real client, wrong issuer.
    let impostor = client(&[&server_cert.pem], Some(impostor_ca.client(WORKER)));
    let result = impostor
        .post(localhost(&server, "/v1/tokenize"))
        .json(&json!({"namespace": "retail", "items": [{"class": "email", "value": "x@example.com"}]}))
        .send();
    let chain = error_chain(&result.expect_err("the handshake must fail"));
    assert!(
        chain.contains("received fatal alert"),
        "refused by a TLS alert, not by some other failure: {chain}"
    );
    eprintln!("the impostor's handshake: {chain}");
    assert!(audit_records(&setup)
        .iter()
        .all(|r| r["action"] != "tokenize"));
}

#[test]
fn routes_and_callbacks_that_require_a_certificate_refuse_api_keys() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start();
    let (setup, server_cert, authority) = mtls_vault(dir.path(), &upstream.url);
    let server = setup.serve();
    let body = json!({"email": "route-mtls@example.com"});

    // crm may use the route by name, but only with a certificate.
    let keyed = client(&[&server_cert.pem], None);
    let refused = keyed
        .post(localhost(&server, "/sealed/ingest"))
        .bearer_auth(key("crm"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(upstream.take().is_empty(), "nothing forwarded");

    let certified = client(&[&server_cert.pem], Some(authority.client(WORKER)));
    let forwarded = certified
        .post(localhost(&server, "/sealed/ingest"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(forwarded.status().as_u16(), 200);
    let received = upstream.take();
    assert_eq!(received.len(), 1);
    assert!(!String::from_utf8_lossy(&received[0].body).contains("route-mtls@example.com"));

    // The callback refuses a connection without a certificate before
    // looking at the signature; with one, the signature is still required.
    let unsigned = keyed
        .post(localhost(&server, "/callbacks/guarded"))
        .json(&json!({"to": "TKN_x"}))
        .send()
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 403);
    let with_cert = certified
        .post(localhost(&server, "/callbacks/guarded"))
        .json(&json!({"to": "TKN_x"}))
        .send()
        .unwrap();
    assert_eq!(with_cert.status().as_u16(), 401);

    let reasons: Vec<String> = audit_records(&setup)
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .filter_map(|r| r["reason"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "client_certificate_required")
            .count(),
        2,
        "{reasons:?}"
    );
}

#[test]
fn client_certificates_without_a_client_ca_are_a_configuration_error() {
    let sections = r#"
[roles.platform]
operations = ["tokenize"]
namespaces = ["retail"]

[clients.worker]
role = "platform"
cert_identity = "worker.mtls.test"
"#;
    let setup = Setup::configure("", &format!("{STANDARD}\n{sections}"));
    let out = setup.run(&["config", "check", "--config"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clients.worker.cert_identity"), "{stderr}");
}

/// The two kinds of old-version hello.
#[derive(Clone, Copy, Debug)]
enum Hello {
    /// TLS 1.2 suites and signature_algorithms, at an old version.
    Tls12Suites,
    /// What OpenSSL 3's `s_client -tls1_1` sends: CBC suites only (none of
    /// which rustls implements) and no signature_algorithms.
    RealLegacyClient,
}

/// A ClientHello offering only `version` (no supported_versions extension).
fn client_hello(version: [u8; 2], kind: Hello) -> Vec<u8> {
    let suites: &[u8] = match kind {
        Hello::Tls12Suites => &[0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f],
        Hello::RealLegacyClient => &[
            0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x35,
            0x00, 0x2f, 0x00, 0xff,
        ],
    };
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]); // null compression
    let mut extensions = Vec::new();
    // supported_groups: x25519, secp256r1
    extensions.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    if let Hello::Tls12Suites = kind {
        extensions.extend_from_slice(&[
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
        ]);
    }
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The first bytes the server answers a ClientHello with.
fn answer_to(server: &Server, hello: &[u8]) -> Vec<u8> {
    let address = server.base.trim_start_matches("https://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(hello).unwrap();
    let mut answer = vec![0u8; 16];
    let mut read = 0;
    while read < answer.len() {
        match stream.read(&mut answer[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    answer.truncate(read);
    answer
}

#[test]
fn tls_1_0_and_1_1_handshakes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server_cert = ServerCert::write(dir.path());
    let setup = Setup::new(&server_cert.server_extra());
    let server = setup.serve();

    // Control: the same hello at TLS 1.2 gets a ServerHello, so the hello
    // itself is acceptable and only the version decides.
    let tls12 = answer_to(&server, &client_hello([0x03, 0x03], Hello::Tls12Suites));
    assert!(tls12.len() >= 6, "{tls12:?}");
    assert_eq!(
        (tls12[0], tls12[5]),
        (0x16, 0x02),
        "handshake record with ServerHello"
    );

    // As docs/operations.md says: a real TLS 1.0/1.1 client, offering the
    // CBC suites of its version, gets handshake_failure (40); a hello that
    // offers TLS 1.2 suites at the old version gets protocol_version (70).
    for (name, version) in [("TLS 1.0", [0x03, 0x01]), ("TLS 1.1", [0x03, 0x02])] {
        for (kind, alert) in [(Hello::RealLegacyClient, 40), (Hello::Tls12Suites, 70)] {
            let answer = answer_to(&server, &client_hello(version, kind));
            assert!(answer.len() >= 7, "{name}: {answer:?}");
            assert_eq!(answer[0], 0x15, "{name} gets an alert, not a ServerHello");
            assert_eq!((answer[5], answer[6]), (2, alert), "{name} {kind:?}");
        }
    }
}

fn served_certificate(response: &reqwest::blocking::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .unwrap()
        .to_vec()
}

#[test]
pub fn sighup_serves_a_new_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerCert::write(dir.path());
    let setup = Setup::new(&first.server_extra());
    let server = setup.serve();

    // The healthcheck command trusts exactly the configured certificate.
    let listen = server.base.trim_start_matches("https://").to_owned();
    let health = setup.run(&["healthcheck", "--listen", &listen, "--config"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    let keep_alive = client(&[&first.pem], None);
    let before = keep_alive
        .get(localhost(&server, "/healthz"))
        .send()
        .unwrap();
    assert_eq!(served_certificate(&before), first.der);

    let second = ServerCert::write(dir.path());
    assert_ne!(first.der, second.der);
    assert!(signal(server.pid(), "HUP"));

    let fresh = client(&[&second.pem], None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        if let Ok(response) = fresh.get(localhost(&server, "/healthz")).send() {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(served_certificate(&after), second.der);
    // The connection opened before the reload still works, on its old
    // session, and the process is the same one.
    let again = keep_alive
        .get(localhost(&server, "/healthz"))
        .send()
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    assert_eq!(served_certificate(&again), first.der);
    assert!(server.logs().contains("TLS certificate and key reloaded"));
    let health = setup.run(&["healthcheck", "--listen", &listen, "--config"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // A broken certificate on the next SIGHUP keeps the current one.
    fs::write(&second.cert_path, "not a certificate").unwrap();
    assert!(signal(server.pid(), "HUP"));
    server.wait_for_log("SIGHUP: TLS reload failed");
    let still = client(&[&second.pem], None)
        .get(localhost(&server, "/healthz"))
        .send()
        .unwrap();
    assert_eq!(served_certificate(&still), second.der);
}

#[test]
fn healthcheck_fails_when_the_vault_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let cert = ServerCert::write(dir.path());
    let setup = Setup::new(&cert.server_extra());
    // A port nothing listens on.
    let closed = closed_port();
    let out = setup.run(&["healthcheck", "--listen", &closed, "--config"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hint:"), "{stderr}");
}
