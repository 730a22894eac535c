//! The CleverTap Token Vault API, so that the platform's own SDKs and its
//! send-time dispatcher can use the vault unchanged. The wire contract is
//! `docs/clevertap.md` (from the shared spec): five operations, two path
//! families, optional AES-256-GCM encryption in transit, and an access-token
//! endpoint. Every call goes through the same engine, roles, purposes and
//! audit trail as `/v1`, in the one namespace the surface is mounted on.

use crate::http::state::State;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, CACHE_CONTROL, PRAGMA};
use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::api::{is_content_type, parse_json, read_body, read_json_body};
use super::auth::{authenticate_with, Authenticated};
use super::context::{request_id, LoggedClient, LoggedNamespace, RequestId};
use super::error::{ApiError, ErrorCode};
use super::{AppState, Endpoint};
use crate::audit::{Action, Context, Outcome};
use crate::config::ClevertapSpec;
use crate::crypto::access::AccessTokenKey;
use crate::crypto::envelope::SessionKey;
use crate::pii::Pii;
use crate::policy::AuthError;
use crate::vault::classify::{is_plain_number, Classifier};
use crate::vault::{Detokenized, TokenizeItem};

/// Most values in one tokenize batch.
pub const MAX_TOKENIZE_BATCH: usize = 1_000;
/// Most tokens in one detokenize batch.
pub const MAX_DETOKENIZE_BATCH: usize = 10_000;
/// Path of the access-token endpoint.
pub const TOKEN_PATH: &str = "/auth/realms/ct-vault/protocol/openid-connect/token";

/// The mounted surface: its namespace, classification and access tokens.
pub struct Surface {
    namespace: String,
    classifier: Classifier,
    access: AccessTokenKey,
    access_ttl: Duration,
    subject_key: Option<String>,
}

impl Surface {
    /// The surface of a `[clevertap]` section.
    pub fn new(spec: &ClevertapSpec) -> Self {
        Self {
            namespace: spec.namespace.clone(),
            classifier: Classifier::new(spec),
            access: AccessTokenKey::random(),
            access_ttl: spec.access_token_ttl,
            subject_key: spec.subject_metadata_key.clone(),
        }
    }

    /// The surface of a reloaded configuration: access tokens issued by
    /// `previous` stay valid (each still names its client, who must still
    /// be configured).
    pub fn reconfigured(spec: &ClevertapSpec, previous: Option<&Surface>) -> Self {
        let mut surface = Self::new(spec);
        if let Some(previous) = previous {
            surface.access = previous.access.clone();
        }
        surface
    }
}

/// Registers the surface's paths (only when `[clevertap]` is enabled).
pub(super) const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(
        Method::POST,
        "/ct-vault/api/tokenization/getToken",
        "tokenize",
        |r| r.to(tokenize_one),
    ),
    Endpoint::new(Method::POST, "/ct-vault/api/v2/tokenize", "tokenize", |r| {
        r.to(tokenize_one)
    }),
    Endpoint::new(
        Method::POST,
        "/ct-vault/api/tokenization/getRawValue",
        "detokenize",
        |r| r.to(detokenize_one),
    ),
    Endpoint::new(
        Method::POST,
        "/ct-vault/api/tokenization/tokens/batch",
        "tokenize",
        |r| r.to(tokenize_batch),
    ),
    Endpoint::new(
        Method::POST,
        "/ct-vault/api/v2/tokenize/batch",
        "tokenize",
        |r| r.to(tokenize_batch),
    ),
    Endpoint::new(
        Method::POST,
        "/ct-vault/api/tokenization/tokens/values/batch",
        "detokenize",
        |r| r.to(detokenize_batch),
    ),
    Endpoint::new(Method::POST, TOKEN_PATH, "access_token", |r| {
        r.to(access_token)
    }),
];

// ---------------------------------------------------------------------------
// Requests and answers, as the spec names them

