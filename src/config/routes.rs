//! `[[routes]]`: egress routes.

#[allow(unused_imports)]
use super::*;

/// What a route does with PII found in fields no rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnselectedPii {
    /// Refuse the request (422); nothing is forwarded.
    Block,
    /// Tokenize the whole field as `unselected_class`.
    Tokenize,
    /// Forward, and log and audit the finding (never the value).
    Report,
}

/// One field rule of a route: a selector and the class to tokenize as.
#[derive(Debug)]
pub struct FieldRule {
    /// Where the field is.
    pub selector: crate::payload::Selector,
    /// The class its value is tokenized as.
    pub class: String,
}

/// A field rule on the query string: the parameter's value is tokenized as
/// `class` (`{ query = "email", class = "email" }`).
#[derive(Debug, Clone)]
pub struct QueryRule {
    /// Parameter name, as decoded.
    pub name: String,
    /// The class its value is tokenized as.
    pub class: String,
}

/// `[[routes]]`: an egress route.
#[derive(Debug)]
pub struct RouteSpec {
    /// Route name (in logs and audit records).
    pub name: String,
    /// Path prefix on the vault, e.g. `/clevertap`.
    pub path_prefix: ServedPath,
    /// Upstream base URL; the rest of the path and the query are appended.
    pub upstream: UpstreamUrl,
    /// Namespace the route tokenizes in.
    pub namespace: String,
    /// Clients that may use the route.
    pub clients: BTreeSet<String>,
    /// Headers injected upstream, with values from files or variables.
    pub headers: Vec<(HeaderName, SecretRef)>,
    /// Field rules on the body.
    pub fields: Vec<FieldRule>,
    /// Field rules on the query string.
    pub query_fields: Vec<QueryRule>,
    /// The request header that carries the vault API key, for backends
    /// whose platform library cannot send `Authorization` (lower-case; one
    /// of `headers`, so the key is replaced before anything goes upstream).
    pub client_key_header: Option<String>,
    /// What to do with unselected PII.
    pub unselected_pii: UnselectedPii,
    /// Class for `unselected_pii = "tokenize"`.
    pub unselected_class: Option<String>,
    /// Deepest nesting accepted in a body.
    pub max_depth: usize,
    /// Time to connect upstream.
    pub connect_timeout: std::time::Duration,
    /// Time for the whole upstream exchange.
    pub timeout: std::time::Duration,
    /// Extra CA certificates (PEM) to trust for this upstream.
    pub ca_bundle: Option<PathBuf>,
    /// The addresses the upstream's host may resolve to; empty: any.
    pub upstream_addresses: Vec<IpNet>,
    /// Only callers authenticated by a client certificate may use the route.
    pub require_client_cert: bool,
    /// Request content types the route accepts.
    pub content_types: Vec<String>,
    /// Purpose of the response rules' detokenization.
    pub purpose: Option<String>,
    /// Response fields to detokenize for callers allowed the purpose.
    pub response_fields: Vec<crate::payload::Selector>,
    /// Where each record names its customer (the data subject), e.g.
    /// `$.d[*].identity`: the fields selected in a record are linked to the
    /// subject found in that record.
    pub subject: Option<crate::payload::Selector>,
}

#[derive(Deserialize)]
pub(super) struct RawRoute {
    pub(super) name: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) clients: Vec<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, RawSecret>,
    #[serde(default)]
    pub(super) fields: Vec<RawField>,
    pub(super) unselected_pii: Option<String>,
    pub(super) unselected_class: Option<String>,
    pub(super) max_depth: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) content_types: Option<Vec<String>>,
    pub(super) purpose: Option<String>,
    #[serde(default)]
    pub(super) response_fields: Vec<RawField>,
    pub(super) subject: Option<String>,
    pub(super) client_key_header: Option<String>,
    #[serde(default)]
    pub(super) upstream_addresses: Vec<String>,
    #[serde(default)]
    pub(super) insecure_allow_http_upstream: bool,
    #[serde(default)]
    pub(super) require_client_cert: bool,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

/// Headers injected upstream, each from an environment variable or a file.
pub(super) fn injected_headers(
    section: &str,
    raw: BTreeMap<String, RawSecret>,
    problems: &mut Vec<Problem>,
) -> Vec<(HeaderName, SecretRef)> {
    let mut headers = Vec::new();
    for (text, secret) in raw {
        let key = format!("{section}.headers.{text}");
        unknown_keys(problems, &key, &secret.unknown);
        let header = match HeaderName::parse(&text) {
            Ok(header) => header,
            Err(problem) => {
                problems.push(Problem::new(&key, problem));
                continue;
            }
        };
        match (secret.env, secret.file) {
            (Some(env), None) => headers.push((header, SecretRef::Env(env))),
            (None, Some(file)) => {
                if let Err(problem) = check_secret_file(&key, &file) {
                    problems.push(problem);
                }
                headers.push((header, SecretRef::File(file)));
            }
            _ => problems.push(Problem::new(
                &key,
                "give exactly one of { env = \"VAR\" } or { file = \"/path\" }",
            )),
        }
    }
    headers
}

