//! Egress routes: a client backend sends its usual platform API request to
//! the vault; the vault swaps the configured PII fields for tokens and
//! forwards it upstream over rustls. A request goes through one pipeline,
//! top to bottom ([`forward`]):
//!
//! 1. the route's checks (client, certificate, a path that stays inside);
//! 2. the [`Body`](body::Body): kind, encoding, bytes;
//! 3. the [`RewritePlan`](plan::RewritePlan): the selected fields and the
//!    scan's findings, under the route's `unselected_pii` policy;
//! 4. the engine's [`Vault::forward`]: tokenizes the plan's items and writes
//!    the request's one audit record, whatever the outcome;
//! 5. the [`Rewrite`](rewrite::Rewrite): tokens spliced into the bytes;
//! 6. the [`Upstream`](upstream::Upstream): the exchange;
//! 7. the response rules ([`response`]).
//!
//! Fail closed: a body that does not parse, a field that cannot be
//! tokenized, or a record that cannot be written means nothing is
//! forwarded. This module knows nothing of HTTP servers; `http::egress`
//! reads the request and writes the answer.

pub mod allow;
pub mod body;
pub mod plan;
pub mod refusal;
pub mod response;
pub mod rewrite;
mod scan;
pub mod upstream;

use std::future::Future;

use zeroize::Zeroizing;

use crate::audit::Context;
use crate::config::RouteSpec;
use crate::payload;
use crate::policy::Caller;
use crate::vault::{ForwardError, ForwardPlan, Vault, VaultError};

use body::{Body, Encoding, Kind};
use plan::RewritePlan;
use refusal::{Problem, Refusal};
use rewrite::Rewrite;
use upstream::{Destination, Relayed, Upstream, UpstreamError};

/// The form content type; form fields are selected by name (`$.Email`).
pub const FORM: &str = "application/x-www-form-urlencoded";

/// Largest token placed in an upstream field (the platform's limit).
pub const MAX_UPSTREAM_TOKEN_BYTES: usize = 512;

/// An egress route ready to serve.
pub struct Route {
    /// Its configuration.
    pub spec: RouteSpec,
    /// Its destination.
    pub upstream: Upstream,
    /// Member names the route's rules spell out: the only ones a log line
    /// or an error shows.
    names: payload::KnownNames,
    /// `route:<name>`, for records, logs and metrics.
    pub label: String,
}

/// Every route, longest prefix first.
#[derive(Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Builds the routes: reads injected header secrets, builds one pooled
    /// rustls client per route.
    pub fn build(specs: Vec<RouteSpec>) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(specs.len());
        for spec in specs {
            let label = format!("route:{}", spec.name);
            let upstream = Upstream::build(Destination {
                label: label.clone(),
                url: &spec.upstream,
                connect_timeout: spec.connect_timeout,
                timeout: spec.timeout,
                ca_bundle: spec.ca_bundle.as_deref(),
                headers: &spec.headers,
                addresses: &spec.upstream_addresses,
            })
            .map_err(|e| e.replacen("route:", "route ", 1))?;
            let names = payload::KnownNames::of(
                spec.fields
                    .iter()
                    .map(|rule| &rule.selector)
                    .chain(&spec.response_fields),
            );
            routes.push(Route {
                spec,
                upstream,
                names,
                label,
            });
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.spec.path_prefix.len()));
        Ok(Self(routes))
    }

    /// The route serving `path`, and the rest of the path after its prefix.
    pub fn find<'a>(&self, path: &'a str) -> Option<(&Route, &'a str)> {
        self.0.iter().find_map(|route| {
            let rest = path.strip_prefix(route.spec.path_prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((route, rest))
        })
    }
}

/// One request to forward, as read by the HTTP layer.
pub struct Incoming<'a> {
    /// Who asks, and the record's context.
    pub context: &'a Context,
    /// The authenticated caller.
    pub caller: &'a Caller,
    /// The caller presented a client certificate.
    pub certified: bool,
    /// The path after the route's prefix.
    pub rest: &'a str,
    /// The method.
    pub method: &'a str,
    /// The caller's headers (filtered before they are forwarded).
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The query string, as sent.
    pub query: &'a str,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// `Content-Encoding`.
    pub content_encoding: Option<&'a str>,
    /// The largest (decoded) body taken.
    pub max_body_bytes: usize,
    /// The request id.
    pub request_id: &'a str,
}

/// Why a request was not forwarded, or its exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The route refused it (recorded).
    Refused(Refusal),
    /// The engine refused or failed (recorded); `field` names the place of
    /// a refused item.
    Vault {
        /// The engine's error.
        error: VaultError,
        /// The place of the item it is about, if any.
        field: Option<String>,
    },
    /// The rewrite failed after the forward was recorded.
    Rewrite,
    /// The upstream failed (the forward was recorded).
    Upstream(UpstreamError),
}

