//! Test support: a real `tokenvault` process on 127.0.0.1:0 with a temporary
//! data directory, configured through real files.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tokenvault");
/// Passphrase of every test vault.
pub const PASSPHRASE: &str = "test passphrase, long enough";

/// The clients of the standard test configuration and their roles.
pub const CLIENTS: &[(&str, &str, &str)] = &[
    ("crm", "backend", ""),
    ("intake", "names_only", ""),
    ("sms", "sms_worker", ""),
    ("helpdesk", "support", ""),
    ("admin", "admin", ""),
    ("office", "admin", "allow_from = [\"10.20.0.0/16\"]"),
    ("onsite", "admin", "allow_from = [\"127.0.0.0/8\"]"),
    ("auditor", "auditor", ""),
    ("dispatcher", "dispatcher", ""),
    ("consent", "consent_desk", ""),
    ("budgeted", "sms_worker", "budget_per_minute = 5"),
    ("daily", "sms_worker", "budget_per_day = 3"),
    ("scraper", "monitoring", ""),
    ("dpo", "privacy_office", ""),
    ("dpo_masked", "privacy_masked", ""),
    ("backups", "backup_operator", ""),
];

/// Roles and namespaces of the standard test configuration.
pub const STANDARD: &str = r#"
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
[namespaces.retail.classes.account]
normalize = "trim"
format = "alnum"
[namespaces.retail.classes.card]
normalize = "trim"
format = "keep_last4"
[namespaces.retail.classes.note]
format = "opaque"
deterministic = false

[namespaces.health.classes.email]
normalize = "email"
format = "email"
[namespaces.health.classes.name]
normalize = "trim"

[namespaces.vip.classes.name]
normalize = "trim"

[roles.backend]
operations = ["tokenize"]
namespaces = ["retail", "health"]

[roles.names_only]
operations = ["tokenize"]
namespaces = ["retail"]
classes = ["name"]

[roles.sms_worker]
operations = ["detokenize"]
namespaces = ["retail"]
classes = ["phone", "name"]
purposes = ["sms_delivery"]
reveal = "plain"

[roles.support]
operations = ["detokenize"]
namespaces = ["retail"]
purposes = ["support"]
reveal = "masked"

[roles.admin]
operations = ["tokenize", "detokenize", "forget"]
namespaces = ["*"]
purposes = ["*"]
reveal = "plain"

[roles.auditor]
operations = ["audit_read"]

[roles.dispatcher]
operations = ["detokenize"]
namespaces = ["retail"]
purposes = ["email_dispatch", "sms_delivery"]
reveal = "plain"
clevertap_purpose = "email_dispatch"

[roles.consent_desk]
operations = ["consent"]
namespaces = ["retail"]

[roles.monitoring]
operations = ["metrics_read"]
[roles.privacy_office]
operations = ["subject_forget", "subject_export", "subject_correct"]
namespaces = ["retail"]
reveal = "plain"
[roles.backup_operator]
operations = ["backup"]
[roles.privacy_masked]
operations = ["subject_export"]
namespaces = ["retail"]
reveal = "masked"
"#;

/// API keys and hashes for the standard clients, minted once per test run
/// with the real `client new` command.
pub fn client_keys() -> &'static BTreeMap<String, (String, String)> {
    static KEYS: OnceLock<BTreeMap<String, (String, String)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        CLIENTS
            .iter()
            .map(|(name, role, _)| {
                let out = Command::new(BIN)
                    .args(["client", "new", name, "--role", role])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "client new failed");
                let text = String::from_utf8(out.stdout).unwrap();
                let key = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("tv.").map(|k| format!("tv.{k}")))
                    .unwrap();
                let hash = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("api_key_hash = \"")
                            .map(|h| h.trim_end_matches('"').to_owned())
                    })
                    .unwrap();
                (name.to_string(), (key, hash))
            })
            .collect()
    })
}

/// The API key of a standard client.
pub fn key(client: &str) -> String {
    client_keys()[client].0.clone()
}

/// A configured, initialised vault in a temporary directory.
pub struct Setup {
    /// Holds every file; removed on drop.
    pub dir: tempfile::TempDir,
    /// The configuration file.
    pub config: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The PostgreSQL cluster the vault stores in, when the test runs on
    /// PostgreSQL ([`on_postgres`]); stopped when the last holder drops.
    pub postgres: Option<std::sync::Arc<crate::pg_cluster::PgCluster>>,
}

