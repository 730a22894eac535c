//! The keyring file: the master key, stored only wrapped.
//!
//! The key-encryption key (KEK) comes from an operator passphrase stretched
//! with argon2id (parameters stored beside the wrapped key, so they can be
//! raised later without orphaning old keyrings) or from a 32-byte key file the
//! customer supplies (bring your own key). Wrapping is AES-256-GCM-SIV with
//! the key version in the associated data.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keys::{AuditKey, MasterKey, Stable, SubjectKey, KEY_LEN};
use super::receipts::ReceiptKey;

const FORMAT: u32 = 1;
const WRAP_AD_LABEL: &[u8] = b"tokenvault/v1/keyring-wrap";
const KEPT_AD_LABEL: &[u8] = b"tokenvault/v1/keyring-kept";
const KEYFILE_KEK_LABEL: &[u8] = b"tokenvault/v1/keyfile-kek";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// argon2id cost used for new keyrings: 64 MiB, 3 passes, 1 lane.
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// argon2id passes for new keyrings.
pub const ARGON2_PASSES: u32 = 3;
/// argon2id lanes for new keyrings.
pub const ARGON2_LANES: u32 = 1;
/// Shortest passphrase accepted when a keyring is created.
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// Material the KEK comes from. Zeroized on drop, never printed.
pub enum KekSource {
    /// An operator passphrase, stretched with argon2id.
    Passphrase(Zeroizing<Vec<u8>>),
    /// The 32 bytes of a customer-supplied key file.
    KeyFile(Zeroizing<[u8; KEY_LEN]>),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passphrase(_) => f.write_str("KekSource::Passphrase([redacted])"),
            Self::KeyFile(_) => f.write_str("KekSource::KeyFile([redacted])"),
        }
    }
}

/// What can go wrong with a keyring. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// `init` found a keyring already there.
    #[error("a keyring already exists at {0}")]
    Exists(String),
    /// The keyring file could not be read or written.
    #[error("cannot access the keyring at {path}: {source}")]
    Io {
        /// The keyring path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a keyring this version understands.
    #[error("the keyring at {0} is damaged or not a tokenvault keyring")]
    Malformed(String),
    /// The keyring was made with a passphrase and a key file was given, or
    /// the other way round.
    #[error("the keyring was created with a {expected}, but the configuration gives a {given}")]
    WrongSource {
        /// What the keyring needs.
        expected: &'static str,
        /// What the configuration supplied.
        given: &'static str,
    },
    /// Unwrapping failed: wrong passphrase, wrong key file or edited keyring.
    #[error(
        "cannot unwrap the master key: wrong passphrase or key file, or the keyring was altered"
    )]
    Unwrap,
    /// The passphrase is too short to create a keyring with.
    #[error("the passphrase is shorter than {MIN_PASSPHRASE_LEN} characters")]
    WeakPassphrase,
    /// argon2 refused its parameters.
    #[error("key stretching failed")]
    Kdf,
    /// The keyring holds no such master key version.
    #[error("the keyring holds no master key version {0}")]
    NoSuchVersion(u32),
    /// The current version seals new values and cannot be retired.
    #[error(
        "master key version {0} is the current one; rotate to a new version before retiring it"
    )]
    CurrentVersion(u32),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: u32,
    kek: KekParams,
    keys: Vec<WrappedKey>,
    /// Stable keys kept from retired master key versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    kept: Vec<KeptKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
enum KekParams {
    Passphrase {
        kdf: String,
        memory_kib: u32,
        passes: u32,
        lanes: u32,
        salt: String,
    },
    Keyfile,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedKey {
    version: u32,
    created_at: u64,
    nonce: String,
    wrapped: String,
}

/// A stable key derived from a master key version that has since been
/// retired, wrapped like a master key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeptKey {
    purpose: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    from_version: u32,
    nonce: String,
    wrapped: String,
}

