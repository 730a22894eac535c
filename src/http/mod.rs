//! The HTTP surface: server and TLS, authentication, API handlers and error
//! answers. Nothing here knows SQL or ciphers; it calls the engine.

mod api;
mod auth;
pub mod callbacks;
pub mod clevertap;
pub mod context;
pub mod egress;
pub mod error;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ServerSettings, TlsFiles};
use crate::policy::Authenticator;
use crate::vault::Vault;

/// Seconds the server waits for in-flight requests after SIGTERM.
pub const SHUTDOWN_GRACE_SECS: u64 = 30;

/// Request limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Most items per batch.
    pub max_batch_items: usize,
}

/// Everything a handler needs.
pub struct AppState {
    /// The engine.
    pub vault: Vault,
    /// API key verification.
    pub auth: Authenticator,
    /// Request limits.
    pub limits: Limits,
    /// Egress routes.
    pub routes: egress::Routes,
    /// The CleverTap Token Vault API surface, when `[clevertap]` enables it.
    pub clevertap: Option<clevertap::Surface>,
    /// Activation callbacks.
    pub callbacks: callbacks::Callbacks,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be used.
    #[error("cannot use TLS file {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding or serving failed.
    #[error("server error: {0}")]
    Io(#[from] io::Error),
}

/// Loads the certificate chain and key and builds a rustls configuration
/// offering TLS 1.3 and 1.2 only, on the ring provider.
pub fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServeError> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_error(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&files.key, e.to_string()))
}

/// Binds and serves until SIGTERM or SIGINT, then drains in-flight requests.
/// Prints `tokenvault listening on <url>` on stdout once bound.
pub async fn serve(state: AppState, settings: &ServerSettings) -> Result<(), ServeError> {
    let tls = settings.tls.as_ref().map(tls_config).transpose()?;
    let clevertap = state.clevertap.is_some();
    let callback_paths = state.callbacks.paths();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(context::request_context))
            .configure(api::routes)
            .configure(|config| {
                if clevertap {
                    clevertap::routes(config);
                }
                for path in &callback_paths {
                    config.route(path, web::post().to(callbacks::handle));
                }
            })
            .default_service(web::to(egress::handle))
    })
    .shutdown_timeout(SHUTDOWN_GRACE_SECS);
    let (server, scheme) = match tls {
        Some(tls) => (server.bind_rustls_0_23(settings.listen, tls)?, "https"),
        None => (server.bind(settings.listen)?, "http"),
    };
    let addresses: Vec<SocketAddr> = server.addrs();
    {
        let mut out = io::stdout().lock();
        for address in &addresses {
            writeln!(out, "tokenvault listening on {scheme}://{address}")?;
            tracing::info!(%address, scheme, "listening");
        }
        out.flush()?;
    }
    server.run().await?;
    tracing::info!("server stopped; in-flight requests drained");
    Ok(())
}
