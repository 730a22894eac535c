//! OpenPGP for bulk files (RFC 9580/4880, with `pgp`, pure Rust; no gpg
//! subprocess): a tokenized file encrypted to the platform's public key as
//! it streams out, and a list that comes back encrypted to the vault
//! operator's key decrypted as it streams in.
//!
//! Encryption is SEIPD v1 (integrity-protected, what every OpenPGP
//! implementation reads) with AES-256, to the key's first valid
//! encryption-capable subkey (or the primary key if it can encrypt).

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::path::Path;

use pgp::composed::{Deserializable, Message, MessageBuilder, SignedPublicKey, SignedSecretKey};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyDetails, Password};

/// An OpenPGP failure. Messages hold no data.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The key file could not be read.
    #[error("cannot read the key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The key has no key that may encrypt.
    #[error("the key {0} has no encryption-capable (sub)key")]
    NoEncryptionKey(String),
    /// Encrypting failed (the output could not be written, most often).
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    /// Decrypting failed: not a message for this key, or altered.
    #[error("cannot decrypt the input: {0}")]
    Decrypt(String),
}

/// The key a file is encrypted to (an OpenPGP certificate, armored or
/// binary).
pub struct Recipient {
    key: SignedPublicKey,
    /// Which subkey encrypts; `None`: the primary key.
    subkey: Option<usize>,
}

impl Recipient {
    /// Reads the certificate at `path` and picks its encryption key.
    pub fn load(path: &Path) -> Result<Self, PgpError> {
        let failed = |reason: String| PgpError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
        let key = match SignedPublicKey::from_armor_single(&bytes[..]) {
            Ok((key, _)) => key,
            Err(_) => SignedPublicKey::from_bytes(&bytes[..])
                .map_err(|error| failed(format!("not an OpenPGP public key: {error}")))?,
        };
        key.verify_bindings()
            .map_err(|error| failed(format!("its self-signatures do not verify: {error}")))?;
        let subkey = key
            .public_subkeys
            .iter()
            .position(|subkey| subkey.algorithm().can_encrypt());
        if subkey.is_none() && !key.algorithm().can_encrypt() {
            return Err(PgpError::NoEncryptionKey(hex::encode(
                key.fingerprint().as_bytes(),
            )));
        }
        Ok(Self { key, subkey })
    }

    /// The certificate's fingerprint, in hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.key.fingerprint().as_bytes())
    }

    /// Encrypts everything `input` yields into `output`, streaming.
    pub fn encrypt<R: Read, W: Write>(&self, input: R, output: W) -> Result<(), PgpError> {
        let mut rng = rand::rngs::OsRng;
        let mut builder =
            MessageBuilder::from_reader("", input).seipd_v1(rng, SymmetricKeyAlgorithm::AES256);
        let encrypt = |error: pgp::errors::Error| PgpError::Encrypt(error.to_string());
        match self.subkey {
            Some(index) => builder.encrypt_to_key(&mut rng, &self.key.public_subkeys[index]),
            None => builder.encrypt_to_key(&mut rng, &self.key.primary_key),
        }
        .map_err(encrypt)?;
        builder.to_writer(rng, output).map_err(encrypt)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.fingerprint())
    }
}

/// A secret key that opens files encrypted to the vault operator.
pub struct SecretKey {
    key: SignedSecretKey,
    password: Password,
}

impl SecretKey {
    /// Reads the secret key at `path` (armored or binary), protected by
    /// `passphrase` when it is.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, PgpError> {
        let failed = |reason: String| PgpError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|error| failed(error.to_string()))?,
        );
        let key = match SignedSecretKey::from_armor_single(&bytes[..]) {
            Ok((key, _)) => key,
            Err(_) => SignedSecretKey::from_bytes(&bytes[..])
                .map_err(|error| failed(format!("not an OpenPGP secret key: {error}")))?,
        };
        Ok(Self {
            key,
            password: passphrase.map_or_else(Password::empty, Password::from),
        })
    }

    /// The plaintext of the message `input` holds, as it is read
    /// (decompressed if it was compressed). The integrity check runs as the
    /// end is read: a reader that reaches the end without an error has read
    /// the message as it was written.
    pub fn decrypt<'a, R>(&'a self, input: R) -> Result<Box<dyn BufRead + 'a>, PgpError>
    where
        R: BufRead + fmt::Debug + Send + 'a,
    {
        let failed = |error: pgp::errors::Error| PgpError::Decrypt(error.to_string());
        let (message, _) = Message::from_reader(input).map_err(failed)?;
        let mut message = message.decrypt(&self.password, &self.key).map_err(failed)?;
        if message.is_compressed() {
            message = message.decompress().map_err(failed)?;
        }
        Ok(Box::new(message))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}
