//! `[storage]`: the data directory and the database backend.
//!
//! SQLite (the default) keeps everything in the data directory. PostgreSQL
//! is reached through a URL whose password comes from a file or a variable,
//! never from the URL itself, and over TLS verified against `ca_file`
//! unless the database is on this machine's loopback.

#[allow(unused_imports)]
use super::*;

/// `[storage]`
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Directory holding `vault.db`, `audit.db` and the keyring (with
    /// PostgreSQL, the lock file and the keyring).
    pub data_dir: PathBuf,
    /// Where the tables live.
    pub backend: Backend,
}

impl StorageSettings {
    /// The keyring file inside the data directory.
    pub fn keyring_path(&self) -> PathBuf {
        self.data_dir.join("keyring.json")
    }

    /// The audit trail inside the data directory.
    pub fn audit_path(&self) -> PathBuf {
        self.data_dir.join("audit.db")
    }

    /// The token database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("vault.db")
    }
}

/// The database engine behind the store.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Embedded SQLite files in the data directory.
    Sqlite,
    /// A PostgreSQL database shared by several nodes.
    Postgres(Box<PostgresSettings>),
}

/// `[storage]` with `backend = "postgres"`.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Host, port, user and database (no password).
    pub url: DatabaseUrl,
    /// The database password, if the server asks for one.
    pub password: Option<SecretRef>,
    /// Connections each node keeps open.
    pub pool_size: u32,
    /// Longest a statement may run before the server cancels it.
    pub statement_timeout: std::time::Duration,
    /// The schema the vault's tables live in.
    pub schema: SchemaName,
    /// CA certificates (PEM) the server's certificate must chain to; with
    /// it the connection is TLS with the host name verified.
    pub ca_file: Option<PathBuf>,
}

/// A `postgres://` URL without a password, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    host: String,
    port: u16,
    user: String,
    database: String,
    application_name: Option<String>,
    connect_timeout: Option<std::time::Duration>,
}

/// Query parameters a database URL may carry; others (`sslmode`,
/// `password`, ...) would contradict the settings that own them.
const URL_PARAMETERS: &[&str] = &["application_name", "connect_timeout"];

impl DatabaseUrl {
    /// Parses `text`, or says what is wrong with it. The message never
    /// repeats a password the URL holds.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        let key = "storage.url";
        let url = url::Url::parse(text).map_err(|error| {
            Problem::new(key, format!("not a URL ({error})"))
                .hint("postgres://USER@HOST:5432/DATABASE")
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(
                Problem::new(key, format!("scheme `{}` is not postgres", url.scheme()))
                    .hint("postgres://USER@HOST:5432/DATABASE"),
            );
        }
        if url.password().is_some() {
            return Err(Problem::new(key, "holds a password")
                .hint("put the password in password_file or password_env, never in vault.toml"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => {
                return Err(
                    Problem::new(key, "names no host").hint("postgres://USER@HOST:5432/DATABASE")
                )
            }
        };
        if url.username().is_empty() {
            return Err(
                Problem::new(key, "names no user").hint("postgres://USER@HOST:5432/DATABASE")
            );
        }
        let user = percent_decode(url.username());
        let database = percent_decode(url.path().trim_start_matches('/'));
        if database.is_empty() || database.contains('/') {
            return Err(
                Problem::new(key, "names no database").hint("postgres://USER@HOST:5432/DATABASE")
            );
        }
        let mut application_name = None;
        let mut connect_timeout = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "application_name" => application_name = Some(value.into_owned()),
                "connect_timeout" => match value.parse::<u64>() {
                    Ok(seconds) if seconds > 0 => {
                        connect_timeout = Some(std::time::Duration::from_secs(seconds))
                    }
                    _ => {
                        return Err(Problem::new(
                            key,
                            "connect_timeout must be a whole number of seconds",
                        ))
                    }
                },
                other => {
                    return Err(Problem::new(
                        key,
                        format!("query parameter `{other}` is not accepted"),
                    )
                    .hint(format!(
                    "accepted: {}; TLS follows ca_file, the password password_file or password_env",
                    URL_PARAMETERS.join(", ")
                )))
                }
            }
        }
        Ok(Self {
            host,
            port: url.port().unwrap_or(5432),
            user,
            database,
            application_name,
            connect_timeout,
        })
    }

    /// The server's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The role the vault connects as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `application_name`, when the URL sets one.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// `connect_timeout`, when the URL sets one.
    pub fn connect_timeout(&self) -> Option<std::time::Duration> {
        self.connect_timeout
    }

