//! The JSONPath selector compiler (configuration input): any text either
//! compiles or is refused, and a compiled selector runs on a document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenvault::payload::{self, Selector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let _ = selector.member_names();
    let document = serde_json::json!({
        "d": [{"identity": "a", "profileData": {"Email": "x@example.com", "n": [1, 2]}}],
        "e": {"f": "g"}
    });
    let _ = payload::select(&document, &[&selector]);
});
