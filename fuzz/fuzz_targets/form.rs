//! The form-body parser and encoder: any bytes parse or are refused; every
//! pair's name survives encoding and parsing again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenvault::payload::{self, splice};

fuzz_target!(|data: &[u8]| {
    let _ = payload::parse_form(data);
    for pair in splice::form_pairs(data) {
        assert!(pair.name_span.end <= data.len() && pair.value_span.end <= data.len());
        let mut again = splice::form_encode(&pair.name);
        again.extend_from_slice(b"=");
        again.extend_from_slice(&splice::form_encode(&pair.name));
        let reparsed = splice::form_pairs(&again);
        assert_eq!(reparsed.len(), 1, "one encoded pair parses as one");
        assert_eq!(
            reparsed[0].name, pair.name,
            "the name survives a round trip"
        );
    }
});
