//! `[roles.NAME]` and `[clients.NAME]`.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize)]
pub(super) struct RawRole {
    #[serde(default)]
    pub(super) operations: Vec<String>,
    #[serde(default)]
    pub(super) namespaces: Vec<String>,
    pub(super) classes: Option<Vec<String>>,
    #[serde(default)]
    pub(super) purposes: Vec<String>,
    pub(super) reveal: Option<String>,
    pub(super) clevertap_purpose: Option<String>,
    #[serde(default)]
    pub(super) reveal_by_purpose: BTreeMap<String, String>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

#[derive(Deserialize)]
pub(super) struct RawClient {
    pub(super) role: Option<String>,
    pub(super) api_key_hash: Option<String>,
    pub(super) cert_identity: Option<String>,
    #[serde(default)]
    pub(super) allow_from: Vec<String>,
    pub(super) budget_per_minute: Option<u64>,
    pub(super) budget_per_day: Option<u64>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawRole {
    pub(super) fn validate(
        self,
        name: &str,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        problems: &mut Vec<Problem>,
    ) -> Option<Role> {
        let section = format!("roles.{name}");
        unknown_keys(problems, &section, &self.unknown);
        let mut operations = BTreeSet::new();
        for operation in &self.operations {
            let parsed = parse_enum::<Operation>(
                problems,
                &format!("{section}.operations"),
                operation,
                "tokenize, detokenize, forget, audit_read, consent, metrics_read, subject_forget, subject_export, subject_correct, backup",
            );
            operations.extend(parsed);
        }
        for namespace in &self.namespaces {
            if namespace != "*" && !namespaces.contains_key(namespace) {
                problems.push(Problem::new(
                    format!("{section}.namespaces"),
                    format!("namespace `{namespace}` is not defined"),
                ));
            }
        }
        if let Some(classes) = &self.classes {
            for class in classes {
                let known =
                    class == "*" || namespaces.values().any(|ns| ns.classes.contains_key(class));
                if !known {
                    problems.push(Problem::new(
                        format!("{section}.classes"),
                        format!("class `{class}` is not defined in any namespace"),
                    ));
                }
            }
        }
        let data_operations = operations.iter().any(|op| {
            !matches!(
                op,
                Operation::AuditRead | Operation::MetricsRead | Operation::Backup
            )
        });
        if data_operations && self.namespaces.is_empty() {
            problems.push(
                Problem::new(
                    format!("{section}.namespaces"),
                    "a role with data operations needs at least one namespace",
                )
                .hint("list them, or use [\"*\"] for every namespace"),
            );
        }
        if operations.contains(&Operation::Detokenize) && self.purposes.is_empty() {
            problems.push(Problem::new(
                format!("{section}.purposes"),
                "a role with detokenize needs at least one allowed purpose",
            ));
        }
        let reveal = parse_enum::<Reveal>(
            problems,
            &format!("{section}.reveal"),
            self.reveal.as_deref().unwrap_or("masked"),
            "plain, masked",
        )?;
        let purposes = scope(&self.purposes);
        if let Some(purpose) = &self.clevertap_purpose {
            if !purposes.allows(purpose) {
                problems.push(
                    Problem::new(
                        format!("{section}.clevertap_purpose"),
                        format!("purpose `{purpose}` is not in the role's purposes"),
                    )
                    .hint("add it to purposes, or pick one of them"),
                );
            }
        }
        let mut reveal_by_purpose = BTreeMap::new();
        for (purpose, mode) in &self.reveal_by_purpose {
            let key = format!("{section}.reveal_by_purpose.{purpose}");
            if !purposes.allows(purpose) {
                problems.push(Problem::new(
                    &key,
                    format!("purpose `{purpose}` is not in the role's purposes"),
                ));
            }
            if let Some(mode) = parse_enum::<Reveal>(problems, &key, mode, "plain, masked") {
                reveal_by_purpose.insert(purpose.clone(), mode);
            }
        }
        Some(Role {
            operations,
            namespaces: scope(&self.namespaces),
            classes: self.classes.as_deref().map_or(Scope::Any, scope),
            purposes,
            reveal,
            reveal_by_purpose,
            clevertap_purpose: self.clevertap_purpose,
        })
    }
}

impl RawClient {
    pub(super) fn validate(
        self,
        name: &str,
        roles: &BTreeMap<String, Role>,
        problems: &mut Vec<Problem>,
    ) -> Option<ClientSpec> {
        let section = format!("clients.{name}");
        unknown_keys(problems, &section, &self.unknown);
        if !valid_name(name) {
            problems.push(Problem::new(
                &section,
                "name must be lower-case letters, digits, `_` or `-`",
            ));
        }
        let role = match self.role {
            Some(role) if roles.contains_key(&role) => Some(role),
            Some(role) => {
                problems.push(Problem::new(
                    format!("{section}.role"),
                    format!("role `{role}` is not defined"),
                ));
                None
            }
            None => {
                problems.push(Problem::new(format!("{section}.role"), "missing"));
                None
            }
        };
        let hash = match self.api_key_hash {
            Some(hash) if crate::policy::is_argon2id_hash(&hash) => Some(Some(hash)),
            Some(_) => {
                problems.push(
                    Problem::new(format!("{section}.api_key_hash"), "not an argon2id hash").hint(
                        format!("generate one with: tokenvault client new {name} --role ROLE"),
                    ),
                );
                None
            }
            None if self.cert_identity.is_some() => Some(None),
            None => {
                problems.push(
                    Problem::new(format!("{section}.api_key_hash"), "missing").hint(format!(
                        "generate one with: tokenvault client new {name} --role ROLE, or set cert_identity"
                    )),
                );
                None
            }
        };
        let cert_identity = match self.cert_identity {
            Some(identity)
                if !identity.is_empty()
                    && identity.len() <= 253
                    && identity.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(Some(normalize_identity(&identity)))
            }
            Some(_) => {
                problems.push(
                    Problem::new(
                        format!("{section}.cert_identity"),
                        "must be a DNS name, URI or common name without spaces",
                    )
                    .hint("e.g. cert_identity = \"sms-worker.corp.example\""),
                );
                None
            }
            None => Some(None),
        };
        let allow_from = parse_cidrs(&format!("{section}.allow_from"), &self.allow_from, problems);
        for (key, value) in [
            ("budget_per_minute", self.budget_per_minute),
            ("budget_per_day", self.budget_per_day),
        ] {
            if value == Some(0) {
                problems.push(
                    Problem::new(format!("{section}.{key}"), "must be at least 1")
                        .hint("leave it out for no budget"),
                );
            }
        }
        Some(ClientSpec {
            role: role?,
            api_key_hash: hash?,
            cert_identity: cert_identity?,
            allow_from,
            budget: crate::policy::Budget {
                per_minute: self.budget_per_minute,
                per_day: self.budget_per_day,
            },
        })
    }
}

// ---------------------------------------------------------------------------
// Validation

/// A certificate name as compared: DNS names and common names are
/// case-insensitive, URIs are kept as written.
pub fn normalize_identity(name: &str) -> String {
    if name.contains("://") {
        name.to_owned()
    } else {
        name.to_ascii_lowercase()
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn clients_need_a_known_role_and_a_real_hash() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, BASE).unwrap();
            assert_eq!(config.clients["crm"].role, "backend");
            let unknown_role = BASE.replace("role = \"backend\"", "role = \"nobody\"");
            let refused = problems(load_in(jail, &unknown_role));
            assert!(
                refused.iter().any(|p| p.contains("clients.crm")),
                "{refused:?}"
            );
            let plain_key = BASE.replace("api_key_hash = \"$argon2id", "api_key_hash = \"tv.crm.");
            let refused = problems(load_in(jail, &plain_key));
            assert!(
                refused
                    .iter()
                    .any(|p| p.contains("clients.crm.api_key_hash")),
                "{refused:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn roles_name_known_operations() {
        Jail::expect_with(|jail| {
            let bad = BASE.replace("operations = [\"tokenize\"]", "operations = [\"tokenise\"]");
            let refused = problems(load_in(jail, &bad));
            assert!(
                refused.iter().any(|p| p.contains("roles.backend")),
                "{refused:?}"
            );
            Ok(())
        });
    }
}
