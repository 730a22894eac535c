//! Egress routes: a client backend sends its usual platform API request to
//! the vault; the vault swaps the configured PII fields for tokens and
//! forwards it upstream over rustls. Fail closed: a body that does not parse,
//! a field that cannot be tokenized, or an audit record that cannot be
//! written means nothing is forwarded.

mod rewrite;

use crate::http::state::State;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{authenticate_with_key_header, Authenticated, CERTIFICATE_AUTH};
use super::context::{LoggedNamespace, RequestId};
use super::error::{ApiError, ErrorCode};
use super::{AppState, MetricRoute};
use crate::audit::{Action, Context, Outcome};
use crate::config::RouteSpec;
use crate::payload;

/// The form content type; form fields are selected by name (`$.Email`).
pub const FORM: &str = "application/x-www-form-urlencoded";

/// Largest token placed in an upstream field (the platform's limit).
pub const MAX_UPSTREAM_TOKEN_BYTES: usize = 512;

/// Headers that belong to one connection and are never forwarded, plus the
/// ones the vault sets itself.
const NOT_FORWARDED: &[&str] = &[
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

/// An egress route ready to serve: its specification, its HTTP client and
/// the headers it injects (marked sensitive).
pub struct Route {
    spec: RouteSpec,
    client: reqwest::Client,
    inject: Vec<(HeaderName, HeaderValue)>,
    /// Member names the route's rules spell out: the only ones a log line
    /// or an error shows.
    names: payload::KnownNames,
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
            let label = format!("route {}", spec.name);
            let inject = injected_headers(&label, &spec.headers)?;
            let client = upstream_client(
                &label,
                &spec.upstream,
                spec.connect_timeout,
                spec.timeout,
                spec.ca_bundle.as_deref(),
            )?;
            let names = payload::KnownNames::of(
                spec.fields
                    .iter()
                    .map(|rule| &rule.selector)
                    .chain(&spec.response_fields),
            );
            routes.push(Route {
                spec,
                client,
                inject,
                names,
            });
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.spec.path_prefix.len()));
        Ok(Self(routes))
    }

    fn find<'a>(&self, path: &'a str) -> Option<(&Route, &'a str)> {
        self.0.iter().find_map(|route| {
            let rest = path.strip_prefix(route.spec.path_prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((route, rest))
        })
    }
}

/// Reads the injected headers' secrets; values are marked sensitive.
pub(super) fn injected_headers(
    name: &str,
    headers: &[(crate::config::HeaderName, crate::config::SecretRef)],
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut inject = Vec::new();
    for (header, secret) in headers {
        let value = secret
            .read()
            .map_err(|e| format!("{name}: header {header}: {e}"))?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            format!("{name}: header {header}: the value is not a valid header value")
        })?;
        value.set_sensitive(true);
        let header = HeaderName::from_bytes(header.as_str().as_bytes())
            .map_err(|_| format!("{name}: bad header name"))?;
        inject.push((header, value));
    }
    Ok(inject)
}