thread_local! {
    static ON_POSTGRES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static CLUSTERS_STARTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `test` with every [`Setup`] it makes storing in a throwaway
/// PostgreSQL cluster instead of SQLite: the same test, the other backend.
pub fn on_postgres(test: fn()) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ON_POSTGRES.with(|on| on.set(false));
        }
    }
    ON_POSTGRES.with(|on| on.set(true));
    let _reset = Reset;
    let before = CLUSTERS_STARTED.with(std::cell::Cell::get);
    test();
    assert!(
        CLUSTERS_STARTED.with(std::cell::Cell::get) > before,
        "the test made no Setup, so it did not run on PostgreSQL"
    );
}

/// What wraps a test vault's master key.
#[derive(Clone, Copy)]
pub enum MasterKey {
    /// A 32-byte key file (`master.key` in the setup's directory): no key
    /// stretching, so the many vaults the tests start open at once.
    File,
    /// [`PASSPHRASE`], stretched with argon2id (64 MiB, 3 passes) at every
    /// unlock, as on a default install.
    Passphrase,
}

impl Setup {
    /// Writes the standard configuration plus `server_extra` in `[server]`,
    /// and runs `tokenvault init`.
    pub fn new(server_extra: &str) -> Self {
        Self::new_with(server_extra, "")
    }

    /// Like [`Setup::new`], with more sections after the standard ones.
    pub fn new_with(server_extra: &str, sections: &str) -> Self {
        let setup = Self::configure(server_extra, &format!("{STANDARD}\n{sections}"));
        setup.init();
        setup
    }

    /// Like [`Setup::new`], with the master key wrapped by [`PASSPHRASE`]
    /// (the file `passphrase` in `dir`) instead of a key file.
    pub fn new_passphrase(server_extra: &str) -> Self {
        let setup = Self::configure_keyed(server_extra, STANDARD, MasterKey::Passphrase);
        setup.init();
        setup
    }

    /// Writes a configuration without running init; the master key is
    /// wrapped by a key file.
    pub fn configure(server_extra: &str, body: &str) -> Self {
        Self::configure_keyed(server_extra, body, MasterKey::File)
    }

