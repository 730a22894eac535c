//! Values parsed once into types that own their rules: a path the vault
//! serves for a route or a callback, an upstream URL, a header name.

use std::fmt;
use std::ops::Deref;

/// Paths the vault serves itself. A route prefix or a callback path may not
/// start with one (a test in `http` checks that every fixed endpoint is
/// covered).
pub const RESERVED_PATHS: &[&str] = &[
    "/v1",
    "/healthz",
    "/readyz",
    "/metrics",
    "/ct-vault",
    "/auth/realms/ct-vault",
];

/// A path a route or a callback is served at: a leading slash, no trailing
/// one, letters, digits and `/-_.` only, and not under a reserved path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServedPath(String);

impl ServedPath {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shaped = text.starts_with('/')
            && text.len() > 1
            && !text.ends_with('/')
            && !text.contains("//")
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !shaped {
            return Err(format!("`{text}` is not a usable path"));
        }
        if let Some(reserved) = Self::reserved_by(text) {
            return Err(format!(
                "`{text}` is under {reserved}, which the vault serves itself"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The reserved path `path` falls under, if any.
    pub fn reserved_by(path: &str) -> Option<&'static str> {
        RESERVED_PATHS
            .iter()
            .copied()
            .find(|reserved| path.starts_with(reserved))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ServedPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ServedPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ServedPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for ServedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upstream base URL without a trailing slash: https, or http only when
/// the section says `insecure_allow_http_upstream = true`; with a host, and
/// without credentials, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl(String);

impl UpstreamUrl {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str, allow_http: bool) -> Result<Self, String> {
        let trimmed = text.trim_end_matches('/');
        let (scheme, rest) = trimmed.split_once("://").unwrap_or(("", ""));
        let scheme_ok = scheme == "https" || (scheme == "http" && allow_http);
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
                    host
                } else {
                    authority
                }
            });
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
        let clean = !rest.contains(['@', '?', '#', ' ', '\\']);
        if scheme_ok && host_ok && clean {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(format!("`{text}` is not an https:// URL"))
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host, when it is an IP address.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match url::Url::parse(&self.0).ok()?.host()? {
            url::Host::Ipv4(address) => Some(address.into()),
            url::Host::Ipv6(address) => Some(address.into()),
            url::Host::Domain(_) => None,
        }
    }
}

impl Deref for UpstreamUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP header name (RFC 9110 token characters), as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeaderName(String);

impl HeaderName {
    /// Parses `text`, or refuses it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let token = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            Ok(Self(text.to_owned()))
        } else {
            Err("not a valid header name".to_owned())
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_paths_keep_clear_of_the_vaults_own() {
        for good in ["/clevertap", "/callbacks/sms", "/a.b-c_d"] {
            assert!(ServedPath::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/",
            "clevertap",
            "/x/",
            "/a//b",
            "/a b",
            "/v1",
            "/v1/x",
            "/healthz",
            "/readyz",
            "/metrics",
            "/ct-vault/api",
            "/auth/realms/ct-vault/x",
        ] {
            assert!(ServedPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ServedPath::reserved_by("/metrics"), Some("/metrics"));
    }

    #[test]
    fn upstream_urls_are_https_unless_allowed() {
        assert_eq!(
            UpstreamUrl::parse("https://api.example.com/v1/", false)
                .unwrap()
                .as_str(),
            "https://api.example.com/v1"
        );
        assert!(UpstreamUrl::parse("https://127.0.0.1:8443", false).is_ok());
        assert!(UpstreamUrl::parse("http://api.example.com", false).is_err());
        assert!(UpstreamUrl::parse("http://api.example.com", true).is_ok());
        for bad in [
            "",
            "api.example.com",
            "ftp://x",
            "https://",
            "https://user:pw@host",
            "https://host/?q=1",
            "https://host/#f",
        ] {
            assert!(UpstreamUrl::parse(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(HeaderName::parse("X-CleverTap-Account-Id").is_ok());
        for bad in ["", "X Bad", "X:Bad", "X\r\nBad", "é"] {
            assert!(HeaderName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
