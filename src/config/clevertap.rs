//! `[clevertap]`: the CleverTap Token Vault API surface.

#[allow(unused_imports)]
use super::*;

/// Default lifetime of an access token from the CleverTap surface's token
/// endpoint.
pub const DEFAULT_ACCESS_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Longest access-token lifetime accepted.
pub(super) const MAX_ACCESS_TOKEN_TTL_SECS: u64 = 86_400;

/// `[clevertap]`: the CleverTap Token Vault API surface, mounted on one
/// namespace. The API carries no data class, so each value is classified.
#[derive(Debug, Clone)]
pub struct ClevertapSpec {
    /// Namespace every call of the surface works in.
    pub namespace: String,
    /// Class for values that are email addresses (none: no such rule).
    pub email_class: Option<String>,
    /// Class for values that look like E.164 phone numbers.
    pub phone_class: Option<String>,
    /// Class for every other value.
    pub default_class: String,
    /// Lifetime of the access tokens the surface issues.
    pub access_token_ttl: std::time::Duration,
    /// The `metadata` key whose value names the customer (data subject) of
    /// the values of a tokenize call; none: calls carry no subject.
    pub subject_metadata_key: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawClevertap {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) namespace: Option<String>,
    pub(super) email_class: Option<String>,
    pub(super) phone_class: Option<String>,
    pub(super) default_class: Option<String>,
    pub(super) access_token_ttl_secs: Option<u64>,
    pub(super) subject_metadata_key: Option<String>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawClevertap {
    pub(super) fn validate(
        self,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        problems: &mut Vec<Problem>,
    ) -> Option<ClevertapSpec> {
        unknown_keys(problems, "clevertap", &self.unknown);
        if !self.enabled {
            return None;
        }
        let Some(namespace) = self.namespace else {
            problems.push(
                Problem::new("clevertap.namespace", "missing")
                    .hint("name the namespace the CleverTap surface tokenizes in"),
            );
            return None;
        };
        let Some(spec) = namespaces.get(&namespace) else {
            problems.push(Problem::new(
                "clevertap.namespace",
                format!("namespace `{namespace}` is not defined"),
            ));
            return None;
        };
        let known = |problems: &mut Vec<Problem>, key: &str, class: &str| {
            let found = spec.classes.contains_key(class);
            if !found {
                problems.push(Problem::new(
                    format!("clevertap.{key}"),
                    format!("class `{class}` is not defined in namespace `{namespace}`"),
                ));
            }
            found
        };
        // Unset email and phone rules fall back to classes of those names.
        let rule =
            |problems: &mut Vec<Problem>, key: &str, given: Option<String>, fallback: &str| {
                match given {
                    Some(class) => known(problems, key, &class).then_some(class),
                    None => spec
                        .classes
                        .contains_key(fallback)
                        .then(|| fallback.to_owned()),
                }
            };
        let email_class = rule(problems, "email_class", self.email_class, "email");
        let phone_class = rule(problems, "phone_class", self.phone_class, "phone");
        if let Some(phone) = &phone_class {
            if spec.classes[phone].normalize != Normalization::E164 {
                problems.push(Problem::new(
                    "clevertap.phone_class",
                    format!("class `{phone}` must have normalize = \"e164\""),
                ));
            }
        }
        let default_class = match self.default_class {
            Some(class) => known(problems, "default_class", &class).then_some(class),
            None => {
                let names: Vec<&str> = spec.classes.keys().map(String::as_str).collect();
                problems.push(
                    Problem::new("clevertap.default_class", "missing").hint(format!(
                        "name the class for values that are neither email nor phone; namespace `{namespace}` has: {}",
                        names.join(", ")
                    )),
                );
                None
            }
        };
        let ttl = match self.access_token_ttl_secs {
            None => DEFAULT_ACCESS_TOKEN_TTL,
            Some(secs @ 1..=MAX_ACCESS_TOKEN_TTL_SECS) => std::time::Duration::from_secs(secs),
            Some(_) => {
                problems.push(Problem::new(
                    "clevertap.access_token_ttl_secs",
                    format!("must be between 1 and {MAX_ACCESS_TOKEN_TTL_SECS}"),
                ));
                DEFAULT_ACCESS_TOKEN_TTL
            }
        };
        Some(ClevertapSpec {
            namespace,
            email_class,
            phone_class,
            default_class: default_class?,
            access_token_ttl: ttl,
            subject_metadata_key: self.subject_metadata_key.filter(|key| !key.is_empty()),
        })
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn the_surface_needs_a_configured_namespace_and_a_bounded_ttl() {
        Jail::expect_with(|jail| {
            let section = "\n[clevertap]\nenabled = true\nnamespace = \"retail\"\ndefault_class = \"email\"\n";
            let config = load_in(jail, &format!("{BASE}{section}")).unwrap();
            let spec = config.clevertap.unwrap();
            assert_eq!(spec.access_token_ttl, super::DEFAULT_ACCESS_TOKEN_TTL);
            let refused = problems(load_in(
                jail,
                &format!("{BASE}{}", section.replace("\"retail\"", "\"nowhere\"")),
            ));
            assert!(
                refused.iter().any(|p| p.contains("clevertap.namespace")),
                "{refused:?}"
            );
            let refused = problems(load_in(
                jail,
                &format!("{BASE}{section}access_token_ttl_secs = 999999\n"),
            ));
            assert!(
                refused
                    .iter()
                    .any(|p| p.contains("clevertap.access_token_ttl_secs")),
                "{refused:?}"
            );
            Ok(())
        });
    }
}
