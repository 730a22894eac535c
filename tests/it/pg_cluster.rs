//! A throwaway PostgreSQL cluster for one test: `initdb` into a temporary
//! directory, `postgres` on a free 127.0.0.1 port (optionally with TLS),
//! a `vault` role with a password, stopped and removed when dropped.
//!
//! The server binaries come from Debian's `postgresql` package, which
//! `.ci/run` installs. PostgreSQL refuses to run as root: as root the
//! cluster runs as the `postgres` user the package creates.
//!
//! With `TOKENVAULT_TEST_PG_URL` set (a role on a server the tests may use
//! freely, allowed to create roles and databases, e.g.
//! `postgres://postgres:secret@127.0.0.1:5432/postgres`), each "cluster"
//! is instead a fresh role and database on that server, dropped after the
//! test. The tests that stop and restart the server, or scan its files,
//! need a local cluster and say so.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `vault` role's password (a test value, not a secret).
pub const PASSWORD: &str = "pg test password";

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    options: String,
    /// Set when the tests use `TOKENVAULT_TEST_PG_URL`'s server.
    external: Option<External>,
}

/// A role and a database of their own on the server of
/// `TOKENVAULT_TEST_PG_URL`.
struct External {
    /// The URL given (its role creates and drops the others).
    admin: String,
    host: String,
    /// The role and database of this test.
    name: String,
}

/// The variable naming a server to use instead of throwaway clusters.
pub const EXTERNAL_URL: &str = "TOKENVAULT_TEST_PG_URL";

fn admin_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|error| {
        panic!("{EXTERNAL_URL} is set, but its server cannot be reached: {error}")
    })
}

/// Rows as `psql -Atq` prints them: fields joined by `|`, one row a line.
fn simple_rows(client: &mut postgres::Client, sql: &str) -> String {
    let mut out = String::new();
    for message in client.simple_query(sql).unwrap() {
        if let postgres::SimpleQueryMessage::Row(row) = message {
            let fields: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("")).collect();
            out.push_str(&fields.join("|"));
            out.push('\n');
        }
    }
    out
}

/// The certificate a TLS cluster serves, and its key.
pub struct ServerTls {
    /// PEM certificate (self-signed: it is also the CA a client trusts).
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

impl ServerTls {
    /// A certificate for `localhost` and 127.0.0.1.
    pub fn generate() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.key_pair.serialize_pem(),
        }
    }
}

fn server_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(bin) = candidates.pop() {
        return bin;
    }
    if let Ok(path) = which("initdb") {
        return path.parent().unwrap().to_owned();
    }
    panic!(
        "these tests start a throwaway PostgreSQL cluster and need its server binaries \
         (initdb, pg_ctl, postgres): install Debian's `postgresql` package \
         (apt-get install -y postgresql), as .ci/run does, or set {EXTERNAL_URL} to a \
         server the tests may use"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.exists())
        .ok_or(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when this process is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(program)
            .current_dir("/");
        command
    } else {
        Command::new(program)
    }
}