/// `metadata` is free-form; only `purpose` (on reveals) and the configured
/// subject key (on tokenize calls) are read. Nothing of it is stored apart
/// from the purpose and the subject's keyed hash.
#[derive(Deserialize, Default)]
struct Metadata {
    purpose: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    /// The customer the call's values belong to: the string (or number)
    /// under the configured key.
    fn subject(&self, key: Option<&str>) -> Option<Pii> {
        match self.other.get(key?)? {
            serde_json::Value::String(text) if !text.trim().is_empty() => {
                Some(Pii::new(text.clone()))
            }
            serde_json::Value::Number(number) => Some(Pii::new(number.to_string())),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct TokenizeOneRequest {
    value: Pii,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct TokenizeBatchRequest {
    values: Vec<Pii>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct DetokenizeOneRequest {
    token: String,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct DetokenizeBatchRequest {
    tokens: Vec<String>,
    metadata: Option<Metadata>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenizeOneAnswer<'a> {
    token: &'a str,
    exists: bool,
    newly_created: bool,
    data_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenizeResult<'a> {
    original_value: &'a str,
    token: &'a str,
    exists: bool,
    newly_created: bool,
    data_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenizeSummary {
    processed_count: usize,
    existing_count: usize,
    newly_created_count: usize,
}

#[derive(Serialize)]
struct TokenizeBatchAnswer<'a> {
    results: Vec<TokenizeResult<'a>>,
    summary: TokenizeSummary,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetokenizeOneAnswer<'a> {
    value: Option<&'a str>,
    exists: bool,
    data_type: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetokenizeResult<'a> {
    token: &'a str,
    value: Option<&'a str>,
    exists: bool,
    data_type: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetokenizeSummary {
    processed_count: usize,
    found_count: usize,
    not_found_count: usize,
}

#[derive(Serialize)]
struct DetokenizeBatchAnswer<'a> {
    results: Vec<DetokenizeResult<'a>>,
    summary: DetokenizeSummary,
}

fn data_type(value: &str) -> &'static str {
    if is_plain_number(value) {
        "number"
    } else {
        "string"
    }
}

// ---------------------------------------------------------------------------
// Handlers

/// An authenticated call of the surface: who, the audit context naming the
/// surface, and the session key when the request came encrypted.
struct Call<'s> {
    surface: &'s Surface,
    caller: crate::policy::Caller,
    context: Context,
    session: Option<SessionKey>,
}

async fn tokenize_one(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = request_id(&req);
    let (call, request): (_, TokenizeOneRequest) = open(&state, &req, payload, &id).await?;
    let original = request.value;
    let subject = subject_of(&call, request.metadata.as_ref());
    let mut tokens = tokenize(&state, &call, std::slice::from_ref(&original), subject, &id).await?;
    // Invariant: the engine answers one token per item.
    let token = tokens.pop().expect("one token for one value");
    let answer = TokenizeOneAnswer {
        token: &token.token,
        exists: !token.created,
        newly_created: token.created,
        data_type: data_type(original.expose()),
    };
    Ok(respond(&answer, call.session.as_ref()))
}

async fn tokenize_batch(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = request_id(&req);
    let (call, request): (_, TokenizeBatchRequest) = open(&state, &req, payload, &id).await?;
    check_count(request.values.len(), MAX_TOKENIZE_BATCH, "values", &id)?;
    let subject = subject_of(&call, request.metadata.as_ref());
    let tokens = tokenize(&state, &call, &request.values, subject, &id).await?;
    let results: Vec<TokenizeResult<'_>> = request
        .values
        .iter()
        .zip(&tokens)
        .map(|(original, token)| TokenizeResult {
            original_value: original.expose(),
            token: &token.token,
            exists: !token.created,
            newly_created: token.created,
            data_type: data_type(original.expose()),
        })
        .collect();
    let created = results.iter().filter(|r| r.newly_created).count();
    let answer = TokenizeBatchAnswer {
        summary: TokenizeSummary {
            processed_count: results.len(),
            existing_count: results.len() - created,
            newly_created_count: created,
        },
        results,
    };
    Ok(respond(&answer, call.session.as_ref()))
}

async fn detokenize_one(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = request_id(&req);
    let (call, request): (_, DetokenizeOneRequest) = open(&state, &req, payload, &id).await?;
    let mut answers = detokenize(
        &state,
        &call,
        vec![request.token],
        request.metadata.unwrap_or_default(),
        &id,
    )
    .await?;
    // Invariant: the engine answers one entry per token.
    let answer = answers.pop().expect("one answer for one token");
    let value = revealed(&answer);
    let answer = DetokenizeOneAnswer {
        value,
        exists: exists(&answer),
        data_type: value.map(data_type),
    };
    Ok(respond(&answer, call.session.as_ref()))
}

async fn detokenize_batch(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = request_id(&req);
    let (call, request): (_, DetokenizeBatchRequest) = open(&state, &req, payload, &id).await?;
    check_count(request.tokens.len(), MAX_DETOKENIZE_BATCH, "tokens", &id)?;
    let tokens = request.tokens;
    let answers = detokenize(
        &state,
        &call,
        tokens.clone(),
        request.metadata.unwrap_or_default(),
        &id,
    )
    .await?;
    let results: Vec<DetokenizeResult<'_>> = tokens
        .iter()
        .zip(&answers)
        .map(|(token, answer)| {
            let value = revealed(answer);
            DetokenizeResult {
                token,
                value,
                exists: exists(answer),
                data_type: value.map(data_type),
            }
        })
        .collect();
    let found = results.iter().filter(|r| r.value.is_some()).count();
    let answer = DetokenizeBatchAnswer {
        summary: DetokenizeSummary {
            processed_count: results.len(),
            found_count: found,
            not_found_count: results.len() - found,
        },
        results,
    };
    Ok(respond(&answer, call.session.as_ref()))
}

/// The revealed value of one answer. A token that does not exist, that the
/// caller may not see, or whose row failed authentication (logged and
/// audited by the engine) is `exists: false` here: the API has no per-item
/// error. A withdrawn consent is `exists: true` with no value.
fn revealed(answer: &Detokenized) -> Option<&str> {
    match answer {
        // The one place revealed values leave the engine's types.
        Detokenized::Value { value, .. } => Some(value.expose()),
        Detokenized::NotFound | Detokenized::Integrity | Detokenized::ConsentWithdrawn => None,
    }
}

/// `exists` of one answer: a token whose subject withdrew consent exists,
/// but its value is withheld (`value: null`).
fn exists(answer: &Detokenized) -> bool {
    matches!(
        answer,
        Detokenized::Value { .. } | Detokenized::ConsentWithdrawn
    )
}

/// The subject a tokenize call names in its metadata, when the surface is
/// configured to read one.
fn subject_of(call: &Call<'_>, metadata: Option<&Metadata>) -> Option<Pii> {
    metadata?.subject(call.surface.subject_key.as_deref())
}

async fn tokenize(
    state: &AppState,
    call: &Call<'_>,
    values: &[Pii],
    subject: Option<Pii>,
    id: &RequestId,
) -> Result<Vec<crate::vault::Tokenized>, ApiError> {
    let items = values
        .iter()
        .map(|value| TokenizeItem {
            class: call.surface.classifier.class_of(value.expose()).to_owned(),
            value: Pii::new(value.expose().to_owned()),
            subject: subject
                .as_ref()
                .map(|subject| Pii::new(subject.expose().to_owned())),
            number: false,
        })
        .collect();
    state
        .vault
        .tokenize(&call.context, &call.caller, &call.surface.namespace, items)
        .await
        .map_err(|error| ApiError::from_vault(error, id))
}

async fn detokenize(
    state: &AppState,
    call: &Call<'_>,
    tokens: Vec<String>,
    metadata: Metadata,
    id: &RequestId,
) -> Result<Vec<Detokenized>, ApiError> {
    let purpose = metadata
        .purpose
        .filter(|purpose| !purpose.trim().is_empty())
        .or_else(|| call.caller.role.clevertap_purpose.clone())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "metadata.purpose is required: this client's role sets no clevertap_purpose",
                id,
            )
        })?;
    state
        .vault
        .detokenize(
            &call.context,
            &call.caller,
            &call.surface.namespace,
            &purpose,
            tokens,
        )
        .await
        .map_err(|error| ApiError::from_vault(error, id))
}

/// An empty batch is a bad request (400); an oversized one is too large
/// (413), as on `/v1`.
fn check_count(count: usize, limit: usize, field: &str, id: &RequestId) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{field} must not be empty"),
            id,
        ));
    }
    if count > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{field} holds {count} entries; the limit is {limit}"),
            id,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Authentication, envelopes and answers

