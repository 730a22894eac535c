//! `/v1` token API handlers and the health endpoints.

use crate::http::state::State;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::auth::Authenticated;
use super::context::{LoggedNamespace, RequestId};
use super::error::{ApiError, ErrorCode};
use super::{AppState, Endpoint};
use crate::audit::{Action, Outcome};
use crate::pii::Pii;
use crate::policy::Operation;
use crate::vault::{AuditState, ConsentSubject, Detokenized, TokenizeItem};

/// Registers every route.
pub(super) const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::GET, "/healthz", "health", |r| r.to(healthz)),
    Endpoint::new(Method::GET, "/readyz", "health", |r| r.to(readyz)),
    Endpoint::new(Method::GET, "/metrics", "metrics", |r| r.to(metrics)),
    Endpoint::new(Method::POST, "/v1/tokenize", "tokenize", |r| r.to(tokenize)),
    Endpoint::new(Method::POST, "/v1/detokenize", "detokenize", |r| {
        r.to(detokenize)
    }),
    Endpoint::new(Method::GET, "/v1/audit", "audit_read", |r| {
        r.to(audit_records)
    }),
    Endpoint::new(Method::PUT, "/v1/consent", "consent", |r| r.to(consent)),
    Endpoint::new(
        Method::DELETE,
        "/v1/namespaces/{namespace}/tokens/{token}",
        "forget",
        |r| r.to(forget),
    ),
];