fn checked(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// Starts a cluster, with TLS when `tls` is given. It does not sync to
    /// disk (these clusters are thrown away); [`PgCluster::start_durable`]
    /// does, for benchmarks.
    pub fn start(tls: Option<&ServerTls>) -> Self {
        Self::start_with(tls, false)
    }

    /// Starts a cluster with PostgreSQL's default durability (fsync and
    /// synchronous commit on).
    #[allow(dead_code)]
    pub fn start_durable() -> Self {
        Self::start_with(None, true)
    }

    fn start_with(tls: Option<&ServerTls>, durable: bool) -> Self {
        if let Ok(admin) = std::env::var(EXTERNAL_URL) {
            assert!(
                tls.is_none(),
                "this test serves its own TLS certificate, which needs a local cluster: unset {EXTERNAL_URL}"
            );
            return Self::on_external(admin);
        }
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("tokenvault-pg")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -k {} -c max_connections=80",
            dir.path().display()
        );
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off");
        }
        if let Some(tls) = tls {
            let cert = dir.path().join("server.crt");
            let key = dir.path().join("server.key");
            fs::write(&cert, &tls.cert_pem).unwrap();
            fs::write(&key, &tls.key_pem).unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        if is_root() {
            checked(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        checked(
            as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .output()
                .unwrap(),
            "initdb",
        );
        // A port taken between the probe and the start is retried.
        let mut attempt = 0;
        let port = loop {
            let port = free_port();
            let started = as_server_user(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {port} {options}"))
                .arg("start")
                .output()
                .unwrap();
            if started.status.success() {
                break port;
            }
            attempt += 1;
            assert!(
                attempt < 5,
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&started.stderr),
                fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
        };
        let cluster = Self {
            dir,
            bin,
            port,
            options,
            external: None,
        };
        cluster.psql(&format!("CREATE ROLE vault LOGIN PASSWORD '{PASSWORD}'"));
        cluster.psql("CREATE DATABASE vault OWNER vault");
        cluster
    }

    fn on_external(admin: String) -> Self {
        let parsed: url::Url = admin
            .parse()
            .unwrap_or_else(|_| panic!("{EXTERNAL_URL} is not a URL"));
        let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = parsed.port().unwrap_or(5432);
        let name = format!(
            "vault_{}",
            hex::encode(tokenvault::crypto::random_bytes::<6>())
        );
        let mut client = admin_client(&admin);
        // One statement each: CREATE DATABASE runs outside a transaction.
        client
            .batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'"))
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            bin: PathBuf::new(),
            port,
            options: String::new(),
            external: Some(External { admin, host, name }),
        }
    }

    /// The role the vault logs in as (`vault`, or this test's own role on
    /// the server of `TOKENVAULT_TEST_PG_URL`).
    pub fn role(&self) -> &str {
        self.external.as_ref().map_or("vault", |e| e.name.as_str())
    }

    /// True for a throwaway cluster whose files and server this test owns.
    pub fn is_local(&self) -> bool {
        self.external.is_none()
    }

    fn needs_local(&self, what: &str) {
        assert!(
            self.is_local(),
            "this test {what}, which needs a local throwaway cluster: unset {EXTERNAL_URL}"
        );
    }

    /// A client program of the server (`psql`, `pg_dump`, …) connecting to
    /// `database` as the superuser over the Unix socket.
    fn client_tool(&self, program: &str, database: &str) -> Command {
        let mut command = as_server_user(&self.bin.join(program));
        command.arg("-h").arg(self.dir.path()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            database,
        ]);
        command
    }

    /// Runs SQL as the superuser over the Unix socket; stdout comes back.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser in `database` (`vault` is the vault's
    /// database).
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        if let Some(external) = &self.external {
            let mut url: url::Url = external.admin.parse().unwrap();
            if database == "vault" {
                url.set_path(&format!("/{}", external.name));
            }
            return simple_rows(&mut admin_client(url.as_str()), sql);
        }
        let out = checked(
            self.client_tool("psql", database)
                .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
                .output()
                .unwrap(),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The cluster's directory (its data, socket and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of the `vault` database as the `vault` role, on 127.0.0.1.
    pub fn url(&self) -> String {
        match &self.external {
            Some(e) => format!("postgres://{0}@{1}:{2}/{0}", e.name, e.host, self.port),
            None => format!("postgres://vault@127.0.0.1:{}/vault", self.port),
        }
    }

    /// A file holding the `vault` role's password, mode 0600, in `dir`.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        // Written aside and renamed, so that a reader never sees it half
        // written.
        let path = dir.join("db-password");
        let staged = tempfile::NamedTempFile::new_in(dir).unwrap();
        fs::write(staged.path(), format!("{PASSWORD}\n")).unwrap();
        fs::set_permissions(staged.path(), fs::Permissions::from_mode(0o600)).unwrap();
        staged.persist(&path).unwrap();
        path
    }
}

impl PgCluster {
    /// Stops the server (fast shutdown: sessions are disconnected).
    #[allow(dead_code)]
    pub fn stop(&self) {
        self.needs_local("stops the server");
        checked(
            as_server_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .output()
                .unwrap(),
            "pg_ctl stop",
        );
    }

    /// Starts the stopped server again, on the same port.
    #[allow(dead_code)]
    pub fn restart(&self) {
        self.needs_local("restarts the server");
        checked(
            as_server_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {} {}", self.port, self.options))
                .arg("start")
                .output()
                .unwrap(),
            "pg_ctl start",
        );
    }
}

impl PgCluster {
    /// `pg_dump` of the vault's schema into `file` (custom format), as
    /// docs/operations.md tells operators to back up.
    #[allow(dead_code)]
    pub fn dump(&self, file: &Path) {
        self.needs_local("dumps the database with pg_dump");
        let out = checked(
            self.client_tool("pg_dump", "vault")
                .args(["-n", "tokenvault", "-Fc"])
                .output()
                .unwrap(),
            "pg_dump",
        );
        fs::write(file, out.stdout).unwrap();
    }

    /// Replaces the vault's schema by the dump in `file` (`pg_restore`).
    #[allow(dead_code)]
    pub fn restore(&self, file: &Path) {
        self.needs_local("restores a dump with pg_restore");
        self.psql_in("vault", "DROP SCHEMA tokenvault CASCADE");
        let staged = self.dir.path().join("restore.dump");
        fs::copy(file, &staged).unwrap();
        if is_root() {
            checked(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&staged)
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        checked(
            self.client_tool("pg_restore", "vault")
                .arg(&staged)
                .output()
                .unwrap(),
            "pg_restore",
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(e) = &self.external {
            if let Ok(mut client) = postgres::Client::connect(&e.admin, postgres::NoTls) {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", e.name));
                let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS {}", e.name));
            }
            return;
        }
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