/// An upstream URL: https, or http when explicitly allowed.
pub(super) fn upstream_url(
    key: &str,
    raw: Option<String>,
    insecure_allow_http: bool,
    problems: &mut Vec<Problem>,
) -> Option<UpstreamUrl> {
    let text = raw.unwrap_or_default();
    match UpstreamUrl::parse(&text, insecure_allow_http) {
        Ok(url) => Some(url),
        Err(problem) => {
            problems.push(
                Problem::new(key, problem)
                    .hint("plain http:// upstreams need insecure_allow_http_upstream = true"),
            );
            None
        }
    }
}

/// The addresses a destination's host may resolve to (`upstream_addresses`,
/// `forward_addresses`). A URL whose host is an address must lie inside a
/// non-empty list.
pub(super) fn destination_addresses(
    key: &str,
    raw: &[String],
    url: Option<&UpstreamUrl>,
    problems: &mut Vec<Problem>,
) -> Vec<IpNet> {
    let nets = parse_cidrs(key, raw, problems);
    let literal = url.and_then(UpstreamUrl::ip);
    if let Some(address) = literal {
        if !nets.is_empty() && !nets.iter().any(|net| net.contains(&address)) {
            problems.push(Problem::new(
                key,
                format!("the URL's address {address} is outside this list"),
            ));
        }
    }
    nets
}