    /// Writes a configuration without running init, with the master key
    /// wrapped as `key` says.
    pub fn configure_keyed(server_extra: &str, body: &str, key: MasterKey) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let keys = match key {
            MasterKey::Passphrase => {
                let passphrase = dir.path().join("passphrase");
                fs::write(&passphrase, PASSPHRASE).unwrap();
                fs::set_permissions(&passphrase, fs::Permissions::from_mode(0o600)).unwrap();
                format!(
                    "source = \"passphrase\"\npassphrase_file = \"{}\"",
                    passphrase.display()
                )
            }
            MasterKey::File => {
                let key_file = dir.path().join("master.key");
                fs::write(&key_file, rand::random::<[u8; 32]>()).unwrap();
                fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
                format!(
                    "source = \"keyfile\"\nkey_file = \"{}\"",
                    key_file.display()
                )
            }
        };
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n[storage]\ndata_dir = \"{}\"\n\n[keys]\n{keys}\n{body}\n",
            data_dir.display(),
        );
        for (name, role, extra) in CLIENTS {
            let hash = &client_keys()[*name].1;
            text.push_str(&format!(
                "\n[clients.{name}]\nrole = \"{role}\"\napi_key_hash = \"{hash}\"\n{extra}\n"
            ));
        }
        let mut postgres = None;
        if ON_POSTGRES.with(std::cell::Cell::get)
            || std::env::var("TOKENVAULT_TEST_BACKEND").as_deref() == Ok("postgres")
        {
            let cluster = crate::pg_cluster::PgCluster::start(None);
            let password = cluster.password_file(dir.path());
            text = text.replacen(
                "[storage]\n",
                &format!(
                    "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n",
                    cluster.url(),
                    password.display()
                ),
                1,
            );
            postgres = Some(std::sync::Arc::new(cluster));
            CLUSTERS_STARTED.with(|started| started.set(started.get() + 1));
        }
        let config = dir.path().join("vault.toml");
        fs::write(&config, text).unwrap();
        Self {
            dir,
            config,
            data_dir,
            postgres,
        }
    }

    /// Appends `sections` to a configuration written by [`Setup::configure`]
    /// (sections that name files inside `dir`, so they are written after it)
    /// and runs `tokenvault init`.
    pub fn append_and_init(&self, sections: &str) {
        let mut config = fs::read_to_string(&self.config).unwrap();
        config.push_str(sections);
        fs::write(&self.config, config).unwrap();
        self.init();
    }

    /// Runs `tokenvault init` on this configuration; it must succeed.
    fn init(&self) {
        let out = self.run(&["init", "--config"]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What unwraps this vault's master key, as its configuration names it.
    pub fn kek_source(&self) -> tokenvault::crypto::wrapping::KekSource {
        use tokenvault::crypto::wrapping::KekSource;
        let key_file = self.dir.path().join("master.key");
        if key_file.exists() {
            let bytes: [u8; 32] = fs::read(key_file).unwrap().try_into().unwrap();
            KekSource::KeyFile(zeroize::Zeroizing::new(bytes))
        } else {
            KekSource::Passphrase(zeroize::Zeroizing::new(PASSPHRASE.as_bytes().to_vec()))
        }
    }

    /// Runs `tokenvault ARGS… <config>` to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// Starts `tokenvault serve` on this configuration.
    pub fn serve(&self) -> Server {
        self.serve_with_env(&[])
    }

    /// Starts `tokenvault serve` with extra environment variables.
    pub fn serve_with_env(&self, env: &[(&str, &str)]) -> Server {
        Server::spawn(
            &["serve", "--config", self.config.to_str().unwrap()],
            env,
            self.dir.path(),
        )
    }
}

/// A running vault process. Killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` or `https://…`.
    pub base: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Spawns the binary with `args`, logs going to files in `log_dir`, and
    /// waits until it prints its listening address.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stdout = log_dir.join(format!("server-{}-{n}.stdout", std::process::id()));
        let stderr = log_dir.join(format!("server-{}-{n}.stderr", std::process::id()));
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().unwrap();
        let mut server = Self {
            child,
            base: String::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // On stdout, or on stderr when stdout carries JSON log lines.
            let text = server.logs();
            if let Some(url) = text
                .lines()
                .find_map(|l| l.strip_prefix("tokenvault listening on "))
            {
                server.base = url.trim().to_owned();
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("server exited with {status}: {}", server.logs());
            }
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
            + &fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (up to 20 s) until the logs contain `needle`: log lines are
    /// written asynchronously to the requests that cause them.
    pub fn wait_for_log(&self, needle: &str) {
        eventually(&format!("the logs never said {needle}"), || {
            self.logs().contains(needle)
        });
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait(Duration::from_secs(40))
    }

    /// Sends SIGKILL and waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal with kill(1); false when the process is already gone.
/// True when the tests run as root (CI does): the tests that mount, change
/// file attributes or capture packets need it, and skip, saying so,
/// otherwise.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

/// Polls until `check` holds, for at most 20 s (for what happens
/// asynchronously to a request or a signal).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// An address on 127.0.0.1 that refuses connections for as long as this
/// value lives: a socket bound to it that never listens, so no other
/// process can take the port meanwhile.
pub struct ClosedPort {
    _socket: socket2::Socket,
    address: String,
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address)
    }
}

impl std::ops::Deref for ClosedPort {
    type Target = str;
    fn deref(&self) -> &str {
        &self.address
    }
}

/// A [`ClosedPort`] (keep it bound to a variable for the test's length).
pub fn closed_port() -> ClosedPort {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&SockAddr::from(any)).unwrap();
    let address = socket
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap()
        .to_string();
    ClosedPort {
        _socket: socket,
        address,
    }
}

/// An error and every error that caused it, on one line (lower-case):
/// for asserting *why* a request failed, not only that it did.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(error) = cause {
        parts.push(error.to_string());
        cause = error.source();
    }
    parts.join(": ").to_lowercase()
}

