//! Detectors of PII in fields no rule selected: email addresses, phone
//! numbers (international numbers that libphonenumber's metadata calls
//! valid, written with a `+`, an international call prefix or neither, and
//! common national formats), and payment card numbers (a known card prefix
//! and Luhn-valid). They report the detector, never the text.
//! [`scan`] reads text (string values, member names, form and query
//! parameters); [`scan_number`] reads a JSON number as written.

use crate::phone;

/// Which detector fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    /// Something shaped like an email address.
    Email,
    /// A phone number.
    Phone,
    /// A Luhn-valid card number.
    Card,
}

impl Detector {
    /// The name used in logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Card => "card",
        }
    }
}

/// The detectors that fire on `text`.
pub fn scan(text: &str) -> Vec<Detector> {
    let mut found = Vec::new();
    // Most member names and values hold no `@` and fewer digits than the
    // shortest phone number (8): nothing to look for.
    let bytes = text.as_bytes();
    if !bytes.contains(&b'@') && bytes.iter().filter(|b| b.is_ascii_digit()).count() < 8 {
        return found;
    }
    if has_email(text) {
        found.push(Detector::Email);
    }
    let runs = digit_runs(text);
    if runs.iter().any(is_phone) {
        found.push(Detector::Phone);
    }
    if runs.iter().any(|run| is_card(&run.digits)) {
        found.push(Detector::Card);
    }
    found
}

fn has_email(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'@')
        .any(|(at, _)| {
            let local_ok = |b: &u8| b.is_ascii_alphanumeric() || b"._%+-".contains(b);
            let domain_ok = |b: &u8| b.is_ascii_alphanumeric() || b".-".contains(b);
            let local = bytes[..at].iter().rev().take_while(|b| local_ok(b)).count();
            let domain: Vec<u8> = bytes[at + 1..]
                .iter()
                .take_while(|b| domain_ok(b))
                .copied()
                .collect();
            let domain = String::from_utf8_lossy(&domain);
            let domain = domain.trim_end_matches('.');
            local > 0
                && domain.rsplit_once('.').is_some_and(|(name, tld)| {
                    !name.is_empty()
                        && tld.len() >= 2
                        && tld.bytes().all(|b| b.is_ascii_alphabetic())
                })
        })
}

/// A run of digits with the separators phone and card numbers use.
struct DigitRun {
    digits: String,
    plus: bool,
    separated: bool,
    leading_zero_or_paren: bool,
}

fn digit_runs(text: &str) -> Vec<DigitRun> {
    let mut runs = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || ((chars[i] == '+' || chars[i] == '(')
                && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if !starts || (i > 0 && chars[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let mut run = DigitRun {
            digits: String::new(),
            plus: chars[i] == '+',
            separated: false,
            leading_zero_or_paren: chars[i] == '(' || chars[i] == '0',
        };
        let mut j = i + usize::from(chars[i] == '+');
        while j < chars.len() {
            let c = chars[j];
            if c.is_ascii_digit() {
                run.digits.push(c);
            } else if is_separator(c) && next_digit_within(&chars, j, 2) {
                run.separated = true;
            } else {
                break;
            }
            j += 1;
        }
        // A letter glued to the end makes it an identifier, not a number.
        if !chars.get(j).is_some_and(char::is_ascii_alphabetic) {
            runs.push(run);
        }
        i = j.max(i + 1);
    }
    runs
}

fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '(' | ')')
}

/// True when a digit follows position `at` after at most `gap` separators.
fn next_digit_within(chars: &[char], at: usize, gap: usize) -> bool {
    chars[at..]
        .iter()
        .take(gap + 1)
        .find(|c| !is_separator(**c))
        .is_some_and(char::is_ascii_digit)
}

/// The detectors that fire on a JSON number as written: its digits as an
/// international number without the `+` (as backends send phones), or as a
/// card number. Integers only; a timestamp or an order id is neither a
/// valid number plan entry nor a card with a known prefix.
pub fn scan_number(written: &str) -> Vec<Detector> {
    let mut found = Vec::new();
    if written.is_empty() || !written.bytes().all(|b| b.is_ascii_digit()) {
        return found;
    }
    if is_international(written) {
        found.push(Detector::Phone);
    }
    if is_card(written) {
        found.push(Detector::Card);
    }
    found
}

/// `digits` (no `+`) is a valid international number per libphonenumber,
/// the national trunk prefix kept or not. A full parse costs microseconds
/// per region of the calling code, and a payload is full of timestamps and
/// ids: the possible lengths of the calling code's numbers decide most of
/// them first.
fn is_international(digits: &str) -> bool {
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return false;
    }
    let Some(code) = phone::country_code(digits) else {
        return false;
    };
    let Ok(calling_code) = code.parse() else {
        return false;
    };
    let national = &digits[code.len()..];
    let possible = |length| phone::possible_national_length(code, length);
    let plausible = possible(national.len())
        || phone::trunk_prefix_length(calling_code, national)
            .is_some_and(|prefix| possible(national.len() - prefix));
    plausible && phone::is_valid(calling_code, digits)
}

