//! The key that signs erasure receipts: Ed25519 (ring), derived from the
//! master key so that it needs no storage of its own and is the same after
//! every restart. Its public half is published (`GET /v1/receipts/key`), so
//! that a customer or a regulator can check a receipt without the vault.

use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keys::KEY_LEN;

/// Signs receipts.
pub struct ReceiptKey {
    pair: Ed25519KeyPair,
    version: u32,
}

impl ReceiptKey {
    /// The key pair whose 32-byte seed is `seed` (an HKDF output of master
    /// key `version`).
    pub(super) fn from_seed(version: u32, seed: &Zeroizing<[u8; KEY_LEN]>) -> Self {
        // Invariant: any 32 bytes are a valid Ed25519 seed.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_slice())
            .expect("a 32-byte seed is always valid");
        Self { pair, version }
    }

    /// The public key (32 bytes, RFC 8032).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// A short name for the key: `v<master key version>-` and the first 8
    /// bytes of the public key's SHA-256, in hex.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.public_key());
        format!("v{}-{}", self.version, hex::encode(&digest[..8]))
    }

    /// The Ed25519 signature of `message` (64 bytes).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{UnparsedPublicKey, ED25519};

    use crate::crypto::keys::{MasterKey, Stable};

    use super::ReceiptKey;

    fn receipt_key(master: &MasterKey) -> ReceiptKey {
        ReceiptKey::from_seed(
            master.version(),
            &master.stable_bytes(&Stable::ReceiptSigning),
        )
    }

    #[test]
    fn signatures_verify_with_the_public_key_and_the_key_is_stable() {
        let master = MasterKey::generate(3);
        let key = receipt_key(&master);
        let again = receipt_key(&master);
        assert_eq!(key.public_key(), again.public_key());
        assert!(key.key_id().starts_with("v3-"));
        let signature = key.sign(b"receipt");
        let public = UnparsedPublicKey::new(&ED25519, key.public_key());
        assert!(public.verify(b"receipt", &signature).is_ok());
        assert!(public.verify(b"receipt!", &signature).is_err());
        let other = receipt_key(&MasterKey::generate(3));
        assert_ne!(other.public_key(), key.public_key());
    }
}
