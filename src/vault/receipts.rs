//! Erasure receipts: what a subject's erasure did, signed with the vault's
//! Ed25519 receipt key so that the customer or a regulator can check it with
//! the published public key alone (docs/customer-rights.md).
//!
//! The signed bytes are the receipt's JSON exactly as sent (`payload`,
//! base64url); `receipt` repeats them parsed, for reading. A verifier checks
//! `signature` over the decoded `payload`, then reads the payload.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::crypto::receipts::ReceiptKey;
use crate::store::{Erasure, SubjectHash};

/// The receipt format's name and version.
pub const ERASURE_RECEIPT: &str = "tokenvault.erasure.v1";

/// A signed receipt.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The signed statement, parsed.
    pub receipt: Value,
    /// The signed bytes (the statement's JSON), base64url without padding.
    pub payload: String,
    /// Ed25519 signature of the signed bytes, base64url without padding.
    pub signature: String,
    /// The signing key's id (`GET /v1/receipts/key`).
    pub key_id: String,
}

impl Receipt {
    /// The answer's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "receipt": self.receipt,
            "payload": self.payload,
            "signature": self.signature,
            "algorithm": "Ed25519",
            "key_id": self.key_id,
        })
    }
}

/// Signs the receipt of `erasure` of `subject` (its keyed hash: the
/// identifier itself is never written down) in `namespace`.
pub fn erasure(
    key: &ReceiptKey,
    namespace: &str,
    subject: &SubjectHash,
    erasure: &Erasure,
    erased_at_us: i64,
) -> Receipt {
    let statement = json!({
        "type": ERASURE_RECEIPT,
        "namespace": namespace,
        "subject": hex::encode(subject),
        "erased_at": crate::audit::format_time(erased_at_us),
        "deleted": erasure.deleted,
        "deleted_total": erasure.deleted_total(),
        "unlinked_shared": erasure.unlinked_shared,
        "audit_seq": erasure.audit_seq,
        "key_id": key.key_id(),
    });
    // Invariant: a Value always serializes.
    let bytes = serde_json::to_vec(&statement).expect("JSON value serializes");
    Receipt {
        receipt: statement,
        payload: B64.encode(&bytes),
        signature: B64.encode(key.sign(&bytes)),
        key_id: key.key_id(),
    }
}

/// The published half of the receipt key.
pub fn public_key(key: &ReceiptKey) -> Value {
    json!({
        "algorithm": "Ed25519",
        "key_id": key.key_id(),
        "public_key": B64.encode(key.public_key()),
    })
}
