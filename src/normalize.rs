//! Normalization: the canonical form a value is indexed, sealed and revealed
//! in, so that `" Alice@Example.COM"` and `"alice@example.com"` are one value.

use serde::Deserialize;

use crate::pii::Pii;

/// How a class normalizes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Trim, lower-case, and require `local@domain`.
    Email,
    /// Strip spaces, dashes, dots and brackets; require `+` and 8 to 15 digits.
    E164,
    /// Trim surrounding whitespace.
    Trim,
    /// Keep the value byte for byte.
    None,
}

impl Normalization {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::E164 => "e164",
            Self::Trim => "trim",
            Self::None => "none",
        }
    }
}

/// Why a value was refused. No variant carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// Nothing left of an email address or phone number after normalization.
    #[error("value is empty")]
    Empty,
    /// Not shaped like an email address.
    #[error("value is not an email address")]
    NotEmail,
    /// Not `+` followed by 8 to 15 digits.
    #[error("value is not an E.164 phone number (+ and 8 to 15 digits)")]
    NotE164,
}

/// Normalizes `value` as `rule` says.
pub fn normalize(rule: Normalization, value: &str) -> Result<Pii, NormalizeError> {
    let normalized = match rule {
        Normalization::None => value.to_owned(),
        Normalization::Trim => value.trim().to_owned(),
        Normalization::Email => {
            let lowered = value.trim().to_lowercase();
            let valid = lowered.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !lowered.contains(char::is_whitespace)
            });
            if !lowered.is_empty() && !valid {
                return Err(NormalizeError::NotEmail);
            }
            lowered
        }
        Normalization::E164 => {
            let compact: String = value
                .chars()
                .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')' | '[' | ']' | '\u{a0}'))
                .collect();
            if compact.is_empty() {
                return Err(NormalizeError::Empty);
            }
            let digits = compact.strip_prefix('+').ok_or(NormalizeError::NotE164)?;
            let valid = (8..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            if !valid {
                return Err(NormalizeError::NotE164);
            }
            compact
        }
    };
    // An email address or a phone number cannot be empty; a free-form value
    // can (the CleverTap SDKs tokenize "" like any other string).
    if normalized.is_empty() && matches!(rule, Normalization::Email) {
        return Err(NormalizeError::Empty);
    }
    Ok(Pii::new(normalized))
}

/// Normalizes a value that was written as a JSON number (`digits`, as
/// written): a phone number sent as a number carries no `+`, so for E.164
/// its digits are the international number; every other rule reads the
/// digits as text.
pub fn normalize_number(rule: Normalization, digits: &str) -> Result<Pii, NormalizeError> {
    match rule {
        Normalization::E164 => normalize(rule, &format!("+{digits}")),
        _ => normalize(rule, digits),
    }
}

/// The masked form of a value, for roles with `reveal = "masked"` and for the
/// rare log line that must point at a value: `j***@example.com` for email
/// classes, every character but the last four starred otherwise.
pub fn mask(value: &str, normalize: Normalization) -> String {
    if normalize == Normalization::Email {
        if let Some((local, domain)) = value.split_once('@') {
            let first: String = local.chars().take(1).collect();
            return format!("{first}***@{domain}");
        }
    }
    let count = value.chars().count();
    if count <= 4 {
        return "*".repeat(count);
    }
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < count { '*' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            mask("john@example.com", Normalization::Email),
            "j***@example.com"
        );
        assert_eq!(mask("+919876543210", Normalization::E164), "*********3210");
        assert_eq!(mask("abc", Normalization::Trim), "***");
        assert_eq!(mask("abcd", Normalization::Trim), "****");
    }

    fn norm(rule: Normalization, value: &str) -> Result<String, NormalizeError> {
        normalize(rule, value).map(|v| v.expose().to_owned())
    }

    #[test]
    fn email() {
        assert_eq!(
            norm(Normalization::Email, " Alice@Example.COM").unwrap(),
            "alice@example.com"
        );
        assert_eq!(
            norm(Normalization::Email, "no-at-sign"),
            Err(NormalizeError::NotEmail)
        );
        assert_eq!(
            norm(Normalization::Email, "a@b@c"),
            Err(NormalizeError::NotEmail)
        );
        assert_eq!(
            norm(Normalization::Email, "   "),
            Err(NormalizeError::Empty)
        );
    }

    #[test]
    fn e164() {
        assert_eq!(
            norm(Normalization::E164, "+91 98765-43210").unwrap(),
            "+919876543210"
        );
        assert_eq!(
            norm(Normalization::E164, "+1 (555) 010-9494").unwrap(),
            "+15550109494"
        );
        assert_eq!(
            norm(Normalization::E164, "919876543210"),
            Err(NormalizeError::NotE164)
        );
        assert_eq!(
            norm(Normalization::E164, "+1234567"),
            Err(NormalizeError::NotE164)
        );
        assert_eq!(
            norm(Normalization::E164, "+1234567890123456"),
            Err(NormalizeError::NotE164)
        );
        assert_eq!(
            norm(Normalization::E164, "+91abc76543210"),
            Err(NormalizeError::NotE164)
        );
    }

    #[test]
    fn trim_and_none() {
        assert_eq!(
            norm(Normalization::Trim, "  Olivia Nair ").unwrap(),
            "Olivia Nair"
        );
        assert_eq!(norm(Normalization::None, "  Olivia ").unwrap(), "  Olivia ");
        assert_eq!(norm(Normalization::Trim, "  ").unwrap(), "");
        assert_eq!(norm(Normalization::None, "").unwrap(), "");
    }
}
