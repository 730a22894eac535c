//! Sealing values with AES-256-GCM-SIV.
//!
//! The associated data binds a ciphertext to its namespace, class, token and
//! key version, so a row copied to another token, class or namespace does not
//! open. GCM-SIV keeps a repeated nonce from being catastrophic; nonces are
//! still random per seal.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use zeroize::Zeroizing;

use super::keys::KEY_LEN;

const NONCE_LEN: usize = 12;
const AD_LABEL: &[u8] = b"tokenvault/v1/sealed-value";

/// Where a sealed value belongs; all of it is authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Namespace name.
    pub namespace: &'a str,
    /// Data class name.
    pub class: &'a str,
    /// The token that maps to the value.
    pub token: &'a str,
}

/// Opening failed. Deliberately without detail: the caller learns nothing
/// about why (wrong key, edited bytes, moved row).
#[derive(Debug, thiserror::Error)]
#[error("sealed value failed authentication")]
pub struct OpenError;

/// Seals and opens under one namespace's value key of one key version.
pub struct Sealer {
    version: u32,
    cipher: Aes256GcmSiv,
}

impl Sealer {
    pub(super) fn new(version: u32, key: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        // Invariant: the key is exactly 32 bytes, the AES-256 key length.
        let cipher = Aes256GcmSiv::new_from_slice(key.as_slice()).expect("32-byte key");
        Self { version, cipher }
    }

    /// The key version recorded beside each sealed value.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Seals `plaintext`; the result is `nonce || ciphertext || tag`.
    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = super::random_bytes();
        let ad = associated_data(binding, self.version);
        // Invariant: AES-GCM-SIV encryption only fails for inputs over 2^36
        // bytes; values are limited to a few KiB long before this point.
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .expect("value within AES-GCM-SIV limits");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a sealed value that claims to belong at `binding` under `version`.
    pub fn open(
        &self,
        binding: Binding<'_>,
        version: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if version != self.version || sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let ad = associated_data(binding, version);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

fn associated_data(binding: Binding<'_>, version: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(64 + binding.token.len());
    for part in [
        AD_LABEL,
        binding.namespace.as_bytes(),
        binding.class.as_bytes(),
        binding.token.as_bytes(),
    ] {
        ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        ad.extend_from_slice(part);
    }
    ad.extend_from_slice(&version.to_be_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(1, &Zeroizing::new([9u8; KEY_LEN]))
    }

    fn at(token: &str) -> Binding<'_> {
        Binding {
            namespace: "retail",
            class: "email",
            token,
        }
    }

    #[test]
    fn round_trip() {
        let s = sealer();
        let sealed = s.seal(at("TKN_a"), b"alice@example.com");
        assert_eq!(
            s.open(at("TKN_a"), 1, &sealed).unwrap().as_slice(),
            b"alice@example.com"
        );
        // Random nonces: sealing twice gives different bytes.
        assert_ne!(sealed, s.seal(at("TKN_a"), b"alice@example.com"));
    }

    #[test]
    fn moved_or_edited_ciphertext_does_not_open() {
        let s = sealer();
        let sealed = s.seal(at("TKN_a"), b"alice@example.com");
        assert!(s.open(at("TKN_b"), 1, &sealed).is_err(), "other token");
        let other_class = Binding {
            class: "name",
            ..at("TKN_a")
        };
        assert!(s.open(other_class, 1, &sealed).is_err(), "other class");
        let other_ns = Binding {
            namespace: "health",
            ..at("TKN_a")
        };
        assert!(s.open(other_ns, 1, &sealed).is_err(), "other namespace");
        assert!(s.open(at("TKN_a"), 2, &sealed).is_err(), "other version");
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert!(
                s.open(at("TKN_a"), 1, &flipped).is_err(),
                "byte {i} flipped"
            );
        }
        assert!(s.open(at("TKN_a"), 1, &sealed[..5]).is_err(), "truncated");
    }
}