/// A pooled rustls client for one upstream: no redirects, https only unless
/// the URL is http (allowed by configuration), the extra CA bundle trusted.
pub(super) fn upstream_client(
    name: &str,
    url: &str,
    connect_timeout: std::time::Duration,
    timeout: std::time::Duration,
    ca_bundle: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(url.starts_with("https://"))
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(bundle) = ca_bundle {
        let pem = std::fs::read(bundle).map_err(|e| format!("{name}: ca_bundle: {e}"))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{name}: ca_bundle: {e}"))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| format!("{name}: {e}"))
}

/// Handles every request that no API route matched: an egress route, or 404.
pub async fn handle(
    state: State,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let path = req.path().to_owned();
    // Callbacks are found here, in the state in force, so that a reload
    // can add and remove them.
    if req.method() == actix_web::http::Method::POST && state.callbacks.handles(&path) {
        return super::callbacks::handle(state, req, payload).await;
    }
    let Some((route, rest)) = state.routes.find(&path) else {
        // A known path asked with another method: 405 with `Allow`, counted
        // under the path's pattern and a fixed operation.
        if let Some((pattern, allow)) = super::allowed_methods(&state, &path) {
            actix_web::HttpMessage::extensions_mut(&req).insert(MetricRoute {
                route: pattern,
                operation: "method_not_allowed",
            });
            return Err(ApiError::method_not_allowed(&allow, &id));
        }
        return Err(ApiError::new(ErrorCode::NotFound, "no such endpoint", &id));
    };
    actix_web::HttpMessage::extensions_mut(&req).insert(MetricRoute {
        route: format!("route:{}", route.spec.name),
        operation: "forward",
    });
    let Authenticated(caller, mut context) =
        authenticate_with_key_header(&req, route.spec.client_key_header.as_deref()).await?;
    context.route = format!("route:{}", route.spec.name);
    actix_web::HttpMessage::extensions_mut(&req)
        .insert(LoggedNamespace(route.spec.namespace.clone()));
    let refuse = |outcome: Outcome, reason: &str| {
        context
            .record(Action::Forward, outcome)
            .namespace(&route.spec.namespace)
            .reason(reason)
    };
    if route.spec.require_client_cert && context.auth != CERTIFICATE_AUTH {
        record(
            &state,
            refuse(Outcome::Denied, "client_certificate_required"),
        )
        .await;
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this route requires a client certificate",
            &id,
        ));
    }
    if !route.spec.clients.contains(&caller.client) {
        record(&state, refuse(Outcome::Denied, "route_not_granted")).await;
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this client may not use this route",
            &id,
        ));
    }
    let Some(rest) = contained_path(rest) else {
        record(&state, refuse(Outcome::Denied, "path_outside_route")).await;
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the path leaves the route (dot segments, encoded slashes or control characters)",
            &id,
        ));
    };
    let prepared = rewrite::prepare(&state, route, &caller, &context, &req, payload, &id).await;
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err((error, reason)) => {
            if let Some(reason) = reason {
                record(&state, refuse(Outcome::Error, reason)).await;
            }
            return Err(error);
        }
    };
    // Fail closed: the forward is recorded before anything leaves (with the
    // tokenization when there was one, in the same commit).
    if !prepared.forward_recorded {
        let forward = context
            .record(Action::Forward, Outcome::Ok)
            .namespace(&route.spec.namespace);
        state
            .vault
            .record(vec![forward])
            .await
            .map_err(|error| ApiError::from_vault(error, &id))?;
    }
    let relayed = send(route, &req, rest, prepared, &id).await?;
    reveal_in_response(&state, route, &caller, &context, relayed, &id).await
}

async fn record(state: &AppState, record: crate::audit::Record) {
    if let Err(error) = state.vault.record(vec![record]).await {
        tracing::error!(%error, "could not record a refused forward");
    }
}

/// Forwards the rewritten request and relays the answer.
async fn send(
    route: &Route,
    req: &HttpRequest,
    rest: &str,
    prepared: rewrite::Prepared,
    id: &RequestId,
) -> Result<Relayed, ApiError> {
    let rewrite::Prepared {
        body, gzip, query, ..
    } = prepared;
    let mut url = format!("{}{}", route.spec.upstream, rest);
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "unsupported method", id))?;
    let mut request = route.client.request(method, &url);
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110).
    let named_in_connection: Vec<String> = req
        .headers()
        .get_all("connection")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in req.headers() {
        if NOT_FORWARDED.contains(&name.as_str())
            || named_in_connection
                .iter()
                .any(|listed| listed == name.as_str())
            || route.inject.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        request = request.header(name.as_str(), value.as_bytes());
    }
    for (name, value) in &route.inject {
        request = request.header(name.as_str(), value.as_bytes());
    }
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    request = request.header("x-request-id", id.as_str()).body(body);
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return Err(upstream_error(
                &format!("route:{}", route.spec.name),
                error,
                id,
            ))
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if NOT_FORWARDED.contains(&name.as_str()) && name.as_str() != "content-encoding" {
            continue;
        }
        answer.append_header((name.as_str(), value.as_bytes()));
    }
    let plain_json = response.headers().get("content-encoding").is_none()
        && response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
    let bytes = response
        .bytes()
        .await
        .map_err(|error| upstream_error(&format!("route:{}", route.spec.name), error, id))?;
    tracing::info!(request_id = %id, route = %route.spec.name, upstream_status = status.as_u16(), "forwarded");
    Ok(Relayed {
        answer,
        bytes,
        plain_json,
    })
}

