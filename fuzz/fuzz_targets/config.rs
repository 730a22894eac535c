//! The configuration loader: any TOML text loads or gives problems, never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tokenvault::config::from_toml_str(text);
    }
});