/// True when the request says its body is encrypted (either SDK's header).
fn encrypted(headers: &HeaderMap) -> bool {
    ["encrypted", "x-clevertap-encryption-enabled"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
        })
}

/// Authenticates the call, reads the body (decrypting it when the request is
/// encrypted: anything that does not open answers 419) and parses it.
async fn open<'s, T: DeserializeOwned>(
    state: &'s AppState,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<(Call<'s>, T), ApiError> {
    let surface = state.clevertap.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "the CleverTap surface is not enabled",
            id,
        )
    })?;
    let Authenticated(caller, mut context) = authenticate_with(req, Some(&surface.access)).await?;
    context.route = format!("clevertap:{}", req.path());
    req.extensions_mut()
        .insert(LoggedNamespace(surface.namespace.clone()));
    let body = read_json_body(state, req, payload, id).await?;
    let (plain, session) = if encrypted(req.headers()) {
        let (plain, key) = unseal(&body).map_err(|Undecryptable| {
            ApiError::new(
                ErrorCode::Undecryptable,
                "the encrypted body cannot be decrypted; resend it in plaintext",
                id,
            )
        })?;
        (plain, Some(key))
    } else {
        (body, None)
    };
    let request = parse_json(&plain, id)?;
    let call = Call {
        surface,
        caller,
        context,
        session,
    };
    Ok((call, request))
}

