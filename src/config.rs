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

mod limits;

pub use limits::Limits;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::crypto::tokens::TokenFormat;
use crate::crypto::wrapping::KekSource;
use crate::policy::{ClientSpec, Operation, Reveal, Role, Scope};
use crate::telemetry::{LogFormat, LogSettings};
use crate::vault::normalize::Normalization;

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

/// One field rule of a callback: a selector, and whether the field is a
/// template holding `{{TOKEN}}` placeholders rather than a token.
#[derive(Debug)]
pub struct CallbackField {
    /// Where the field is.
    pub selector: crate::payload::Selector,
    /// True: replace `{{TOKEN}}` occurrences; false: the whole field is a token.
    pub placeholders: bool,
}

/// `[[callbacks]]`: a signed activation callback from the platform.
#[derive(Debug)]
pub struct CallbackSpec {
    /// Name (in logs and audit records).
    pub name: String,
    /// Path on the vault, e.g. `/callbacks/sms`.
    pub path: String,
    /// Namespace the tokens belong to.
    pub namespace: String,
    /// Purpose the detokenization stands for.
    pub purpose: String,
    /// Role the callback acts with.
    pub role: String,
    /// HMAC secret (`whsec_<base64>` or raw text), from a file or variable.
    pub secret: SecretRef,
    /// Header carrying the message id.
    pub id_header: String,
    /// Header carrying the timestamp (unix seconds).
    pub timestamp_header: String,
    /// Header carrying the signatures (`v1,<base64>`, space-separated).
    pub signature_header: String,
    /// Largest accepted clock difference.
    pub tolerance: std::time::Duration,
    /// Source addresses allowed; empty allows any.
    pub allow_from: Vec<IpNet>,
    /// What to detokenize.
    pub fields: Vec<CallbackField>,
    /// Provider URL to forward the revealed body to; none: answer it.
    pub forward: Option<String>,
    /// Headers injected towards the provider.
    pub headers: Vec<(String, SecretRef)>,
    /// Time to connect to the provider.
    pub connect_timeout: std::time::Duration,
    /// Time for the whole provider exchange.
    pub timeout: std::time::Duration,
    /// Extra CA certificates (PEM) for the provider.
    pub ca_bundle: Option<PathBuf>,
    /// Only connections that presented a client certificate from
    /// `tls_client_ca` may call.
    pub require_client_cert: bool,
    /// The callback answers revealed values to its caller instead of
    /// forwarding them (`reveal_to_caller = true`, required when there is
    /// no `forward`).
    pub reveal_to_caller: bool,
}

/// Default lifetime of an access token from the CleverTap surface's token
/// endpoint.
pub const DEFAULT_ACCESS_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Longest access-token lifetime accepted.
const MAX_ACCESS_TOKEN_TTL_SECS: u64 = 86_400;

/// `[clevertap]`: the CleverTap Token Vault API surface, mounted on one
/// namespace. The API carries no data class, so each value is classified.
#[derive(Debug, Clone)]
pub struct ClevertapSpec {
    /// Namespace every call of the surface works in.
    pub namespace: String,
    /// Class for values that are email addresses (none: no such rule).
    pub email_class: Option<String>,
    /// Class for values that look like E.164 phone numbers.
    pub phone_class: Option<String>,
    /// Class for every other value.
    pub default_class: String,
    /// Lifetime of the access tokens the surface issues.
    pub access_token_ttl: std::time::Duration,
    /// The `metadata` key whose value names the customer (data subject) of
    /// the values of a tokenize call; none: calls carry no subject.
    pub subject_metadata_key: Option<String>,
}

/// What a route does with PII found in fields no rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnselectedPii {
    /// Refuse the request (422); nothing is forwarded.
    Block,
    /// Tokenize the whole field as `unselected_class`.
    Tokenize,
    /// Forward, and log and audit the finding (never the value).
    Report,
}

/// One field rule of a route: a selector and the class to tokenize as.
#[derive(Debug)]
pub struct FieldRule {
    /// Where the field is.
    pub selector: crate::payload::Selector,
    /// The class its value is tokenized as.
    pub class: String,
}

/// A field rule on the query string: the parameter's value is tokenized as
/// `class` (`{ query = "email", class = "email" }`).
#[derive(Debug, Clone)]
pub struct QueryRule {
    /// Parameter name, as decoded.
    pub name: String,
    /// The class its value is tokenized as.
    pub class: String,
}

/// `[[routes]]`: an egress route.
#[derive(Debug)]
pub struct RouteSpec {
    /// Route name (in logs and audit records).
    pub name: String,
    /// Path prefix on the vault, e.g. `/clevertap`.
    pub path_prefix: String,
    /// Upstream base URL; the rest of the path and the query are appended.
    pub upstream: String,
    /// Namespace the route tokenizes in.
    pub namespace: String,
    /// Clients that may use the route.
    pub clients: BTreeSet<String>,
    /// Headers injected upstream, with values from files or variables.
    pub headers: Vec<(String, SecretRef)>,
    /// Field rules on the body.
    pub fields: Vec<FieldRule>,
    /// Field rules on the query string.
    pub query_fields: Vec<QueryRule>,
    /// The request header that carries the vault API key, for backends
    /// whose platform library cannot send `Authorization` (lower-case; one
    /// of `headers`, so the key is replaced before anything goes upstream).
    pub client_key_header: Option<String>,
    /// What to do with unselected PII.
    pub unselected_pii: UnselectedPii,
    /// Class for `unselected_pii = "tokenize"`.
    pub unselected_class: Option<String>,
    /// Deepest nesting accepted in a body.
    pub max_depth: usize,
    /// Time to connect upstream.
    pub connect_timeout: std::time::Duration,
    /// Time for the whole upstream exchange.
    pub timeout: std::time::Duration,
    /// Extra CA certificates (PEM) to trust for this upstream.
    pub ca_bundle: Option<PathBuf>,
    /// Only callers authenticated by a client certificate may use the route.
    pub require_client_cert: bool,
    /// Request content types the route accepts.
    pub content_types: Vec<String>,
    /// Purpose of the response rules' detokenization.
    pub purpose: Option<String>,
    /// Response fields to detokenize for callers allowed the purpose.
    pub response_fields: Vec<crate::payload::Selector>,
    /// Where each record names its customer (the data subject), e.g.
    /// `$.d[*].identity`: the fields selected in a record are linked to the
    /// subject found in that record.
    pub subject: Option<crate::payload::Selector>,
}

/// `[server]`: where and how the vault listens.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address and port to bind.
    pub listen: SocketAddr,
    /// Certificate chain and key for HTTPS; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// CA certificates (PEM) that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Allows plain HTTP on a non-loopback address.
    pub insecure_allow_plaintext: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most items in one tokenize or detokenize request.
    pub max_batch_items: usize,
}

/// PEM files of the server certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[storage]`
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Directory holding `vault.db` and the keyring.
    pub data_dir: PathBuf,
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

/// `[keys]`: where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KeySettings {
    /// An argon2id-stretched passphrase, read from a file or a variable.
    Passphrase(SecretRef),
    /// A 32-byte key file supplied by the customer.
    KeyFile(PathBuf),
    /// A key that lives only in memory (`serve --dev`); never from a file.
    Ephemeral,
}

