//! Standard Webhooks signatures: HMAC-SHA256 over `id.timestamp.body`,
//! sent as one or more space-separated `v1,<base64 tag>` in the signature
//! header. The callbacks check them before anything else of the body is
//! read.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;

/// The longest message id accepted (it is stored and logged).
pub const MAX_ID_LEN: usize = 128;

/// A callback's signing key.
pub struct WebhookKey(hmac::Key);

impl WebhookKey {
    /// The key for `secret` (the bytes after `whsec_`, decoded).
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The `v1,<tag>` signature of `body` under `id` and `timestamp`.
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = hmac::sign(&self.0, &signed_content(id, timestamp, body));
        format!("v1,{}", STANDARD.encode(tag.as_ref()))
    }
}

/// The three signature headers, checked for shape.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    /// The message id: at most [`MAX_ID_LEN`] of `A-Z a-z 0-9 _ - . :`.
    pub id: &'a str,
    timestamp_text: &'a str,
    /// The signed time, in seconds since the epoch.
    pub timestamp: u64,
    signatures: &'a str,
}

/// Headers that are not a Standard Webhooks signature's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The id is empty, too long, or has other characters.
    #[error("the message id is malformed")]
    Id,
    /// The timestamp is not a decimal number of seconds.
    #[error("the timestamp is malformed")]
    Timestamp,
}

impl<'a> SignedHeaders<'a> {
    /// Checks the headers' shape (not the signature).
    pub fn parse(id: &'a str, timestamp: &'a str, signatures: &'a str) -> Result<Self, Malformed> {
        let id_ok = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        if !id_ok {
            return Err(Malformed::Id);
        }
        let digits = !timestamp.is_empty() && timestamp.bytes().all(|b| b.is_ascii_digit());
        let parsed = digits.then(|| timestamp.parse::<u64>().ok()).flatten();
        let Some(seconds) = parsed else {
            return Err(Malformed::Timestamp);
        };
        Ok(Self {
            id,
            timestamp_text: timestamp,
            timestamp: seconds,
            signatures,
        })
    }

    /// True when one of the `v1` signatures is `key`'s over `body`
    /// (compared in constant time).
    pub fn verify(&self, key: &WebhookKey, body: &[u8]) -> bool {
        let signed = signed_content(self.id, self.timestamp_text, body);
        self.signatures.split_whitespace().any(|candidate| {
            candidate
                .strip_prefix("v1,")
                .and_then(|b64| STANDARD.decode(b64).ok())
                .is_some_and(|tag| hmac::verify(&key.0, &signed, &tag).is_ok())
        })
    }
}

fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_own_content() {
        let key = WebhookKey::new(b"secret");
        let signature = key.sign("msg_1", "1700000000", b"{}");
        let headers = SignedHeaders::parse("msg_1", "1700000000", &signature).unwrap();
        assert!(headers.verify(&key, b"{}"));
        assert!(!headers.verify(&key, b"{ }"));
        assert!(!headers.verify(&WebhookKey::new(b"other"), b"{}"));
        let several = format!("v1,AAAA {signature}");
        assert!(SignedHeaders::parse("msg_1", "1700000000", &several)
            .unwrap()
            .verify(&key, b"{}"));
        // "+1" parses as a number but is not the signed text.
        assert_eq!(
            SignedHeaders::parse("msg_1", "+1700000000", &signature).err(),
            Some(Malformed::Timestamp)
        );
        assert_eq!(
            SignedHeaders::parse("msg 1", "1", "").err(),
            Some(Malformed::Id)
        );
        assert_eq!(
            SignedHeaders::parse(&"a".repeat(129), "1", "").err(),
            Some(Malformed::Id)
        );
    }
}
