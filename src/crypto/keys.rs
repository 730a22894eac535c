//! The master key and the working keys derived from it.
//!
//! Working keys come from HKDF-SHA256 over the master key with a named,
//! versioned label and the namespace as context, so each namespace and each
//! purpose (value sealing, blind index, subject hash, audit chain) has its own
//! key, and changing a derivation means adding a label, never editing one.

use std::fmt;

use hkdf::Hkdf;
use ring::hmac;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::seal::Sealer;

/// Length of every symmetric key in the vault, in bytes.
pub const KEY_LEN: usize = 32;

/// HKDF labels. Each is versioned: a new derivation gets a new label.
pub mod labels {
    /// Key that seals values (AES-256-GCM-SIV).
    pub const VALUE_SEALING: &str = "tokenvault/v1/value-sealing";
    /// Key of the blind index (HMAC-SHA256 of class and normalized value).
    pub const BLIND_INDEX: &str = "tokenvault/v1/blind-index";
    /// Key of the subject hash (HMAC-SHA256 of a caller-supplied customer id).
    pub const SUBJECT: &str = "tokenvault/v1/subject";
    /// Key of the audit chain's HMAC.
    pub const AUDIT_CHAIN: &str = "tokenvault/v1/audit-chain";
    /// Seed of the Ed25519 key that signs erasure receipts.
    pub const RECEIPT_SIGNING: &str = "tokenvault/v1/receipt-signing";
    /// Domain of the audit key's fingerprints of caller text (a separate
    /// first input under the same key, so a fingerprint is never a MAC).
    pub const AUDIT_FINGERPRINT: &str = "tokenvault/v1/audit-fingerprint";
}

/// The 256-bit master key of one key version. Zeroized on drop; no `Clone`,
/// and a `Debug` that prints only the version.
pub struct MasterKey {
    version: u32,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// Generates a fresh master key from the OS CSPRNG.
    pub fn generate(version: u32) -> Self {
        Self::from_bytes(version, Zeroizing::new(super::random_bytes()))
    }

    /// Wraps key bytes that were unwrapped from the keyring.
    pub fn from_bytes(version: u32, bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self { version, bytes }
    }

    /// The key version, bound into every value sealed under it.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub(super) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Derives the working key for `label` in `context` (a namespace name).
    fn derive(&self, label: &str, context: &str) -> Zeroizing<[u8; KEY_LEN]> {
        let hkdf = Hkdf::<Sha256>::new(None, self.bytes.as_slice());
        let mut info = Vec::with_capacity(label.len() + 1 + context.len());
        info.extend_from_slice(label.as_bytes());
        info.push(0);
        info.extend_from_slice(context.as_bytes());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // Invariant: 32 bytes is far below HKDF-SHA256's 255 * 32 byte limit.
        hkdf.expand(&info, out.as_mut_slice())
            .expect("32-byte HKDF output is always valid");
        out
    }

    /// The working keys of one namespace under this master key version.
    pub fn namespace_keys(&self, namespace: &str) -> NamespaceKeys {
        let sealing = self.derive(labels::VALUE_SEALING, namespace);
        let index = self.derive(labels::BLIND_INDEX, namespace);
        NamespaceKeys {
            sealer: Sealer::new(self.version, &sealing),
            index: hmac::Key::new(hmac::HMAC_SHA256, index.as_slice()),
        }
    }

    /// The key of the audit chain's HMAC, as this version derives it (the
    /// keyring's [`audit_key`](super::wrapping::Keyring::audit_key) says
    /// which version's is in use).
    pub fn audit_key(&self) -> AuditKey {
        AuditKey::from_bytes(&self.stable_bytes(&Stable::AuditChain))
    }

    /// The bytes of a stable key (see [`Stable`]) as this version derives
    /// them.
    pub(super) fn stable_bytes(&self, stable: &Stable) -> Zeroizing<[u8; KEY_LEN]> {
        let (label, context) = stable.derivation();
        self.derive(label, context)
    }
}

/// Keys whose outputs are stored or published, so that they must outlive a
/// rotation: the audit chain's MACs, the subject hashes (irreversible, so
/// they cannot be recomputed under a new key) and the receipt signing key.
/// They come from the oldest master key version; when that version is
/// retired, the keyring keeps these derived keys (which open no sealed
/// value) and drops the master key itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stable {
    /// The audit chain's HMAC key.
    AuditChain,
    /// The seed of the Ed25519 receipt key.
    ReceiptSigning,
    /// The subject-hash key of a namespace.
    Subject(String),
}

impl Stable {
    fn derivation(&self) -> (&'static str, &str) {
        match self {
            Self::AuditChain => (labels::AUDIT_CHAIN, ""),
            Self::ReceiptSigning => (labels::RECEIPT_SIGNING, ""),
            Self::Subject(namespace) => (labels::SUBJECT, namespace),
        }
    }

