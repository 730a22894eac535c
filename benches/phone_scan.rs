//! The PII scan's phone check on numbers from every calling code: the
//! `phonenumber` crate's validator as shipped (the baseline, run first
//! while its LRU of 100 patterns is as the crate leaves it), then the
//! scan's own check (`payload::detect::scan_number`), which compiles each
//! calling code's patterns once into a widened cache. Prints microseconds
//! per number, how many each found valid, and RSS.
//!
//! Run: `cargo bench --bench phone_scan` (optional env: BENCH_NUMBERS).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // only the memory reading is shared here
mod common;

use std::time::Instant;

use phonenumber::metadata::DATABASE;
use tokenvault::payload::detect::{scan_number, Detector};

/// `count` numbers cycling through every calling code, each with a
/// pseudo-random national number of 7 to 12 digits.
fn numbers(count: usize) -> Vec<String> {
    let codes: Vec<u16> = (1..1000)
        .filter(|c| DATABASE.by_code(c).is_some())
        .collect();
    let mut seed: u64 = 12345;
    (0..count)
        .map(|i| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let length = 7 + (seed >> 60) as usize % 6;
            let national = (seed >> 8) % 10u64.pow(length as u32);
            format!("{}{national:0length$}", codes[i % codes.len()])
        })
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let count = std::env::var("BENCH_NUMBERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4000);
    let numbers = numbers(count);
    println!(
        "phone check on {count} numbers over every calling code; RSS at start {:.1} MiB",
        common::memory_mib().0
    );
    for (label, check) in [
        (
            "phonenumber as shipped",
            &(|digits: &str| {
                phonenumber::parse(None, format!("+{digits}"))
                    .is_ok_and(|number| phonenumber::is_valid(&number))
            }) as &dyn Fn(&str) -> bool,
        ),
        ("the scan, first pass", &|digits: &str| {
            scan_number(digits).contains(&Detector::Phone)
        }),
        ("the scan, second pass", &|digits: &str| {
            scan_number(digits).contains(&Detector::Phone)
        }),
    ] {
        let start = Instant::now();
        let valid = numbers.iter().filter(|digits| check(digits)).count();
        let elapsed = start.elapsed();
        println!(
            "{label}: {:.1} us a number, {valid} valid, RSS {:.1} MiB",
            elapsed.as_secs_f64() * 1e6 / count as f64,
            common::memory_mib().0
        );
    }
}
