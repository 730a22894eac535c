//! libphonenumber's validity test at a bounded cost, whatever mix of
//! countries the numbers come from.
//!
//! The `phonenumber` crate compiles its metadata's patterns lazily into one
//! LRU of 100 regexes (hard-coded when its database loads), each built with
//! Unicode classes and a lazy DFA: about 200 KB apiece. Numbers from more
//! countries than the LRU holds compile their patterns again on every
//! check, about 1.4 ms a number, so a body of international numbers in
//! fields no rule selects could buy a millisecond of CPU per number.
//!
//! The crate's cache is keyed by the pattern's text and lets a caller save a
//! regex under it. So, the first time a calling code is checked, every
//! pattern that parsing and validation read for its regions is compiled
//! here, ASCII-only and without a lazy DFA (about 12 KB apiece, and faster
//! on a 15-digit haystack), and saved; the LRU is widened to hold them all.
//! The crate then never compiles one of these patterns itself. The only
//! difference is that `\d` and friends no longer match non-ASCII digits,
//! and the numbers checked here are ASCII digits only (the unit tests
//! check, pattern by pattern, that both builds answer alike).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;

use phonenumber::metadata::{Metadata, DATABASE};

use super::{CODES, NUMBER_TYPES};

/// Room in the crate's LRU: more than every distinct pattern in its
/// metadata (about 2,000, formats included), so none is ever evicted.
const CACHE_CAPACITY: usize = 4096;

/// `+{code}{national}` is a valid number per libphonenumber's metadata.
/// `code` is a calling code the metadata knows; `digits` is the whole
/// number without the `+`, ASCII digits only.
pub fn is_valid(code: u16, digits: &str) -> bool {
    prepare(code);
    phonenumber::parse(None, format!("+{digits}"))
        .is_ok_and(|number| phonenumber::is_valid(&number))
}

/// Compiles and saves the patterns of `code`'s regions, once per code.
fn prepare(code: u16) {
    static PREPARED: [AtomicBool; CODES] = [const { AtomicBool::new(false) }; CODES];
    let Some(done) = PREPARED.get(usize::from(code)) else {
        return;
    };
    if done.load(Ordering::Acquire) {
        return;
    }
    let Some(regions) = DATABASE.by_code(&code) else {
        return;
    };
    // Compiled before the lock is taken: the crate holds the same lock for
    // every match. Two threads may compile the same code at once; saving
    // is idempotent.
    let compiled: Vec<regex::Regex> = regions
        .iter()
        .flat_map(|meta| validation_patterns(meta))
        .filter_map(|source| compile(source).ok())
        .collect();
    let cache = DATABASE.cache();
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.capacity() < CACHE_CAPACITY {
        cache.set_capacity(CACHE_CAPACITY);
    }
    for regex in compiled {
        cache.save(regex);
    }
    done.store(true, Ordering::Release);
}

/// The text of every pattern that parsing a `+` number and testing its
/// validity read for one region: its number descriptions, the leading
/// digits that pick a region among those sharing a code, and the national
/// prefix for parsing.
fn validation_patterns(meta: &Metadata) -> Vec<&str> {
    let descriptors = meta.descriptors();
    let mut sources = vec![descriptors.general().national_number().as_str()];
    sources.extend(
        NUMBER_TYPES
            .iter()
            .filter_map(|kind| descriptors.get(*kind))
            .map(|descriptor| descriptor.national_number().as_str()),
    );
    sources.extend(meta.leading_digits().map(|regex| regex.as_str()));
    sources.extend(
        meta.national_prefix_for_parsing()
            .map(|regex| regex.as_str()),
    );
    sources
}

/// The crate's own build of a metadata pattern (whitespace ignored), but
/// ASCII-only and without the lazy DFA's cache.
fn compile(source: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(source)
        .ignore_whitespace(true)
        .unicode(false)
        .dfa_size_limit(0)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_codes() -> Vec<u16> {
        (1..CODES as u16)
            .filter(|code| DATABASE.by_code(code).is_some())
            .collect()
    }

    /// Digit strings to try a region's patterns on: its example numbers,
    /// and pseudo-random digits of every national length from 1 to 17.
    fn haystacks(meta: &Metadata, seed: &mut u64) -> Vec<String> {
        let descriptors = meta.descriptors();
        let mut out: Vec<String> = NUMBER_TYPES
            .iter()
            .filter_map(|kind| descriptors.get(*kind))
            .filter_map(|descriptor| descriptor.example().map(str::to_owned))
            .collect();
        for length in 1..=17 {
            for _ in 0..4 {
                let digits: String = (0..length)
                    .map(|_| {
                        *seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        char::from(b'0' + ((*seed >> 33) % 10) as u8)
                    })
                    .collect();
                out.push(digits);
            }
        }
        out
    }

    #[test]
    fn every_pattern_builds_ascii_and_answers_like_the_crates_own_build() {
        let mut seed = 7;
        let mut checked = 0;
        for code in all_codes() {
            for meta in DATABASE.by_code(&code).unwrap() {
                let inputs = haystacks(meta, &mut seed);
                for source in validation_patterns(meta) {
                    let ours = compile(source).expect("every metadata pattern builds ASCII-only");
                    let theirs = regex::RegexBuilder::new(source)
                        .ignore_whitespace(true)
                        .build()
                        .unwrap();
                    for input in &inputs {
                        let span = |regex: &regex::Regex| {
                            regex.captures(input).map(|captures| {
                                captures
                                    .iter()
                                    .map(|group| group.map(|m| m.range()))
                                    .collect::<Vec<_>>()
                            })
                        };
                        assert_eq!(span(&ours), span(&theirs), "pattern {source:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50_000, "only {checked} comparisons ran");
    }

    #[test]
    fn the_cache_holds_every_pattern_and_the_crate_compiles_none_of_its_own() {
        let codes = all_codes();
        let distinct: std::collections::BTreeSet<&str> = codes
            .iter()
            .flat_map(|code| DATABASE.by_code(code).unwrap())
            .flat_map(validation_patterns)
            .collect();
        assert!(distinct.len() > 1000 && distinct.len() < CACHE_CAPACITY / 2);
        for code in &codes {
            prepare(*code);
        }
        let cached = || DATABASE.cache().lock().unwrap().len();
        let before = cached();
        // Other tests in this process may have let the crate compile a
        // pattern of its own before anything was prepared; nothing after.
        assert!(before >= distinct.len());
        let mut valid = 0;
        for code in &codes {
            for meta in DATABASE.by_code(code).unwrap() {
                for example in NUMBER_TYPES
                    .iter()
                    .filter_map(|kind| meta.descriptors().get(*kind))
                    .filter_map(|descriptor| descriptor.example())
                {
                    valid += usize::from(is_valid(*code, &format!("{code}{example}")));
                }
            }
        }
        assert!(valid > 500, "only {valid} example numbers were valid");
        assert_eq!(cached(), before, "the crate compiled a pattern itself");
    }

    /// The crate's own validator test cases, `+` numbers only.
    #[test]
    fn the_crates_own_cases_are_answered_as_it_answers_them() {
        for (code, digits, valid) in [
            (1, "16502530000", true),
            (39, "390236618300", true),
            (33, "330631966543", true),
            (44, "447912345678", true),
            (800, "80012345678", true),
            (979, "979123456789", true),
            (64, "6421387835", true),
            (1, "12530000", false),
        ] {
            assert_eq!(is_valid(code, digits), valid, "+{digits}");
        }
    }
}
