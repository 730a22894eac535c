//! Encryption in transit of the CleverTap Token Vault API: AES-256-GCM under
//! a session key the client chooses and sends along (inside TLS), no
//! associated data. It adds nothing to TLS's secrecy; it exists because the
//! platform's SDKs speak it and fail on anything else.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

/// Length of a session key.
pub const SESSION_KEY_LEN: usize = 32;
/// Length of a nonce.
pub const NONCE_LEN: usize = 12;

/// An envelope could not be opened. Deliberately without detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the encrypted body cannot be opened")]
pub struct EnvelopeError;

/// A client's session key. The cipher's key schedule is zeroized on drop.
pub struct SessionKey(Aes256Gcm);

impl SessionKey {
    /// The session key in `bytes`, which must be exactly 32 bytes long.
    pub fn new(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() != SESSION_KEY_LEN {
            return Err(EnvelopeError);
        }
        Aes256Gcm::new_from_slice(bytes)
            .map(Self)
            .map_err(|_| EnvelopeError)
    }

    /// Opens `sealed` (ciphertext followed by its 16-byte tag) under `nonce`.
    pub fn open(&self, nonce: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        if nonce.len() != NONCE_LEN {
            return Err(EnvelopeError);
        }
        self.0
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map(Zeroizing::new)
            .map_err(|_| EnvelopeError)
    }

    /// Seals `plain` under a fresh random nonce; returns the nonce and the
    /// ciphertext with its tag.
    pub fn seal(&self, plain: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = super::random_bytes();
        // Invariant: AES-GCM encryption fails only for inputs over 64 GiB,
        // far beyond any body the server accepts.
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plain)
            .expect("AES-256-GCM encryption of a bounded body");
        (nonce, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NIST GCM test vector (gcmEncryptExtIV256.rsp, Count 0 of the 96-bit IV,
    /// 128-bit plaintext, no AAD set).
    #[test]
    fn known_answer() {
        let key = hex::decode("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22")
            .unwrap();
        let nonce = hex::decode("0d18e06c7c725ac9e362e1ce").unwrap();
        let plain = hex::decode("2db5168e932556f8089a0622981d017d").unwrap();
        let expected =
            hex::decode("fa4362189661d163fcd6a56d8bf0405ad636ac1bbedd5cc3ee727dc2ab4a9489")
                .unwrap();
        let key = SessionKey::new(&key).unwrap();
        let opened = key.open(&nonce, &expected).unwrap();
        assert_eq!(opened.as_slice(), plain.as_slice());
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = SessionKey::new(&[7u8; 32]).unwrap();
        let (nonce, sealed) = key.seal(b"{\"value\":\"x\"}");
        assert_eq!(sealed.len(), 13 + 16);
        assert_eq!(
            key.open(&nonce, &sealed).unwrap().as_slice(),
            b"{\"value\":\"x\"}"
        );
        let (other_nonce, _) = key.seal(b"x");
        assert_ne!(nonce, other_nonce, "every seal takes a fresh nonce");
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert_eq!(key.open(&nonce, &flipped), Err(EnvelopeError));
        assert_eq!(key.open(&nonce[..11], &sealed), Err(EnvelopeError));
        assert!(SessionKey::new(&[7u8; 31]).is_err());
        assert!(SessionKey::new(&[7u8; 16]).is_err());
        let other = SessionKey::new(&[8u8; 32]).unwrap();
        assert_eq!(other.open(&nonce, &sealed), Err(EnvelopeError));
    }
}