#[derive(Deserialize)]
struct SealedRequest {
    itp: String,
    itk: Pii,
    itv: String,
}

/// A sealed request that does not open (which part failed is not told).
#[derive(Debug, thiserror::Error)]
#[error("the sealed request does not open")]
pub struct Undecryptable;

/// Opens `{itp, itk, itv}`. Which part failed is not told: every failure is
/// the same 419. Public for the fuzz target (`fuzz/`).
pub fn unseal(body: &[u8]) -> Result<(Zeroizing<Vec<u8>>, SessionKey), Undecryptable> {
    let sealed: SealedRequest = serde_json::from_slice(body).map_err(|_| Undecryptable)?;
    let key = Zeroizing::new(
        STANDARD
            .decode(sealed.itk.expose())
            .map_err(|_| Undecryptable)?,
    );
    let nonce = STANDARD.decode(&sealed.itv).map_err(|_| Undecryptable)?;
    let ciphertext = STANDARD.decode(&sealed.itp).map_err(|_| Undecryptable)?;
    let key = SessionKey::new(&key).map_err(|_| Undecryptable)?;
    let plain = key.open(&nonce, &ciphertext).map_err(|_| Undecryptable)?;
    Ok((plain, key))
}

/// A 200 answer: plain JSON, or `{itp, itv}` sealed under the request's
/// session key with a fresh nonce.
fn respond<T: Serialize>(answer: &T, session: Option<&SessionKey>) -> HttpResponse {
    // Invariant: these answer types serialize infallibly (strings, numbers,
    // booleans, no maps with non-string keys).
    let plain = Zeroizing::new(serde_json::to_vec(answer).expect("answer serializes"));
    match session {
        None => HttpResponse::Ok()
            .content_type("application/json")
            .body(plain.to_vec()),
        Some(key) => {
            let (nonce, sealed) = key.seal(&plain);
            HttpResponse::Ok().json(json!({
                "itp": STANDARD.encode(sealed),
                "itv": STANDARD.encode(nonce),
            }))
        }
    }
}

// ---------------------------------------------------------------------------
// The access-token endpoint (OAuth 2.0 client credentials)

/// An OAuth error answer (RFC 6749 section 5.2), with the request id.
fn oauth_error(status: u16, error: &str, description: &str, id: &RequestId) -> HttpResponse {
    // Invariant: only 400, 401, 429 and 503 are passed in.
    let status = actix_web::http::StatusCode::from_u16(status).expect("a valid status");
    HttpResponse::build(status)
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({
            "error": error,
            "error_description": description,
            "request_id": id.as_str(),
        }))
}