    /// Whether the host is this machine (a loopback address or
    /// `localhost`), where plain TCP does not cross a network.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgres://{}@{host}:{}/{}",
            self.user, self.port, self.database
        )
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// A PostgreSQL schema name: lower-case letters, digits and `_`, starting
/// with a letter or `_`, at most 63 bytes, so it never needs quoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut bytes = text.bytes();
        let shaped = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && text.len() <= 63
            && !text.starts_with("pg_");
        if shaped {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "`{text}` is not a schema name (a-z, 0-9 and _, not starting with a digit or pg_, at most 63)"
            ))
        }
    }

    /// The name, safe to place in SQL unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// Raw structures, as serde reads them

pub(super) const DEFAULT_DATA_DIR: &str = "/var/lib/tokenvault";
const DEFAULT_POOL_SIZE: u32 = 8;
const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_SCHEMA: &str = "tokenvault";

#[derive(Deserialize, Default)]
pub(super) struct RawStorage {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) backend: Option<String>,
    pub(super) url: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) pool_size: Option<u32>,
    pub(super) statement_timeout_ms: Option<u64>,
    pub(super) schema: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawStorage {
    pub(super) fn validate(self, problems: &mut Vec<Problem>) -> StorageSettings {
        unknown_keys(problems, "storage", &self.unknown);
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let backend = match self.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                let postgres_only = [
                    ("url", self.url.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("password_env", self.password_env.is_some()),
                    ("pool_size", self.pool_size.is_some()),
                    ("statement_timeout_ms", self.statement_timeout_ms.is_some()),
                    ("schema", self.schema.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                ];
                for (name, _) in postgres_only.iter().filter(|(_, set)| *set) {
                    problems.push(
                        Problem::new(
                            format!("storage.{name}"),
                            "applies only to backend = \"postgres\"",
                        )
                        .hint("set backend = \"postgres\" or remove the key"),
                    );
                }
                Backend::Sqlite
            }
            "postgres" => match self.postgres(problems) {
                Some(settings) => Backend::Postgres(Box::new(settings)),
                None => Backend::Sqlite,
            },
            other => {
                problems.push(
                    Problem::new("storage.backend", format!("`{other}` is not a backend"))
                        .hint("use sqlite or postgres"),
                );
                Backend::Sqlite
            }
        };
        StorageSettings { data_dir, backend }
    }

    fn postgres(self, problems: &mut Vec<Problem>) -> Option<PostgresSettings> {
        let before = problems.len();
        let url = match self.url.as_deref().map(DatabaseUrl::parse) {
            Some(Ok(url)) => Some(url),
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
            None => {
                problems.push(
                    Problem::new("storage.url", "is required with backend = \"postgres\"")
                        .hint("url = \"postgres://tokenvault@db.internal:5432/tokenvault\""),
                );
                None
            }
        };
        let password = match (self.password_file, self.password_env) {
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    "storage.password_file",
                    "set password_file or password_env, not both",
                ));
                None
            }
            (Some(file), None) => {
                if let Err(problem) = check_secret_file("storage.password_file", &file) {
                    problems.push(problem);
                }
                Some(SecretRef::File(file))
            }
            (None, Some(name)) => Some(SecretRef::Env(name)),
            (None, None) => None,
        };
        let pool_size = self.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if !(1..=64).contains(&pool_size) {
            problems.push(Problem::new(
                "storage.pool_size",
                "must be between 1 and 64",
            ));
        }
        let timeout_ms = self
            .statement_timeout_ms
            .unwrap_or(DEFAULT_STATEMENT_TIMEOUT_MS);
        if !(100..=600_000).contains(&timeout_ms) {
            problems.push(Problem::new(
                "storage.statement_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        let schema = match SchemaName::parse(self.schema.as_deref().unwrap_or(DEFAULT_SCHEMA)) {
            Ok(schema) => Some(schema),
            Err(message) => {
                problems.push(Problem::new("storage.schema", message));
                None
            }
        };
        if let Some(ca_file) = &self.ca_file {
            if !ca_file.is_file() {
                problems.push(Problem::new(
                    "storage.ca_file",
                    format!("{} is not a readable file", ca_file.display()),
                ));
            }
        } else if let Some(url) = url.as_ref().filter(|url| !url.is_loopback()) {
            problems.push(
                Problem::new(
                    "storage.ca_file",
                    format!(
                        "is required: {} is not on this machine, and the connection must be TLS",
                        url.host()
                    ),
                )
                .hint("set ca_file to the CA that signed the database server's certificate"),
            );
        }
        if problems.len() > before {
            return None;
        }
        Some(PostgresSettings {
            url: url?,
            password,
            pool_size,
            statement_timeout: std::time::Duration::from_millis(timeout_ms),
            schema: schema?,
            ca_file: self.ca_file,
        })
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn database_urls_hold_no_password_and_only_known_parameters() {
        let url = DatabaseUrl::parse(
            "postgres://vault%40app@db.internal/tokens?application_name=node-a&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(url.host(), "db.internal");
        assert_eq!(url.port(), 5432);
        assert_eq!(url.user(), "vault@app");
        assert_eq!(url.database(), "tokens");
        assert_eq!(url.application_name(), Some("node-a"));
        assert!(!url.is_loopback());
        assert!(DatabaseUrl::parse("postgresql://v@[::1]:6543/t")
            .unwrap()
            .is_loopback());
        let refused = |text: &str| DatabaseUrl::parse(text).unwrap_err().to_string();
        let secret = refused("postgres://v:hunter2secret@db/t");
        assert!(secret.contains("holds a password"), "{secret}");
        assert!(!secret.contains("hunter2secret"), "{secret}");
        assert!(refused("mysql://v@db/t").contains("not postgres"));
        assert!(refused("postgres://db/t").contains("no user"));
        assert!(refused("postgres://v@db").contains("no database"));
        assert!(refused("postgres://v@db/t?sslmode=disable").contains("sslmode"));
        assert!(refused("postgres://v@db/t?connect_timeout=x").contains("connect_timeout"));
    }

    #[test]
    fn schema_names_never_need_quoting() {
        assert!(SchemaName::parse("tokenvault_2").is_ok());
        for bad in [
            "",
            "Vault",
            "1vault",
            "pg_catalog",
            "a-b",
            "a;drop",
            &"a".repeat(64),
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad}");
        }
    }

    fn write_config(jail: &mut Jail, storage: &str) -> Result<Config, ConfigErrors> {
        let dir = jail.directory().to_owned();
        let passphrase = dir.join("passphrase");
        std::fs::write(&passphrase, "a passphrase long enough").unwrap();
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[storage]\ndata_dir = \"{}\"\n{storage}\n[keys]\nsource = \"passphrase\"\npassphrase_file = \"{}\"\n{BASE}\n",
            dir.join("data").display(),
            passphrase.display()
        );
        let path = dir.join("vault.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn postgres_settings_load_with_defaults_and_refuse_plaintext_off_the_machine() {
        Jail::expect_with(|jail| {
            let config = write_config(jail, "").unwrap();
            assert!(matches!(config.storage.backend, Backend::Sqlite));

            let config = write_config(
                jail,
                "backend = \"postgres\"\nurl = \"postgres://vault@127.0.0.1:5433/vault\"\npassword_env = \"PGPASS_VAULT\"",
            )
            .unwrap();
            let Backend::Postgres(pg) = config.storage.backend else {
                panic!("postgres expected")
            };
            assert_eq!(pg.pool_size, 8);
            assert_eq!(pg.statement_timeout, std::time::Duration::from_secs(5));
            assert_eq!(pg.schema.as_str(), "tokenvault");
            assert!(
                matches!(pg.password, Some(SecretRef::Env(ref name)) if name == "PGPASS_VAULT")
            );

            // Off the machine without a CA: refused, with every other problem.
            let found = problems(write_config(
                jail,
                "backend = \"postgres\"\nurl = \"postgres://vault@db.internal/vault\"\npool_size = 0\nschema = \"Bad\"",
            ));
            let text = found.join("\n");
            assert!(text.contains("storage.ca_file"), "{text}");
            assert!(text.contains("storage.pool_size"), "{text}");
            assert!(text.contains("storage.schema"), "{text}");

            // Postgres keys under the SQLite backend are a mistake, not noise.
            let found = problems(write_config(jail, "schema = \"vault\""));
            assert!(found.join("\n").contains("storage.schema"), "{found:?}");

            // The environment selects the backend as the file does.
            jail.set_env("TOKENVAULT_STORAGE__BACKEND", "postgres");
            let found = problems(write_config(jail, ""));
            assert!(found.join("\n").contains("storage.url"), "{found:?}");
            Ok(())
        });
    }

    #[test]
    fn a_password_file_must_be_private() {
        Jail::expect_with(|jail| {
            let file = jail.directory().join("db-password");
            std::fs::write(&file, "pw").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let body = format!(
                "backend = \"postgres\"\nurl = \"postgres://vault@localhost/vault\"\npassword_file = \"{}\"",
                file.display()
            );
            let found = problems(write_config(jail, &body));
            assert!(found.join("\n").contains("chmod 600"), "{found:?}");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(write_config(jail, &body).is_ok());
            Ok(())
        });
    }
}