fn is_phone(run: &DigitRun) -> bool {
    let n = run.digits.len();
    if run.plus {
        return is_international(&run.digits);
    }
    // Without a `+`: after an international call prefix (`00`; `011` from
    // North America), or the digits alone, as backends store numbers. The
    // validity test turns away timestamps and ids, as for a JSON number.
    let after_prefix = ["00", "011"]
        .iter()
        .filter_map(|prefix| run.digits.strip_prefix(prefix))
        .any(is_international);
    if after_prefix || is_international(&run.digits) {
        return true;
    }
    // National formats: 10 or 11 digits written the way people write
    // numbers (grouped, or with a trunk 0 or an area code in brackets);
    // a bare 10-digit run is more often a timestamp or an id.
    (10..=11).contains(&n) && (run.separated || run.leading_zero_or_paren)
}

fn is_card(digits: &str) -> bool {
    (13..=19).contains(&digits.len()) && known_card_prefix(digits) && luhn(digits)
}

/// Issuer prefixes of the card networks in common use (Visa, Mastercard,
/// American Express, Discover, JCB, Diners Club, UnionPay, RuPay, Maestro):
/// without one, a Luhn-valid digit run (one id in ten) is not a card.
fn known_card_prefix(digits: &str) -> bool {
    let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok());
    matches!(prefix(1), Some(4))
        || matches!(
            prefix(2),
            Some(34 | 36 | 37 | 38 | 39 | 51..=55 | 60 | 62 | 64 | 65 | 81 | 82)
        )
        || matches!(prefix(3), Some(300..=305 | 508 | 353..=358))
        || matches!(
            prefix(4),
            Some(2221..=2720 | 6011 | 6304 | 6759 | 6761..=6763 | 3528..=3589)
        )
        || matches!(prefix(2), Some(50 | 56..=59 | 63 | 67))
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectors() {
        assert_eq!(
            scan("call me on +919999912345 or mail canary.leak@example.com"),
            vec![Detector::Email, Detector::Phone]
        );
        assert_eq!(scan("(555) 010-9494"), vec![Detector::Phone]);
        assert_eq!(scan("07700 900038"), vec![Detector::Phone]);
        assert_eq!(
            scan("card 4111 1111 1111 1111 thanks"),
            vec![Detector::Card]
        );
        assert_eq!(
            scan("4111111111111112"),
            Vec::<Detector>::new(),
            "fails Luhn"
        );
        for (number, expected) in [
            ("919000700001", vec![Detector::Phone]),
            ("14155550123", vec![Detector::Phone]),
            ("4111111111111111", vec![Detector::Card]),
            ("1767225600", vec![]),
            ("1767225600123", vec![]),
            ("100000123", vec![]),
            ("20260105", vec![]),
            ("9000000000000001", vec![]),
        ] {
            assert_eq!(scan_number(number), expected, "{number}");
        }
        assert!(scan_number("1.5e3").is_empty() && scan_number("-14155550123").is_empty());
        for clean in [
            "CUST-100000",
            "Bengaluru",
            "1767225600",
            "Platinum",
            "snd_7f3a9c",
            "v1.2.3",
            "a@b",
            "INR 6217.21",
            "2026-01-05",
        ] {
            assert!(scan(clean).is_empty(), "{clean}");
        }
    }

    /// International numbers written with the national trunk prefix kept
    /// after the calling code, as people often write them; libphonenumber
    /// drops the prefix and calls them valid.
    #[test]
    fn a_trunk_prefix_after_the_calling_code_is_still_a_phone() {
        for text in [
            "+44 (0)20 7946 0958",
            "+44 07911 123456",
            "+33 (0)6 31 96 65 43",
            "call +49 (0)30 901820 today",
        ] {
            // (Some such digit runs are Luhn-valid with a card prefix too.)
            assert!(scan(text).contains(&Detector::Phone), "{text}");
        }
        assert!(scan_number("4407911123456").contains(&Detector::Phone));
        // A trunk prefix that leaves an impossible length is not a phone.
        assert!(scan_number("44012345").is_empty());
    }

    /// International numbers without a `+`: after an international call
    /// prefix (`00`, or `011` from North America), or digits alone, as
    /// backends store them. A string gets the test a JSON number gets.
    #[test]
    fn international_numbers_without_a_plus_are_phones() {
        for text in [
            "0044 20 7946 0958",
            "0091 98765 43210",
            "00919876543210",
            "011 44 20 7946 0958",
            "919876543210",
            "phone: 14155550123",
            "44 20 7946 0958",
        ] {
            assert!(scan(text).contains(&Detector::Phone), "{text}");
        }
        for clean in [
            "1767225600",
            "1767225600123",
            "ts 1767225600123",
            "100000123",
            "20260105",
            "192.168.100.200",
            "order 000123456789",
            "00000000000000",
        ] {
            assert!(!scan(clean).contains(&Detector::Phone), "{clean}");
        }
    }
}
