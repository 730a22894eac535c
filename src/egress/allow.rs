//! The egress allow-list: the vault's HTTP clients reach only the
//! destinations the configuration names. Each client is built for one
//! destination, and:
//! - sends only to that destination's scheme, host and port ([`Origin`]);
//! - resolves only that destination's host name, and, when the
//!   configuration lists the addresses it may resolve to, drops every
//!   answer outside them ([`Pinned`]);
//! - ignores proxy environment variables and never follows a redirect
//!   (set where the client is built, in `upstream.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a destination was refused. Never carries a path or query (they may
/// hold values); the host is configuration.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A name other than the configured host was to be resolved.
    #[error("the name `{0}` is not this destination's host")]
    Name(String),
    /// The configured host resolved only to addresses outside the list.
    #[error("`{0}` resolved to no address in the configured list")]
    Addresses(String),
    /// The name did not resolve.
    #[error("`{0}` did not resolve")]
    Unresolved(String),
}

/// The scheme, host and port a client may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// The origin of `url`, or `None` when it does not parse.
    pub fn of(url: &str) -> Option<Self> {
        let url = url::Url::parse(url).ok()?;
        Some(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default(),
        })
    }

    /// The host, without brackets for IPv6.
    pub fn host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A resolver for one destination: the configured host name only, and
/// only to the configured addresses when there are any.
pub struct Pinned {
    host: String,
    addresses: Arc<[IpNet]>,
}

impl Pinned {
    /// Resolves `host` (the configured destination's), keeping only answers
    /// inside `addresses` unless that list is empty.
    pub fn new(host: &str, addresses: &[IpNet]) -> Self {
        Self {
            host: host.to_ascii_lowercase(),
            addresses: addresses.into(),
        }
    }

    /// The answers that may be used, out of `found`.
    fn keep(addresses: &[IpNet], found: Vec<SocketAddr>) -> Vec<SocketAddr> {
        if addresses.is_empty() {
            return found;
        }
        found
            .into_iter()
            .filter(|a| addresses.iter().any(|net| net.contains(&a.ip())))
            .collect()
    }
}

impl Resolve for Pinned {
    fn resolve(&self, name: Name) -> Resolving {
        let asked = name.as_str().to_ascii_lowercase();
        let addresses = self.addresses.clone();
        let expected = self.host.clone();
        Box::pin(async move {
            if asked != expected {
                return Err(Box::new(Refused::Name(asked)) as _);
            }
            let found: Vec<SocketAddr> = tokio::net::lookup_host((asked.as_str(), 0))
                .await
                .map_err(|_| Box::new(Refused::Unresolved(asked.clone())))?
                .collect();
            if found.is_empty() {
                return Err(Box::new(Refused::Unresolved(asked)) as _);
            }
            let kept = Self::keep(&addresses, found);
            if kept.is_empty() {
                return Err(Box::new(Refused::Addresses(asked)) as _);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// True when `error` (or what caused it) is a refusal of this module's.
pub fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<Refused>() {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let base = Origin::of("https://API.example.com/v1").unwrap();
        assert_eq!(
            base,
            Origin::of("https://api.example.com:443/v1/x?y=1").unwrap()
        );
        assert_ne!(base, Origin::of("http://api.example.com/v1").unwrap());
        assert_ne!(base, Origin::of("https://api.example.com:8443/v1").unwrap());
        assert_ne!(
            base,
            Origin::of("https://api.example.com.evil.net/v1").unwrap()
        );
        assert_ne!(
            base,
            Origin::of("https://api.example.com@evil.net/v1").unwrap()
        );
        assert_eq!(Origin::of("http://[::1]:80/").unwrap().host(), "::1");
        assert!(Origin::of("not a url").is_none());
    }

    #[tokio::test]
    async fn only_the_configured_name_resolves() {
        let pinned = Pinned::new("localhost", &[]);
        let error = pinned
            .resolve("example.com".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(is_refusal(error.as_ref()));
        let found: Vec<_> = pinned
            .resolve("LOCALHOST".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty());
    }

    #[tokio::test]
    async fn answers_outside_the_list_are_dropped() {
        let documentation: IpNet = "192.0.2.0/24".parse().unwrap();
        let pinned = Pinned::new("localhost", &[documentation]);
        let error = pinned
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(matches!(
            error.downcast_ref::<Refused>(),
            Some(Refused::Addresses(_))
        ));
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        let found: Vec<_> = Pinned::new("localhost", &[loopback])
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!found.is_empty() && found.iter().all(|a| loopback.contains(&a.ip())));
    }
}
