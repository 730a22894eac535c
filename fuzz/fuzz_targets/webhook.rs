//! The Standard Webhooks headers and signature check: any headers parse or
//! are refused; nothing verifies without the key; what the key signs
//! verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenvault::crypto::webhook::{SignedHeaders, WebhookKey};

fuzz_target!(|data: &[u8]| {
    // id \n timestamp \n signatures \n body
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let (Some(id), Some(timestamp), Some(signatures)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let body = parts.next().unwrap_or_default();
    let (Ok(id), Ok(timestamp), Ok(signatures)) = (
        std::str::from_utf8(id),
        std::str::from_utf8(timestamp),
        std::str::from_utf8(signatures),
    ) else {
        return;
    };
    let key = WebhookKey::new(b"the fuzz target's callback secret");
    let Ok(headers) = SignedHeaders::parse(id, timestamp, signatures) else {
        return;
    };
    assert!(
        !headers.verify(&key, body) || signatures.contains(&key.sign(id, timestamp, body)),
        "a signature verified that the key did not make"
    );
    let signed = key.sign(id, timestamp, body);
    let headers = SignedHeaders::parse(id, timestamp, &signed).unwrap();
    assert!(headers.verify(&key, body));
});
