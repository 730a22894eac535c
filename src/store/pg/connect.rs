//! Connections to PostgreSQL: the driver's settings from `[storage]`, TLS
//! through rustls verified against `ca_file` (the host name or address in
//! the URL must be in the server's certificate), plain TCP only to this
//! machine's loopback (refused at load otherwise).

use std::sync::Arc;
use std::time::Duration;

use postgres::config::SslMode;
use postgres::{Client, NoTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

use super::PgError;
use crate::config::PostgresSettings;

/// How long a connection attempt may take when the URL does not say.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What opening a connection needs, prepared once.
pub(super) struct Connector {
    config: postgres::Config,
    tls: Option<MakeRustlsConnect>,
    described: String,
}

impl Connector {
    /// Reads the password and the CA file now, so that a wrong path is
    /// reported at start and not at the first request.
    pub(super) fn new(settings: &PostgresSettings) -> Result<Self, PgError> {
        let url = &settings.url;
        let mut config = postgres::Config::new();
        config
            .host(url.host())
            .port(url.port())
            .user(url.user())
            .dbname(url.database())
            .application_name(url.application_name().unwrap_or("tokenvault"))
            .connect_timeout(url.connect_timeout().unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // The schema name is checked at load to need no quoting.
            .options(&format!(
                "-c statement_timeout={} -c search_path={}",
                settings.statement_timeout.as_millis(),
                settings.schema.as_str()
            ));
        if let Some(password) = &settings.password {
            let password: Zeroizing<String> = password.read().map_err(PgError::Password)?;
            config.password(password.as_bytes());
        }
        let tls = match &settings.ca_file {
            Some(ca_file) => {
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(client_config(ca_file)?))
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        Ok(Self {
            config,
            tls,
            described: url.to_string(),
        })
    }

    /// Opens one connection.
    pub(super) fn connect(&self) -> Result<Client, PgError> {
        let result = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        result.map_err(|error| PgError::Connect {
            url: self.described.clone(),
            reason: super::describe(&error),
        })
    }

    /// Whether connections are TLS.
    pub(super) fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A rustls client configuration trusting only the CA certificates in
/// `ca_file` (not the system's roots: the database's CA is the site's own).
fn client_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, PgError> {
    let bad = |reason: String| PgError::Tls(format!("{}: {reason}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
