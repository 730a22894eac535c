//! Typed configuration: loading (figment: `vault.toml`, then `TOKENVAULT_`
//! environment variables split on `__`) and validation.
//!
//! Parse, don't validate: serde reads loose "raw" structs, then one step turns
//! them into typed values and collects every problem, so an operator fixes
//! the file in one pass. Unknown keys are caught by a flattened catch-all in
//! each raw struct rather than `deny_unknown_fields`, because the latter stops
//! at the first one and hides every later problem.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::crypto::tokens::TokenFormat;
use crate::crypto::wrapping::KekSource;
use crate::normalize::Normalization;
use crate::policy::{ClientSpec, Operation, Reveal, Role, Scope};
use crate::telemetry::{LogFormat, LogSettings};

mod access;
mod callbacks;
mod checks;
mod clevertap;
mod dev;
mod keys;
mod limits;
mod namespaces;
mod raw;
mod routes;
mod server;
mod storage;
mod values;

pub use access::normalize_identity;
pub use callbacks::{CallbackField, CallbackSpec};
pub use clevertap::{ClevertapSpec, DEFAULT_ACCESS_TOKEN_TTL};
pub use keys::{KeySettings, SecretRef, SYSTEMD_CREDENTIALS};
pub use limits::Limits;
pub use namespaces::{ClassSpec, NamespaceSpec};
pub use routes::{FieldRule, QueryRule, RouteSpec, UnselectedPii, DEFAULT_MAX_DEPTH};
pub use server::{ServerSettings, TlsFiles};
pub use storage::{Backend, DatabaseUrl, PostgresSettings, SchemaName, StorageSettings};
pub use values::{HeaderName, ServedPath, UpstreamUrl, RESERVED_PATHS};

// The sections see each other's raw structures and helpers through here.
#[allow(unused_imports)]
use {
    access::*, callbacks::*, checks::*, clevertap::*, keys::*, namespaces::*, raw::*, routes::*,
    server::*, storage::*,
};

/// Exit status for a configuration error (EX_CONFIG from sysexits.h), so that
/// systemd does not restart-loop on a broken file.
pub const EXIT_CONFIG: u8 = 78;
/// Prefix of environment variables that override `vault.toml`.
pub const ENV_PREFIX: &str = "TOKENVAULT_";
/// Default token domain of email-shaped tokens: `.invalid` never resolves.
pub const DEFAULT_TOKEN_DOMAIN: &str = "tokens.invalid";

/// The validated configuration of a vault.
#[derive(Debug)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[storage]`
    pub storage: StorageSettings,
    /// `[keys]`
    pub keys: KeySettings,
    /// `[namespaces.NAME]`
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    /// `[roles.NAME]`
    pub roles: BTreeMap<String, Role>,
    /// `[clients.NAME]`
    pub clients: BTreeMap<String, ClientSpec>,
    /// `[log]`
    pub log: LogSettings,
    /// `[[routes]]`: egress routes to the cloud platform.
    pub routes: Vec<RouteSpec>,
    /// `[clevertap]`: the CleverTap Token Vault API surface, when enabled.
    pub clevertap: Option<ClevertapSpec>,
    /// `[[callbacks]]`: signed activation callbacks.
    pub callbacks: Vec<CallbackSpec>,
    /// `[limits]`
    pub limits: Limits,
}

impl Config {
    /// Every purpose the configuration names: in roles (their purposes,
    /// per-purpose reveal modes and CleverTap purpose) and callbacks. The
    /// audit trail records a purpose by name only when it is one of these.
    pub fn purpose_names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for role in self.roles.values() {
            if let crate::policy::Scope::Only(purposes) = &role.purposes {
                names.extend(purposes.iter().cloned());
            }
            names.extend(role.reveal_by_purpose.keys().cloned());
            names.extend(role.clevertap_purpose.iter().cloned());
        }
        names.extend(self.callbacks.iter().map(|c| c.purpose.clone()));
        names
    }
}