/// A secret given by reference, never inline.
#[derive(Debug, Clone)]
pub enum SecretRef {
    /// Read from this file (mode 0600 or stricter).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

impl SecretRef {
    /// Reads the secret (a trailing newline in a file is dropped). The error
    /// names the file or variable, never the content.
    pub fn read(&self) -> Result<Zeroizing<String>, String> {
        match self {
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok(Zeroizing::new(
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                ))
            }
            Self::Env(name) => std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .map(Zeroizing::new)
                .ok_or_else(|| format!("environment variable {name} is not set")),
        }
    }
}

/// `[namespaces.NAME]`
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    /// Domain of email-shaped tokens.
    pub token_domain: String,
    /// `[namespaces.NAME.classes.CLASS]`
    pub classes: BTreeMap<String, ClassSpec>,
}

/// `[namespaces.NAME.classes.CLASS]`
#[derive(Debug, Clone)]
pub struct ClassSpec {
    /// Normalization applied before indexing and sealing.
    pub normalize: Normalization,
    /// Shape of the tokens.
    pub format: TokenFormat,
    /// Same value, same token (through the blind index).
    pub deterministic: bool,
    /// Number blocks (E.164 prefixes) phone tokens are drawn from; empty:
    /// any number of the value's country.
    pub token_prefixes: Vec<String>,
    /// Days a token of this class is kept after it was last used
    /// (tokenized or revealed); none: kept until forgotten.
    pub retain_days: Option<u32>,
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
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
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

/// `TOKENVAULT_SECTION__KEY` variables. Only variables with `__` are config
/// keys: every key lives in a section, and this keeps TOKENVAULT_PASSPHRASE,
/// TOKENVAULT_CONFIG and friends from being read as unknown keys.
fn config_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

fn extraction_problems(errors: figment::Error) -> ConfigErrors {
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

impl Limits {
    /// `[limits]` from `TOKENVAULT_LIMITS__*` alone, for `serve --dev`,
    /// which reads no file.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        #[derive(Deserialize, Default)]
        struct OnlyLimits {
            #[serde(default)]
            limits: limits::RawLimits,
        }
        let raw: OnlyLimits = Figment::new()
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| key.as_str().to_ascii_lowercase().starts_with("limits__"))
                    .split("__"),
            )
            .extract()
            .map_err(extraction_problems)?;
        let mut problems = Vec::new();
        let limits = raw.limits.validate(&mut problems);
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

impl Config {
    /// The built-in configuration of `serve --dev`: namespace `default` with
    /// one class of each kind, a root role, data under `data_dir`.
    pub fn dev(listen: SocketAddr, data_dir: PathBuf, root_key_hash: String) -> Self {
        let class = |normalize, format, deterministic| ClassSpec {
            normalize,
            format,
            deterministic,
            token_prefixes: Vec::new(),
            retain_days: None,
        };
        let classes = BTreeMap::from([
            (
                "email".to_owned(),
                class(Normalization::Email, TokenFormat::Email, true),
            ),
            (
                "phone".to_owned(),
                class(Normalization::E164, TokenFormat::Phone, true),
            ),
            (
                "name".to_owned(),
                class(Normalization::Trim, TokenFormat::Opaque, true),
            ),
            (
                "account".to_owned(),
                class(Normalization::Trim, TokenFormat::Alnum, true),
            ),
            (
                "card".to_owned(),
                class(Normalization::Trim, TokenFormat::KeepLast4, true),
            ),
            (
                "note".to_owned(),
                class(Normalization::None, TokenFormat::Opaque, false),
            ),
        ]);
        let root = Role {
            operations: [
                Operation::Tokenize,
                Operation::Detokenize,
                Operation::Forget,
                Operation::AuditRead,
                Operation::Consent,
                Operation::MetricsRead,
                Operation::SubjectForget,
                Operation::SubjectExport,
                Operation::SubjectCorrect,
                // No backup: the dev key exists only in memory, so a
                // backup could never be opened.
            ]
            .into(),
            namespaces: Scope::Any,
            classes: Scope::Any,
            purposes: Scope::Any,
            reveal: Reveal::Plain,
            reveal_by_purpose: BTreeMap::new(),
            // The CleverTap SDKs send no purpose unless told to.
            clevertap_purpose: Some("support".to_owned()),
        };
        Self {
            server: ServerSettings {
                listen,
                tls: None,
                client_ca: None,
                insecure_allow_plaintext: false,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            },
            storage: StorageSettings { data_dir },
            keys: KeySettings::Ephemeral,
            namespaces: BTreeMap::from([(
                "default".to_owned(),
                NamespaceSpec {
                    token_domain: DEFAULT_TOKEN_DOMAIN.to_owned(),
                    classes,
                },
            )]),
            roles: BTreeMap::from([("root".to_owned(), root)]),
            log: LogSettings::default(),
            routes: Vec::new(),
            callbacks: Vec::new(),
            clevertap: Some(ClevertapSpec {
                namespace: "default".to_owned(),
                email_class: Some("email".to_owned()),
                phone_class: Some("phone".to_owned()),
                default_class: "name".to_owned(),
                access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
                subject_metadata_key: Some("identity".to_owned()),
            }),
            limits: Limits::default(),
            clients: BTreeMap::from([(
                "root".to_owned(),
                ClientSpec {
                    role: "root".to_owned(),
                    api_key_hash: Some(root_key_hash),
                    cert_identity: None,
                    allow_from: Vec::new(),
                    budget: crate::policy::Budget::default(),
                },
            )]),
        }
    }
}

/// Where systemd puts the credentials of `LoadCredential=`.
pub const SYSTEMD_CREDENTIALS: &str = "/run/credentials/";

impl KeySettings {
    /// The secret file, when it is a systemd credential that exists only
    /// inside the running unit and this process is not that unit (so it
    /// cannot be checked here).
    pub fn unloaded_credential(&self) -> Option<&Path> {
        let path = match self {
            Self::Passphrase(SecretRef::File(path)) | Self::KeyFile(path) => path,
            _ => return None,
        };
        let inside_unit = std::env::var_os("CREDENTIALS_DIRECTORY").is_some();
        (path.starts_with(SYSTEMD_CREDENTIALS) && !inside_unit && !path.exists())
            .then_some(path.as_path())
    }

