//! Who may do what: roles, clients, authentication of API keys, purposes and
//! masking.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::crypto::password::{self, CacheKey};
use crate::vault::normalize::Normalization;

/// An operation a role may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Turn values into tokens.
    Tokenize,
    /// Turn tokens back into values (for an allowed purpose).
    Detokenize,
    /// Delete a token and its value.
    Forget,
    /// Read the audit trail.
    AuditRead,
    /// Record consent withdrawals and restorations.
    Consent,
    /// Read `GET /metrics`.
    MetricsRead,
}

/// How detokenized values are shown to a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reveal {
    /// The value itself.
    Plain,
    /// A masked form: `j***@example.com`, `*********3210`.
    Masked,
}

/// A set of names, or any name (`"*"` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every name.
    Any,
    /// Only these names.
    Only(BTreeSet<String>),
}

impl Scope {
    /// True when `name` is inside the scope.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(names) => names.contains(name),
        }
    }
}

/// `[roles.NAME]`: what a client holding this role may do.
#[derive(Debug, Clone)]
pub struct Role {
    /// Granted operations.
    pub operations: BTreeSet<Operation>,
    /// Namespaces the operations apply to.
    pub namespaces: Scope,
    /// Classes the role may tokenize and see.
    pub classes: Scope,
    /// Purposes the role may detokenize for.
    pub purposes: Scope,
    /// Plain or masked values.
    pub reveal: Reveal,
    /// Reveal mode per purpose, overriding `reveal`.
    pub reveal_by_purpose: BTreeMap<String, Reveal>,
    /// Purpose of CleverTap-surface detokenization when the request names
    /// none in `metadata.purpose`.
    pub clevertap_purpose: Option<String>,
}

/// Why a request was refused by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The role lacks the operation.
    #[error("operation not granted to this client")]
    Operation,
    /// The role lacks the namespace.
    #[error("namespace not granted to this client")]
    Namespace,
    /// The role lacks an item's class.
    #[error("item {0}: class not granted to this client")]
    Class(usize),
    /// The role lacks the purpose.
    #[error("purpose not granted to this client")]
    Purpose,
}

impl Role {
    /// How values revealed for `purpose` are shown.
    pub fn reveal_for(&self, purpose: &str) -> Reveal {
        self.reveal_by_purpose
            .get(purpose)
            .copied()
            .unwrap_or(self.reveal)
    }

    /// May this role perform `operation` in `namespace`?
    pub fn check(&self, operation: Operation, namespace: &str) -> Result<(), Denied> {
        if !self.operations.contains(&operation) {
            return Err(Denied::Operation);
        }
        if !self.namespaces.allows(namespace) {
            return Err(Denied::Namespace);
        }
        Ok(())
    }
}

/// `[clients.NAME]`
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Name of the role the client holds.
    pub role: String,
    /// argon2id PHC hash of the client's API key; `None` for a client that
    /// authenticates only with a certificate.
    pub api_key_hash: Option<String>,
    /// The certificate name (DNS or URI subject alternative name, or subject
    /// common name) that identifies the client over mTLS.
    pub cert_identity: Option<String>,
    /// Source addresses the client may connect from; empty allows any.
    pub allow_from: Vec<IpNet>,
    /// Most values the client may have revealed.
    pub budget: Budget,
}

/// A client's detokenization budget: values revealed per minute and per day
/// (fixed windows, counted in memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// At most this many per minute.
    pub per_minute: Option<u64>,
    /// At most this many per day.
    pub per_day: Option<u64>,
}

pub use crate::crypto::password::is_argon2id_hash;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's name, as in the configuration.
    pub client: String,
    /// The client's role.
    pub role: Arc<Role>,
}

/// Why authentication failed. All of them answer 401 alike; the reason is
/// for the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no api key presented")]
    Missing,
    /// The key matches no client.
    #[error("api key not recognized")]
    Invalid,
    /// The key is valid but the source address is not allowed.
    #[error("source address not allowed for this client")]
    SourceNotAllowed,
    /// An access token that was genuine but is past its expiry.
    #[error("access token expired")]
    Expired,
}

impl AuthError {
    /// The fixed code the audit trail and the log record.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Invalid => "invalid_credentials",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::Expired => "expired_credentials",
        }
    }
}

struct Client {
    spec: ClientSpec,
    role: Arc<Role>,
}

/// Verifies API keys. argon2id on every request would cap throughput at a
/// few dozen requests per second, so successful verifications are cached,
/// keyed by a keyed hash of the presented key.
pub struct Authenticator {
    clients: BTreeMap<String, Client>,
    cache: moka::sync::Cache<[u8; 32], String>,
    cache_key: CacheKey,
    // Each verification takes 64 MiB: bound how many run at once, so a flood
    // of bad keys cannot exhaust memory.
    verifications: tokio::sync::Semaphore,
}

/// How long a verified key stays cached.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(600);
const CONCURRENT_VERIFICATIONS: usize = 2;

