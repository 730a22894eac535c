//! Egress routes: a client backend sends its usual platform API request to
//! the vault; the vault swaps the configured PII fields for tokens and
//! forwards it upstream over rustls. Fail closed: a body that does not parse,
//! a field that cannot be tokenized, or an audit record that cannot be
//! written means nothing is forwarded.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::api::read_body;
use super::auth::{authenticate, Authenticated, CERTIFICATE_AUTH};
use super::context::{LoggedNamespace, RequestId};
use super::error::{ApiError, ErrorCode};
use super::{AppState, MetricRoute};
use crate::audit::{Action, Context, Outcome};
use crate::config::{RouteSpec, UnselectedPii};
use crate::payload::{self, detect, PayloadError};
use crate::pii::Pii;
use crate::vault::normalize::Normalization;
use crate::vault::{TokenizeItem, VaultError};

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
];

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
            let rest = path.strip_prefix(&route.spec.path_prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some((route, rest))
        })
    }
}

/// Reads the injected headers' secrets; values are marked sensitive.
pub(super) fn injected_headers(
    name: &str,
    headers: &[(String, crate::config::SecretRef)],
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
        let header = HeaderName::from_bytes(header.as_bytes())
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
    state: web::Data<AppState>,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let path = req.path().to_owned();
    let Some((route, rest)) = state.routes.find(&path) else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such endpoint", &id));
    };
    actix_web::HttpMessage::extensions_mut(&req).insert(MetricRoute {
        route: format!("route:{}", route.spec.name),
        operation: "forward",
    });
    let Authenticated(caller, mut context) = authenticate(&req).await?;
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
    let prepared = prepare(&state, route, &caller, &context, &req, payload, &id).await;
    let (body, gzip, forwarded_already_recorded) = match prepared {
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
    if !forwarded_already_recorded {
        let forward = context
            .record(Action::Forward, Outcome::Ok)
            .namespace(&route.spec.namespace);
        state
            .vault
            .record(vec![forward])
            .await
            .map_err(|error| ApiError::from_vault(error, &id))?;
    }
    let relayed = send(route, &req, rest, body, gzip, &id).await?;
    reveal_in_response(&state, route, &caller, &context, relayed, &id).await
}

async fn record(state: &AppState, record: crate::audit::Record) {
    if let Err(error) = state.vault.record(vec![record]).await {
        tracing::error!(%error, "could not record a refused forward");
    }
}

