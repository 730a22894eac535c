//! API keys: generation, argon2id hashing for the config file, verification,
//! and the keyed hash that keys the in-memory cache of verified keys.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;
use ring::hmac;

use super::keys::keyed_hash;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Prefix of every API key the vault mints: `tv.<client>.<secret>`.
pub const API_KEY_PREFIX: &str = "tv.";
/// Random base62 characters in an API key's secret part (about 256 bits).
pub const API_KEY_SECRET_LEN: usize = 43;

/// A fresh API key for `client`: `tv.<client>.<43 base62 characters>`. The
/// client name inside lets the vault verify against one hash, not all.
pub fn new_api_key(client: &str) -> String {
    let mut rng = rand::thread_rng();
    let secret: String = (0..API_KEY_SECRET_LEN)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect();
    format!("{API_KEY_PREFIX}{client}.{secret}")
}

/// The client name an API key claims, if it has the vault's shape.
pub fn claimed_client(api_key: &str) -> Option<&str> {
    let rest = api_key.strip_prefix(API_KEY_PREFIX)?;
    let (client, secret) = rest.rsplit_once('.')?;
    (!client.is_empty() && !secret.is_empty()).then_some(client)
}

/// argon2id hash (PHC string) of an API key, with the default parameters
/// (64 MiB, 3 passes, 1 lane) and a fresh salt.
pub fn hash_api_key(api_key: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let params = argon2::Params::new(64 * 1024, 3, 1, None).expect("fixed valid parameters");
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    // Invariant: hashing only fails on invalid parameters or salt, both fixed here.
    argon
        .hash_password(api_key.as_bytes(), &salt)
        .expect("argon2id hashing")
        .to_string()
}

/// True when `hash` is a PHC string of argon2id.
pub fn is_argon2id_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| parsed.algorithm.as_str() == "argon2id")
}

/// Checks `api_key` against a PHC hash. Slow on purpose (tens of ms).
pub fn verify_api_key(api_key: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(api_key.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A per-process random key that turns presented API keys into cache keys, so
/// the cache of verified keys never holds a key itself.
pub struct CacheKey(hmac::Key);

impl CacheKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let bytes: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(super::random_bytes());
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_slice()))
    }

    /// The cache key of `secret`.
    pub fn hash(&self, secret: &str) -> [u8; 32] {
        keyed_hash(&self.0, &[secret.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape_hash_and_verify() {
        let key = new_api_key("crm");
        assert_eq!(claimed_client(&key), Some("crm"));
        assert_eq!(key.len(), 3 + 3 + 1 + API_KEY_SECRET_LEN);
        let hash = hash_api_key(&key);
        assert!(hash.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"));
        assert!(is_argon2id_hash(&hash));
        assert!(verify_api_key(&key, &hash));
        assert!(!verify_api_key(&new_api_key("crm"), &hash));
        assert!(!is_argon2id_hash("$2b$12$abcdefghijklmnopqrstuv"));
        assert_eq!(claimed_client("not-a-vault-key"), None);
    }
}