/// One configuration problem: the key it is about, what is wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `server.listen`.
    pub key: String,
    /// What is wrong, without secret values.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Problem {
    pub(super) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub(super) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(
            f,
            "configuration has {count} problem{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            writeln!(f, "- {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// Loading

/// Loads `path`, applies `TOKENVAULT_…__…` overrides and validates the lot.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let unreadable = |message: String, hint: &str| {
        ConfigErrors(vec![Problem::new("config", message).hint(hint)])
    };
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => {
            return Err(unreadable(
                format!("{} is not a file", path.display()),
                "pass --config PATH to the configuration file",
            ))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(unreadable(
                format!("{} does not exist", path.display()),
                "copy vault.toml.example there and edit it, or pass --config PATH",
            ))
        }
        Err(error) => {
            return Err(unreadable(
                format!("cannot read {}: {error}", path.display()),
                "run as root or as a member of the tokenvault group",
            ))
        }
    }
    let figment = Figment::new()
        .merge(Toml::file_exact(path))
        .merge(config_env());
    let raw: RawConfig = figment.extract().map_err(extraction_problems)?;
    raw.validate()
}

/// Parses and validates a configuration given as TOML text, without
/// environment overrides (the fuzz target's entry; `load` is the server's).
pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(extraction_problems)?;
    raw.validate()
}

/// `TOKENVAULT_SECTION__KEY` variables. Only variables with `__` are config
/// keys: every key lives in a section, and this keeps TOKENVAULT_PASSPHRASE,
/// TOKENVAULT_CONFIG and friends from being read as unknown keys.
pub(super) fn config_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

pub(super) fn extraction_problems(errors: figment::Error) -> ConfigErrors {
    ConfigErrors(
        errors
            .into_iter()
            .map(|error| {
                let key = if error.path.is_empty() {
                    "config".to_owned()
                } else {
                    error.path.join(".")
                };
                Problem::new(key, error.kind.to_string())
            })
            .collect(),
    )
}

pub(super) type Unknown = BTreeMap<String, IgnoredAny>;

pub(super) fn parse_cidrs(key: &str, raw: &[String], problems: &mut Vec<Problem>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for cidr in raw {
        let parsed = cidr
            .parse::<IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => problems.push(Problem::new(
                key,
                format!("`{cidr}` is not an IP address or CIDR block"),
            )),
        }
    }
    nets
}

/// True for names usable as namespace, class, role and client names: they
/// appear in URLs, API keys and environment variable names.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

pub(super) fn valid_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(super) fn unknown_keys(problems: &mut Vec<Problem>, section: &str, unknown: &Unknown) {
    for key in unknown.keys() {
        let full = if section.is_empty() {
            key.clone()
        } else {
            format!("{section}.{key}")
        };
        problems.push(
            Problem::new(full, "unknown key").hint("check the spelling against vault.toml.example"),
        );
    }
}

pub(super) fn parse_enum<T: for<'de> Deserialize<'de>>(
    problems: &mut Vec<Problem>,
    key: &str,
    value: &str,
    expected: &str,
) -> Option<T> {
    let parsed =
        T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value))
            .ok();
    if parsed.is_none() {
        problems.push(Problem::new(
            key,
            format!("`{value}` is not one of: {expected}"),
        ));
    }
    parsed
}

pub(super) fn scope(values: &[String]) -> Scope {
    if values.iter().any(|v| v == "*") {
        Scope::Any
    } else {
        Scope::Only(values.iter().cloned().collect())
    }
}

/// What every section's tests share: a jail (a temporary directory and a
/// lock on the environment) holding a passphrase file and a configuration
/// of the standard head plus `body`.
#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::fs::PermissionsExt;

    pub use figment::Jail;

    use super::{load, Config, ConfigErrors};

    /// Loads `[keys]` and `[storage]` pointing into the jail, plus `body`.
    pub fn load_in(jail: &mut Jail, body: &str) -> Result<Config, ConfigErrors> {
        let dir = jail.directory().to_owned();
        let passphrase = dir.join("passphrase");
        std::fs::write(&passphrase, "a passphrase long enough").unwrap();
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[storage]\ndata_dir = \"{}\"\n[keys]\nsource = \"passphrase\"\npassphrase_file = \"{}\"\n{body}\n",
            dir.join("data").display(),
            passphrase.display()
        );
        let path = dir.join("vault.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    /// The problems' keys and messages, one string each.
    pub fn problems(result: Result<Config, ConfigErrors>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// A namespace, a role and a client that most sections can lean on.
    pub const BASE: &str = r#"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"
[roles.backend]
operations = ["tokenize"]
namespaces = ["retail"]
[clients.crm]
role = "backend"
api_key_hash = "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$8yk3cl6MbT1G1AmQWa0BDdTSQ/r9o3DRIY7qkOKAR1Q"
"#;
}
