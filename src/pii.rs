//! A PII value in memory: zeroized on drop, never printed.
//!
//! Redaction comes from the type, not from filters on log lines: `Pii` has no
//! `Display`, its `Debug` prints `[redacted]`, and the only way to the bytes
//! is the explicit [`Pii::expose`].

use std::fmt;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// A plaintext value supplied by a caller or revealed by the vault.
pub struct Pii(Zeroizing<String>);

impl Pii {
    /// Wraps a string; the string is zeroized when the `Pii` is dropped.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Every call site is a place where a value leaves the
    /// type's protection, so keep them few and obvious.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Pii {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Pii::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let value = Pii::new("alice@example.com".to_owned());
        assert_eq!(format!("{value:?}"), "[redacted]");
        assert_eq!(value.expose(), "alice@example.com");
    }
}
