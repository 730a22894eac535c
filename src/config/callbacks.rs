//! `[[callbacks]]`: signed activation callbacks.

#[allow(unused_imports)]
use super::*;

/// One field rule of a callback: a selector, and whether the field is a
/// template holding `{{TOKEN}}` placeholders rather than a token.
#[derive(Debug)]
pub struct CallbackField {
    /// Where the field is.
    pub selector: crate::payload::Selector,
    /// True: replace `{{TOKEN}}` occurrences; false: the whole field is a token.
    pub placeholders: bool,
}

/// `[[callbacks]]`: a signed activation callback from the platform.
#[derive(Debug)]
pub struct CallbackSpec {
    /// Name (in logs and audit records).
    pub name: String,
    /// Path on the vault, e.g. `/callbacks/sms`.
    pub path: ServedPath,
    /// Namespace the tokens belong to.
    pub namespace: String,
    /// Purpose the detokenization stands for.
    pub purpose: String,
    /// Role the callback acts with.
    pub role: String,
    /// HMAC secret (`whsec_<base64>` or raw text), from a file or variable.
    pub secret: SecretRef,
    /// Header carrying the message id.
    pub id_header: String,
    /// Header carrying the timestamp (unix seconds).
    pub timestamp_header: String,
    /// Header carrying the signatures (`v1,<base64>`, space-separated).
    pub signature_header: String,
    /// Largest accepted clock difference.
    pub tolerance: std::time::Duration,
    /// Source addresses allowed; empty allows any.
    pub allow_from: Vec<IpNet>,
    /// What to detokenize.
    pub fields: Vec<CallbackField>,
    /// Provider URL to forward the revealed body to; none: answer it.
    pub forward: Option<UpstreamUrl>,
    /// Headers injected towards the provider.
    pub headers: Vec<(HeaderName, SecretRef)>,
    /// Time to connect to the provider.
    pub connect_timeout: std::time::Duration,
    /// Time for the whole provider exchange.
    pub timeout: std::time::Duration,
    /// Extra CA certificates (PEM) for the provider.
    pub ca_bundle: Option<PathBuf>,
    /// The addresses the provider's host may resolve to; empty: any.
    pub forward_addresses: Vec<IpNet>,
    /// Only connections that presented a client certificate from
    /// `tls_client_ca` may call.
    pub require_client_cert: bool,
    /// The callback answers revealed values to its caller instead of
    /// forwarding them (`reveal_to_caller = true`, required when there is
    /// no `forward`).
    pub reveal_to_caller: bool,
}

#[derive(Deserialize)]
pub(super) struct RawCallback {
    pub(super) name: Option<String>,
    pub(super) path: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) purpose: Option<String>,
    pub(super) role: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) secret_env: Option<String>,
    pub(super) id_header: Option<String>,
    pub(super) timestamp_header: Option<String>,
    pub(super) signature_header: Option<String>,
    pub(super) tolerance_secs: Option<u64>,
    #[serde(default)]
    pub(super) allow_from: Vec<String>,
    #[serde(default)]
    pub(super) fields: Vec<RawCallbackField>,
    pub(super) forward: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, RawSecret>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) ca_bundle: Option<PathBuf>,
    #[serde(default)]
    pub(super) forward_addresses: Vec<String>,
    #[serde(default)]
    pub(super) insecure_allow_http_upstream: bool,
    #[serde(default)]
    pub(super) require_client_cert: bool,
    #[serde(default)]
    pub(super) reveal_to_caller: bool,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

