//! The one leak scanner every test uses: a value in every form it could
//! take on disk or in a log, searched for in files and logs at once.

use std::fs;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use base64::Engine;

use crate::support::fixture;

/// The 1,000 canary values of `tests/fixtures/canaries.txt`.
pub fn canaries() -> Vec<String> {
    let canaries: Vec<String> = fs::read_to_string(fixture("canaries.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(canaries.len(), 1000);
    canaries
}

/// The base64 characters that depend only on `value`'s bytes when it sits
/// at byte offset `offset` (0, 1 or 2) of a longer base64 stream.
fn base64_at(engine: &impl Engine, value: &[u8], offset: usize) -> Vec<u8> {
    let mut shifted = vec![0u8; offset];
    shifted.extend_from_slice(value);
    let encoded = engine.encode(&shifted);
    let encoded = encoded.trim_end_matches('=').as_bytes();
    // Characters before `skip` mix in the bytes before the value; after
    // `end`, the bytes after it.
    let skip = (offset * 8).div_ceil(6);
    let end = (shifted.len() * 8) / 6;
    encoded[skip..end.min(encoded.len())].to_vec()
}

/// Every form of `value` a scan looks for, each with a name: as sent,
/// lower-case, percent-encoded (form and path style), base64 (standard and
/// URL-safe) at each of the three byte offsets, hex in both cases, and a
/// phone number without its `+`.
pub fn forms(value: &str) -> Vec<(&'static str, Vec<u8>)> {
    let bytes = value.as_bytes();
    let mut out = vec![
        ("plain", bytes.to_vec()),
        ("lower-case", value.to_lowercase().into_bytes()),
        (
            "form-encoded",
            form_urlencoded::byte_serialize(bytes)
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "percent-encoded",
            form_urlencoded::byte_serialize(bytes)
                .collect::<String>()
                .replace('+', "%20")
                .into_bytes(),
        ),
        ("hex", hex::encode(bytes).into_bytes()),
        ("HEX", hex::encode_upper(bytes).into_bytes()),
    ];
    let standard = base64::engine::general_purpose::STANDARD_NO_PAD;
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (name, offset) in [("base64@0", 0), ("base64@1", 1), ("base64@2", 2)] {
        out.push((name, base64_at(&standard, bytes, offset)));
        out.push((name, base64_at(&url_safe, bytes, offset)));
    }
    if let Some(digits) = value.strip_prefix('+') {
        out.push(("phone without +", digits.as_bytes().to_vec()));
    }
    out.sort();
    out.dedup();
    out
}

/// A compiled search for values and secrets.
pub struct Scan {
    searcher: AhoCorasick,
    labels: Vec<String>,
}

impl Scan {
    /// Searches for every form of each of `values` (see [`forms`]) and for
    /// each of `secrets` as written (API keys, access tokens).
    pub fn new(values: &[String], secrets: &[String]) -> Self {
        let mut patterns = Vec::new();
        let mut labels = Vec::new();
        for (index, value) in values.iter().enumerate() {
            for (form, bytes) in forms(value) {
                patterns.push(bytes);
                labels.push(format!("value #{index} ({form})"));
            }
        }
        for (index, secret) in secrets.iter().enumerate() {
            patterns.push(secret.as_bytes().to_vec());
            labels.push(format!("secret #{index}"));
        }
        Self {
            searcher: AhoCorasick::new(&patterns).unwrap(),
            labels,
        }
    }

    /// What the scan finds in `bytes`, if anything.
    pub fn find(&self, bytes: &[u8]) -> Option<&str> {
        self.searcher
            .find(bytes)
            .map(|found| self.labels[found.pattern().as_usize()].as_str())
    }

    /// Panics naming the first hit among `(name, bytes)` pairs.
    pub fn assert_clean(&self, haystacks: &[(String, Vec<u8>)]) {
        for (name, bytes) in haystacks {
            if let Some(label) = self.find(bytes) {
                panic!("{label} found in {name}");
            }
        }
    }

    /// Proves the scan can fail: `value`, planted in a copy of `bytes` in
    /// each of its forms, is found every time.
    pub fn assert_finds_planted(&self, bytes: &[u8], value: &str) {
        for (form, planted) in forms(value) {
            let mut copy = bytes.to_vec();
            copy.extend_from_slice(b" ");
            copy.extend_from_slice(&planted);
            assert!(self.find(&copy).is_some(), "planted {form} form not found");
        }
    }
}

/// Every file under `dir`, recursively, read now and labelled `label`.
pub fn files(dir: &Path, label: &str) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(dir, &mut paths);
    paths
        .into_iter()
        .filter_map(|path| {
            // A file can vanish between listing and reading (a checkpointed
            // WAL): what is gone holds nothing.
            fs::read(&path)
                .ok()
                .map(|bytes| (format!("{} ({label})", path.display()), bytes))
        })
        .collect()
}

#[test]
fn base64_forms_are_found_at_every_offset() {
    let value = "canary.7.0000.zq@example.com";
    let scan = Scan::new(&[value.to_owned()], &[]);
    let b64 = base64::engine::general_purpose::STANDARD;
    for prefix in ["", "x", "xy", "xyz"] {
        for suffix in ["", "a", "ab"] {
            let text = b64.encode(format!("{prefix}{value}{suffix}"));
            assert!(
                scan.find(text.as_bytes()).is_some(),
                "{prefix:?} {suffix:?}"
            );
        }
    }
    assert!(scan
        .find(b64.encode("something else entirely").as_bytes())
        .is_none());
}