/// A blocking HTTP client with a generous timeout.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// POSTs JSON with a bearer key; returns status and body.
pub fn post(server: &Server, path: &str, api_key: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(server.url(path))
        .bearer_auth(api_key)
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Tokenizes `(class, value)` pairs; asserts 200; returns the tokens.
pub fn tokenize(
    server: &Server,
    client: &str,
    namespace: &str,
    items: &[(&str, &str)],
) -> Vec<String> {
    let items: Vec<Value> = items
        .iter()
        .map(|(class, value)| json!({"class": class, "value": value}))
        .collect();
    let (status, body) = post(
        server,
        "/v1/tokenize",
        &key(client),
        &json!({"namespace": namespace, "items": items}),
    );
    assert_eq!(status, 200, "{body}");
    body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect()
}

/// Detokenizes; asserts 200; returns the `values` array.
pub fn detokenize(
    server: &Server,
    client: &str,
    namespace: &str,
    purpose: &str,
    tokens: &[String],
) -> Vec<Value> {
    let (status, body) = post(
        server,
        "/v1/detokenize",
        &key(client),
        &json!({"namespace": namespace, "purpose": purpose, "tokens": tokens}),
    );
    assert_eq!(status, 200, "{body}");
    body["values"].as_array().unwrap().clone()
}

/// Runs `tokenvault audit ARGS… --config <config>` (plus extra args after).
pub fn audit_cli(setup: &Setup, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .unwrap()
}

/// Runs `audit verify` and asserts the chain holds; returns its stdout.
pub fn assert_chain_verifies(setup: &Setup) -> String {
    let out = audit_cli(setup, &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every record of the audit trail, through `audit query --format json`.
pub fn audit_records(setup: &Setup) -> Vec<Value> {
    audit_query(setup, &[])
}

/// The records `audit query --format json ARGS…` prints.
pub fn audit_query(setup: &Setup, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["query", "--format", "json"];
    all.extend_from_slice(args);
    let out = audit_cli(setup, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Path of a fixture in `tests/fixtures/` (copied into this repository).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Standard Webhooks `webhook-signature` value: `v1,` and the base64
/// HMAC-SHA256 of `<id>.<timestamp>.<body>` under `secret`.
pub fn webhook_signature(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signed = [
        id.as_bytes(),
        b".",
        timestamp.to_string().as_bytes(),
        b".",
        body,
    ]
    .concat();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, &signed).as_ref())
    )
}

/// The Prometheus exposition of `/metrics`, read as the standard `scraper`
/// client (role `metrics_read`).
pub fn scrape_metrics(server: &Server) -> String {
    http()
        .get(server.url("/metrics"))
        .bearer_auth(key("scraper"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// Runs a command with `input` on its standard input.
pub trait OutputWithStdin {
    /// Spawns, writes `input`, and waits for the output.
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// A self-signed certificate made for one test and written as PEM files,
/// the key with the mode the vault demands of secrets (0600) unless a test
/// asks for another.
pub struct TestCert {
    /// The certificate, PEM.
    pub pem: String,
    /// The certificate, DER (what a TLS peer presents).
    pub der: Vec<u8>,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Where the private key was written.
    pub key_path: PathBuf,
}

impl TestCert {
    /// A certificate for `names` written to `<dir>/<stem>-cert.pem` and
    /// `<dir>/<stem>-key.pem` (mode 0600).
    pub fn write(dir: &Path, stem: &str, names: &[&str]) -> Self {
        Self::write_with_key_mode(dir, stem, names, 0o600)
    }

    /// As [`TestCert::write`], with the key file given `key_mode`.
    pub fn write_with_key_mode(dir: &Path, stem: &str, names: &[&str], key_mode: u32) -> Self {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        let cert_path = dir.join(format!("{stem}-cert.pem"));
        let key_path = dir.join(format!("{stem}-key.pem"));
        fs::write(&cert_path, certified.cert.pem()).unwrap();
        fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(key_mode)).unwrap();
        Self {
            pem: certified.cert.pem(),
            der: certified.cert.der().to_vec(),
            cert_path,
            key_path,
        }
    }

    /// The `[server]` lines that serve this certificate.
    pub fn server_config(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            self.cert_path.display(),
            self.key_path.display()
        )
    }

    /// A client that trusts this certificate (and nothing else added).
    pub fn trusting_client(&self) -> reqwest::blocking::ClientBuilder {
        reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
    }
}

/// Makes `setup`'s audit trail unwritable until dropped: an exclusive
/// lock on `audit.db`, or on PostgreSQL the `vault` role's right to insert
/// records taken away.
pub enum TrailBlocked<'a> {
    /// Holds `BEGIN EXCLUSIVE` on `audit.db`.
    Sqlite(rusqlite::Connection),
    /// Revoked INSERT on the records table.
    Postgres(&'a crate::pg_cluster::PgCluster),
}

impl<'a> TrailBlocked<'a> {
    /// Blocks the trail of `setup`.
    pub fn start(setup: &'a Setup) -> Self {
        match &setup.postgres {
            Some(cluster) => Self::in_postgres(cluster),
            None => {
                let locker = rusqlite::Connection::open(setup.data_dir.join("audit.db")).unwrap();
                locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
                Self::Sqlite(locker)
            }
        }
    }

    /// Takes INSERT on the records table from the vault's role in
    /// `cluster`.
    pub fn in_postgres(cluster: &'a crate::pg_cluster::PgCluster) -> Self {
        cluster.psql_in(
            "vault",
            &format!(
                "REVOKE INSERT ON tokenvault.records FROM {}",
                cluster.role()
            ),
        );
        Self::Postgres(cluster)
    }
}

impl Drop for TrailBlocked<'_> {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(locker) => {
                let _ = locker.execute_batch("ROLLBACK");
            }
            Self::Postgres(cluster) => {
                cluster.psql_in(
                    "vault",
                    &format!("GRANT INSERT ON tokenvault.records TO {}", cluster.role()),
                );
            }
        }
    }
}