/// The upstream's answer, before the response rules.
struct Relayed {
    answer: actix_web::HttpResponseBuilder,
    bytes: actix_web::web::Bytes,
    plain_json: bool,
}

/// Applies the route's response rules: selected string fields holding tokens
/// are detokenized for the route's purpose, when the caller's role allows
/// it; for any other caller the answer passes unchanged. Nothing is
/// revealed unless the detokenization was audited.
async fn reveal_in_response(
    state: &AppState,
    route: &Route,
    caller: &crate::policy::Caller,
    context: &Context,
    relayed: Relayed,
    id: &RequestId,
) -> Result<HttpResponse, ApiError> {
    let Relayed {
        mut answer,
        bytes,
        plain_json,
    } = relayed;
    let Some(purpose) = route.spec.purpose.as_deref() else {
        return Ok(answer.body(bytes));
    };
    let allowed = caller
        .role
        .check(crate::policy::Operation::Detokenize, &route.spec.namespace)
        .is_ok()
        && caller.role.purposes.allows(purpose);
    if route.spec.response_fields.is_empty() || !allowed || !plain_json {
        return Ok(answer.body(bytes));
    }
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(answer.body(bytes));
    };
    let selectors: Vec<&payload::Selector> = route.spec.response_fields.iter().collect();
    let Ok(selected) = payload::select(&document, &selectors) else {
        return Ok(answer.body(bytes));
    };
    let selected: Vec<_> = selected
        .into_iter()
        .filter(|field| !field.was_number)
        .collect();
    if selected.is_empty() {
        return Ok(answer.body(bytes));
    }
    let tokens: Vec<String> = selected
        .iter()
        .map(|field| field.value.expose().to_owned())
        .collect();
    let revealed = state
        .vault
        .detokenize(context, caller, &route.spec.namespace, purpose, tokens)
        .await
        .map_err(|error| ApiError::from_vault(error, id))?;
    for (field, answer) in selected.iter().zip(&revealed) {
        if let crate::vault::Detokenized::Value { value, .. } = answer {
            payload::replace(&mut document, &field.pointer, value.expose().to_owned());
        }
    }
    let body = zeroize::Zeroizing::new(serde_json::to_vec(&document).unwrap_or_default());
    Ok(answer.body(body.to_vec()))
}

/// The answer to a failed forward; counted in metrics under `route`
/// (`route:<name>` or `callback:<name>`, from the configuration).
pub(super) fn upstream_error(route: &str, error: reqwest::Error, id: &RequestId) -> ApiError {
    // reqwest's messages carry the URL, and the URL carries the caller's
    // path and query (which may hold PII): log the route and a fixed kind.
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transfer"
    };
    tracing::warn!(request_id = %id, route, reason = kind, "upstream failed");
    crate::metrics::upstream_error(route, kind);
    if error.is_timeout() {
        ApiError::new(
            ErrorCode::GatewayTimeout,
            "the upstream did not answer in time",
            id,
        )
    } else {
        ApiError::new(
            ErrorCode::BadGateway,
            "the upstream could not be reached or failed",
            id,
        )
    }
}