    /// The name stored in the keyring.
    pub(super) fn purpose(&self) -> &'static str {
        match self {
            Self::AuditChain => "audit-chain",
            Self::ReceiptSigning => "receipt-signing",
            Self::Subject(_) => "subject",
        }
    }

    /// The namespace, for a namespace's key; empty otherwise.
    pub(super) fn namespace(&self) -> &str {
        match self {
            Self::Subject(namespace) => namespace,
            _ => "",
        }
    }

    /// Parses the stored purpose and namespace.
    pub(super) fn parse(purpose: &str, namespace: &str) -> Option<Self> {
        match (purpose, namespace) {
            ("audit-chain", "") => Some(Self::AuditChain),
            ("receipt-signing", "") => Some(Self::ReceiptSigning),
            ("subject", namespace) if !namespace.is_empty() => {
                Some(Self::Subject(namespace.to_owned()))
            }
            _ => None,
        }
    }
}

impl AuditKey {
    pub(super) fn from_bytes(bytes: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_slice()))
    }
}

/// The key of one namespace's subject hashes.
pub struct SubjectKey(hmac::Key);

impl SubjectKey {
    pub(super) fn from_bytes(bytes: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_slice()))
    }

    /// Keyed hash of a subject (customer id), the only form in which a
    /// subject is stored.
    pub fn hash(&self, subject: &str) -> [u8; 32] {
        keyed_hash(&self.0, &[subject.as_bytes()])
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey([redacted])")
    }
}

/// The key that chains audit records: each record's MAC covers its
/// canonical content and the previous record's MAC.
pub struct AuditKey(hmac::Key);

impl AuditKey {
    /// MAC of one record's canonical bytes, chained to `previous`.
    pub fn mac(&self, canonical: &[u8], previous: &[u8; 32]) -> [u8; 32] {
        keyed_hash(&self.0, &[canonical, previous])
    }

    /// A keyed, irreversible fingerprint of text a caller sent that the
    /// trail may not hold (an unknown token, purpose or namespace): the same
    /// text always gives the same fingerprint, so repeated probing shows,
    /// and nobody without the key can test a guess against it. 128 bits.
    pub fn fingerprint(&self, kind: &str, text: &[u8]) -> [u8; 16] {
        let full = keyed_hash(
            &self.0,
            &[labels::AUDIT_FINGERPRINT.as_bytes(), kind.as_bytes(), text],
        );
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// Constant-time check of a stored MAC.
    pub fn verify(&self, canonical: &[u8], previous: &[u8; 32], stored: &[u8]) -> bool {
        let expected = self.mac(canonical, previous);
        use subtle::ConstantTimeEq;
        stored.len() == expected.len() && bool::from(expected.as_slice().ct_eq(stored))
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(v{}, [redacted])", self.version)
    }
}

/// The working keys of one namespace.
///
/// ring's `hmac::Key` keeps its precomputed state without zeroizing it on
/// drop; these keys live as long as the process, which refuses core dumps and
/// ptrace (see `crate::harden`), so the exposure is the same as for the
/// master key itself.
pub struct NamespaceKeys {
    sealer: Sealer,
    index: hmac::Key,
}

impl NamespaceKeys {
    /// Seals and opens values of this namespace.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Blind index of a normalized value: HMAC-SHA256 over the class and the
    /// value, length-prefixed so that no two (class, value) pairs collide.
    pub fn blind_index(&self, class: &str, normalized: &str) -> [u8; 32] {
        keyed_hash(&self.index, &[class.as_bytes(), normalized.as_bytes()])
    }
}

impl fmt::Debug for NamespaceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NamespaceKeys([redacted])")
    }
}

/// HMAC-SHA256 over length-prefixed parts.
pub fn keyed_hash(key: &hmac::Key, parts: &[&[u8]]) -> [u8; 32] {
    let mut context = hmac::Context::with_key(key);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let tag = context.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_key() -> MasterKey {
        MasterKey::from_bytes(1, Zeroizing::new([7u8; KEY_LEN]))
    }

    #[test]
    fn derivation_is_stable_known_answer() {
        // Known answer computed independently (Python hmac/hashlib: HKDF-SHA256
        // with an empty salt, then HMAC-SHA256 over length-prefixed parts). It
        // pins the labels and encodings: a silent change to either would
        // orphan every stored row.
        let index = fixed_key()
            .namespace_keys("retail")
            .blind_index("email", "a@b.c");
        assert_eq!(
            hex::encode(index),
            "95ff2d79132af85be5a87c194ca1d25e9682edba7df0a2e82015b607ec569e10"
        );
    }

    #[test]
    fn namespaces_and_classes_get_different_indexes() {
        let key = fixed_key();
        let retail = key.namespace_keys("retail");
        let health = key.namespace_keys("health");
        assert_ne!(
            retail.blind_index("email", "a@b.c"),
            health.blind_index("email", "a@b.c")
        );
        assert_ne!(
            retail.blind_index("email", "a@b.c"),
            retail.blind_index("name", "a@b.c")
        );
        // Length prefixes: ("ab", "c") and ("a", "bc") must not collide.
        assert_ne!(retail.blind_index("ab", "c"), retail.blind_index("a", "bc"));
    }

    #[test]
    fn debug_hides_key_bytes() {
        let shown = format!("{:?}", fixed_key());
        assert_eq!(shown, "MasterKey(v1, [redacted])");
    }
}