/// Runs `incoming` through `route`: checks, body (read by `read_body`, a
/// refusal when it is over the limit or unreadable), plan, the engine's
/// record and tokens, rewrite, and the exchange. Answers the upstream's
/// reply, before the response rules.
pub async fn forward(
    vault: &Vault,
    route: &Route,
    incoming: Incoming<'_>,
    read_body: impl Future<Output = Result<Zeroizing<Vec<u8>>, Refusal>>,
) -> Result<Relayed, Failure> {
    let planned = async {
        check(route, &incoming)?;
        let kind = Kind::of(incoming.content_type, &route.spec.content_types)?;
        let raw = read_body.await?;
        let encoding = Encoding::of(incoming.content_encoding)?;
        let body = Body::decode(kind, encoding, raw, incoming.max_body_bytes)?;
        let plan =
            RewritePlan::build(route, &body, incoming.query.as_bytes(), incoming.request_id)?;
        Ok::<_, Refusal>((body, plan))
    }
    .await;
    let (planned, rest) = match planned {
        Ok((body, mut plan)) => {
            let items = std::mem::take(&mut plan.items);
            let engine = ForwardPlan {
                items,
                note: plan.note,
                max_token_bytes: MAX_UPSTREAM_TOKEN_BYTES,
            };
            (Ok(engine), Some((body, plan)))
        }
        Err(refusal) => (Err(refusal), None),
    };
    let tokens = vault
        .forward(
            incoming.context,
            incoming.caller,
            &route.spec.namespace,
            planned,
        )
        .await;
    let (tokens, (body, plan)) = match (tokens, rest) {
        (Ok(tokens), Some(rest)) => (tokens, rest),
        (Err(ForwardError::Refused(refusal)), _) => return Err(Failure::Refused(refusal)),
        (Err(ForwardError::Vault(error)), rest) => {
            let field = match (&error, &rest) {
                (
                    VaultError::Item { index, .. } | VaultError::TokenTooLong { index, .. },
                    Some((_, plan)),
                ) => Some(plan.describe_item(route, *index)),
                _ => None,
            };
            return Err(Failure::Vault { error, field });
        }
        (Ok(_), None) => return Err(Failure::Rewrite),
    };
    let outgoing = Rewrite::of(&plan)
        .apply(body, incoming.query.as_bytes(), &tokens)
        .map_err(|_| Failure::Rewrite)?;
    drop(plan);
    let mut url = format!("{}{}", route.spec.upstream, incoming.rest);
    if !outgoing.query.is_empty() {
        url.push('?');
        url.push_str(&outgoing.query);
    }
    let gzip = incoming
        .content_encoding
        .is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    let extra: &[(&str, &str)] = if gzip {
        &[("content-encoding", "gzip")]
    } else {
        &[]
    };
    let relayed = route
        .upstream
        .send(
            incoming.method,
            &url,
            incoming.headers.iter().copied(),
            extra,
            outgoing.body,
            incoming.request_id,
        )
        .await
        .map_err(Failure::Upstream)?;
    tracing::info!(request_id = incoming.request_id, route = %route.spec.name, upstream_status = relayed.status, "forwarded");
    Ok(relayed)
}

/// The route's own checks: a client certificate when it asks for one, a
/// client it grants, and a path that stays inside it.
fn check(route: &Route, incoming: &Incoming<'_>) -> Result<(), Refusal> {
    if route.spec.require_client_cert && !incoming.certified {
        return Err(Refusal::denied(
            Problem::Forbidden,
            "this route requires a client certificate",
            "client_certificate_required",
        ));
    }
    if !route.spec.clients.contains(&incoming.caller.client) {
        return Err(Refusal::denied(
            Problem::Forbidden,
            "this client may not use this route",
            "route_not_granted",
        ));
    }
    if contained_path(incoming.rest).is_none() {
        return Err(Refusal::denied(
            Problem::Invalid,
            "the path leaves the route (dot segments, encoded slashes or control characters)",
            "path_outside_route",
        ));
    }
    Ok(())
}

/// The rest of the path after a route's prefix, if it stays inside the
/// route: decoded once, it has no `.` or `..` segment, no encoded slash or
/// backslash, and no control character. A URL library would resolve dot
/// segments after the upstream's base and so leave it (`/route/../../admin`
/// reaching `/admin`); refusing them keeps the upstream's base path too.
fn contained_path(rest: &str) -> Option<&str> {
    let decoded = percent_decode(rest.as_bytes())?;
    let encoded_separator = rest
        .to_ascii_lowercase()
        .split('%')
        .skip(1)
        .any(|hex| hex.starts_with("2f") || hex.starts_with("5c"));
    let safe = !encoded_separator
        && !decoded.iter().any(|b| b.is_ascii_control() || *b == b'\\')
        && decoded
            .split(|b| *b == b'/')
            .all(|segment| segment != b"." && segment != b"..");
    safe.then_some(rest)
}

/// Percent-decodes once; `None` for a malformed escape.
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}