/// Names the request's namespace in its log line: the configured name, or
/// `unknown` (the caller's text never reaches the log).
pub(super) fn log_namespace(state: &AppState, req: &HttpRequest, namespace: &str) {
    let logged = if state.vault.namespace_spec(namespace).is_some() {
        namespace.to_owned()
    } else {
        "unknown".to_owned()
    };
    req.extensions_mut().insert(LoggedNamespace(logged));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: State) -> HttpResponse {
    // Both may ask the database (a blocking driver): off the async workers.
    let vault = state.vault.clone();
    let (store_ready, audit) =
        tokio::task::spawn_blocking(move || (vault.is_ready(), vault.audit_state()))
            .await
            .unwrap_or((false, AuditState::Failing));
    let ready = store_ready && audit == AuditState::Ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "store": if store_ready { "ok" } else { "unavailable" },
            "audit": match audit {
                AuditState::Ok => "ok",
                AuditState::Failing => "failing",
                AuditState::Broken => "broken",
            },
            "keys": "loaded",
        },
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`, for clients whose role has `metrics_read`. A refusal is
/// audited like any other.
async fn metrics(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    if !caller.role.operations.contains(&Operation::MetricsRead) {
        let record = context
            .record(Action::MetricsRead, Outcome::Denied)
            .reason("operation_not_granted");
        state
            .vault
            .record(vec![record])
            .await
            .map_err(|error| ApiError::from_vault(error, &id))?;
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "metrics_read not granted to this client",
            &id,
        ));
    }
    let vault = state.vault.clone();
    let sizes = actix_web::web::block(move || vault.store_sizes())
        .await
        .ok()
        .and_then(Result::ok);
    let body = crate::metrics::render(sizes);
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    namespace: String,
    items: Vec<TokenizeItemBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeItemBody {
    class: String,
    value: Pii,
    #[serde(default)]
    subject: Option<Pii>,
}

#[derive(Serialize)]
struct TokenOut {
    token: String,
    created: bool,
}

async fn tokenize(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: TokenizeRequest = read_json(&state, &req, payload, &id).await?;
    log_namespace(&state, &req, &request.namespace);
    check_batch(&state, request.items.len(), "items", &id)?;
    let items = request
        .items
        .into_iter()
        .map(|item| TokenizeItem {
            class: item.class,
            value: item.value,
            subject: item.subject,
            number: false,
        })
        .collect();
    let tokens = state
        .vault
        .tokenize(&context, &caller, &request.namespace, items)
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let tokens: Vec<TokenOut> = tokens
        .into_iter()
        .map(|t| TokenOut {
            token: t.token,
            created: t.created,
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    namespace: String,
    purpose: String,
    tokens: Vec<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ValueOut<'a> {
    Found {
        token: &'a str,
        value: &'a str,
        class: &'a str,
    },
    Missing {
        token: &'a str,
        error: ItemError,
    },
}

#[derive(Serialize)]
struct ItemError {
    code: &'static str,
}

async fn detokenize(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: DetokenizeRequest = read_json(&state, &req, payload, &id).await?;
    log_namespace(&state, &req, &request.namespace);
    check_batch(&state, request.tokens.len(), "tokens", &id)?;
    if request.purpose.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "purpose must not be empty",
            &id,
        ));
    }
    let tokens = request.tokens;
    let answers = state
        .vault
        .detokenize(
            &context,
            &caller,
            &request.namespace,
            &request.purpose,
            tokens.clone(),
        )
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let values: Vec<ValueOut<'_>> = tokens
        .iter()
        .zip(&answers)
        .map(|(token, answer)| match answer {
            // The one place revealed values leave the engine's types.
            Detokenized::Value { class, value } => ValueOut::Found {
                token,
                value: value.expose(),
                class,
            },
            Detokenized::NotFound => ValueOut::Missing {
                token,
                error: ItemError { code: "not_found" },
            },
            Detokenized::Integrity => ValueOut::Missing {
                token,
                error: ItemError {
                    code: "integrity_error",
                },
            },
            Detokenized::ConsentWithdrawn => ValueOut::Missing {
                token,
                error: ItemError {
                    code: "consent_withdrawn",
                },
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "values": values })))
}

async fn forget(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (namespace, token) = path.into_inner();
    log_namespace(&state, &req, &namespace);
    let existed = state
        .vault
        .forget(&context, &caller, &namespace, &token)
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    if existed {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(ErrorCode::NotFound, "no such token", &id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentRequest {
    namespace: String,
    purpose: String,
    withdrawn: bool,
    token: Option<String>,
    subject: Option<Pii>,
    source: Option<String>,
}

/// `PUT /v1/consent`: withdraw (`withdrawn: true`) or restore a purpose (or
/// `*`) for one token or for every token of a subject.
async fn consent(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: ConsentRequest = read_json(&state, &req, payload, &id).await?;
    log_namespace(&state, &req, &request.namespace);
    let invalid = |message: &str| ApiError::new(ErrorCode::InvalidRequest, message, &id);
    if request.purpose.trim().is_empty() {
        return Err(invalid("purpose must not be empty"));
    }
    let source = request.source.unwrap_or_else(|| "api".to_owned());
    if !crate::policy::valid_consent_source(&source) {
        return Err(invalid(
            "source must be letters, digits and `_.:/-`, at most 64 (never personal data)",
        ));
    }
    let subject = match (request.token, request.subject) {
        (Some(token), None) => ConsentSubject::Token(token),
        (None, Some(subject)) => ConsentSubject::Subject(subject),
        _ => return Err(invalid("give exactly one of token and subject")),
    };
    state
        .vault
        .set_consent(
            &context,
            &caller,
            &request.namespace,
            subject,
            &request.purpose,
            request.withdrawn,
            &source,
        )
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    Ok(HttpResponse::Ok().json(json!({
        "namespace": request.namespace,
        "purpose": request.purpose,
        "withdrawn": request.withdrawn,
    })))
}

/// Query of `GET /v1/audit`: the filters of `tokenvault audit query`, plus
/// the cursor (`after`, the last `seq` seen) and a page size.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(flatten)]
    filter: crate::audit::FilterText,
    after: Option<u64>,
    limit: Option<usize>,
}

/// Largest page of `GET /v1/audit`.
const AUDIT_PAGE_MAX: usize = 1000;

async fn audit_records(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<AuditQuery>::from_query(req.query_string())
        .map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "unknown or malformed query parameter",
                &id,
            )
        })?
        .into_inner();
    let filter = query
        .filter
        .parse()
        .map_err(|problems| ApiError::new(ErrorCode::InvalidRequest, problems.join("; "), &id))?;
    // Out-of-range numbers are refused, never clamped, as the
    // description's bounds say.
    let limit = query.limit.unwrap_or(100);
    if !(1..=AUDIT_PAGE_MAX).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be from 1 to {AUDIT_PAGE_MAX}"),
            &id,
        ));
    }
    let after = query.after.unwrap_or(0);
    if i64::try_from(after).is_err() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "after is not a sequence number",
            &id,
        ));
    }
    let records = state
        .vault
        .audit_records(&context, &caller, filter, after, limit)
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    let records: Vec<serde_json::Value> = records.iter().map(|r| r.to_json()).collect();
    Ok(HttpResponse::Ok().json(json!({ "records": records, "next_cursor": next })))
}

fn check_batch(
    state: &AppState,
    count: usize,
    field: &str,
    id: &RequestId,
) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{field} must not be empty"),
            id,
        ));
    }
    let limit = state.limits.max_batch_items;
    if count > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{field} holds {count} entries; the limit is {limit}"),
            id,
        ));
    }
    Ok(())
}

/// Reads a JSON body of at most `max_body_bytes` into a zeroizing buffer and
/// parses it. Parse errors name the line and column, never the content.
pub(super) async fn read_json<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<T, ApiError> {
    let body = read_json_body(state, req, payload, id).await?;
    parse_json(&body, id)
}

/// Reads a body declared as JSON (or not declared at all), of at most
/// `max_body_bytes`, into a zeroizing buffer.
pub async fn read_json_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    if req.headers().contains_key(CONTENT_TYPE) && !is_content_type(req, "application/json") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as application/json",
            id,
        ));
    }
    read_body(state, req, payload, id).await
}

/// Parses a request body; the error names the line and column, never the
/// content.
pub fn parse_json<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    id: &RequestId,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "body is not a valid request for this endpoint (line {}, column {})",
                error.line(),
                error.column()
            ),
            id,
        )
    })
}

/// True when the request declares `mime` as its content type (parameters
/// such as `charset` aside).
pub fn is_content_type(req: &HttpRequest, mime: &str) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|declared| declared.trim().eq_ignore_ascii_case(mime))
}

/// Reads a body of at most `max_body_bytes` into a zeroizing buffer.
pub async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
    id: &RequestId,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let limit = state.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body is larger than {limit} bytes"),
            id,
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut body = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0)));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "could not read the body", id))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