/// A stable key kept after its master key version was retired.
struct Kept {
    stable: Stable,
    from_version: u32,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

/// The unwrapped master keys. The newest version is the current one.
pub struct Keyring {
    keys: Vec<MasterKey>,
    kept: Vec<Kept>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring({:?}, {} kept keys)",
            self.versions(),
            self.kept.len()
        )
    }
}

impl Keyring {
    /// A keyring holding one key that exists only in memory (`serve --dev`).
    pub fn ephemeral() -> Self {
        Self {
            keys: vec![MasterKey::generate(1)],
            kept: Vec::new(),
        }
    }

    /// The key that new writes use.
    pub fn current(&self) -> &MasterKey {
        // Invariant: every constructor puts at least one key in.
        self.keys.last().expect("keyring holds at least one key")
    }

    /// The oldest master key version held.
    fn oldest(&self) -> &MasterKey {
        // Invariant: every constructor puts at least one key in.
        self.keys.first().expect("keyring holds at least one key")
    }

    /// A stable key: kept from a retired version, or derived from the oldest
    /// version held. Either way the same bytes across rotations.
    fn stable(&self, stable: &Stable) -> (u32, Zeroizing<[u8; KEY_LEN]>) {
        match self.kept.iter().find(|kept| kept.stable == *stable) {
            Some(kept) => (kept.from_version, kept.bytes.clone()),
            None => (self.oldest().version(), self.oldest().stable_bytes(stable)),
        }
    }

    /// The key that chains the audit trail. It stays the same across
    /// rotations, so that older records keep verifying.
    pub fn audit_key(&self) -> AuditKey {
        AuditKey::from_bytes(&self.stable(&Stable::AuditChain).1)
    }

    /// The key that signs erasure receipts; the same across rotations.
    pub fn receipt_key(&self) -> ReceiptKey {
        let (version, seed) = self.stable(&Stable::ReceiptSigning);
        ReceiptKey::from_seed(version, &seed)
    }

    /// The subject-hash key of `namespace`; the same across rotations, as
    /// stored hashes cannot be recomputed.
    pub fn subject_key(&self, namespace: &str) -> SubjectKey {
        SubjectKey::from_bytes(&self.stable(&Stable::Subject(namespace.to_owned())).1)
    }

    /// The key of `version`, if this keyring has it.
    pub fn version(&self, version: u32) -> Option<&MasterKey> {
        self.keys.iter().find(|key| key.version() == version)
    }

    /// Creates a new keyring at `path` with a fresh master key. Refuses to
    /// overwrite anything; the file is created with mode 0600.
    pub fn create(path: &Path, source: &KekSource) -> Result<Self, KeyringError> {
        let shown = path.display().to_string();
        if path.exists() {
            return Err(KeyringError::Exists(shown));
        }
        let (keyring, document) = Self::create_document(source)?;
        write_new(path, &document)?;
        Ok(keyring)
    }

    /// A new keyring with a fresh master key, and its document to store.
    pub fn create_document(source: &KekSource) -> Result<(Self, KeyringDocument), KeyringError> {
        let (params, kek) = new_kek(source)?;
        let keyring = Self {
            keys: vec![MasterKey::generate(1)],
            kept: Vec::new(),
        };
        let document = keyring.to_document(params, &kek);
        Ok((keyring, document))
    }

    /// Wraps every key under a key from `source` (a new passphrase or key
    /// file) and replaces the keyring at `path` atomically. The master keys,
    /// and so every sealed value, stay as they are.
    pub fn rewrap(&self, path: &Path, source: &KekSource) -> Result<(), KeyringError> {
        replace(path, &self.rewrap_document(source)?)
    }

    /// This keyring wrapped under a key from `source`, as a document.
    pub fn rewrap_document(&self, source: &KekSource) -> Result<KeyringDocument, KeyringError> {
        let (params, kek) = new_kek(source)?;
        Ok(self.to_document(params, &kek))
    }