impl Authenticator {
    /// Builds the authenticator from validated clients and roles.
    pub fn new(clients: &BTreeMap<String, ClientSpec>, roles: &BTreeMap<String, Role>) -> Self {
        let roles: BTreeMap<&String, Arc<Role>> = roles
            .iter()
            .map(|(name, role)| (name, Arc::new(role.clone())))
            .collect();
        let clients = clients
            .iter()
            .filter_map(|(name, spec)| {
                let role = roles.get(&spec.role)?.clone();
                Some((
                    name.clone(),
                    Client {
                        spec: spec.clone(),
                        role,
                    },
                ))
            })
            .collect();
        Self {
            clients,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(AUTH_CACHE_TTL)
                .build(),
            cache_key: CacheKey::random(),
            verifications: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }

    /// True when `name` is a configured client.
    pub fn knows(&self, name: &str) -> bool {
        self.clients.contains_key(name)
    }

    /// Authenticates a presented API key from `peer`.
    pub async fn authenticate(
        &self,
        api_key: &str,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        // A key of the vault's shape names its client. Any other string can
        // only belong to the single client of a one-client vault (the dev
        // root key from TOKENVAULT_DEV_API_KEY); never try every hash.
        let name = match password::claimed_client(api_key) {
            Some(name) => name.to_owned(),
            None if self.clients.len() == 1 => self
                .clients
                .keys()
                .next()
                .cloned()
                .ok_or(AuthError::Invalid)?,
            None => return Err(AuthError::Invalid),
        };
        let client = self.clients.get(&name).ok_or(AuthError::Invalid)?;
        let cache_key = self.cache_key.hash(api_key);
        if self.cache.get(&cache_key).as_deref() != Some(name.as_str()) {
            let _permit = self
                .verifications
                .acquire()
                .await
                .map_err(|_| AuthError::Invalid)?;
            let key = zeroize::Zeroizing::new(api_key.to_owned());
            let hash = client.spec.api_key_hash.clone().ok_or(AuthError::Invalid)?;
            let valid = tokio::task::spawn_blocking(move || password::verify_api_key(&key, &hash))
                .await
                .unwrap_or(false);
            if !valid {
                return Err(AuthError::Invalid);
            }
            self.cache.insert(cache_key, name.clone());
        }
        self.caller(&name, peer)
    }

    /// The client a verified client certificate identifies: the one whose
    /// `cert_identity` is among the certificate's `names`. A certificate
    /// naming no client, or more than one, identifies nobody.
    pub fn by_certificate(
        &self,
        names: &[String],
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        let mut matching = self.clients.iter().filter(|(_, client)| {
            client
                .spec
                .cert_identity
                .as_ref()
                .is_some_and(|identity| names.contains(identity))
        });
        match (matching.next(), matching.next()) {
            (Some((name, _)), None) => self.caller(name, peer),
            _ => Err(AuthError::Invalid),
        }
    }

    /// The caller for `name`, a client already proven by other means (an
    /// access token this process issued), if it still exists and `peer` is
    /// an allowed source.
    pub fn caller(&self, name: &str, peer: Option<IpAddr>) -> Result<Caller, AuthError> {
        let client = self.clients.get(name).ok_or(AuthError::Invalid)?;
        if !client.spec.allow_from.is_empty() {
            let allowed =
                peer.is_some_and(|ip| client.spec.allow_from.iter().any(|net| net.contains(&ip)));
            if !allowed {
                return Err(AuthError::SourceNotAllowed);
            }
        }
        Ok(Caller {
            client: name.to_owned(),
            role: client.role.clone(),
        })
    }
}

/// The masked form of a value, for roles with `reveal = "masked"` and for the
/// rare log line that must point at a value: `j***@example.com` for email
/// classes, every character but the last four starred otherwise.
pub fn mask(value: &str, normalize: Normalization) -> String {
    if normalize == Normalization::Email {
        if let Some((local, domain)) = value.split_once('@') {
            let first: String = local.chars().take(1).collect();
            return format!("{first}***@{domain}");
        }
    }
    let count = value.chars().count();
    if count <= 4 {
        return "*".repeat(count);
    }
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < count { '*' } else { c })
        .collect()
}

/// True for a consent change's `source` note: short, and without spaces or
/// `@`, so that it cannot carry a name or an address in any usual shape.
pub fn valid_consent_source(source: &str) -> bool {
    !source.is_empty()
        && source.len() <= 64
        && source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            mask("john@example.com", Normalization::Email),
            "j***@example.com"
        );
        assert_eq!(mask("+919876543210", Normalization::E164), "*********3210");
        assert_eq!(mask("abc", Normalization::Trim), "***");
        assert_eq!(mask("abcd", Normalization::Trim), "****");
    }

    #[test]
    fn role_checks() {
        let role = Role {
            operations: [Operation::Tokenize].into(),
            namespaces: Scope::Only(["retail".to_owned()].into()),
            classes: Scope::Any,
            purposes: Scope::Only(BTreeSet::new()),
            reveal: Reveal::Masked,
            reveal_by_purpose: BTreeMap::new(),
            clevertap_purpose: None,
        };
        assert_eq!(role.check(Operation::Tokenize, "retail"), Ok(()));
        assert_eq!(
            role.check(Operation::Detokenize, "retail"),
            Err(Denied::Operation)
        );
        assert_eq!(
            role.check(Operation::Tokenize, "health"),
            Err(Denied::Namespace)
        );
    }
}
