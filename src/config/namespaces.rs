//! `[namespaces.NAME]` and their classes.

#[allow(unused_imports)]
use super::*;

/// `[namespaces.NAME]`
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    /// Domain of email-shaped tokens.
    pub token_domain: String,
    /// `[namespaces.NAME.classes.CLASS]`
    pub classes: BTreeMap<String, ClassSpec>,
}

/// `[namespaces.NAME.classes.CLASS]`
#[derive(Debug, Clone)]
pub struct ClassSpec {
    /// Normalization applied before indexing and sealing.
    pub normalize: Normalization,
    /// Shape of the tokens.
    pub format: TokenFormat,
    /// Same value, same token (through the blind index).
    pub deterministic: bool,
    /// Number blocks (E.164 prefixes) phone tokens are drawn from; empty:
    /// any number of the value's country.
    pub token_prefixes: Vec<String>,
    /// Days a token of this class is kept after it was last used
    /// (tokenized or revealed); none: kept until forgotten.
    pub retain_days: Option<u32>,
}

#[derive(Deserialize)]
pub(super) struct RawNamespace {
    pub(super) token_domain: Option<String>,
    #[serde(default)]
    pub(super) classes: BTreeMap<String, RawClass>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

#[derive(Deserialize)]
pub(super) struct RawClass {
    pub(super) normalize: Option<String>,
    pub(super) format: Option<String>,
    pub(super) deterministic: Option<bool>,
    #[serde(default)]
    pub(super) token_prefixes: Vec<String>,
    pub(super) retain_days: Option<u64>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawNamespace {
    pub(super) fn validate(self, name: &str, problems: &mut Vec<Problem>) -> Option<NamespaceSpec> {
        let section = format!("namespaces.{name}");
        unknown_keys(problems, &section, &self.unknown);
        if !valid_name(name) {
            problems.push(Problem::new(
                &section,
                "name must be lower-case letters, digits, `_` or `-`",
            ));
        }
        let token_domain = self
            .token_domain
            .unwrap_or_else(|| DEFAULT_TOKEN_DOMAIN.to_owned());
        if !valid_domain(&token_domain) {
            problems.push(Problem::new(
                format!("{section}.token_domain"),
                format!("`{token_domain}` is not a domain name"),
            ));
        }
        if self.classes.is_empty() {
            problems.push(Problem::new(
                format!("{section}.classes"),
                "a namespace needs at least one class",
            ));
        }
        let mut classes = BTreeMap::new();
        for (class_name, raw) in self.classes {
            let key = format!("{section}.classes.{class_name}");
            unknown_keys(problems, &key, &raw.unknown);
            if !valid_name(&class_name) {
                problems.push(Problem::new(
                    &key,
                    "name must be lower-case letters, digits, `_` or `-`",
                ));
            }
            let normalize = parse_enum::<Normalization>(
                problems,
                &format!("{key}.normalize"),
                raw.normalize.as_deref().unwrap_or("none"),
                "email, e164, trim, none",
            );
            let format = parse_enum::<TokenFormat>(
                problems,
                &format!("{key}.format"),
                raw.format.as_deref().unwrap_or("opaque"),
                "opaque, email, phone, keep_last4, alnum",
            );
            if let (Some(normalize), Some(format)) = (normalize, format) {
                if format == TokenFormat::Phone && normalize != Normalization::E164 {
                    problems.push(Problem::new(
                        format!("{key}.normalize"),
                        "format = \"phone\" needs normalize = \"e164\" to find the country code",
                    ));
                }
                if !raw.token_prefixes.is_empty() && format != TokenFormat::Phone {
                    problems.push(Problem::new(
                        format!("{key}.token_prefixes"),
                        "number blocks apply to format = \"phone\" only",
                    ));
                }
                for prefix in &raw.token_prefixes {
                    if !crate::crypto::tokens::valid_block(prefix) {
                        problems.push(
                            Problem::new(
                                format!("{key}.token_prefixes"),
                                format!("`{prefix}` is not a usable number block"),
                            )
                            .hint(format!(
                                "write `+`, a country calling code and more digits, leaving at least {} digits of the 15 an E.164 number may have, e.g. \"+447700900\"",
                                crate::crypto::tokens::MIN_BLOCK_RANDOM_DIGITS
                            )),
                        );
                    }
                }
                let retain_days = raw.retain_days.and_then(|days| match u32::try_from(days) {
                    Ok(days @ 1..=36_500) => Some(days),
                    _ => {
                        problems.push(Problem::new(
                            format!("{key}.retain_days"),
                            "must be from 1 to 36500 (100 years)",
                        ));
                        None
                    }
                });
                classes.insert(
                    class_name,
                    ClassSpec {
                        normalize,
                        format,
                        deterministic: raw.deterministic.unwrap_or(true),
                        token_prefixes: raw.token_prefixes,
                        retain_days,
                    },
                );
            }
        }
        Some(NamespaceSpec {
            token_domain,
            classes,
        })
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn classes_parse_and_bad_ones_are_named() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, BASE).unwrap();
            let email = &config.namespaces["retail"].classes["email"];
            assert!(email.deterministic);
            assert_eq!(config.namespaces["retail"].token_domain, "tokens.invalid");
            let bad = BASE.replace("normalize = \"email\"", "normalize = \"soundex\"");
            let refused = problems(load_in(jail, &bad));
            assert!(
                refused
                    .iter()
                    .any(|p| p.contains("namespaces.retail.classes.email.normalize")),
                "{refused:?}"
            );
            let bad = format!("{BASE}\n[namespaces.Bad]\n");
            assert!(!problems(load_in(jail, &bad)).is_empty());
            Ok(())
        });
    }
}
