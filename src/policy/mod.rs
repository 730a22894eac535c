//! Who may do what: roles, clients, authentication of API keys, purposes and
//! masking.

pub mod throttle;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::crypto::password::{self, CacheKey};
pub use crate::normalize::mask;

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
    /// Erase every value of a data subject (right to erasure).
    SubjectForget,
    /// Reveal every value of a data subject, with its tokens and consent
    /// history (right of access); needs plain reveal.
    SubjectExport,
    /// Replace one of a data subject's values, keeping its token
    /// (rectification).
    SubjectCorrect,
    /// Download a backup of the whole vault (`POST /v1/admin/backup`).
    Backup,
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
    /// A role granting `operations` in every namespace, class and purpose,
    /// revealing plain values: the operator's own commands, and tests and
    /// benchmarks that drive the engine directly.
    pub fn unrestricted(operations: impl IntoIterator<Item = Operation>) -> Self {
        Self {
            operations: operations.into_iter().collect(),
            namespaces: Scope::Any,
            classes: Scope::Any,
            purposes: Scope::Any,
            reveal: Reveal::Plain,
            reveal_by_purpose: BTreeMap::new(),
            clevertap_purpose: None,
        }
    }

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
    /// Too many failed attempts for this client (from this source): refused
    /// without verifying, for this many seconds.
    #[error("too many failed authentications; retry after {0} s")]
    Throttled(u64),
}

impl AuthError {
    /// The fixed code the audit trail and the log record.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Invalid => "invalid_credentials",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::Expired => "expired_credentials",
            Self::Throttled(_) => "too_many_failures",
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
    throttle: throttle::Throttle,
}

/// What a wrong key for an unknown client is verified against, so that it
/// costs what a wrong key for a known client costs (same argon2id
/// parameters): answer times do not tell which client names exist.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| password::hash_api_key(&password::new_api_key("none")));

/// The throttle's key for a claimed client name that is not configured:
/// random names share it, so they cannot grow the throttle's maps.
const UNKNOWN_CLIENT: &str = "<unknown>";

/// How long a verified key stays cached.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(600);
const CONCURRENT_VERIFICATIONS: usize = 2;
/// Longest wait for another verification of the same source and client.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

impl Authenticator {
    /// Builds the authenticator from validated clients and roles.
    pub fn new(
        clients: &BTreeMap<String, ClientSpec>,
        roles: &BTreeMap<String, Role>,
        limits: &crate::config::Limits,
    ) -> Self {
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
                .max_capacity(u64::from(limits.auth_cache_entries))
                .time_to_live(AUTH_CACHE_TTL)
                .build(),
            cache_key: CacheKey::random(),
            verifications: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
            throttle: throttle::Throttle::new(
                limits.auth_failures_per_source,
                limits.auth_failures_per_client,
            ),
        }
    }

    /// True when `name` is a configured client.
    pub fn knows(&self, name: &str) -> bool {
        self.clients.contains_key(name)
    }

    /// Authenticates a presented API key from `peer`. A key verified before
    /// is answered from the cache; otherwise, unless the claimed client is
    /// throttled, one argon2id verification runs, against a dummy hash when
    /// the client does not exist.
    pub async fn authenticate(
        &self,
        api_key: &str,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        // A key of the vault's shape names its client. Any other string can
        // only belong to the single client of a one-client vault (the dev
        // root key from TOKENVAULT_DEV_API_KEY); never try every hash.
        let name = match password::claimed_client(api_key) {
            Some(name) => Some(name.to_owned()),
            None if self.clients.len() == 1 => self.clients.keys().next().cloned(),
            None => None,
        };
        let client = name.as_ref().and_then(|name| self.clients.get(name));
        let cache_key = self.cache_key.hash(api_key);
        let throttled_as = match (&name, client) {
            (Some(name), Some(_)) => name.clone(),
            _ => UNKNOWN_CLIENT.to_owned(),
        };
        // A client that opens several connections at once sends its key on
        // each before the first verification is done: the others wait for
        // it (it may be this very key, then cached) instead of being
        // refused. The wait is bounded and costs no verification.
        let waiting_since = std::time::Instant::now();
        let _attempt = loop {
            if let (Some(name), Some(_)) = (&name, client) {
                if self.cache.get(&cache_key).as_deref() == Some(name.as_str()) {
                    return self.caller(name, peer);
                }
            }
            match self.throttle.begin(peer, &throttled_as) {
                Ok(attempt) => break attempt,
                Err(throttle::Refused::Busy) if waiting_since.elapsed() < IN_FLIGHT_WAIT => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(throttle::Refused::Busy) => return Err(AuthError::Throttled(1)),
                Err(throttle::Refused::Throttled(wait)) => {
                    return Err(AuthError::Throttled(wait.as_secs().max(1)))
                }
            }
        };
        let hash = client
            .and_then(|client| client.spec.api_key_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.clone());
        let valid = {
            let _permit = self
                .verifications
                .acquire()
                .await
                .map_err(|_| AuthError::Invalid)?;
            let key = zeroize::Zeroizing::new(api_key.to_owned());
            tokio::task::spawn_blocking(move || password::verify_api_key(&key, &hash))
                .await
                .unwrap_or(false)
        };
        match (name, client) {
            (Some(name), Some(_)) if valid => {
                self.cache.insert(cache_key, name.clone());
                self.caller(&name, peer)
            }
            _ => Err(AuthError::Invalid),
        }
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
