//! libphonenumber's metadata (the `phonenumber` crate), for the phone token
//! format and the PII scan: calling codes, the possible lengths of national
//! numbers, trunk prefixes, and the validity test ([`is_valid`], at a
//! bounded cost whatever the mix of countries). A leaf: it uses nothing of
//! the vault's.

mod valid;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use phonenumber::metadata::{Metadata, DATABASE};
use phonenumber::Type;

pub use valid::is_valid;

/// Calling codes are one to three digits.
const CODES: usize = 1000;

/// The number types libphonenumber's validity test tries (the crate's
/// `number_type`): those a valid number can be.
const NUMBER_TYPES: [Type; 10] = [
    Type::FixedLine,
    Type::Mobile,
    Type::TollFree,
    Type::PremiumRate,
    Type::SharedCost,
    Type::PersonalNumber,
    Type::Voip,
    Type::Pager,
    Type::Uan,
    Type::Voicemail,
];

/// The country calling code at the start of an E.164 digit string, from the
/// libphonenumber metadata. Calling codes are prefix-free, so the first
/// length that names a country is the code.
pub fn country_code(digits: &str) -> Option<&str> {
    (1..=3).filter(|len| *len < digits.len()).find_map(|len| {
        let code: u16 = digits[..len].parse().ok()?;
        DATABASE.by_code(&code).map(|_| &digits[..len])
    })
}

/// Whether a national number of `length` digits can exist after calling
/// code `code`: some number type of some region of that code allows the
/// length (libphonenumber's possible lengths). A cheap test to run before
/// a full parse, which costs microseconds per region.
pub fn possible_national_length(code: &str, length: usize) -> bool {
    static LENGTHS: LazyLock<BTreeMap<u16, BTreeSet<u16>>> = LazyLock::new(|| {
        (1..CODES as u16)
            .filter_map(|code| {
                let regions = DATABASE.by_code(&code)?;
                let lengths = regions
                    .iter()
                    .flat_map(|region| {
                        NUMBER_TYPES
                            .iter()
                            .filter_map(|kind| region.descriptors().get(*kind))
                    })
                    .flat_map(|descriptor| descriptor.possible_length().iter().copied())
                    .collect();
                Some((code, lengths))
            })
            .collect()
    });
    let (Ok(code), Ok(length)) = (code.parse::<u16>(), u16::try_from(length)) else {
        return false;
    };
    LENGTHS
        .get(&code)
        .is_some_and(|lengths| lengths.is_empty() || lengths.contains(&length))
}

/// Loads the country-code table now rather than on the first phone token (it
/// is deserialized lazily and takes a noticeable moment).
pub fn warm_up() {
    let _ = country_code("15550100000");
    let _ = possible_national_length("1", 10);
}

/// The length of the national (trunk) prefix that `national` starts with,
/// when one of `code`'s regions has one (`0` in most countries, `8` in
/// some): people often keep it after the calling code (`+44 (0)20 …`), and
/// the crate drops it when it parses.
pub fn trunk_prefix_length(code: u16, national: &str) -> Option<usize> {
    static PREFIXES: LazyLock<BTreeMap<u16, BTreeSet<&'static str>>> = LazyLock::new(|| {
        (1..CODES as u16)
            .filter_map(|code| {
                let prefixes = DATABASE
                    .by_code(&code)?
                    .into_iter()
                    .filter_map(Metadata::national_prefix)
                    .filter(|prefix| !prefix.is_empty())
                    .collect();
                Some((code, prefixes))
            })
            .collect()
    });
    PREFIXES
        .get(&code)?
        .iter()
        .find(|prefix| national.starts_with(**prefix))
        .map(|prefix| prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calling_codes_are_read_from_the_metadata() {
        assert_eq!(country_code("919876543210"), Some("91"));
        assert_eq!(country_code("15550109494"), Some("1"));
        assert_eq!(country_code("353123456789"), Some("353"));
        assert_eq!(country_code("999123456789"), None);
    }
}
