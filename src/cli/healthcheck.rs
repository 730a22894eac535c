//! `tokenvault healthcheck`: asks the running vault's `/readyz` and exits 0
//! when it answers ready, 1 otherwise. The container's HEALTHCHECK runs it;
//! it needs no shell, curl or CA bundle in the image.
//!
//! Over TLS it trusts exactly the certificate in `tls_cert` (the one the vault
//! serves), so it works whatever names the certificate carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::CliError;

/// How long the check waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the vault that `config` describes.
pub fn run(config: &Path, listen: Option<SocketAddr>) -> Result<(), CliError> {
    let config = crate::config::load(config)?;
    let (url, status, _) = readiness(&config, listen)?;
    if status.is_success() {
        println!("ready: {url}");
        Ok(())
    } else {
        Err(anyhow!("{url} answered {status}\nhint: GET /readyz shows which check fails").into())
    }
}

/// Asks the running vault's `/readyz`: its URL, the status, and the body.
pub(super) fn readiness(
    config: &crate::config::Config,
    listen: Option<SocketAddr>,
) -> anyhow::Result<(String, reqwest::StatusCode, serde_json::Value)> {
    let address = local_address(listen.unwrap_or(config.server.listen));
    let client = match &config.server.tls {
        Some(files) => {
            let leaf = CertificateDer::pem_file_iter(&files.cert)
                .and_then(|mut certs| certs.next().transpose())
                .map_err(|e| anyhow!("cannot read {}: {e}", files.cert.display()))?
                .ok_or_else(|| anyhow!("no certificate in {}", files.cert.display()))?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| anyhow!(e))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { leaf, provider }))
                .with_no_client_auth();
            reqwest::Client::builder().use_preconfigured_tls(tls)
        }
        None => reqwest::Client::builder(),
    }
    // The vault itself, on loopback: never through a proxy from the environment.
    .no_proxy()
    .timeout(TIMEOUT)
    .build()
    .context("cannot build the HTTP client")?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{address}/readyz");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let (status, body) = runtime
        .block_on(async {
            let response = client.get(&url).send().await?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            Ok::<_, reqwest::Error>((status, body))
        })
        .map_err(|e| {
            anyhow!("{url}: {e}\nhint: is `tokenvault serve` running with this configuration?")
        })?;
    Ok((url, status, body))
}

/// The address to reach a server listening on `listen` from the same host:
/// an unspecified address becomes loopback.
fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Accepts exactly one end-entity certificate, with real handshake
/// signature checks.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        let v4 = local_address("0.0.0.0:8443".parse().unwrap());
        assert_eq!(v4, "127.0.0.1:8443".parse().unwrap());
        let v6 = local_address("[::]:8443".parse().unwrap());
        assert_eq!(v6, "[::1]:8443".parse().unwrap());
        let fixed = local_address("10.1.2.3:9000".parse().unwrap());
        assert_eq!(fixed, "10.1.2.3:9000".parse().unwrap());
    }
}