#[derive(Deserialize)]
pub(super) struct RawField {
    pub(super) select: Option<String>,
    pub(super) query: Option<String>,
    pub(super) class: Option<String>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

/// Deepest body nesting a route accepts unless it says otherwise.
pub const DEFAULT_MAX_DEPTH: usize = 32;

impl RawRoute {
    pub(super) fn validate(
        self,
        index: usize,
        namespaces: &BTreeMap<String, NamespaceSpec>,
        clients: &BTreeMap<String, ClientSpec>,
        problems: &mut Vec<Problem>,
    ) -> Option<RouteSpec> {
        let name = self.name.clone().unwrap_or_else(|| format!("#{index}"));
        let section = format!("routes.{name}");
        unknown_keys(problems, &section, &self.unknown);
        let start = problems.len();
        if self.name.as_deref().is_none_or(|n| !valid_name(n)) {
            problems.push(Problem::new(
                format!("{section}.name"),
                "a route needs a name of lower-case letters, digits, `_` or `-`",
            ));
        }
        let path_prefix = match ServedPath::parse(&self.path_prefix.unwrap_or_default()) {
            Ok(prefix) => Some(prefix),
            Err(problem) => {
                problems.push(Problem::new(format!("{section}.path_prefix"), problem)
                    .hint("write it like \"/clevertap\": a leading slash, no trailing slash, not under a path the vault serves"));
                None
            }
        };
        let upstream = upstream_url(
            &format!("{section}.upstream"),
            self.upstream,
            self.insecure_allow_http_upstream,
            problems,
        );
        let upstream_addresses = destination_addresses(
            &format!("{section}.upstream_addresses"),
            &self.upstream_addresses,
            upstream.as_ref(),
            problems,
        );
        let namespace = self.namespace.unwrap_or_default();
        let spec = namespaces.get(&namespace);
        if spec.is_none() {
            problems.push(Problem::new(
                format!("{section}.namespace"),
                format!("namespace `{namespace}` is not defined"),
            ));
        }
        for client in &self.clients {
            if !clients.contains_key(client) {
                problems.push(Problem::new(
                    format!("{section}.clients"),
                    format!("client `{client}` is not defined"),
                ));
            }
        }
        let headers = injected_headers(&section, self.headers, problems);
        let class_known = |class: &str| spec.is_some_and(|ns| ns.classes.contains_key(class));
        let mut fields = Vec::new();
        let mut query_fields = Vec::new();
        for (i, raw) in self.fields.into_iter().enumerate() {
            let key = format!("{section}.fields[{i}]");
            unknown_keys(problems, &key, &raw.unknown);
            let class = raw.class.unwrap_or_default();
            if spec.is_some() && !class_known(&class) {
                problems.push(Problem::new(
                    format!("{key}.class"),
                    format!("class `{class}` is not defined in namespace `{namespace}`"),
                ));
            }
            match (raw.select, raw.query) {
                (None, Some(name)) if !name.is_empty() => {
                    query_fields.push(QueryRule { name, class });
                }
                (Some(select), None) => match crate::payload::Selector::parse(&select) {
                    Ok(selector) => fields.push(FieldRule { selector, class }),
                    Err(message) => problems.push(Problem::new(format!("{key}.select"), message)),
                },
                _ => problems.push(Problem::new(
                    format!("{key}.select"),
                    "give exactly one of select (a body selector) and query (a query parameter)",
                )),
            }
        }
        let client_key_header = self.client_key_header.map(|name| name.to_ascii_lowercase());
        if let Some(name) = &client_key_header {
            let injected = headers
                .iter()
                .any(|(header, _)| header.as_str().eq_ignore_ascii_case(name));
            if !injected {
                problems.push(
                    Problem::new(
                        format!("{section}.client_key_header"),
                        format!("`{name}` is not one of the route's injected headers"),
                    )
                    .hint("the header that carries the vault key must be replaced by one from `headers`, so that the key never travels upstream"),
                );
            }
        }
        let unselected_pii = parse_enum::<UnselectedPii>(
            problems,
            &format!("{section}.unselected_pii"),
            self.unselected_pii.as_deref().unwrap_or("block"),
            "block, tokenize, report",
        )
        .unwrap_or(UnselectedPii::Block);
        if unselected_pii == UnselectedPii::Tokenize {
            match &self.unselected_class {
                Some(class) if class_known(class) => {}
                _ => problems.push(Problem::new(
                    format!("{section}.unselected_class"),
                    "unselected_pii = \"tokenize\" needs unselected_class, a class of the route's namespace",
                )),
            }
        }
        let max_depth = match self.max_depth {
            None => DEFAULT_MAX_DEPTH,
            Some(depth @ 1..=100) => depth as usize,
            Some(_) => {
                problems.push(Problem::new(
                    format!("{section}.max_depth"),
                    "must be between 1 and 100",
                ));
                DEFAULT_MAX_DEPTH
            }
        };
        if let Some(bundle) = &self.ca_bundle {
            if !bundle.is_file() {
                problems.push(Problem::new(
                    format!("{section}.ca_bundle"),
                    format!("{} does not exist", bundle.display()),
                ));
            }
        }
        let content_types = self
            .content_types
            .unwrap_or_else(|| vec!["application/json".to_owned()]);
        for content_type in &content_types {
            if !["application/json", "application/x-www-form-urlencoded"]
                .contains(&content_type.as_str())
            {
                problems.push(Problem::new(
                    format!("{section}.content_types"),
                    format!("`{content_type}` is not one of: application/json, application/x-www-form-urlencoded"),
                ));
            }
        }
        let mut response_fields = Vec::new();
        for (i, raw) in self.response_fields.into_iter().enumerate() {
            let key = format!("{section}.response_fields[{i}]");
            unknown_keys(problems, &key, &raw.unknown);
            if raw.class.is_some() || raw.query.is_some() {
                problems.push(Problem::new(
                    format!("{key}.class"),
                    "response fields take only select: a token knows its class",
                ));
            }
            match crate::payload::Selector::parse(raw.select.as_deref().unwrap_or("")) {
                Ok(selector) => response_fields.push(selector),
                Err(message) => problems.push(Problem::new(format!("{key}.select"), message)),
            }
        }
        if !response_fields.is_empty() && self.purpose.as_deref().is_none_or(str::is_empty) {
            problems.push(Problem::new(
                format!("{section}.purpose"),
                "response_fields need the purpose they reveal for",
            ));
        }
        let subject = self.subject.and_then(|text| {
            crate::payload::Selector::parse(&text)
                .map_err(|message| {
                    problems.push(Problem::new(format!("{section}.subject"), message))
                })
                .ok()
        });
        let millis = |value: Option<u64>, default: u64| {
            std::time::Duration::from_millis(value.unwrap_or(default).max(1))
        };
        if problems.len() > start {
            return None;
        }
        Some(RouteSpec {
            name,
            path_prefix: path_prefix?,
            upstream: upstream?,
            namespace,
            clients: self.clients.into_iter().collect(),
            headers,
            fields,
            query_fields,
            client_key_header,
            unselected_pii,
            unselected_class: self.unselected_class,
            max_depth,
            connect_timeout: millis(self.connect_timeout_ms, 5_000),
            timeout: millis(self.timeout_ms, 30_000),
            ca_bundle: self.ca_bundle,
            upstream_addresses,
            require_client_cert: self.require_client_cert,
            content_types,
            purpose: self.purpose,
            response_fields,
            subject,
        })
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;

    fn route(prefix: &str, upstream: &str) -> String {
        format!(
            "{BASE}\n[[routes]]\nname = \"ct\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\nnamespace = \"retail\"\nclients = [\"crm\"]\n[[routes.fields]]\nselect = \"$.d[*].identity\"\nclass = \"email\"\n"
        )
    }

    #[test]
    fn a_route_parses_into_its_types() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, &route("/clevertap", "https://api.example.com/1/")).unwrap();
            let spec = &config.routes[0];
            assert_eq!(spec.path_prefix.as_str(), "/clevertap");
            assert_eq!(spec.upstream.as_str(), "https://api.example.com/1");
            Ok(())
        });
    }

    #[test]
    fn a_route_may_not_shadow_the_vaults_own_paths_or_go_out_in_plain_http() {
        Jail::expect_with(|jail| {
            for prefix in ["/metrics", "/v1/x", "/healthz", "/ct-vault", "/x/"] {
                let refused = problems(load_in(jail, &route(prefix, "https://api.example.com")));
                assert!(
                    refused
                        .iter()
                        .any(|p| p.contains("routes[0].path_prefix") || p.contains("path_prefix")),
                    "{prefix}: {refused:?}"
                );
            }
            let refused = problems(load_in(
                jail,
                &route("/clevertap", "http://api.example.com"),
            ));
            assert!(
                refused.iter().any(|p| p.contains("upstream")),
                "{refused:?}"
            );
            Ok(())
        });
    }
}