    /// Adds a new master key version to the keyring at `path` (opened with
    /// `source`), which becomes the current one; answers the new keyring.
    pub fn add_version(path: &Path, source: &KekSource) -> Result<Self, KeyringError> {
        let (keyring, document) =
            Self::add_version_document(&read_document(path)?, source, &path.display().to_string())?;
        replace(path, &document)?;
        Ok(keyring)
    }

    /// [`Keyring::add_version`] on a stored document (`place` names where
    /// it is kept, for errors): the new keyring and its document.
    pub fn add_version_document(
        document: &KeyringDocument,
        source: &KekSource,
        place: &str,
    ) -> Result<(Self, KeyringDocument), KeyringError> {
        let (file, kek) = with_kek(document, source, place)?;
        let mut keyring = Self::unwrap_all(place, &file, &kek)?;
        let version = keyring.current().version() + 1;
        keyring.keys.push(MasterKey::generate(version));
        let document = keyring.to_document(file.kek, &kek);
        Ok((keyring, document))
    }

    /// Destroys master key `version` in the keyring at `path`. The current
    /// version cannot be retired. When `version` is the oldest, the stable
    /// keys it provides (the audit chain's, the receipts', and the subject
    /// key of each of `namespaces`) are kept first, derived, so that nothing
    /// stored under them is orphaned. The caller checks that no row is
    /// sealed under `version`.
    pub fn retire(
        path: &Path,
        source: &KekSource,
        version: u32,
        namespaces: &[String],
    ) -> Result<Self, KeyringError> {
        let place = path.display().to_string();
        let (keyring, document) =
            Self::retire_document(&read_document(path)?, source, &place, version, namespaces)?;
        replace(path, &document)?;
        Ok(keyring)
    }

    /// [`Keyring::retire`] on a stored document: the new keyring and its
    /// document.
    pub fn retire_document(
        document: &KeyringDocument,
        source: &KekSource,
        place: &str,
        version: u32,
        namespaces: &[String],
    ) -> Result<(Self, KeyringDocument), KeyringError> {
        let (file, kek) = with_kek(document, source, place)?;
        let mut keyring = Self::unwrap_all(place, &file, &kek)?;
        if keyring.version(version).is_none() {
            return Err(KeyringError::NoSuchVersion(version));
        }
        if keyring.current().version() == version {
            return Err(KeyringError::CurrentVersion(version));
        }
        if keyring.oldest().version() == version {
            let mut needed = vec![Stable::AuditChain, Stable::ReceiptSigning];
            needed.extend(namespaces.iter().map(|ns| Stable::Subject(ns.clone())));
            for stable in needed {
                if !keyring.kept.iter().any(|kept| kept.stable == stable) {
                    let bytes = keyring.oldest().stable_bytes(&stable);
                    keyring.kept.push(Kept {
                        stable,
                        from_version: version,
                        bytes,
                    });
                }
            }
        }
        keyring.keys.retain(|key| key.version() != version);
        let document = keyring.to_document(file.kek, &kek);
        Ok((keyring, document))
    }