/// A store for an engine-level test: SQLite files in `dir`, or, under
/// [`on_postgres`], a migrated schema in a throwaway cluster (returned too:
/// keep it alive as long as the store).
pub fn test_store(
    dir: &Path,
    audit_key: tokenvault::crypto::keys::AuditKey,
) -> (
    tokenvault::store::Store,
    Option<crate::pg_cluster::PgCluster>,
) {
    if !ON_POSTGRES.with(std::cell::Cell::get) {
        let store = tokenvault::store::Store::open(
            &dir.join("vault.db"),
            &dir.join("audit.db"),
            audit_key,
            8,
        )
        .unwrap();
        return (store, None);
    }
    let cluster = crate::pg_cluster::PgCluster::start(None);
    CLUSTERS_STARTED.with(|started| started.set(started.get() + 1));
    let settings = tokenvault::config::PostgresSettings {
        url: tokenvault::config::DatabaseUrl::parse(&cluster.url()).unwrap(),
        password: Some(tokenvault::config::SecretRef::File(
            cluster.password_file(dir),
        )),
        pool_size: 4,
        statement_timeout: std::time::Duration::from_secs(5),
        schema: tokenvault::config::SchemaName::parse("tokenvault").unwrap(),
        ca_file: None,
    };
    let pg = tokenvault::store::pg::PgStore::connect(&settings).unwrap();
    pg.migrate().unwrap();
    let store =
        tokenvault::store::Store::open_postgres(std::sync::Arc::new(pg), audit_key).unwrap();
    (store, Some(cluster))
}

/// Tokenizes `items` (class, value) in `retail` as `crm` against `base`;
/// answers the tokens, or None on a non-200 (which load tests count).
pub fn tokenize_at(base: &str, items: &[(&str, String)]) -> Option<Vec<String>> {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|(class, value)| serde_json::json!({"class": class, "value": value}))
        .collect();
    let response = http()
        .post(format!("{base}/v1/tokenize"))
        .bearer_auth(key("crm"))
        .json(&serde_json::json!({"namespace": "retail", "items": items}))
        .send()
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let body: serde_json::Value = response.json().ok()?;
    Some(
        body["tokens"]
            .as_array()?
            .iter()
            .map(|t| t["token"].as_str().unwrap().to_owned())
            .collect(),
    )
}

/// A deterministic email class (`retain_days` as given), for tests that
/// build the engine directly.
pub fn email_class(retain_days: Option<u32>) -> tokenvault::config::ClassSpec {
    tokenvault::config::ClassSpec {
        normalize: tokenvault::normalize::Normalization::Email,
        format: tokenvault::crypto::tokens::TokenFormat::Email,
        deterministic: true,
        token_prefixes: Vec::new(),
        retain_days,
    }
}

/// One namespace with these classes, tokens in `tokens.invalid`.
pub fn namespace_of(
    name: &str,
    classes: &[(&str, tokenvault::config::ClassSpec)],
) -> std::collections::BTreeMap<String, tokenvault::config::NamespaceSpec> {
    std::collections::BTreeMap::from([(
        name.to_owned(),
        tokenvault::config::NamespaceSpec {
            token_domain: "tokens.invalid".to_owned(),
            classes: classes
                .iter()
                .map(|(class, spec)| ((*class).to_owned(), spec.clone()))
                .collect(),
        },
    )])
}

/// A caller `client` whose role grants `operations` everywhere, plain.
pub fn engine_caller(
    client: &str,
    operations: &[tokenvault::policy::Operation],
) -> tokenvault::policy::Caller {
    tokenvault::policy::Caller {
        client: client.to_owned(),
        role: std::sync::Arc::new(tokenvault::policy::Role::unrestricted(
            operations.iter().copied(),
        )),
    }
}
