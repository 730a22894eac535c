//! A throwaway PostgreSQL cluster for one test: `initdb` into a temporary
//! directory, `postgres` on a free 127.0.0.1 port (optionally with TLS),
//! a `vault` role with a password, stopped and removed when dropped.
//!
//! The server binaries come from Debian's `postgresql` package, which
//! `.ci/run` installs. PostgreSQL refuses to run as root: as root the
//! cluster runs as the `postgres` user the package creates.

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
         (apt-get install -y postgresql), as .ci/run does"
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
        };
        cluster.psql(&format!("CREATE ROLE vault LOGIN PASSWORD '{PASSWORD}'"));
        cluster.psql("CREATE DATABASE vault OWNER vault");
        cluster
    }

    /// Runs SQL as the superuser over the Unix socket; stdout comes back.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser in `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = checked(
            as_server_user(&self.bin.join("psql"))
                .arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
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
        format!("postgres://vault@127.0.0.1:{}/vault", self.port)
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

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