    /// The master key versions, newest last.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.iter().map(MasterKey::version).collect()
    }

    fn to_document(&self, kek_params: KekParams, kek: &[u8; KEY_LEN]) -> KeyringDocument {
        let file = KeyringFile {
            format: FORMAT,
            kek: kek_params,
            keys: self.keys.iter().map(|key| wrap(kek, key)).collect(),
            kept: self.kept.iter().map(|kept| wrap_kept(kek, kept)).collect(),
        };
        // Invariant: the structure holds only strings and integers.
        let mut text = serde_json::to_vec_pretty(&file).expect("keyring serializes");
        text.push(b'\n');
        KeyringDocument(text)
    }

    fn unwrap_all(
        place: &str,
        file: &KeyringFile,
        kek: &[u8; KEY_LEN],
    ) -> Result<Self, KeyringError> {
        let mut keys = Vec::with_capacity(file.keys.len());
        for wrapped in &file.keys {
            keys.push(unwrap(kek, wrapped).ok_or(KeyringError::Unwrap)?);
        }
        keys.sort_by_key(MasterKey::version);
        let mut kept = Vec::with_capacity(file.kept.len());
        for wrapped in &file.kept {
            let stable = Stable::parse(&wrapped.purpose, &wrapped.namespace)
                .ok_or_else(|| KeyringError::Malformed(place.to_owned()))?;
            let bytes = unwrap_kept(kek, wrapped, &stable).ok_or(KeyringError::Unwrap)?;
            kept.push(Kept {
                stable,
                from_version: wrapped.from_version,
                bytes,
            });
        }
        Ok(Self { keys, kept })
    }

    /// Opens the keyring at `path` and unwraps every key in it.
    pub fn open(path: &Path, source: &KekSource) -> Result<Self, KeyringError> {
        Self::open_document(&read_document(path)?, source, &path.display().to_string())
    }

    /// Unwraps every key of a stored document (`place` names where it is
    /// kept, for errors).
    pub fn open_document(
        document: &KeyringDocument,
        source: &KekSource,
        place: &str,
    ) -> Result<Self, KeyringError> {
        let (file, kek) = with_kek(document, source, place)?;
        Self::unwrap_all(place, &file, &kek)
    }
}

/// A keyring as stored: every key wrapped under the key-encryption key, so
/// it may be kept wherever the data is (a file in the data directory, or a
/// row in the shared database). Holds nothing in plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyringDocument(Vec<u8>);

impl KeyringDocument {
    /// A document as read back from where it is kept.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to keep.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The master key versions it holds, read without unwrapping (the
    /// versions are not secret).
    pub fn versions(&self, place: &str) -> Result<Vec<u32>, KeyringError> {
        let file = parse(self, place)?;
        let mut versions: Vec<u32> = file.keys.iter().map(|k| k.version).collect();
        versions.sort_unstable();
        Ok(versions)
    }
}

impl std::fmt::Debug for KeyringDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyringDocument({} bytes)", self.0.len())
    }
}

/// The master key versions a keyring file holds, read without unwrapping
/// (the versions are not secret).
pub fn versions_on_disk(path: &Path) -> Result<Vec<u32>, KeyringError> {
    read_document(path)?.versions(&path.display().to_string())
}

fn read_document(path: &Path) -> Result<KeyringDocument, KeyringError> {
    fs::read(path)
        .map(KeyringDocument)
        .map_err(|source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        })
}

fn parse(document: &KeyringDocument, place: &str) -> Result<KeyringFile, KeyringError> {
    let file: KeyringFile = serde_json::from_slice(&document.0)
        .map_err(|_| KeyringError::Malformed(place.to_owned()))?;
    if file.format != FORMAT || file.keys.is_empty() {
        return Err(KeyringError::Malformed(place.to_owned()));
    }
    Ok(file)
}

/// Parses a document and derives its key-encryption key from `source`.
fn with_kek(
    document: &KeyringDocument,
    source: &KekSource,
    place: &str,
) -> Result<(KeyringFile, Zeroizing<[u8; KEY_LEN]>), KeyringError> {
    let file = parse(document, place)?;
    let shown = place.to_owned();
    let kek = match (&file.kek, source) {
        (
            KekParams::Passphrase {
                kdf,
                memory_kib,
                passes,
                lanes,
                salt,
            },
            KekSource::Passphrase(passphrase),
        ) => {
            if kdf != "argon2id" {
                return Err(KeyringError::Malformed(shown));
            }
            let salt = BASE64
                .decode(salt)
                .map_err(|_| KeyringError::Malformed(shown.clone()))?;
            stretch(passphrase, &salt, *memory_kib, *passes, *lanes)?
        }
        (KekParams::Keyfile, KekSource::KeyFile(bytes)) => keyfile_kek(bytes),
        (KekParams::Passphrase { .. }, KekSource::KeyFile(_)) => {
            return Err(KeyringError::WrongSource {
                expected: "passphrase",
                given: "key file",
            })
        }
        (KekParams::Keyfile, KekSource::Passphrase(_)) => {
            return Err(KeyringError::WrongSource {
                expected: "key file",
                given: "passphrase",
            })
        }
    };
    Ok((file, kek))
}