#[derive(Deserialize)]
pub(super) struct RawCallbackField {
    pub(super) select: Option<String>,
    #[serde(default)]
    pub(super) placeholders: bool,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawCallback {
    pub(super) fn validate(
        self,
        index: usize,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        roles: &BTreeMap<String, Role>,
        problems: &mut Vec<Problem>,
    ) -> Option<CallbackSpec> {
        let name = self.name.clone().unwrap_or_else(|| format!("#{index}"));
        let section = format!("callbacks.{name}");
        unknown_keys(problems, &section, &self.unknown);
        let start = problems.len();
        if self.name.as_deref().is_none_or(|n| !valid_name(n)) {
            problems.push(Problem::new(
                format!("{section}.name"),
                "a callback needs a name of lower-case letters, digits, `_` or `-`",
            ));
        }
        let path = match ServedPath::parse(&self.path.unwrap_or_default()) {
            Ok(path) => Some(path),
            Err(problem) => {
                problems.push(Problem::new(format!("{section}.path"), problem).hint(
                    "write it like \"/callbacks/sms\": a leading slash, not under a path the vault serves",
                ));
                None
            }
        };
        let namespace = self.namespace.unwrap_or_default();
        if !namespaces.contains_key(&namespace) {
            problems.push(Problem::new(
                format!("{section}.namespace"),
                format!("namespace `{namespace}` is not defined"),
            ));
        }
        let purpose = self.purpose.unwrap_or_default();
        if purpose.trim().is_empty() {
            problems.push(Problem::new(format!("{section}.purpose"), "missing"));
        }
        // Whether the role may detokenize for the purpose is checked per
        // call, like every caller's, and refused with 403 and an audit record.
        let role = self.role.unwrap_or_default();
        if !roles.contains_key(&role) {
            problems.push(
                Problem::new(
                    format!("{section}.role"),
                    format!("role `{role}` is not defined"),
                )
                .hint("name the [roles.X] the callback detokenizes with"),
            );
        }
        let secret = match (self.secret_file, self.secret_env) {
            (Some(file), None) => {
                if let Err(problem) = check_secret_file(&format!("{section}.secret_file"), &file) {
                    problems.push(problem);
                }
                Some(SecretRef::File(file))
            }
            (None, Some(env)) => Some(SecretRef::Env(env)),
            _ => {
                problems.push(Problem::new(
                    format!("{section}.secret_file"),
                    "give exactly one of secret_file and secret_env",
                ));
                None
            }
        };
        let allow_from = parse_cidrs(&format!("{section}.allow_from"), &self.allow_from, problems);
        if self.fields.is_empty() {
            problems.push(Problem::new(
                format!("{section}.fields"),
                "a callback needs at least one field rule",
            ));
        }
        let mut fields = Vec::new();
        for (i, raw) in self.fields.into_iter().enumerate() {
            let key = format!("{section}.fields[{i}]");
            unknown_keys(problems, &key, &raw.unknown);
            let text = raw.select.unwrap_or_default();
            match crate::payload::Selector::parse(&text) {
                Ok(selector) => fields.push(CallbackField {
                    selector,
                    placeholders: raw.placeholders,
                }),
                Err(reason) => problems.push(Problem::new(
                    format!("{key}.select"),
                    format!("`{text}` is not a valid selector: {reason}"),
                )),
            }
        }
        let forward = self.forward.map(|url| {
            upstream_url(
                &format!("{section}.forward"),
                Some(url),
                self.insecure_allow_http_upstream,
                problems,
            )
        });
        let forward_addresses = destination_addresses(
            &format!("{section}.forward_addresses"),
            &self.forward_addresses,
            forward.as_ref().and_then(Option::as_ref),
            problems,
        );
        if forward.is_none() && !forward_addresses.is_empty() {
            problems.push(Problem::new(
                format!("{section}.forward_addresses"),
                "only a callback with forward has a provider to resolve",
            ));
        }
        match (&forward, self.reveal_to_caller) {
            (None, false) => problems.push(
                Problem::new(
                    format!("{section}.forward"),
                    "without forward, the callback answers the revealed values to whoever called it",
                )
                .hint("set forward to the provider's URL, or set reveal_to_caller = true if the caller is the sender"),
            ),
            (Some(_), true) => problems.push(Problem::new(
                format!("{section}.reveal_to_caller"),
                "give one of forward and reveal_to_caller = true",
            )),
            _ => {}
        }
        let headers = injected_headers(&section, self.headers, problems);
        let header_name = |value: Option<String>, default: &str| {
            value
                .unwrap_or_else(|| default.to_owned())
                .to_ascii_lowercase()
        };
        let millis = |value: Option<u64>, default: u64| {
            std::time::Duration::from_millis(value.unwrap_or(default).max(1))
        };
        let tolerance = match self.tolerance_secs {
            Some(0) => {
                problems.push(Problem::new(
                    format!("{section}.tolerance_secs"),
                    "must be at least 1",
                ));
                std::time::Duration::from_secs(300)
            }
            value => std::time::Duration::from_secs(value.unwrap_or(300)),
        };
        if problems.len() > start {
            return None;
        }
        Some(CallbackSpec {
            name,
            path: path?,
            namespace,
            purpose,
            role,
            secret: secret?,
            id_header: header_name(self.id_header, "webhook-id"),
            timestamp_header: header_name(self.timestamp_header, "webhook-timestamp"),
            signature_header: header_name(self.signature_header, "webhook-signature"),
            tolerance,
            allow_from,
            fields,
            forward: forward.flatten(),
            headers,
            connect_timeout: millis(self.connect_timeout_ms, 5_000),
            timeout: millis(self.timeout_ms, 30_000),
            ca_bundle: self.ca_bundle,
            forward_addresses,
            require_client_cert: self.require_client_cert,
            reveal_to_caller: self.reveal_to_caller,
        })
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::testing::*;

    fn callback(name: &str, path: &str, secret: &std::path::Path) -> String {
        format!(
            "\n[[callbacks]]\nname = \"{name}\"\npath = \"{path}\"\nnamespace = \"retail\"\npurpose = \"sms\"\nrole = \"sender\"\nsecret_file = \"{}\"\nreveal_to_caller = true\n[[callbacks.fields]]\nselect = \"$.to\"\n",
            secret.display()
        )
    }

    #[test]
    fn callbacks_keep_clear_of_reserved_paths_and_of_each_others_secrets() {
        Jail::expect_with(|jail| {
            let secret = jail.directory().join("secret");
            std::fs::write(&secret, "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").unwrap();
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
            let role = "\n[roles.sender]\noperations = [\"detokenize\"]\nnamespaces = [\"retail\"]\npurposes = [\"sms\"]\n";
            let one = format!("{BASE}{role}{}", callback("sms", "/callbacks/sms", &secret));
            let config = load_in(jail, &one);
            assert!(config.is_ok(), "{:?}", problems(config));
            let reserved = format!("{BASE}{role}{}", callback("sms", "/v1/sms", &secret));
            let refused = problems(load_in(jail, &reserved));
            assert!(refused.iter().any(|p| p.contains("path")), "{refused:?}");
            let shared = format!(
                "{BASE}{role}{}{}",
                callback("a", "/callbacks/a", &secret),
                callback("b", "/callbacks/b", &secret)
            );
            let refused = problems(load_in(jail, &shared));
            assert!(refused.iter().any(|p| p.contains("secret")), "{refused:?}");
            Ok(())
        });
    }
}
