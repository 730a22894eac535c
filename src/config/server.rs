//! `[server]` and `[log]`.

#[allow(unused_imports)]
use super::*;

/// `[server]`: where and how the vault listens.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address and port to bind.
    pub listen: SocketAddr,
    /// Certificate chain and key for HTTPS; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// CA certificates (PEM) that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Allows plain HTTP on a non-loopback address.
    pub insecure_allow_plaintext: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most items in one tokenize or detokenize request.
    pub max_batch_items: usize,
}

/// PEM files of the server certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

// ---------------------------------------------------------------------------
// Raw structures, as serde reads them

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub(super) const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub(super) const DEFAULT_MAX_BATCH_ITEMS: usize = 10_000;

#[derive(Deserialize, Default)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
    pub(super) directory: Option<PathBuf>,
    pub(super) retention_days: Option<u64>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawLog {
    pub(super) fn validate(self, problems: &mut Vec<Problem>) -> LogSettings {
        unknown_keys(problems, "log", &self.unknown);
        let defaults = LogSettings::default();
        let format = self
            .format
            .as_deref()
            .and_then(|format| {
                parse_enum::<LogFormat>(problems, "log.format", format, "plain, json")
            })
            .unwrap_or(defaults.format);
        let level = self.level.unwrap_or(defaults.level);
        if !plain_filter(&level) || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            problems.push(
                Problem::new("log.level", format!("`{level}` is not a log filter"))
                    .hint("use error, warn, info, debug or trace, or target=level pairs separated by commas"),
            );
        }
        let retention_days = match self.retention_days {
            Some(0) => {
                problems.push(Problem::new("log.retention_days", "must be at least 1"));
                defaults.retention_days
            }
            Some(days) => usize::try_from(days).unwrap_or(usize::MAX),
            None => defaults.retention_days,
        };
        LogSettings {
            format,
            level,
            directory: self.directory,
            retention_days,
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) tls_client_ca: Option<PathBuf>,
    #[serde(default)]
    pub(super) insecure_allow_plaintext: bool,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_batch_items: Option<u64>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawServer {
    pub(super) fn validate(self, problems: &mut Vec<Problem>) -> Option<ServerSettings> {
        unknown_keys(problems, "server", &self.unknown);
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            problems.push(
                Problem::new(
                    "server.listen",
                    format!("`{listen_text}` is not an IP address and port"),
                )
                .hint("write it as 0.0.0.0:8443 or [::1]:8443"),
            )
        });
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                if !cert.is_file() {
                    problems.push(Problem::new(
                        "server.tls_cert",
                        format!("{} does not exist", cert.display()),
                    ));
                }
                if let Err(problem) = check_secret_file("server.tls_key", &key) {
                    problems.push(problem);
                }
                Some(TlsFiles { cert, key })
            }
            (None, None) => None,
            (Some(_), None) => {
                problems.push(Problem::new(
                    "server.tls_key",
                    "tls_cert is set but tls_key is not",
                ));
                None
            }
            (None, Some(_)) => {
                problems.push(Problem::new(
                    "server.tls_cert",
                    "tls_key is set but tls_cert is not",
                ));
                None
            }
        };
        let client_ca = self.tls_client_ca.inspect(|ca| {
            if tls.is_none() {
                problems.push(
                    Problem::new("server.tls_client_ca", "client certificates need TLS")
                        .hint("set tls_cert and tls_key too"),
                );
            } else if !ca.is_file() {
                problems.push(Problem::new(
                    "server.tls_client_ca",
                    format!("{} does not exist", ca.display()),
                ));
            }
        });
        if let Ok(listen) = listen {
            if tls.is_none() && !listen.ip().is_loopback() && !self.insecure_allow_plaintext {
                problems.push(
                    Problem::new("server.listen", format!("plain HTTP on non-loopback address {listen} is refused"))
                        .hint("set tls_cert and tls_key, or insecure_allow_plaintext = true behind a TLS proxy"),
                );
            }
        }
        let positive = |problems: &mut Vec<Problem>,
                        key: &str,
                        value: Option<u64>,
                        default: usize| match value {
            None => default,
            Some(0) => {
                problems.push(Problem::new(key, "must be greater than 0"));
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let max_body_bytes = positive(
            problems,
            "server.max_body_bytes",
            self.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
        );
        let max_batch_items = positive(
            problems,
            "server.max_batch_items",
            self.max_batch_items,
            DEFAULT_MAX_BATCH_ITEMS,
        );
        Some(ServerSettings {
            listen: listen.ok()?,
            tls,
            client_ca,
            insecure_allow_plaintext: self.insecure_allow_plaintext,
            max_body_bytes,
            max_batch_items,
        })
    }
}

/// True for a filter of levels and `target=level` pairs only, such as
/// `info` or `info,tokenvault=debug`. Span and field filters (`[span{field=value}]`)
/// are refused: their values compile to regular expressions, and one found
/// by fuzzing the configuration loader took minutes to compile.
fn plain_filter(text: &str) -> bool {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let level = |word: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word.trim()));
    text.split(',')
        .all(|directive| match directive.split_once('=') {
            None => level(directive),
            Some((target, word)) => {
                let target = target.trim();
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b))
                    && level(word)
            }
        })
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn log_filters_are_levels_and_target_pairs_only() {
        assert!(super::plain_filter("info"));
        assert!(super::plain_filter(
            "WARN, tokenvault=debug,actix_web::middleware=error"
        ));
        assert!(!super::plain_filter(""));
        assert!(!super::plain_filter("info,"));
        assert!(!super::plain_filter("loud"));
        assert!(!super::plain_filter("tokenvault[span{field=value}]=debug"));
    }

    /// Found by the `config` fuzz target: this level took minutes to
    /// compile as a filter (its field value is a regular expression).
    #[test]
    fn a_pathological_log_filter_is_refused_at_once() {
        let level = "0mioni[0.ZZZZZZZZZZZZZnZZZZZZZZZZZ{{v{wwswwwwwwww=wwwwwwwwwwww..............................................................................ww}wwwwwwwwwwwwwwwwwwwwwwZ082.5 =e oke0.dfcd";
        Jail::expect_with(|jail| {
            let started = std::time::Instant::now();
            let refused = problems(load_in(
                jail,
                &format!("[log]\nlevel = \"{level}\"\n{BASE}"),
            ));
            assert!(
                refused.iter().any(|p| p.contains("log.level")),
                "{refused:?}"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            Ok(())
        });
    }

    #[test]
    fn defaults_env_overrides_and_plain_http_off_loopback() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, BASE).unwrap();
            assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
            assert_eq!(config.server.max_body_bytes, 8 * 1024 * 1024);
            jail.set_env("TOKENVAULT_SERVER__LISTEN", "127.0.0.1:9443");
            let config = load_in(jail, BASE).unwrap();
            assert_eq!(config.server.listen.to_string(), "127.0.0.1:9443");
            jail.set_env("TOKENVAULT_SERVER__LISTEN", "0.0.0.0:9443");
            let refused = problems(load_in(jail, BASE));
            assert!(
                refused.iter().any(|p| p.contains("server.listen")),
                "{refused:?}"
            );
            let allowed = load_in(
                jail,
                &format!("[server]\ninsecure_allow_plaintext = true\n{BASE}"),
            );
            assert!(allowed.is_ok());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_named() {
        Jail::expect_with(|jail| {
            let refused = problems(load_in(
                jail,
                &format!("[server]\nlisten_on = \"x\"\n{BASE}"),
            ));
            assert!(
                refused.iter().any(|p| p.contains("server.listen_on")),
                "{refused:?}"
            );
            Ok(())
        });
    }
}
