//! TLS on the listening side: the rustls configuration (TLS 1.3 and 1.2
//! only, on the ring provider), a certificate that SIGHUP reloads without
//! dropping connections, and optional client certificates (mTLS) whose
//! names identify `[clients.X]` entries.

use std::any::Any;
use std::path::Path;
use std::sync::{Arc, RwLock};

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::ServeError;
use crate::config::TlsFiles;

/// A verified client certificate presented on this connection: the names
/// it carries (DNS and URI subject alternative names, subject common names).
/// Present only when the certificate chains to `tls_client_ca`.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// DNS names and common names lower-cased; URIs as written.
    pub names: Vec<String>,
}

/// The served certificate and key, replaced in place by [`Self::reload`].
/// Handshakes in progress keep the key they started with; later ones get
/// the new one.
#[derive(Debug)]
pub struct ServedCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServedCertificate {
    fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, ServeError> {
        let tls_error = |path: &Path, reason: String| ServeError::Tls {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| tls_error(&files.cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(&files.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(tls_error(&files.cert, "no certificate found".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| tls_error(&files.key, e.to_string()))?;
        CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| tls_error(&files.key, e.to_string()))
    }

    /// Re-reads the certificate chain and key. On any problem the served
    /// certificate stays as it was and the error comes back.
    pub fn reload(&self) -> Result<(), ServeError> {
        let fresh = Arc::new(Self::load(&self.files, &self.provider)?);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(current.clone())
    }
}

/// The server's TLS configuration and the handle that reloads its
/// certificate.
pub struct ServerTls {
    /// For the listener.
    pub config: rustls::ServerConfig,
    /// For SIGHUP.
    pub certificate: Arc<ServedCertificate>,
}

/// Loads the certificate chain and key (and the client CA, when mTLS is
/// configured) and builds the rustls configuration: TLS 1.3 and 1.2 only.
///
/// With a client CA, a client certificate is asked for and, when sent, must
/// chain to that CA or the handshake fails. Sending none is allowed: such a
/// caller authenticates with an API key, and routes, callbacks and clients
/// that require a certificate refuse it.
pub fn server_config(files: &TlsFiles, client_ca: Option<&Path>) -> Result<ServerTls, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(ServedCertificate {
        current: RwLock::new(Arc::new(ServedCertificate::load(files, &provider)?)),
        files: files.clone(),
        provider: provider.clone(),
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServeError::Tls {
            path: files.cert.display().to_string(),
            reason: e.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let tls_error = |reason: String| ServeError::Tls {
                path: path.display().to_string(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls_error(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| tls_error(e.to_string()))?)
                    .map_err(|e| tls_error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(tls_error("no CA certificate found".to_owned()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_cert_resolver(certificate.clone());
    Ok(ServerTls {
        config,
        certificate,
    })
}

/// `HttpServer::on_connect`: records the verified client certificate's
/// names on the connection, for [`PeerCertificate`].
pub fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
    let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() else {
        return;
    };
    let (_, session) = stream.get_ref();
    if let Some(leaf) = session.peer_certificates().and_then(|chain| chain.first()) {
        extensions.insert(PeerCertificate {
            names: certificate_names(leaf),
        });
    }
}

/// The names a certificate identifies its holder by: DNS and URI subject
/// alternative names, and subject common names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::URI(uri) => names.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    for common_name in cert.subject().iter_common_name() {
        if let Ok(text) = common_name.as_str() {
            names.push(text.to_ascii_lowercase());
        }
    }
    names
}

/// Reloads the certificate on every SIGHUP in `hangups` until the server
/// stops. Without TLS, SIGHUP is logged and otherwise ignored (it must not
/// stop the vault). The caller registers `hangups` before it says it is
/// listening: a SIGHUP right after that line must not hit the default
/// action, which ends the process.
pub async fn reload_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    certificate: Option<Arc<ServedCertificate>>,
    reload: Option<super::Reload>,
) {
    while hangups.recv().await.is_some() {
        if let Some(reload) = &reload {
            reload().await;
        }
        match &certificate {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(certificate) => match certificate.reload() {
                Ok(()) => {
                    crate::metrics::tls_reload(true);
                    tracing::info!("SIGHUP: TLS certificate and key reloaded");
                }
                Err(error) => {
                    crate::metrics::tls_reload(false);
                    tracing::error!(%error, "SIGHUP: TLS reload failed; still serving the previous certificate");
                }
            },
        }
    }
}