type Refusal = (ApiError, Option<&'static str>);

/// Reads, checks and tokenizes the body. Returns the rewritten body, whether
/// it was gzip, and whether the forward record was already committed (with
/// the tokenization).
async fn prepare(
    state: &AppState,
    route: &Route,
    caller: &crate::policy::Caller,
    context: &Context,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<(Vec<u8>, bool, bool), Refusal> {
    let refuse = |code: ErrorCode, message: String, reason: &'static str| {
        (ApiError::new(code, message, id), Some(reason))
    };
    let mime = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let form = mime == FORM;
    if !route.spec.content_types.contains(&mime) {
        return Err(refuse(
            ErrorCode::UnsupportedMediaType,
            format!(
                "this route takes {} bodies",
                route.spec.content_types.join(" or ")
            ),
            "unsupported_media_type",
        ));
    }
    let raw = read_body(state, req, payload, id)
        .await
        .map_err(|error| (error, Some("body_rejected")))?;
    let gzip = match req
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some(encoding) if encoding.eq_ignore_ascii_case("gzip") => true,
        Some(_) => {
            return Err(refuse(
                ErrorCode::UnsupportedMediaType,
                "only gzip content encoding is accepted".into(),
                "unsupported_encoding",
            ))
        }
    };
    let body = if gzip {
        let limit = state.limits.max_body_bytes;
        let mut decoded = zeroize::Zeroizing::new(Vec::new());
        let read = flate2::read::GzDecoder::new(raw.as_slice())
            .take(limit as u64 + 1)
            .read_to_end(&mut decoded);
        if read.is_err() {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                "the gzip body does not decode".into(),
                "malformed_body",
            ));
        }
        if decoded.len() > limit {
            return Err(refuse(
                ErrorCode::PayloadTooLarge,
                format!("the decoded body is larger than {limit} bytes"),
                "body_too_large",
            ));
        }
        decoded
    } else {
        raw
    };
    let parsed = if form {
        payload::parse_form(&body)
    } else {
        payload::parse_strict(&body, route.spec.max_depth)
    };
    let mut document = parsed.map_err(|error| {
        let code = if matches!(error, PayloadError::NotScalar(_)) {
            ErrorCode::Unprocessable
        } else {
            ErrorCode::InvalidRequest
        };
        refuse(code, error.to_string(), "malformed_body")
    })?;
    let selectors: Vec<&payload::Selector> = route
        .spec
        .fields
        .iter()
        .map(|rule| &rule.selector)
        .collect();
    let selected = payload::select(&document, &selectors).map_err(|error| {
        refuse(
            ErrorCode::Unprocessable,
            error.to_string(),
            "selected_field_not_a_value",
        )
    })?;
    let namespace = &route.spec.namespace;
    let spec = state.vault.namespace_spec(namespace);
    let mut places: Vec<String> = Vec::with_capacity(selected.len());
    let mut items: Vec<TokenizeItem> = Vec::with_capacity(selected.len());
    for field in selected {
        let class = route.spec.fields[field.rule].class.clone();
        let e164 = spec
            .and_then(|ns| ns.classes.get(&class))
            .is_some_and(|c| c.normalize == Normalization::E164);
        // Phones sent as JSON numbers carry no `+`: the digits are the
        // international number.
        let value = if field.was_number && e164 {
            Pii::new(format!("+{}", field.value.expose()))
        } else {
            field.value
        };
        places.push(field.pointer);
        items.push(TokenizeItem {
            class,
            value,
            subject: None,
        });
    }
    let skip: BTreeSet<String> = places.iter().cloned().collect();
    let mut findings = Vec::new();
    for (pointer, text) in payload::unselected_strings(&document, &skip) {
        let found = detect::scan(text);
        if !found.is_empty() {
            findings.push((pointer, found, Pii::new(text.to_owned())));
        }
    }
    for (pointer, detectors, _) in &findings {
        let detectors: Vec<&str> = detectors.iter().map(|d| d.as_str()).collect();
        tracing::warn!(request_id = %id, route = %route.spec.name, path = %route.names.safe_pointer(pointer), detectors = ?detectors, mode = ?route.spec.unselected_pii, "PII found in a field no rule selects");
    }
    if !findings.is_empty() {
        match route.spec.unselected_pii {
            UnselectedPii::Block => {
                let paths: Vec<String> = findings
                    .iter()
                    .map(|(p, _, _)| route.names.safe_pointer(p))
                    .collect();
                return Err(refuse(
                    ErrorCode::Unprocessable,
                    format!(
                        "personal data in fields no rule selects: {}",
                        paths.join(", ")
                    ),
                    "unselected_pii",
                ));
            }
            UnselectedPii::Tokenize => {
                let class = route.spec.unselected_class.clone().unwrap_or_default();
                for (pointer, _, value) in findings {
                    places.push(pointer);
                    items.push(TokenizeItem {
                        class: class.clone(),
                        value,
                        subject: None,
                    });
                }
            }
            UnselectedPii::Report => {
                let mut record = context
                    .record(Action::Forward, Outcome::Ok)
                    .namespace(namespace)
                    .reason("unselected_pii_reported");
                record.item_count = findings.len() as u64;
                state
                    .vault
                    .record(vec![record])
                    .await
                    .map_err(|error| (ApiError::from_vault(error, id), None))?;
            }
        }
    }
    let mut tokens = Vec::new();
    let forward_recorded = !items.is_empty();
    if forward_recorded {
        let forward = context
            .record(Action::Forward, Outcome::Ok)
            .namespace(namespace);
        tokens = state
            .vault
            .tokenize_and_record(context, caller, namespace, items, vec![forward])
            .await
            .map_err(|error| {
                let api = match &error {
                    VaultError::Item { index, problem } => ApiError::new(
                        ErrorCode::Unprocessable,
                        format!(
                            "field {} cannot be tokenized: {problem}",
                            places
                                .get(*index)
                                .map(|p| route.names.safe_pointer(p))
                                .unwrap_or_default()
                        ),
                        id,
                    ),
                    _ => ApiError::from_vault(error, id),
                };
                // The engine has recorded the failure itself.
                (api, None)
            })?
            .into_iter()
            .map(|t| t.token)
            .collect();
    }
    for (pointer, token) in places.iter().zip(&tokens) {
        if token.len() > MAX_UPSTREAM_TOKEN_BYTES {
            return Err(refuse(
                ErrorCode::Unprocessable,
                format!(
                    "the token for {} exceeds {MAX_UPSTREAM_TOKEN_BYTES} bytes",
                    route.names.safe_pointer(pointer)
                ),
                "token_too_long",
            ));
        }
        if !payload::replace(&mut document, pointer, token.clone()) {
            return Err(refuse(
                ErrorCode::Unprocessable,
                format!("field {} vanished", route.names.safe_pointer(pointer)),
                "rewrite_failed",
            ));
        }
    }
    let mut out = if form {
        payload::encode_form(&body, &document)
    } else {
        // Invariant: a serde_json::Value always serializes.
        serde_json::to_vec(&document).expect("JSON value serializes")
    };
    drop(body);
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder
            .write_all(&out)
            .and_then(|_| encoder.finish().map(|bytes| out = bytes))
            .map_err(|_| refuse(ErrorCode::Internal, "internal error".into(), "gzip_failed"))?;
    }
    Ok((out, gzip, forward_recorded))
}

/// Forwards the rewritten request and relays the answer.
async fn send(
    route: &Route,
    req: &HttpRequest,
    rest: &str,
    body: Vec<u8>,
    gzip: bool,
    id: &RequestId,
) -> Result<Relayed, ApiError> {
    let mut url = format!("{}{}", route.spec.upstream, rest);
    if !req.query_string().is_empty() {
        url.push('?');
        url.push_str(req.query_string());
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