/// Replaces the keyring at `path` atomically (write beside, rename, sync
/// the directory).
fn replace(path: &Path, document: &KeyringDocument) -> Result<(), KeyringError> {
    let shown = path.display().to_string();
    let next = path.with_extension("json.new");
    let _ = fs::remove_file(&next);
    write_new(&next, document)?;
    let io = |source| KeyringError::Io {
        path: shown.clone(),
        source,
    };
    fs::rename(&next, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// A fresh key-encryption key from `source`, with the parameters to find it
/// again.
fn new_kek(source: &KekSource) -> Result<(KekParams, Zeroizing<[u8; KEY_LEN]>), KeyringError> {
    Ok(match source {
        KekSource::Passphrase(passphrase) => {
            if passphrase.len() < MIN_PASSPHRASE_LEN {
                return Err(KeyringError::WeakPassphrase);
            }
            let salt: [u8; SALT_LEN] = super::random_bytes();
            let kek = stretch(
                passphrase,
                &salt,
                ARGON2_MEMORY_KIB,
                ARGON2_PASSES,
                ARGON2_LANES,
            )?;
            let params = KekParams::Passphrase {
                kdf: "argon2id".to_owned(),
                memory_kib: ARGON2_MEMORY_KIB,
                passes: ARGON2_PASSES,
                lanes: ARGON2_LANES,
                salt: BASE64.encode(salt),
            };
            (params, kek)
        }
        KekSource::KeyFile(bytes) => (KekParams::Keyfile, keyfile_kek(bytes)),
    })
}

/// Writes `file` to `path`, which must not exist, mode 0600, flushed.
fn write_new(path: &Path, document: &KeyringDocument) -> Result<(), KeyringError> {
    let shown = path.display().to_string();
    {
        let text = &document.0;
        let io = |source| KeyringError::Io {
            path: shown.clone(),
            source,
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => KeyringError::Exists(shown.clone()),
                _ => io(source),
            })?;
        out.write_all(text).map_err(io)?;
        out.sync_all().map_err(io)?;
        Ok(())
    }
}

fn stretch(
    passphrase: &[u8],
    salt: &[u8],
    memory_kib: u32,
    passes: u32,
    lanes: u32,
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyringError> {
    let params = argon2::Params::new(memory_kib, passes, lanes, Some(KEY_LEN))
        .map_err(|_| KeyringError::Kdf)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, salt, kek.as_mut_slice())
        .map_err(|_| KeyringError::Kdf)?;
    Ok(kek)
}

fn keyfile_kek(bytes: &[u8; KEY_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
    let hkdf = Hkdf::<Sha256>::new(None, bytes);
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    // Invariant: 32 bytes is within HKDF-SHA256's output limit.
    hkdf.expand(KEYFILE_KEK_LABEL, kek.as_mut_slice())
        .expect("32-byte HKDF output");
    kek
}

fn wrap_ad(version: u32) -> Vec<u8> {
    let mut ad = WRAP_AD_LABEL.to_vec();
    ad.extend_from_slice(&version.to_be_bytes());
    ad
}

fn wrap(kek: &[u8; KEY_LEN], key: &MasterKey) -> WrappedKey {
    // Invariant: the KEK is 32 bytes.
    let cipher = Aes256GcmSiv::new_from_slice(kek).expect("32-byte KEK");
    let nonce: [u8; NONCE_LEN] = super::random_bytes();
    let ad = wrap_ad(key.version());
    // Invariant: a 32-byte message is within AES-GCM-SIV limits.
    let wrapped = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: key.expose(),
                aad: &ad,
            },
        )
        .expect("wrapping 32 bytes");
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    WrappedKey {
        version: key.version(),
        created_at,
        nonce: BASE64.encode(nonce),
        wrapped: BASE64.encode(wrapped),
    }
}

