//! Short-lived access tokens of the CleverTap surface's token endpoint:
//! `ctv1.<client>.<expiry, unix seconds>.<HMAC-SHA256, base64url>` under a
//! per-process random key. A restart invalidates every token; the SDKs then
//! get a 401, fetch a new one and retry, as they do on expiry.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// Prefix of every access token.
pub const ACCESS_TOKEN_PREFIX: &str = "ctv1.";

/// Why an access token was refused. Both answer 401 alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessTokenError {
    /// Malformed, or not signed by this process.
    #[error("access token not recognized")]
    Invalid,
    /// Signed by this process, but past its expiry.
    #[error("access token expired")]
    Expired,
}

/// The key access tokens are signed with (cloned into the state a reload
/// builds, so that access tokens issued before it stay valid).
#[derive(Clone)]
pub struct AccessTokenKey(hmac::Key);

impl AccessTokenKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let bytes: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(super::random_bytes());
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_slice()))
    }

    /// A token for `client` valid until `expires_at` (unix seconds).
    pub fn issue(&self, client: &str, expires_at: u64) -> String {
        let body = format!("{ACCESS_TOKEN_PREFIX}{client}.{expires_at}");
        let tag = hmac::sign(&self.0, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The client a token was issued to, if it is genuine and unexpired at
    /// `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<String, AccessTokenError> {
        let (body, tag) = token.rsplit_once('.').ok_or(AccessTokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| AccessTokenError::Invalid)?;
        hmac::verify(&self.0, body.as_bytes(), &tag).map_err(|_| AccessTokenError::Invalid)?;
        // Genuine from here on: the fields are ours.
        let (client, expires_at) = body
            .strip_prefix(ACCESS_TOKEN_PREFIX)
            .and_then(|rest| rest.rsplit_once('.'))
            .ok_or(AccessTokenError::Invalid)?;
        let expires_at: u64 = expires_at.parse().map_err(|_| AccessTokenError::Invalid)?;
        if now >= expires_at {
            return Err(AccessTokenError::Expired);
        }
        Ok(client.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_expire_forge() {
        let key = AccessTokenKey::random();
        let token = key.issue("sdk", 1_000);
        assert!(token.starts_with("ctv1.sdk.1000."));
        assert_eq!(key.verify(&token, 999).as_deref(), Ok("sdk"));
        assert_eq!(key.verify(&token, 1_000), Err(AccessTokenError::Expired));
        // Another process's key, an edited expiry, a edited client, junk.
        assert_eq!(
            AccessTokenKey::random().verify(&token, 1),
            Err(AccessTokenError::Invalid)
        );
        let tag = token.rsplit_once('.').unwrap().1;
        assert_eq!(
            key.verify(&format!("ctv1.sdk.9999.{tag}"), 1),
            Err(AccessTokenError::Invalid)
        );
        assert_eq!(
            key.verify(&format!("ctv1.root.1000.{tag}"), 1),
            Err(AccessTokenError::Invalid)
        );
        assert_eq!(key.verify("ctv1.sdk", 1), Err(AccessTokenError::Invalid));
        assert_eq!(key.verify("", 1), Err(AccessTokenError::Invalid));
    }
}
