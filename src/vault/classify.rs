//! Classification of values that arrive without a data class (the CleverTap
//! surface): an email address, an E.164 phone number, or anything else. The
//! rule depends on the value alone, so one value always lands in one class
//! and so always gets the same token.

use crate::config::ClevertapSpec;
use crate::normalize::{normalize, Normalization};
use crate::phone::country_code;

/// Picks the class of each value for a CleverTap mount.
#[derive(Debug, Clone)]
pub struct Classifier {
    email: Option<String>,
    phone: Option<String>,
    default: String,
}

impl Classifier {
    /// The classifier of a `[clevertap]` section.
    pub fn new(spec: &ClevertapSpec) -> Self {
        Self {
            email: spec.email_class.clone(),
            phone: spec.phone_class.clone(),
            default: spec.default_class.clone(),
        }
    }

    /// The class `value` is tokenized as.
    pub fn class_of(&self, value: &str) -> &str {
        match (&self.email, &self.phone) {
            (Some(email), _) if is_email(value) => email,
            (_, Some(phone)) if is_phone(value) => phone,
            _ => &self.default,
        }
    }
}

/// True for an email address: one `@`, a local part without spaces, and a
/// dotted domain ending in an alphabetic top-level label.
pub fn is_email(value: &str) -> bool {
    let value = value.trim();
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"@<>()[]\\,;:\"".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    local_ok && domain_ok && normalize(Normalization::Email, value).is_ok()
}

/// True for a phone number in E.164 (separators allowed, as the `e164`
/// normalization strips them) whose country calling code exists.
pub fn is_phone(value: &str) -> bool {
    normalize(Normalization::E164, value)
        .is_ok_and(|normalized| country_code(&normalized.expose()[1..]).is_some())
}

/// True when `value` is a plain number as JSON writes one (`42`, `-3.5`,
/// `1e6`): CleverTap's `dataType` is then `"number"`.
pub fn is_plain_number(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let integer_start = i;
    let integer = digits(&mut i);
    if integer == 0 || (integer > 1 && bytes[integer_start] == b'0') {
        return false;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier {
            email: Some("email".into()),
            phone: Some("phone".into()),
            default: "other".into(),
        }
    }

    #[test]
    fn classes() {
        let c = classifier();
        for email in [
            "alice@example.com",
            " Bob.Smith+x@Mail.Example.CO.uk ",
            "a@b.io",
        ] {
            assert_eq!(c.class_of(email), "email", "{email}");
        }
        for phone in ["+14155550100", "+91 98765 43210", "+44-20-7946-0958"] {
            assert_eq!(c.class_of(phone), "phone", "{phone}");
        }
        for other in [
            "",
            "alice",
            "alice@localhost",
            "a b@example.com",
            "@example.com",
            "alice@example.c0m",
            "14155550100",
            "+0123456789",
            "+123",
            "9876543210",
            "Alice Example",
            "😀",
            "a@b@example.com",
        ] {
            assert_eq!(c.class_of(other), "other", "{other:?}");
        }
        let no_rules = Classifier {
            email: None,
            phone: None,
            default: "other".into(),
        };
        assert_eq!(no_rules.class_of("alice@example.com"), "other");
        assert_eq!(no_rules.class_of("+14155550100"), "other");
    }

    #[test]
    fn plain_numbers() {
        for number in ["0", "42", "-3.5", "1e6", "2.5E-3", "9876543210"] {
            assert!(is_plain_number(number), "{number}");
        }
        for text in [
            "",
            "-",
            "007",
            "+1",
            "1.",
            ".5",
            "1e",
            "1 ",
            " 1",
            "0x10",
            "NaN",
            "+14155550100",
        ] {
            assert!(!is_plain_number(text), "{text:?}");
        }
    }
}
