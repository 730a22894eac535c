//! The upstream side of a route or callback: one pooled rustls client per
//! destination, the headers the vault injects (secrets, marked sensitive),
//! hop-by-hop filtering of the caller's headers, and failures reported by
//! a fixed kind (reqwest's messages carry the URL, and the URL the caller's
//! path and query). Each client reaches only its destination (`allow.rs`).

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::header::{HeaderName, HeaderValue};

use super::allow::{self, Origin, Pinned};

/// Headers that belong to one connection and are never forwarded, plus the
/// ones the vault sets itself.
pub const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
    "content-encoding",
    // Who the client is, as the caller claims it: never passed on as sent.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// One destination: its client and injected headers.
pub struct Upstream {
    /// `route:<name>` or `callback:<name>`: the metric label and log field.
    label: String,
    client: reqwest::Client,
    inject: Vec<(HeaderName, HeaderValue)>,
    /// The only scheme, host and port this client sends to.
    origin: Origin,
}

/// Where and how a destination is reached (from the configuration).
pub struct Destination<'a> {
    /// `route:<name>` or `callback:<name>`.
    pub label: String,
    /// The base URL.
    pub url: &'a str,
    /// Connection and whole-request timeouts.
    pub connect_timeout: Duration,
    /// The whole request's timeout.
    pub timeout: Duration,
    /// Extra CA certificates to trust.
    pub ca_bundle: Option<&'a std::path::Path>,
    /// Headers to inject, with their secrets.
    pub headers: &'a [(crate::config::HeaderName, crate::config::SecretRef)],
    /// The addresses the URL's host may resolve to; empty: any.
    pub addresses: &'a [IpNet],
}

/// A failed exchange with the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No answer in time.
    Timeout,
    /// No connection.
    Connect,
    /// The exchange broke off, or the request could not be built.
    Transfer,
    /// The request would have left the allow-list: another origin, another
    /// name, or an address outside the configured ones.
    Refused,
    /// The upstream answered with a redirect: not followed, not passed on.
    Redirect,
}

impl UpstreamError {
    fn kind(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Transfer => "transfer",
            Self::Refused => "destination_refused",
            Self::Redirect => "redirect_refused",
        }
    }
}

/// The upstream's answer.
pub struct Relayed {
    /// Its status.
    pub status: u16,
    /// Its headers, less the hop-by-hop ones (`content-encoding` kept).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its body.
    pub bytes: Vec<u8>,
    /// The body is JSON and not compressed (response rules may apply).
    pub plain_json: bool,
}

impl Upstream {
    /// A pooled rustls client for `to`: https only unless the URL is http
    /// (allowed by configuration), the extra CA bundle trusted, and the
    /// injected headers' secrets read. It resolves only the URL's host (to
    /// the configured addresses, when listed), follows no redirect, and
    /// takes no proxy from the environment (`HTTPS_PROXY` and the like
    /// would send every value's token, and every callback's values, to a
    /// host the configuration never named).
    pub fn build(to: Destination<'_>) -> Result<Self, String> {
        let label = to.label;
        let origin =
            Origin::of(to.url).ok_or_else(|| format!("{label}: the URL does not parse"))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(to.url.starts_with("https://"))
            .connect_timeout(to.connect_timeout)
            .timeout(to.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Pinned::new(origin.host(), to.addresses)));
        if let Some(bundle) = to.ca_bundle {
            let pem = std::fs::read(bundle).map_err(|e| format!("{label}: ca_bundle: {e}"))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{label}: ca_bundle: {e}"))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|e| format!("{label}: {e}"))?;
        let mut inject = Vec::new();
        for (header, secret) in to.headers {
            let value = secret
                .read()
                .map_err(|e| format!("{label}: header {header}: {e}"))?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                format!("{label}: header {header}: the value is not a valid header value")
            })?;
            value.set_sensitive(true);
            let header = HeaderName::from_bytes(header.as_str().as_bytes())
                .map_err(|_| format!("{label}: bad header name"))?;
            inject.push((header, value));
        }
        Ok(Self {
            label,
            client,
            inject,
            origin,
        })
    }

    /// Sends `body` to `url` with `method`: the caller's `headers` that are
    /// end-to-end and not injected, then the injected ones, then
    /// `extra` (the vault's own, such as `content-encoding`), and the
    /// request id. Answers the upstream's reply.
    pub async fn send<'h>(
        &self,
        method: &str,
        url: &str,
        headers: impl Iterator<Item = (&'h str, &'h [u8])> + Clone,
        extra: &[(&str, &str)],
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<Relayed, UpstreamError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| self.failed(UpstreamError::Transfer, request_id))?;
        if Origin::of(url).as_ref() != Some(&self.origin) {
            return Err(self.failed(UpstreamError::Refused, request_id));
        }
        let mut request = self.client.request(method, url);
        // Headers the client named in `Connection` are hop-by-hop too (RFC 9110).
        let named_in_connection: Vec<String> = headers
            .clone()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if NOT_FORWARDED.contains(&lower.as_str())
                || named_in_connection.contains(&lower)
                || self.inject.iter().any(|(n, _)| n.as_str() == lower)
            {
                continue;
            }
            request = request.header(name, value);
        }
        for (name, value) in &self.inject {
            request = request.header(name.clone(), value.clone());
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request = request.header("x-request-id", request_id).body(body);
        let response = request
            .send()
            .await
            .map_err(|error| self.failed(classify(&error), request_id))?;
        let status = response.status().as_u16();
        // A caller that follows a relayed redirect sends its own request,
        // values and all, to a place the vault never vetted.
        if response.status().is_redirection() && response.headers().contains_key("location") {
            return Err(self.failed(UpstreamError::Redirect, request_id));
        }
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| {
                !NOT_FORWARDED.contains(&name.as_str()) || name.as_str() == "content-encoding"
            })
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        let plain_json = response.headers().get("content-encoding").is_none()
            && response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.failed(classify(&error), request_id))?
            .to_vec();
        Ok(Relayed {
            status,
            headers,
            bytes,
            plain_json,
        })
    }

    /// Logs and counts a failure under this destination's label.
    fn failed(&self, error: UpstreamError, request_id: &str) -> UpstreamError {
        tracing::warn!(request_id, route = %self.label, reason = error.kind(), "upstream failed");
        crate::metrics::upstream_error(&self.label, error.kind());
        error
    }
}

fn classify(error: &reqwest::Error) -> UpstreamError {
    if allow::is_refusal(error) {
        UpstreamError::Refused
    } else if error.is_timeout() {
        UpstreamError::Timeout
    } else if error.is_connect() {
        UpstreamError::Connect
    } else {
        UpstreamError::Transfer
    }
}