fn unwrap(kek: &[u8; KEY_LEN], wrapped: &WrappedKey) -> Option<MasterKey> {
    let cipher = Aes256GcmSiv::new_from_slice(kek).ok()?;
    let nonce = BASE64.decode(&wrapped.nonce).ok()?;
    let ciphertext = BASE64.decode(&wrapped.wrapped).ok()?;
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let ad = wrap_ad(wrapped.version);
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &ad,
                },
            )
            .ok()?,
    );
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return None;
    }
    bytes.copy_from_slice(&plain);
    Some(MasterKey::from_bytes(wrapped.version, bytes))
}

fn kept_ad(stable: &Stable, from_version: u32) -> Vec<u8> {
    let mut ad = KEPT_AD_LABEL.to_vec();
    for part in [stable.purpose(), stable.namespace()] {
        ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        ad.extend_from_slice(part.as_bytes());
    }
    ad.extend_from_slice(&from_version.to_be_bytes());
    ad
}

fn wrap_kept(kek: &[u8; KEY_LEN], kept: &Kept) -> KeptKey {
    // Invariant: the KEK is 32 bytes.
    let cipher = Aes256GcmSiv::new_from_slice(kek).expect("32-byte KEK");
    let nonce: [u8; NONCE_LEN] = super::random_bytes();
    let ad = kept_ad(&kept.stable, kept.from_version);
    // Invariant: a 32-byte message is within AES-GCM-SIV limits.
    let wrapped = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: kept.bytes.as_slice(),
                aad: &ad,
            },
        )
        .expect("wrapping 32 bytes");
    KeptKey {
        purpose: kept.stable.purpose().to_owned(),
        namespace: kept.stable.namespace().to_owned(),
        from_version: kept.from_version,
        nonce: BASE64.encode(nonce),
        wrapped: BASE64.encode(wrapped),
    }
}

