//! Cryptography: the only module that names the cipher and KDF crates.
//!
//! - [`keys`]: the master key and the working keys derived from it (HKDF).
//! - [`wrapping`]: the keyring: the master key wrapped under a key-encryption key (argon2id
//!   passphrase or a customer-supplied key file).
//! - [`seal`]: AES-256-GCM-SIV sealing of values, bound to where they belong.
//! - [`tokens`]: token formats (opaque, email-shaped, phone-shaped, …).
//! - [`envelope`]: the CleverTap SDKs' AES-256-GCM encryption in transit.
//! - [`access`]: short-lived access tokens of the CleverTap surface.
//! - [`receipts`]: the Ed25519 key that signs erasure receipts.
//! - [`webhook`]: Standard Webhooks signatures of activation callbacks.

pub mod access;
pub mod digest;
pub mod envelope;
pub mod keys;
pub mod password;
pub mod pgp;
pub mod receipts;
pub mod seal;
pub mod tokens;
pub mod webhook;
pub mod wrapping;

use rand::RngCore;

/// Fills a fresh buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}
