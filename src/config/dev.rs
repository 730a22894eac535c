//! The built-in configuration of `serve --dev`.

#[allow(unused_imports)]
use super::*;

impl Config {
    /// The built-in configuration of `serve --dev`: namespace `default` with
    /// one class of each kind, a root role, data under `data_dir`.
    pub fn dev(listen: SocketAddr, data_dir: PathBuf, root_key_hash: String) -> Self {
        let class = |normalize, format, deterministic| ClassSpec {
            normalize,
            format,
            deterministic,
            token_prefixes: Vec::new(),
            retain_days: None,
        };
        let classes = BTreeMap::from([
            (
                "email".to_owned(),
                class(Normalization::Email, TokenFormat::Email, true),
            ),
            (
                "phone".to_owned(),
                class(Normalization::E164, TokenFormat::Phone, true),
            ),
            (
                "name".to_owned(),
                class(Normalization::Trim, TokenFormat::Opaque, true),
            ),
            (
                "account".to_owned(),
                class(Normalization::Trim, TokenFormat::Alnum, true),
            ),
            (
                "card".to_owned(),
                class(Normalization::Trim, TokenFormat::KeepLast4, true),
            ),
            (
                "note".to_owned(),
                class(Normalization::None, TokenFormat::Opaque, false),
            ),
        ]);
        let root = Role {
            operations: [
                Operation::Tokenize,
                Operation::Detokenize,
                Operation::Forget,
                Operation::AuditRead,
                Operation::Consent,
                Operation::MetricsRead,
                Operation::SubjectForget,
                Operation::SubjectExport,
                Operation::SubjectCorrect,
                // No backup: the dev key exists only in memory, so a
                // backup could never be opened.
            ]
            .into(),
            namespaces: Scope::Any,
            classes: Scope::Any,
            purposes: Scope::Any,
            reveal: Reveal::Plain,
            reveal_by_purpose: BTreeMap::new(),
            // The CleverTap SDKs send no purpose unless told to.
            clevertap_purpose: Some("support".to_owned()),
        };
        Self {
            server: ServerSettings {
                listen,
                tls: None,
                client_ca: None,
                insecure_allow_plaintext: false,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            },
            storage: StorageSettings {
                data_dir,
                backend: Backend::Sqlite,
            },
            keys: KeySettings::Ephemeral,
            namespaces: BTreeMap::from([(
                "default".to_owned(),
                NamespaceSpec {
                    token_domain: DEFAULT_TOKEN_DOMAIN.to_owned(),
                    classes,
                },
            )]),
            roles: BTreeMap::from([("root".to_owned(), root)]),
            log: LogSettings::default(),
            routes: Vec::new(),
            callbacks: Vec::new(),
            clevertap: Some(ClevertapSpec {
                namespace: "default".to_owned(),
                email_class: Some("email".to_owned()),
                phone_class: Some("phone".to_owned()),
                default_class: "name".to_owned(),
                access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
                subject_metadata_key: Some("identity".to_owned()),
            }),
            limits: Limits::default(),
            clients: BTreeMap::from([(
                "root".to_owned(),
                ClientSpec {
                    role: "root".to_owned(),
                    api_key_hash: Some(root_key_hash),
                    cert_identity: None,
                    allow_from: Vec::new(),
                    budget: crate::policy::Budget::default(),
                },
            )]),
        }
    }
}
