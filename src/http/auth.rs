//! `Authorization: Bearer <api key>` → an authenticated [`Caller`] and the
//! audit [`Context`] of the request. Every refusal is audited.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::context::{request_id, LoggedClient};
use super::error::ApiError;
use super::tls::PeerCertificate;
use crate::audit::{Action, Context, Outcome};
use crate::crypto::access::{AccessTokenError, AccessTokenKey, ACCESS_TOKEN_PREFIX};
use crate::crypto::password::claimed_client;
use crate::policy::{AuthError, Caller};

/// How long a throttled caller waits for its 429.
pub const THROTTLED_ANSWER_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// The audit `auth` value of a caller identified by its client certificate.
pub const CERTIFICATE_AUTH: &str = "client_certificate";

/// Extractor: the request's authenticated caller and audit context, or a 401.
pub struct Authenticated(pub Caller, pub Context);

/// The audit context of a request.
fn context(req: &HttpRequest, actor: String, auth: &'static str) -> Context {
    Context {
        request_id: request_id(req).as_str().to_owned(),
        actor,
        auth,
        source: req.peer_addr().map(|addr| addr.ip().to_string()),
        // The pattern, never the path: a path segment is the caller's text
        // (a token, or an email sent as one).
        route: req
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned()),
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await })
    }
}

/// Authenticates a request (see [`Authenticated`]); every refusal is audited.
pub async fn authenticate(req: &HttpRequest) -> Result<Authenticated, ApiError> {
    authenticate_with(req, None).await
}

/// Like [`authenticate`], and also accepts the access tokens `access` issued
/// (on the CleverTap surface only).
pub async fn authenticate_with(
    req: &HttpRequest,
    access: Option<&AccessTokenKey>,
) -> Result<Authenticated, ApiError> {
    authenticate_presented(req, access, None).await
}

/// Like [`authenticate`]; without an `Authorization` header, the API key may
/// come in `key_header` (a route's `client_key_header`, for platform
/// libraries that send their credential in a header of their own).
pub async fn authenticate_with_key_header(
    req: &HttpRequest,
    key_header: Option<&str>,
) -> Result<Authenticated, ApiError> {
    authenticate_presented(req, None, key_header).await
}

async fn authenticate_presented(
    req: &HttpRequest,
    access: Option<&AccessTokenKey>,
    key_header: Option<&str>,
) -> Result<Authenticated, ApiError> {
    let id = request_id(req);
    let Some(state) = super::state::State::of(req) else {
        return Err(ApiError::unauthorized(&id));
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.to_owned())
    };
    let presented = header(AUTHORIZATION.as_str())
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned))
        .or_else(|| key_header.and_then(header))
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
        .map(zeroize::Zeroizing::new);
    let peer = req.peer_addr().map(|addr| addr.ip());
    // A verified client certificate identifies the caller when no key is
    // presented; a presented key always decides on its own.
    let certificate = req.conn_data::<PeerCertificate>();
    let access_token = |key: &str| key.starts_with(ACCESS_TOKEN_PREFIX);
    let method = match (&presented, certificate) {
        (Some(key), _) if access.is_some() && access_token(key) => "access_token",
        (None, Some(_)) => CERTIFICATE_AUTH,
        _ => "api_key",
    };
    let outcome = match (&presented, access) {
        (None, _) if certificate.is_some() => certificate
            .map(|c| state.auth.by_certificate(&c.names, peer))
            .unwrap_or(Err(AuthError::Invalid)),
        (Some(key), Some(access)) if access_token(key) => {
            let now = u64::try_from(crate::audit::now_us() / 1_000_000).unwrap_or(0);
            match access.verify(key, now) {
                Ok(client) => state.auth.caller(&client, peer),
                Err(AccessTokenError::Expired) => Err(AuthError::Expired),
                Err(AccessTokenError::Invalid) => Err(AuthError::Invalid),
            }
        }
        (Some(key), _) => state.auth.authenticate(key, peer).await,
        (None, _) => Err(AuthError::Missing),
    };
    match outcome {
        Ok(caller) => {
            req.extensions_mut()
                .insert(LoggedClient(caller.client.clone()));
            let context = context(req, caller.client.clone(), method);
            Ok(Authenticated(caller, context))
        }
        Err(reason) => {
            // The claimed name is the caller's text: record it only when it
            // names a configured client.
            let actor = presented
                .as_deref()
                .and_then(|key| claimed_client(key))
                .filter(|name| state.auth.knows(name))
                .unwrap_or("unknown")
                .to_owned();
            let code = reason.code();
            let record = context(req, actor, method)
                .record(Action::Authenticate, Outcome::Denied)
                .reason(code);
            let first = match state.vault.record_refused_authentication(record).await {
                Ok(first) => first,
                Err(error) => {
                    tracing::error!(request_id = %id, %error, "could not record an authentication failure");
                    true
                }
            };
            // A flood is one warning per source and reason per interval
            // (the audit trail counts the rest); each refusal is a debug line.
            let source = peer.map(|ip| ip.to_string()).unwrap_or_default();
            if first {
                tracing::warn!(request_id = %id, reason = code, source, "authentication failed");
            } else {
                tracing::debug!(request_id = %id, reason = code, source, "authentication failed");
            }
            match reason {
                AuthError::Throttled(seconds) => {
                    // A throttled caller waits for its answer: a connection
                    // that floods gets a few answers a second instead of
                    // thousands, at no cost to the vault (the wait holds no
                    // thread), so good clients keep the CPU.
                    actix_web::rt::time::sleep(THROTTLED_ANSWER_DELAY).await;
                    Err(ApiError::throttled(seconds, &id))
                }
                _ => Err(ApiError::unauthorized(&id)),
            }
        }
    }
}