fn unwrap_kept(
    kek: &[u8; KEY_LEN],
    wrapped: &KeptKey,
    stable: &Stable,
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let cipher = Aes256GcmSiv::new_from_slice(kek).ok()?;
    let nonce = BASE64.decode(&wrapped.nonce).ok()?;
    let ciphertext = BASE64.decode(&wrapped.wrapped).ok()?;
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let ad = kept_ad(stable, wrapped.from_version);
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &ad,
                },
            )
            .ok()?,
    );
    if plain.len() != KEY_LEN {
        return None;
    }
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    bytes.copy_from_slice(&plain);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase(text: &str) -> KekSource {
        KekSource::Passphrase(Zeroizing::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn rewrap_changes_the_passphrase_and_keeps_the_master_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created = Keyring::create(&path, &passphrase("the old passphrase")).unwrap();
        created
            .rewrap(&path, &passphrase("a new passphrase, longer"))
            .unwrap();
        assert!(matches!(
            Keyring::open(&path, &passphrase("the old passphrase")),
            Err(KeyringError::Unwrap)
        ));
        let reopened = Keyring::open(&path, &passphrase("a new passphrase, longer")).unwrap();
        // The same master key: the same audit MAC.
        let mac = |k: &Keyring| k.audit_key().mac(b"record", &[0; 32]);
        assert_eq!(mac(&reopened), mac(&created));
        assert_eq!(reopened.versions(), [1]);
        assert!(!path.with_extension("json.new").exists());
        assert!(matches!(
            created.rewrap(&path, &passphrase("short")),
            Err(KeyringError::WeakPassphrase)
        ));
    }

    #[test]
    fn a_retired_version_is_gone_and_its_stable_keys_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let source = KekSource::KeyFile(Zeroizing::new([3u8; 32]));
        let first = Keyring::create(&path, &source).unwrap();
        let subject = |k: &Keyring| k.subject_key("retail").hash("customer-1");
        let audit = |k: &Keyring| k.audit_key().mac(b"record", &[0; 32]);
        let receipt = |k: &Keyring| k.receipt_key().public_key().to_vec();
        let rotated = Keyring::add_version(&path, &source).unwrap();
        assert_eq!(rotated.versions(), [1, 2]);
        assert!(matches!(
            Keyring::retire(&path, &source, 2, &[]),
            Err(KeyringError::CurrentVersion(2))
        ));
        assert!(matches!(
            Keyring::retire(&path, &source, 7, &[]),
            Err(KeyringError::NoSuchVersion(7))
        ));
        let retired = Keyring::retire(&path, &source, 1, &["retail".to_owned()]).unwrap();
        let reopened = Keyring::open(&path, &source).unwrap();
        assert_eq!(reopened.versions(), [2]);
        assert!(reopened.version(1).is_none());
        for keyring in [&rotated, &retired, &reopened] {
            assert_eq!(subject(keyring), subject(&first));
            assert_eq!(audit(keyring), audit(&first));
            assert_eq!(receipt(keyring), receipt(&first));
        }
        // The version-1 master key is nowhere in the file: neither its
        // wrapped form nor anything that unwraps to it.
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"version\": 1,"), "{text}");
        // Kept keys survive a rewrap.
        reopened
            .rewrap(&path, &passphrase("a passphrase long enough"))
            .unwrap();
        let rewrapped = Keyring::open(&path, &passphrase("a passphrase long enough")).unwrap();
        assert_eq!(subject(&rewrapped), subject(&first));
        assert_eq!(audit(&rewrapped), audit(&first));
        // An edited kept key does not unwrap.
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("\"subject\"", "\"audit-chain\"")).unwrap();
        assert!(Keyring::open(&path, &passphrase("a passphrase long enough")).is_err());
    }

    #[test]
    fn passphrase_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created = Keyring::create(&path, &passphrase("correct horse battery")).unwrap();
        let opened = Keyring::open(&path, &passphrase("correct horse battery")).unwrap();
        assert_eq!(created.current().expose(), opened.current().expose());
        assert!(matches!(
            Keyring::open(&path, &passphrase("wrong horse battery")),
            Err(KeyringError::Unwrap)
        ));
        assert!(matches!(
            Keyring::create(&path, &passphrase("correct horse battery")),
            Err(KeyringError::Exists(_))
        ));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"memory_kib\": 65536"),
            "argon2 parameters stored beside the key"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn keyfile_round_trip_and_wrong_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created =
            Keyring::create(&path, &KekSource::KeyFile(Zeroizing::new([1u8; 32]))).unwrap();
        let opened = Keyring::open(&path, &KekSource::KeyFile(Zeroizing::new([1u8; 32]))).unwrap();
        assert_eq!(created.current().expose(), opened.current().expose());
        assert!(matches!(
            Keyring::open(&path, &KekSource::KeyFile(Zeroizing::new([2u8; 32]))),
            Err(KeyringError::Unwrap)
        ));
        assert!(matches!(
            Keyring::open(&path, &passphrase("a long enough passphrase")),
            Err(KeyringError::WrongSource { .. })
        ));
    }

    #[test]
    fn short_passphrase_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        assert!(matches!(
            Keyring::create(&path, &passphrase("short")),
            Err(KeyringError::WeakPassphrase)
        ));
        assert!(!path.exists());
    }

    #[test]
    fn edited_keyring_does_not_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        Keyring::create(&path, &KekSource::KeyFile(Zeroizing::new([1u8; 32]))).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        // Claim the wrapped key is version 2: the version is authenticated.
        fs::write(&path, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
        assert!(matches!(
            Keyring::open(&path, &KekSource::KeyFile(Zeroizing::new([1u8; 32]))),
            Err(KeyringError::Unwrap)
        ));
    }
}