    /// Reads the key-encryption material this setting points at.
    pub fn kek_source(&self) -> Result<KekSource, Problem> {
        match self {
            Self::Passphrase(SecretRef::File(path)) => {
                check_secret_file("keys.passphrase_file", path)?;
                let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|error| {
                    Problem::new(
                        "keys.passphrase_file",
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?);
                // A trailing newline is an editor's, not the operator's.
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                Ok(KekSource::Passphrase(bytes))
            }
            Self::Passphrase(SecretRef::Env(name)) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => {
                    Ok(KekSource::Passphrase(Zeroizing::new(value.into_bytes())))
                }
                _ => Err(Problem::new(
                    "keys.passphrase_env",
                    format!("environment variable {name} is not set"),
                )
                .hint(format!(
                    "export {name} before starting tokenvault, or use passphrase_file"
                ))),
            },
            Self::KeyFile(path) => {
                check_secret_file("keys.key_file", path)?;
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|error| {
                    Problem::new(
                        "keys.key_file",
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Problem::new(
                        "keys.key_file",
                        format!("{} must hold exactly 32 raw bytes", path.display()),
                    )
                    .hint(format!(
                        "create one with: head -c 32 /dev/urandom > {}",
                        path.display()
                    ))
                })?;
                Ok(KekSource::KeyFile(Zeroizing::new(key)))
            }
            Self::Ephemeral => Err(Problem::new(
                "keys",
                "the in-memory key of --dev has no source to read",
            )),
        }
    }
}

/// Refuses two callbacks that share a secret (the same file or variable, or
/// the same text): the Standard Webhooks signature covers the message id,
/// timestamp and body, not the path, so a message signed for one callback
/// would be genuine at the other. A secret that cannot be read here (a
/// systemd credential) is compared when the server builds its callbacks.
fn check_callback_secrets(callbacks: &[CallbackSpec], problems: &mut Vec<Problem>) {
    let read: Vec<Option<Zeroizing<String>>> = callbacks
        .iter()
        .map(|spec| spec.secret.read().ok())
        .collect();
    for (i, spec) in callbacks.iter().enumerate() {
        let shared = callbacks[..i].iter().enumerate().find(|(j, earlier)| {
            let same_source = match (&spec.secret, &earlier.secret) {
                (SecretRef::File(a), SecretRef::File(b)) => {
                    a == b
                        || a.canonicalize()
                            .ok()
                            .is_some_and(|a| b.canonicalize().ok() == Some(a))
                }
                (SecretRef::Env(a), SecretRef::Env(b)) => a == b,
                _ => false,
            };
            same_source || (read[i].is_some() && read[i] == read[*j])
        });
        if let Some((_, earlier)) = shared {
            let key = match spec.secret {
                SecretRef::File(_) => "secret_file",
                SecretRef::Env(_) => "secret_env",
            };
            problems.push(
                Problem::new(
                    format!("callbacks.{}.{key}", spec.name),
                    format!(
                        "shares its secret with callback `{}`: the signature does not cover the path, so a message signed for one is genuine at the other",
                        earlier.name
                    ),
                )
                .hint("give every callback its own secret (and the platform each endpoint's)"),
            );
        }
    }
}

/// Refuses a secret file that is missing or readable by group or others.
fn check_secret_file(key: &str, path: &Path) -> Result<(), Problem> {
    let metadata = std::fs::metadata(path).map_err(|error| {
        Problem::new(key, format!("cannot read {}: {error}", path.display()))
            .hint("create the file, owned by the tokenvault user, with mode 600")
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Problem::new(
            key,
            format!(
                "{} is readable by group or others (mode {mode:o})",
                path.display()
            ),
        )
        .hint(format!("chmod 600 {}", path.display())));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Raw structures, as serde reads them

const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
const DEFAULT_DATA_DIR: &str = "/var/lib/tokenvault";
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const DEFAULT_MAX_BATCH_ITEMS: usize = 10_000;

type Unknown = BTreeMap<String, IgnoredAny>;

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    keys: Option<RawKeys>,
    #[serde(default)]
    namespaces: BTreeMap<String, RawNamespace>,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    routes: Vec<RawRoute>,
    clevertap: Option<RawClevertap>,
    #[serde(default)]
    callbacks: Vec<RawCallback>,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawCallback {
    name: Option<String>,
    path: Option<String>,
    namespace: Option<String>,
    purpose: Option<String>,
    role: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    id_header: Option<String>,
    timestamp_header: Option<String>,
    signature_header: Option<String>,
    tolerance_secs: Option<u64>,
    #[serde(default)]
    allow_from: Vec<String>,
    #[serde(default)]
    fields: Vec<RawCallbackField>,
    forward: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, RawSecret>,
    connect_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    ca_bundle: Option<PathBuf>,
    #[serde(default)]
    insecure_allow_http_upstream: bool,
    #[serde(default)]
    require_client_cert: bool,
    #[serde(default)]
    reveal_to_caller: bool,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawCallbackField {
    select: Option<String>,
    #[serde(default)]
    placeholders: bool,
    #[serde(flatten)]
    unknown: Unknown,
}

impl RawCallback {
    fn validate(
        self,
        index: usize,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        roles: &BTreeMap<String, Role>,
        problems: &mut Vec<Problem>,
    ) -> Option<CallbackSpec> {
        let name = self.name.clone().unwrap_or_else(|| format!("#{index}"));
        let section = format!("callbacks.{name}");
        unknown_keys(problems, &section, &self.unknown);
        let start = problems.len();
        if self.name.as_deref().is_none_or(|n| !valid_name(n)) {
            problems.push(Problem::new(
                format!("{section}.name"),
                "a callback needs a name of lower-case letters, digits, `_` or `-`",
            ));
        }
        let path = self.path.unwrap_or_default();
        let path_ok = path.starts_with('/')
            && path.len() > 1
            && !path.ends_with('/')
            && !path.starts_with("/v1")
            && !path.starts_with("/ct-vault")
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !path_ok {
            problems.push(
                Problem::new(
                    format!("{section}.path"),
                    format!("`{path}` is not a usable path"),
                )
                .hint("write it like \"/callbacks/sms\": a leading slash, not under /v1"),
            );
        }
        let namespace = self.namespace.unwrap_or_default();
        if !namespaces.contains_key(&namespace) {
            problems.push(Problem::new(
                format!("{section}.namespace"),
                format!("namespace `{namespace}` is not defined"),
            ));
        }
        let purpose = self.purpose.unwrap_or_default();
        if purpose.trim().is_empty() {
            problems.push(Problem::new(format!("{section}.purpose"), "missing"));
        }
        // Whether the role may detokenize for the purpose is checked per
        // call, like every caller's, and refused with 403 and an audit record.
        let role = self.role.unwrap_or_default();
        if !roles.contains_key(&role) {
            problems.push(
                Problem::new(
                    format!("{section}.role"),
                    format!("role `{role}` is not defined"),
                )
                .hint("name the [roles.X] the callback detokenizes with"),
            );
        }
        let secret = match (self.secret_file, self.secret_env) {
            (Some(file), None) => {
                if let Err(problem) = check_secret_file(&format!("{section}.secret_file"), &file) {
                    problems.push(problem);
                }
                Some(SecretRef::File(file))
            }
            (None, Some(env)) => Some(SecretRef::Env(env)),
            _ => {
                problems.push(Problem::new(
                    format!("{section}.secret_file"),
                    "give exactly one of secret_file and secret_env",
                ));
                None
            }
        };
        let allow_from = parse_cidrs(&format!("{section}.allow_from"), &self.allow_from, problems);
        if self.fields.is_empty() {
            problems.push(Problem::new(
                format!("{section}.fields"),
                "a callback needs at least one field rule",
            ));
        }
        let mut fields = Vec::new();
        for (i, raw) in self.fields.into_iter().enumerate() {
            let key = format!("{section}.fields[{i}]");
            unknown_keys(problems, &key, &raw.unknown);
            let text = raw.select.unwrap_or_default();
            match crate::payload::Selector::parse(&text) {
                Ok(selector) => fields.push(CallbackField {
                    selector,
                    placeholders: raw.placeholders,
                }),
                Err(reason) => problems.push(Problem::new(
                    format!("{key}.select"),
                    format!("`{text}` is not a valid selector: {reason}"),
                )),
            }
        }
        let forward = self.forward.map(|url| {
            upstream_url(
                &format!("{section}.forward"),
                Some(url),
                self.insecure_allow_http_upstream,
                problems,
            )
        });
        match (&forward, self.reveal_to_caller) {
            (None, false) => problems.push(
                Problem::new(
                    format!("{section}.forward"),
                    "without forward, the callback answers the revealed values to whoever called it",
                )
                .hint("set forward to the provider's URL, or set reveal_to_caller = true if the caller is the sender"),
            ),
            (Some(_), true) => problems.push(Problem::new(
                format!("{section}.reveal_to_caller"),
                "give one of forward and reveal_to_caller = true",
            )),
            _ => {}
        }
        let headers = injected_headers(&section, self.headers, problems);
        let header_name = |value: Option<String>, default: &str| {
            value
                .unwrap_or_else(|| default.to_owned())
                .to_ascii_lowercase()
        };
        let millis = |value: Option<u64>, default: u64| {
            std::time::Duration::from_millis(value.unwrap_or(default).max(1))
        };
        let tolerance = match self.tolerance_secs {
            Some(0) => {
                problems.push(Problem::new(
                    format!("{section}.tolerance_secs"),
                    "must be at least 1",
                ));
                std::time::Duration::from_secs(300)
            }
            value => std::time::Duration::from_secs(value.unwrap_or(300)),
        };
        if problems.len() > start {
            return None;
        }
        Some(CallbackSpec {
            name,
            path,
            namespace,
            purpose,
            role,
            secret: secret?,
            id_header: header_name(self.id_header, "webhook-id"),
            timestamp_header: header_name(self.timestamp_header, "webhook-timestamp"),
            signature_header: header_name(self.signature_header, "webhook-signature"),
            tolerance,
            allow_from,
            fields,
            forward,
            headers,
            connect_timeout: millis(self.connect_timeout_ms, 5_000),
            timeout: millis(self.timeout_ms, 30_000),
            ca_bundle: self.ca_bundle,
            require_client_cert: self.require_client_cert,
            reveal_to_caller: self.reveal_to_caller,
        })
    }
}

#[derive(Deserialize)]
struct RawClevertap {
    #[serde(default)]
    enabled: bool,
    namespace: Option<String>,
    email_class: Option<String>,
    phone_class: Option<String>,
    default_class: Option<String>,
    access_token_ttl_secs: Option<u64>,
    subject_metadata_key: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawRoute {
    name: Option<String>,
    path_prefix: Option<String>,
    upstream: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, RawSecret>,
    #[serde(default)]
    fields: Vec<RawField>,
    unselected_pii: Option<String>,
    unselected_class: Option<String>,
    max_depth: Option<u64>,
    connect_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    ca_bundle: Option<PathBuf>,
    content_types: Option<Vec<String>>,
    purpose: Option<String>,
    #[serde(default)]
    response_fields: Vec<RawField>,
    subject: Option<String>,
    client_key_header: Option<String>,
    #[serde(default)]
    insecure_allow_http_upstream: bool,
    #[serde(default)]
    require_client_cert: bool,
    #[serde(flatten)]
    unknown: Unknown,
}

/// Headers injected upstream, each from an environment variable or a file.
fn injected_headers(
    section: &str,
    raw: BTreeMap<String, RawSecret>,
    problems: &mut Vec<Problem>,
) -> Vec<(String, SecretRef)> {
    let mut headers = Vec::new();
    for (header, secret) in raw {
        let key = format!("{section}.headers.{header}");
        unknown_keys(problems, &key, &secret.unknown);
        if actix_web::http::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems.push(Problem::new(&key, "not a valid header name"));
        }
        match (secret.env, secret.file) {
            (Some(env), None) => headers.push((header, SecretRef::Env(env))),
            (None, Some(file)) => {
                if let Err(problem) = check_secret_file(&key, &file) {
                    problems.push(problem);
                }
                headers.push((header, SecretRef::File(file)));
            }
            _ => problems.push(Problem::new(
                &key,
                "give exactly one of { env = \"VAR\" } or { file = \"/path\" }",
            )),
        }
    }
    headers
}

/// An upstream URL: https, or http when explicitly allowed.
fn upstream_url(
    key: &str,
    raw: Option<String>,
    insecure_allow_http: bool,
    problems: &mut Vec<Problem>,
) -> String {
    let upstream = raw.unwrap_or_default().trim_end_matches('/').to_owned();
    let https = upstream.starts_with("https://");
    let http_allowed = upstream.starts_with("http://") && insecure_allow_http;
    if !(https || http_allowed) || reqwest::Url::parse(&upstream).is_err() {
        problems.push(
            Problem::new(key, format!("`{upstream}` is not an https:// URL"))
                .hint("plain http:// upstreams need insecure_allow_http_upstream = true"),
        );
    }
    upstream
}

fn parse_cidrs(key: &str, raw: &[String], problems: &mut Vec<Problem>) -> Vec<IpNet> {
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

#[derive(Deserialize)]
struct RawSecret {
    env: Option<String>,
    file: Option<PathBuf>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawField {
    select: Option<String>,
    query: Option<String>,
    class: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// Deepest body nesting a route accepts unless it says otherwise.
pub const DEFAULT_MAX_DEPTH: usize = 32;

impl RawRoute {
    fn validate(
        self,
        index: usize,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        clients: &BTreeMap<String, ClientSpec>,
        problems: &mut Vec<Problem>,
    ) -> Option<RouteSpec> {
        let name = self.name.clone().unwrap_or_else(|| format!("#{index}"));
        let section = format!("routes.{name}");
        unknown_keys(problems, &section, &self.unknown);
        let start = problems.len();
        if self.name.as_deref().is_none_or(|n| !valid_name(n)) {
            problems.push(Problem::new(
                format!("{section}.name"),
                "a route needs a name of lower-case letters, digits, `_` or `-`",
            ));
        }
        let path_prefix = self.path_prefix.unwrap_or_default();
        let prefix_ok = path_prefix.starts_with('/')
            && path_prefix.len() > 1
            && !path_prefix.ends_with('/')
            && !path_prefix.starts_with("/v1")
            && !["/healthz", "/readyz"].contains(&path_prefix.as_str())
            && path_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !prefix_ok {
            problems.push(Problem::new(format!("{section}.path_prefix"), format!("`{path_prefix}` is not a usable path prefix"))
                .hint("write it like \"/clevertap\": a leading slash, no trailing slash, not under /v1"));
        }
        let upstream = upstream_url(
            &format!("{section}.upstream"),
            self.upstream,
            self.insecure_allow_http_upstream,
            problems,
        );
        let namespace = self.namespace.unwrap_or_default();
        let spec = namespaces.get(&namespace);
        if spec.is_none() {
            problems.push(Problem::new(
                format!("{section}.namespace"),
                format!("namespace `{namespace}` is not defined"),
            ));
        }
        for client in &self.clients {
            if !clients.contains_key(client) {
                problems.push(Problem::new(
                    format!("{section}.clients"),
                    format!("client `{client}` is not defined"),
                ));
            }
        }
        let headers = injected_headers(&section, self.headers, problems);
        let class_known = |class: &str| spec.is_some_and(|ns| ns.classes.contains_key(class));
        let mut fields = Vec::new();
        let mut query_fields = Vec::new();
        for (i, raw) in self.fields.into_iter().enumerate() {
            let key = format!("{section}.fields[{i}]");
            unknown_keys(problems, &key, &raw.unknown);
            let class = raw.class.unwrap_or_default();
            if spec.is_some() && !class_known(&class) {
                problems.push(Problem::new(
                    format!("{key}.class"),
                    format!("class `{class}` is not defined in namespace `{namespace}`"),
                ));
            }
            match (raw.select, raw.query) {
                (None, Some(name)) if !name.is_empty() => {
                    query_fields.push(QueryRule { name, class });
                }
                (Some(select), None) => match crate::payload::Selector::parse(&select) {
                    Ok(selector) => fields.push(FieldRule { selector, class }),
                    Err(message) => problems.push(Problem::new(format!("{key}.select"), message)),
                },
                _ => problems.push(Problem::new(
                    format!("{key}.select"),
                    "give exactly one of select (a body selector) and query (a query parameter)",
                )),
            }
        }
        let client_key_header = self.client_key_header.map(|name| name.to_ascii_lowercase());
        if let Some(name) = &client_key_header {
            let injected = headers
                .iter()
                .any(|(header, _)| header.eq_ignore_ascii_case(name));
            if !injected {
                problems.push(
                    Problem::new(
                        format!("{section}.client_key_header"),
                        format!("`{name}` is not one of the route's injected headers"),
                    )
                    .hint("the header that carries the vault key must be replaced by one from `headers`, so that the key never travels upstream"),
                );
            }
        }
        let unselected_pii = parse_enum::<UnselectedPii>(
            problems,
            &format!("{section}.unselected_pii"),
            self.unselected_pii.as_deref().unwrap_or("block"),
            "block, tokenize, report",
        )
        .unwrap_or(UnselectedPii::Block);
        if unselected_pii == UnselectedPii::Tokenize {
            match &self.unselected_class {
                Some(class) if class_known(class) => {}
                _ => problems.push(Problem::new(
                    format!("{section}.unselected_class"),
                    "unselected_pii = \"tokenize\" needs unselected_class, a class of the route's namespace",
                )),
            }
        }
        let max_depth = match self.max_depth {
            None => DEFAULT_MAX_DEPTH,
            Some(depth @ 1..=100) => depth as usize,
            Some(_) => {
                problems.push(Problem::new(
                    format!("{section}.max_depth"),
                    "must be between 1 and 100",
                ));
                DEFAULT_MAX_DEPTH
            }
        };
        if let Some(bundle) = &self.ca_bundle {
            if !bundle.is_file() {
                problems.push(Problem::new(
                    format!("{section}.ca_bundle"),
                    format!("{} does not exist", bundle.display()),
                ));
            }
        }
        let content_types = self
            .content_types
            .unwrap_or_else(|| vec!["application/json".to_owned()]);
        for content_type in &content_types {
            if !["application/json", "application/x-www-form-urlencoded"]
                .contains(&content_type.as_str())
            {
                problems.push(Problem::new(
                    format!("{section}.content_types"),
                    format!("`{content_type}` is not one of: application/json, application/x-www-form-urlencoded"),
                ));
            }
        }
        let mut response_fields = Vec::new();
        for (i, raw) in self.response_fields.into_iter().enumerate() {
            let key = format!("{section}.response_fields[{i}]");
            unknown_keys(problems, &key, &raw.unknown);
            if raw.class.is_some() || raw.query.is_some() {
                problems.push(Problem::new(
                    format!("{key}.class"),
                    "response fields take only select: a token knows its class",
                ));
            }
            match crate::payload::Selector::parse(raw.select.as_deref().unwrap_or("")) {
                Ok(selector) => response_fields.push(selector),
                Err(message) => problems.push(Problem::new(format!("{key}.select"), message)),
            }
        }
        if !response_fields.is_empty() && self.purpose.as_deref().is_none_or(str::is_empty) {
            problems.push(Problem::new(
                format!("{section}.purpose"),
                "response_fields need the purpose they reveal for",
            ));
        }
        let subject = self.subject.and_then(|text| {
            crate::payload::Selector::parse(&text)
                .map_err(|message| {
                    problems.push(Problem::new(format!("{section}.subject"), message))
                })
                .ok()
        });
        let millis = |value: Option<u64>, default: u64| {
            std::time::Duration::from_millis(value.unwrap_or(default).max(1))
        };
        if problems.len() > start {
            return None;
        }
        Some(RouteSpec {
            name,
            path_prefix,
            upstream,
            namespace,
            clients: self.clients.into_iter().collect(),
            headers,
            fields,
            query_fields,
            client_key_header,
            unselected_pii,
            unselected_class: self.unselected_class,
            max_depth,
            connect_timeout: millis(self.connect_timeout_ms, 5_000),
            timeout: millis(self.timeout_ms, 30_000),
            ca_bundle: self.ca_bundle,
            require_client_cert: self.require_client_cert,
            content_types,
            purpose: self.purpose,
            response_fields,
            subject,
        })
    }
}

#[derive(Deserialize, Default)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    directory: Option<PathBuf>,
    retention_days: Option<u64>,
    #[serde(flatten)]
    unknown: Unknown,
}

impl RawLog {
    fn validate(self, problems: &mut Vec<Problem>) -> LogSettings {
        unknown_keys(problems, "log", &self.unknown);
        let defaults = LogSettings::default();
        let format = self
            .format
            .as_deref()
            .and_then(|format| {
                parse_enum::<LogFormat>(problems, "log.format", format, "plain, json")
            })
            .unwrap_or(defaults.format);
        let level = self.level.unwrap_or(defaults.level);
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            problems.push(
                Problem::new("log.level", format!("`{level}` is not a log filter"))
                    .hint("use error, warn, info, debug or trace"),
            );
        }
        let retention_days = match self.retention_days {
            Some(0) => {
                problems.push(Problem::new("log.retention_days", "must be at least 1"));
                defaults.retention_days
            }
            Some(days) => usize::try_from(days).unwrap_or(usize::MAX),
            None => defaults.retention_days,
        };
        LogSettings {
            format,
            level,
            directory: self.directory,
            retention_days,
        }
    }
}

#[derive(Deserialize, Default)]
struct RawServer {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    #[serde(default)]
    insecure_allow_plaintext: bool,
    max_body_bytes: Option<u64>,
    max_batch_items: Option<u64>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize, Default)]
struct RawStorage {
    data_dir: Option<PathBuf>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawKeys {
    source: Option<String>,
    passphrase_file: Option<PathBuf>,
    passphrase_env: Option<String>,
    key_file: Option<PathBuf>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawNamespace {
    token_domain: Option<String>,
    #[serde(default)]
    classes: BTreeMap<String, RawClass>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawClass {
    normalize: Option<String>,
    format: Option<String>,
    deterministic: Option<bool>,
    #[serde(default)]
    token_prefixes: Vec<String>,
    retain_days: Option<u64>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawRole {
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    classes: Option<Vec<String>>,
    #[serde(default)]
    purposes: Vec<String>,
    reveal: Option<String>,
    clevertap_purpose: Option<String>,
    #[serde(default)]
    reveal_by_purpose: BTreeMap<String, String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Deserialize)]
struct RawClient {
    role: Option<String>,
    api_key_hash: Option<String>,
    cert_identity: Option<String>,
    #[serde(default)]
    allow_from: Vec<String>,
    budget_per_minute: Option<u64>,
    budget_per_day: Option<u64>,
    #[serde(flatten)]
    unknown: Unknown,
}

// ---------------------------------------------------------------------------
// Validation

/// A certificate name as compared: DNS names and common names are
/// case-insensitive, URIs are kept as written.
pub fn normalize_identity(name: &str) -> String {
    if name.contains("://") {
        name.to_owned()
    } else {
        name.to_ascii_lowercase()
    }
}

/// Client certificates need `tls_client_ca`, and one identity names one
/// client.
fn check_client_certificates(
    mtls: bool,
    clients: &BTreeMap<String, ClientSpec>,
    routes: &[RouteSpec],
    callbacks: &[CallbackSpec],
    problems: &mut Vec<Problem>,
) {
    let hint = "set server.tls_client_ca to the CA that issues client certificates";
    let mut identities: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, client) in clients {
        let Some(identity) = &client.cert_identity else {
            continue;
        };
        if !mtls {
            problems.push(
                Problem::new(
                    format!("clients.{name}.cert_identity"),
                    "needs client certificates",
                )
                .hint(hint),
            );
        }
        if let Some(other) = identities.insert(identity, name) {
            problems.push(Problem::new(
                format!("clients.{name}.cert_identity"),
                format!("client `{other}` has the same identity"),
            ));
        }
    }
    if mtls {
        return;
    }
    let requiring = routes
        .iter()
        .filter(|r| r.require_client_cert)
        .map(|r| format!("routes.{}", r.name))
        .chain(
            callbacks
                .iter()
                .filter(|c| c.require_client_cert)
                .map(|c| format!("callbacks.{}", c.name)),
        );
    for section in requiring {
        problems.push(
            Problem::new(
                format!("{section}.require_client_cert"),
                "needs client certificates",
            )
            .hint(hint),
        );
    }
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

fn valid_domain(domain: &str) -> bool {
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

fn unknown_keys(problems: &mut Vec<Problem>, section: &str, unknown: &Unknown) {
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

fn parse_enum<T: for<'de> Deserialize<'de>>(
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

fn scope(values: &[String]) -> Scope {
    if values.iter().any(|v| v == "*") {
        Scope::Any
    } else {
        Scope::Only(values.iter().cloned().collect())
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        unknown_keys(&mut problems, "", &self.unknown);
        let server = self.server.validate(&mut problems);
        unknown_keys(&mut problems, "storage", &self.storage.unknown);
        let storage = StorageSettings {
            data_dir: self
                .storage
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        };
        let keys = match self.keys {
            Some(keys) => keys.validate(&mut problems),
            None => {
                problems.push(Problem::new("keys", "section is missing").hint(
                    "add [keys] with source = \"passphrase\" and passphrase_file, or source = \"keyfile\" and key_file",
                ));
                None
            }
        };
        let mut namespaces = BTreeMap::new();
        for (name, raw) in self.namespaces {
            if let Some(spec) = raw.validate(&name, &mut problems) {
                namespaces.insert(name, spec);
            }
        }
        let mut roles = BTreeMap::new();
        for (name, raw) in self.roles {
            if let Some(role) = raw.validate(&name, &namespaces, &mut problems) {
                roles.insert(name, role);
            }
        }
        let log = self.log.validate(&mut problems);
        let limits = self.limits.validate(&mut problems);
        let routes_raw = self.routes;
        let mut clients = BTreeMap::new();
        for (name, raw) in self.clients {
            if let Some(client) = raw.validate(&name, &roles, &mut problems) {
                clients.insert(name, client);
            }
        }
        let mut routes = Vec::new();
        let mut prefixes = BTreeSet::new();
        for (index, raw) in routes_raw.into_iter().enumerate() {
            if let Some(route) = raw.validate(index, &namespaces, &clients, &mut problems) {
                if !prefixes.insert(route.path_prefix.clone()) {
                    problems.push(Problem::new(
                        format!("routes.{}.path_prefix", route.name),
                        "another route has the same prefix",
                    ));
                }
                routes.push(route);
            }
        }
        let clevertap = self
            .clevertap
            .and_then(|raw| raw.validate(&namespaces, &mut problems));
        let mut callbacks: Vec<CallbackSpec> = Vec::new();
        for (index, raw) in self.callbacks.into_iter().enumerate() {
            if let Some(callback) = raw.validate(index, &namespaces, &roles, &mut problems) {
                let taken = callbacks
                    .iter()
                    .any(|c| c.path == callback.path || c.name == callback.name)
                    || routes
                        .iter()
                        .any(|r| callback.path.starts_with(&r.path_prefix));
                if taken {
                    problems.push(Problem::new(
                        format!("callbacks.{}.path", callback.name),
                        "another callback or route has the same name or path",
                    ));
                }
                callbacks.push(callback);
            }
        }
        check_callback_secrets(&callbacks, &mut problems);
        let mtls = server.as_ref().is_some_and(|s| s.client_ca.is_some());
        check_client_certificates(mtls, &clients, &routes, &callbacks, &mut problems);
        match (server, keys) {
            (Some(server), Some(keys)) if problems.is_empty() => Ok(Config {
                server,
                storage,
                keys,
                namespaces,
                roles,
                clients,
                log,
                routes,
                clevertap,
                callbacks,
                limits,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

impl RawServer {
    fn validate(self, problems: &mut Vec<Problem>) -> Option<ServerSettings> {
        unknown_keys(problems, "server", &self.unknown);
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            problems.push(
                Problem::new(
                    "server.listen",
                    format!("`{listen_text}` is not an IP address and port"),
                )
                .hint("write it as 0.0.0.0:8443 or [::1]:8443"),
            )
        });
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                if !cert.is_file() {
                    problems.push(Problem::new(
                        "server.tls_cert",
                        format!("{} does not exist", cert.display()),
                    ));
                }
                if let Err(problem) = check_secret_file("server.tls_key", &key) {
                    problems.push(problem);
                }
                Some(TlsFiles { cert, key })
            }
            (None, None) => None,
            (Some(_), None) => {
                problems.push(Problem::new(
                    "server.tls_key",
                    "tls_cert is set but tls_key is not",
                ));
                None
            }
            (None, Some(_)) => {
                problems.push(Problem::new(
                    "server.tls_cert",
                    "tls_key is set but tls_cert is not",
                ));
                None
            }
        };
        let client_ca = self.tls_client_ca.inspect(|ca| {
            if tls.is_none() {
                problems.push(
                    Problem::new("server.tls_client_ca", "client certificates need TLS")
                        .hint("set tls_cert and tls_key too"),
                );
            } else if !ca.is_file() {
                problems.push(Problem::new(
                    "server.tls_client_ca",
                    format!("{} does not exist", ca.display()),
                ));
            }
        });
        if let Ok(listen) = listen {
            if tls.is_none() && !listen.ip().is_loopback() && !self.insecure_allow_plaintext {
                problems.push(
                    Problem::new("server.listen", format!("plain HTTP on non-loopback address {listen} is refused"))
                        .hint("set tls_cert and tls_key, or insecure_allow_plaintext = true behind a TLS proxy"),
                );
            }
        }
        let positive = |problems: &mut Vec<Problem>,
                        key: &str,
                        value: Option<u64>,
                        default: usize| match value {
            None => default,
            Some(0) => {
                problems.push(Problem::new(key, "must be greater than 0"));
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let max_body_bytes = positive(
            problems,
            "server.max_body_bytes",
            self.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
        );
        let max_batch_items = positive(
            problems,
            "server.max_batch_items",
            self.max_batch_items,
            DEFAULT_MAX_BATCH_ITEMS,
        );
        Some(ServerSettings {
            listen: listen.ok()?,
            tls,
            client_ca,
            insecure_allow_plaintext: self.insecure_allow_plaintext,
            max_body_bytes,
            max_batch_items,
        })
    }
}

impl RawKeys {
    fn validate(self, problems: &mut Vec<Problem>) -> Option<KeySettings> {
        unknown_keys(problems, "keys", &self.unknown);
        let settings = match self.source.as_deref() {
            Some("passphrase") => match (self.passphrase_file, self.passphrase_env) {
                (Some(file), None) => Some(KeySettings::Passphrase(SecretRef::File(file))),
                (None, Some(env)) => Some(KeySettings::Passphrase(SecretRef::Env(env))),
                _ => {
                    problems.push(Problem::new(
                        "keys.passphrase_file",
                        "source = \"passphrase\" needs exactly one of passphrase_file and passphrase_env",
                    ));
                    None
                }
            },
            Some("keyfile") => match self.key_file {
                Some(path) => Some(KeySettings::KeyFile(path)),
                None => {
                    problems.push(Problem::new(
                        "keys.key_file",
                        "source = \"keyfile\" needs key_file",
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(Problem::new(
                    "keys.source",
                    format!("`{other}` is not one of: passphrase, keyfile"),
                ));
                None
            }
            None => {
                problems.push(
                    Problem::new("keys.source", "missing")
                        .hint("set source = \"passphrase\" or \"keyfile\""),
                );
                None
            }
        }?;
        // Read (and permission-check) the secret now, so that `config check`
        // reports a bad secret file together with everything else; a systemd
        // credential exists only inside the running unit and is read there.
        if settings.unloaded_credential().is_none() {
            if let Err(problem) = settings.kek_source() {
                problems.push(problem);
            }
        }
        Some(settings)
    }
}

impl RawNamespace {
    fn validate(self, name: &str, problems: &mut Vec<Problem>) -> Option<NamespaceSpec> {
        let section = format!("namespaces.{name}");
        unknown_keys(problems, &section, &self.unknown);
        if !valid_name(name) {
            problems.push(Problem::new(
                &section,
                "name must be lower-case letters, digits, `_` or `-`",
            ));
        }
        let token_domain = self
            .token_domain
            .unwrap_or_else(|| DEFAULT_TOKEN_DOMAIN.to_owned());
        if !valid_domain(&token_domain) {
            problems.push(Problem::new(
                format!("{section}.token_domain"),
                format!("`{token_domain}` is not a domain name"),
            ));
        }
        if self.classes.is_empty() {
            problems.push(Problem::new(
                format!("{section}.classes"),
                "a namespace needs at least one class",
            ));
        }
        let mut classes = BTreeMap::new();
        for (class_name, raw) in self.classes {
            let key = format!("{section}.classes.{class_name}");
            unknown_keys(problems, &key, &raw.unknown);
            if !valid_name(&class_name) {
                problems.push(Problem::new(
                    &key,
                    "name must be lower-case letters, digits, `_` or `-`",
                ));
            }
            let normalize = parse_enum::<Normalization>(
                problems,
                &format!("{key}.normalize"),
                raw.normalize.as_deref().unwrap_or("none"),
                "email, e164, trim, none",
            );
            let format = parse_enum::<TokenFormat>(
                problems,
                &format!("{key}.format"),
                raw.format.as_deref().unwrap_or("opaque"),
                "opaque, email, phone, keep_last4, alnum",
            );
            if let (Some(normalize), Some(format)) = (normalize, format) {
                if format == TokenFormat::Phone && normalize != Normalization::E164 {
                    problems.push(Problem::new(
                        format!("{key}.normalize"),
                        "format = \"phone\" needs normalize = \"e164\" to find the country code",
                    ));
                }
                if !raw.token_prefixes.is_empty() && format != TokenFormat::Phone {
                    problems.push(Problem::new(
                        format!("{key}.token_prefixes"),
                        "number blocks apply to format = \"phone\" only",
                    ));
                }
                for prefix in &raw.token_prefixes {
                    if !crate::crypto::tokens::valid_block(prefix) {
                        problems.push(
                            Problem::new(
                                format!("{key}.token_prefixes"),
                                format!("`{prefix}` is not a usable number block"),
                            )
                            .hint(format!(
                                "write `+`, a country calling code and more digits, leaving at least {} digits of the 15 an E.164 number may have, e.g. \"+447700900\"",
                                crate::crypto::tokens::MIN_BLOCK_RANDOM_DIGITS
                            )),
                        );
                    }
                }
                let retain_days = raw.retain_days.and_then(|days| match u32::try_from(days) {
                    Ok(days @ 1..=36_500) => Some(days),
                    _ => {
                        problems.push(Problem::new(
                            format!("{key}.retain_days"),
                            "must be from 1 to 36500 (100 years)",
                        ));
                        None
                    }
                });
                classes.insert(
                    class_name,
                    ClassSpec {
                        normalize,
                        format,
                        deterministic: raw.deterministic.unwrap_or(true),
                        token_prefixes: raw.token_prefixes,
                        retain_days,
                    },
                );
            }
        }
        Some(NamespaceSpec {
            token_domain,
            classes,
        })
    }
}

impl RawRole {
    fn validate(
        self,
        name: &str,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        problems: &mut Vec<Problem>,
    ) -> Option<Role> {
        let section = format!("roles.{name}");
        unknown_keys(problems, &section, &self.unknown);
        let mut operations = BTreeSet::new();
        for operation in &self.operations {
            let parsed = parse_enum::<Operation>(
                problems,
                &format!("{section}.operations"),
                operation,
                "tokenize, detokenize, forget, audit_read, consent, metrics_read, subject_forget, subject_export, subject_correct, backup",
            );
            operations.extend(parsed);
        }
        for namespace in &self.namespaces {
            if namespace != "*" && !namespaces.contains_key(namespace) {
                problems.push(Problem::new(
                    format!("{section}.namespaces"),
                    format!("namespace `{namespace}` is not defined"),
                ));
            }
        }
        if let Some(classes) = &self.classes {
            for class in classes {
                let known =
                    class == "*" || namespaces.values().any(|ns| ns.classes.contains_key(class));
                if !known {
                    problems.push(Problem::new(
                        format!("{section}.classes"),
                        format!("class `{class}` is not defined in any namespace"),
                    ));
                }
            }
        }
        let data_operations = operations.iter().any(|op| {
            !matches!(
                op,
                Operation::AuditRead | Operation::MetricsRead | Operation::Backup
            )
        });
        if data_operations && self.namespaces.is_empty() {
            problems.push(
                Problem::new(
                    format!("{section}.namespaces"),
                    "a role with data operations needs at least one namespace",
                )
                .hint("list them, or use [\"*\"] for every namespace"),
            );
        }
        if operations.contains(&Operation::Detokenize) && self.purposes.is_empty() {
            problems.push(Problem::new(
                format!("{section}.purposes"),
                "a role with detokenize needs at least one allowed purpose",
            ));
        }
        let reveal = parse_enum::<Reveal>(
            problems,
            &format!("{section}.reveal"),
            self.reveal.as_deref().unwrap_or("masked"),
            "plain, masked",
        )?;
        let purposes = scope(&self.purposes);
        if let Some(purpose) = &self.clevertap_purpose {
            if !purposes.allows(purpose) {
                problems.push(
                    Problem::new(
                        format!("{section}.clevertap_purpose"),
                        format!("purpose `{purpose}` is not in the role's purposes"),
                    )
                    .hint("add it to purposes, or pick one of them"),
                );
            }
        }
        let mut reveal_by_purpose = BTreeMap::new();
        for (purpose, mode) in &self.reveal_by_purpose {
            let key = format!("{section}.reveal_by_purpose.{purpose}");
            if !purposes.allows(purpose) {
                problems.push(Problem::new(
                    &key,
                    format!("purpose `{purpose}` is not in the role's purposes"),
                ));
            }
            if let Some(mode) = parse_enum::<Reveal>(problems, &key, mode, "plain, masked") {
                reveal_by_purpose.insert(purpose.clone(), mode);
            }
        }
        Some(Role {
            operations,
            namespaces: scope(&self.namespaces),
            classes: self.classes.as_deref().map_or(Scope::Any, scope),
            purposes,
            reveal,
            reveal_by_purpose,
            clevertap_purpose: self.clevertap_purpose,
        })
    }
}

impl RawClevertap {
    fn validate(
        self,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        problems: &mut Vec<Problem>,
    ) -> Option<ClevertapSpec> {
        unknown_keys(problems, "clevertap", &self.unknown);
        if !self.enabled {
            return None;
        }
        let Some(namespace) = self.namespace else {
            problems.push(
                Problem::new("clevertap.namespace", "missing")
                    .hint("name the namespace the CleverTap surface tokenizes in"),
            );
            return None;
        };
        let Some(spec) = namespaces.get(&namespace) else {
            problems.push(Problem::new(
                "clevertap.namespace",
                format!("namespace `{namespace}` is not defined"),
            ));
            return None;
        };
        let known = |problems: &mut Vec<Problem>, key: &str, class: &str| {
            let found = spec.classes.contains_key(class);
            if !found {
                problems.push(Problem::new(
                    format!("clevertap.{key}"),
                    format!("class `{class}` is not defined in namespace `{namespace}`"),
                ));
            }
            found
        };
        // Unset email and phone rules fall back to classes of those names.
        let rule =
            |problems: &mut Vec<Problem>, key: &str, given: Option<String>, fallback: &str| {
                match given {
                    Some(class) => known(problems, key, &class).then_some(class),
                    None => spec
                        .classes
                        .contains_key(fallback)
                        .then(|| fallback.to_owned()),
                }
            };
        let email_class = rule(problems, "email_class", self.email_class, "email");
        let phone_class = rule(problems, "phone_class", self.phone_class, "phone");
        if let Some(phone) = &phone_class {
            if spec.classes[phone].normalize != Normalization::E164 {
                problems.push(Problem::new(
                    "clevertap.phone_class",
                    format!("class `{phone}` must have normalize = \"e164\""),
                ));
            }
        }
        let default_class = match self.default_class {
            Some(class) => known(problems, "default_class", &class).then_some(class),
            None => {
                let names: Vec<&str> = spec.classes.keys().map(String::as_str).collect();
                problems.push(
                    Problem::new("clevertap.default_class", "missing").hint(format!(
                        "name the class for values that are neither email nor phone; namespace `{namespace}` has: {}",
                        names.join(", ")
                    )),
                );
                None
            }
        };
        let ttl = match self.access_token_ttl_secs {
            None => DEFAULT_ACCESS_TOKEN_TTL,
            Some(secs @ 1..=MAX_ACCESS_TOKEN_TTL_SECS) => std::time::Duration::from_secs(secs),
            Some(_) => {
                problems.push(Problem::new(
                    "clevertap.access_token_ttl_secs",
                    format!("must be between 1 and {MAX_ACCESS_TOKEN_TTL_SECS}"),
                ));
                DEFAULT_ACCESS_TOKEN_TTL
            }
        };
        Some(ClevertapSpec {
            namespace,
            email_class,
            phone_class,
            default_class: default_class?,
            access_token_ttl: ttl,
            subject_metadata_key: self.subject_metadata_key.filter(|key| !key.is_empty()),
        })
    }
}

impl RawClient {
    fn validate(
        self,
        name: &str,
        roles: &BTreeMap<String, Role>,
        problems: &mut Vec<Problem>,
    ) -> Option<ClientSpec> {
        let section = format!("clients.{name}");
        unknown_keys(problems, &section, &self.unknown);
        if !valid_name(name) {
            problems.push(Problem::new(
                &section,
                "name must be lower-case letters, digits, `_` or `-`",
            ));
        }
        let role = match self.role {
            Some(role) if roles.contains_key(&role) => Some(role),
            Some(role) => {
                problems.push(Problem::new(
                    format!("{section}.role"),
                    format!("role `{role}` is not defined"),
                ));
                None
            }
            None => {
                problems.push(Problem::new(format!("{section}.role"), "missing"));
                None
            }
        };
        let hash = match self.api_key_hash {
            Some(hash) if crate::policy::is_argon2id_hash(&hash) => Some(Some(hash)),
            Some(_) => {
                problems.push(
                    Problem::new(format!("{section}.api_key_hash"), "not an argon2id hash").hint(
                        format!("generate one with: tokenvault client new {name} --role ROLE"),
                    ),
                );
                None
            }
            None if self.cert_identity.is_some() => Some(None),
            None => {
                problems.push(
                    Problem::new(format!("{section}.api_key_hash"), "missing").hint(format!(
                        "generate one with: tokenvault client new {name} --role ROLE, or set cert_identity"
                    )),
                );
                None
            }
        };
        let cert_identity = match self.cert_identity {
            Some(identity)
                if !identity.is_empty()
                    && identity.len() <= 253
                    && identity.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(Some(normalize_identity(&identity)))
            }
            Some(_) => {
                problems.push(
                    Problem::new(
                        format!("{section}.cert_identity"),
                        "must be a DNS name, URI or common name without spaces",
                    )
                    .hint("e.g. cert_identity = \"sms-worker.corp.example\""),
                );
                None
            }
            None => Some(None),
        };
        let allow_from = parse_cidrs(&format!("{section}.allow_from"), &self.allow_from, problems);
        for (key, value) in [
            ("budget_per_minute", self.budget_per_minute),
            ("budget_per_day", self.budget_per_day),
        ] {
            if value == Some(0) {
                problems.push(
                    Problem::new(format!("{section}.{key}"), "must be at least 1")
                        .hint("leave it out for no budget"),
                );
            }
        }
        Some(ClientSpec {
            role: role?,
            api_key_hash: hash?,
            cert_identity: cert_identity?,
            allow_from,
            budget: crate::policy::Budget {
                per_minute: self.budget_per_minute,
                per_day: self.budget_per_day,
            },
        })
    }
}