/// `grant_type=client_credentials&client_id=<client>&client_secret=<api key>`:
/// the client is an ordinary tokenvault client and the secret its API key.
async fn access_token(state: State, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let id = request_id(&req);
    let Some(surface) = state.clevertap.as_ref() else {
        return oauth_error(400, "invalid_request", "the surface is not enabled", &id);
    };
    if !is_content_type(&req, "application/x-www-form-urlencoded") {
        return oauth_error(
            400,
            "invalid_request",
            "send the body as application/x-www-form-urlencoded",
            &id,
        );
    }
    let body = match read_body(&state, &req, payload, &id).await {
        Ok(body) => body,
        Err(_) => return oauth_error(400, "invalid_request", "the body cannot be read", &id),
    };
    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret: Option<Pii> = None;
    for (name, value) in form_urlencoded::parse(&body) {
        let slot_taken = match name.as_ref() {
            "grant_type" => grant_type.replace(value.into_owned()).is_some(),
            "client_id" => client_id.replace(value.into_owned()).is_some(),
            "client_secret" => client_secret
                .replace(Pii::new(value.into_owned()))
                .is_some(),
            _ => false,
        };
        if slot_taken {
            return oauth_error(400, "invalid_request", "a parameter is repeated", &id);
        }
    }
    if grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
            &id,
        );
    }
    let (Some(client_id), Some(client_secret)) = (client_id, client_secret) else {
        return oauth_error(
            400,
            "invalid_request",
            "client_id and client_secret are required",
            &id,
        );
    };
    let peer = req.peer_addr().map(|addr| addr.ip());
    let outcome = match state.auth.authenticate(client_secret.expose(), peer).await {
        Ok(caller) if caller.client == client_id => Ok(caller),
        Ok(_) => Err(AuthError::Invalid),
        Err(reason) => Err(reason),
    };
    let known = state.auth.knows(&client_id);
    let actor = if known { client_id.as_str() } else { "unknown" };
    let context = Context {
        request_id: id.as_str().to_owned(),
        actor: actor.to_owned(),
        auth: "client_credentials",
        source: peer.map(|ip| ip.to_string()),
        route: format!("clevertap:{TOKEN_PATH}"),
    };
    let caller = match outcome {
        Ok(caller) => caller,
        Err(reason) => {
            // A missing or expired secret is, here, just a wrong one.
            let code = match reason {
                AuthError::SourceNotAllowed => reason.code(),
                _ => AuthError::Invalid.code(),
            };
            let record = context
                .record(Action::Authenticate, Outcome::Denied)
                .reason(code);
            if let Err(error) = state.vault.record_refused_authentication(record).await {
                tracing::error!(request_id = %id, %error, "could not record an authentication failure");
            }
            tracing::warn!(request_id = %id, reason = code, "access token refused");
            if let AuthError::Throttled(seconds) = reason {
                let mut answer = oauth_error(
                    429,
                    "invalid_client",
                    "too many failed authentications; retry later",
                    &id,
                );
                if let Ok(value) =
                    actix_web::http::header::HeaderValue::from_str(&seconds.to_string())
                {
                    answer
                        .headers_mut()
                        .insert(actix_web::http::header::RETRY_AFTER, value);
                }
                return answer;
            }
            return oauth_error(401, "invalid_client", "client authentication failed", &id);
        }
    };
    req.extensions_mut()
        .insert(LoggedClient(caller.client.clone()));
    let ttl = surface.access_ttl.as_secs();
    let expires_at = u64::try_from(crate::audit::now_us() / 1_000_000).unwrap_or(0) + ttl;
    // Fail closed: no token unless its issue is on the record.
    let record = context.record(Action::IssueAccessToken, Outcome::Ok);
    if let Err(error) = state.vault.record(vec![record]).await {
        tracing::error!(request_id = %id, %error, "could not record an access token; none issued");
        return oauth_error(
            503,
            "temporarily_unavailable",
            "the audit trail cannot be written; no token was issued",
            &id,
        );
    }
    let token = Zeroizing::new(surface.access.issue(&caller.client, expires_at));
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"))
        .json(json!({
            "access_token": token.as_str(),
            "expires_in": ttl,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "scope": "",
        }))
}
