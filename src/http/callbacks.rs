//! Activation callbacks: the platform calls the vault when it sends; the
//! vault checks the Standard Webhooks signature (HMAC-SHA256 over
//! `id.timestamp.body`), the timestamp and the message id (never twice, even
//! across restarts), reveals the selected tokens for the callback's purpose
//! through the engine (roles, consent, audit), and forwards the revealed body
//! to the messaging provider, or answers it when the caller sends itself.
//! Any refusal forwards nothing.

use crate::http::state::State;
use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use zeroize::Zeroizing;

use super::api::read_body;
use super::context::{request_id, LoggedClient, LoggedNamespace, RequestId};
use super::egress::upstream_answer;
use super::error::{ApiError, ErrorCode};
use super::tls::PeerCertificate;
use super::MetricRoute;
use crate::audit::{Action, Context, Outcome};
use crate::config::CallbackSpec;
use crate::crypto::webhook::{SignedHeaders, WebhookKey};
use crate::egress::upstream::{Destination, Upstream};
use crate::payload::{self, Selector};
use crate::policy::{Caller, Role};
use crate::vault::Detokenized;

/// Deepest nesting accepted in a callback body.
const MAX_DEPTH: usize = 32;

/// A callback ready to serve.
pub struct Callback {
    spec: CallbackSpec,
    key: WebhookKey,
    caller: Caller,
    provider: Option<Upstream>,
}

/// Every configured callback.
#[derive(Default)]
pub struct Callbacks(Vec<Callback>);

impl Callbacks {
    /// Reads the secrets and builds the provider clients.
    pub fn build(
        specs: Vec<CallbackSpec>,
        roles: &std::collections::BTreeMap<String, Role>,
    ) -> Result<Self, String> {
        let mut callbacks: Vec<Callback> = Vec::with_capacity(specs.len());
        let mut keys: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(specs.len());
        for spec in specs {
            let label = format!("callback {}", spec.name);
            let secret = Zeroizing::new(
                spec.secret
                    .read()
                    .map_err(|e| format!("{label}: secret: {e}"))?,
            );
            let key_bytes = secret_bytes(&secret).ok_or_else(|| {
                format!("{label}: secret: a whsec_ secret must be Base64 after the prefix")
            })?;
            // `config check` compares the secrets' text; this compares the
            // keys they decode to (a `whsec_` secret and a raw one can agree),
            // and the systemd credentials it could not read.
            if let Some(index) = keys
                .iter()
                .position(|k| k.as_slice() == key_bytes.as_slice())
            {
                return Err(format!(
                    "{label}: shares its signing key with callback {}; a message signed for one would be genuine at the other",
                    callbacks[index].spec.name
                ));
            }
            keys.push(key_bytes.clone());
            if spec.reveal_to_caller {
                tracing::warn!(
                    callback = %spec.name,
                    "callback answers revealed values to its caller (reveal_to_caller = true)"
                );
            }
            let key = WebhookKey::new(&key_bytes);
            let role = roles
                .get(&spec.role)
                .ok_or_else(|| format!("{label}: role {} is not defined", spec.role))?;
            let caller = Caller {
                client: format!("callback:{}", spec.name),
                role: Arc::new(role.clone()),
            };
            let provider = match &spec.forward {
                Some(url) => Some(
                    Upstream::build(Destination {
                        label: format!("callback:{}", spec.name),
                        url,
                        connect_timeout: spec.connect_timeout,
                        timeout: spec.timeout,
                        ca_bundle: spec.ca_bundle.as_deref(),
                        headers: &spec.headers,
                        addresses: &spec.forward_addresses,
                    })
                    .map_err(|e| e.replacen(&format!("callback:{}", spec.name), &label, 1))?,
                ),
                None => None,
            };
            callbacks.push(Callback {
                spec,
                key,
                caller,
                provider,
            });
        }
        Ok(Self(callbacks))
    }

    /// The paths to register.
    pub fn paths(&self) -> Vec<String> {
        self.0.iter().map(|c| c.spec.path.to_string()).collect()
    }

    /// True when a callback listens at `path`.
    pub fn handles(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    /// The name of the callback at `path`.
    pub fn name_of(&self, path: &str) -> Option<String> {
        self.find(path).map(|c| c.spec.name.clone())
    }

    fn find(&self, path: &str) -> Option<&Callback> {
        self.0.iter().find(|c| c.spec.path == path)
    }
}

/// The HMAC key of a secret: Standard Webhooks' `whsec_<base64>`, or the
/// secret's own bytes.
fn secret_bytes(secret: &str) -> Option<Zeroizing<Vec<u8>>> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD.decode(encoded).ok().map(Zeroizing::new),
        None => Some(Zeroizing::new(secret.as_bytes().to_vec())),
    }
}

/// Why a callback was refused before anything was revealed.
fn refusal(code: ErrorCode, message: &str, id: &RequestId) -> ApiError {
    ApiError::new(code, message, id)
}

/// Handles a callback.
pub async fn handle(
    state: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = request_id(&req);
    let Some(callback) = state.callbacks.find(req.path()) else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such endpoint", &id));
    };
    let spec = &callback.spec;
    req.extensions_mut().insert(MetricRoute {
        route: format!("callback:{}", spec.name),
        operation: "callback",
    });
    req.extensions_mut()
        .insert(LoggedClient(callback.caller.client.clone()));
    req.extensions_mut()
        .insert(LoggedNamespace(spec.namespace.clone()));
    let peer = req.peer_addr().map(|addr| addr.ip());
    let context = Context {
        request_id: id.as_str().to_owned(),
        actor: callback.caller.client.clone(),
        auth: "webhook_signature",
        source: peer.map(|ip| ip.to_string()),
        route: format!("callback:{}", spec.name),
    };
    let refuse = |reason: &'static str| {
        let context = context.clone();
        let state = state.clone();
        async move {
            let record = context
                .record(Action::Authenticate, Outcome::Denied)
                .namespace(&spec.namespace)
                .reason(reason);
            if let Err(error) = state.vault.record_refused_authentication(record).await {
                tracing::error!(request_id = %context.request_id, %error, "could not record a refused callback");
            }
            tracing::warn!(request_id = %context.request_id, callback = %spec.name, reason, "callback refused");
        }
    };

    if spec.require_client_cert && req.conn_data::<PeerCertificate>().is_none() {
        refuse("client_certificate_required").await;
        return Err(refusal(
            ErrorCode::Forbidden,
            "this callback requires a client certificate",
            &id,
        ));
    }
    if !spec.allow_from.is_empty()
        && !peer.is_some_and(|ip| spec.allow_from.iter().any(|net| net.contains(&ip)))
    {
        refuse("source_not_allowed").await;
        return Err(refusal(
            ErrorCode::Forbidden,
            "this source may not call this callback",
            &id,
        ));
    }
    let body = read_body(&state, &req, payload, &id).await?;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let unauthorized = |message: &str| refusal(ErrorCode::Unauthorized, message, &id);
    let (Some(message_id), Some(timestamp), Some(signatures)) = (
        header(&spec.id_header),
        header(&spec.timestamp_header),
        header(&spec.signature_header),
    ) else {
        refuse("missing_signature").await;
        return Err(unauthorized("the callback is not signed"));
    };
    // The message id is the caller's text: kept to a safe shape before it
    // is stored or logged.
    let now = u64::try_from(crate::audit::now_us() / 1_000_000).unwrap_or(0);
    let Ok(signed) = SignedHeaders::parse(message_id, timestamp, signatures) else {
        refuse("malformed_signature_headers").await;
        return Err(unauthorized("the signature headers are malformed"));
    };
    if !signed.verify(&callback.key, &body) {
        refuse("bad_signature").await;
        return Err(unauthorized("the signature does not match"));
    }
    let sent_at = signed.timestamp;
    if now.abs_diff(sent_at) > spec.tolerance.as_secs() {
        refuse("stale_timestamp").await;
        return Err(unauthorized(
            "the signed timestamp is outside the accepted tolerance",
        ));
    }
    let mut document = payload::parse_strict(&body, MAX_DEPTH).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the callback body is not acceptable: {error}"),
            &id,
        )
    })?;
    drop(body);

    // What to reveal: whole-field tokens and `{{TOKEN}}` placeholders.
    let selectors: Vec<&Selector> = spec.fields.iter().map(|f| &f.selector).collect();
    let selected = payload::select(&document, &selectors).map_err(|error| {
        ApiError::new(
            ErrorCode::Unprocessable,
            format!("the callback body is not acceptable: {error}"),
            &id,
        )
    })?;
    let mut wanted = BTreeSet::new();
    for field in &selected {
        if spec.fields[field.rule].placeholders {
            wanted.extend(placeholders(field.value.expose()));
        } else {
            wanted.insert(field.value.expose().to_owned());
        }
    }
    if wanted.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unprocessable,
            "the callback holds no token in its selected fields",
            &id,
        ));
    }

    // Replay protection, durable before anything is revealed. Ids are kept
    // past the tolerance window; older replays fail the timestamp check.
    let expires_at = i64::try_from(sent_at + 2 * spec.tolerance.as_secs()).unwrap_or(i64::MAX);
    let fresh = state
        .vault
        .claim_message(&spec.name, message_id, expires_at, Vec::new())
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    if !fresh {
        refuse("replayed_message").await;
        return Err(unauthorized("this message id was already accepted"));
    }

    let tokens: Vec<String> = wanted.into_iter().collect();
    let answers = state
        .vault
        .detokenize(
            &context,
            &callback.caller,
            &spec.namespace,
            &spec.purpose,
            tokens.clone(),
        )
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let mut revealed: Vec<(String, Zeroizing<String>)> = Vec::with_capacity(tokens.len());
    for (token, answer) in tokens.into_iter().zip(answers) {
        match answer {
            Detokenized::Value { value, .. } => {
                revealed.push((token, Zeroizing::new(value.expose().to_owned())))
            }
            Detokenized::ConsentWithdrawn => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "a recipient has withdrawn consent for this purpose; nothing was sent",
                    &id,
                ))
            }
            Detokenized::NotFound | Detokenized::Integrity => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "a token in the callback cannot be revealed for it; nothing was sent",
                    &id,
                ))
            }
        }
    }
    for field in &selected {
        let text = field.value.expose();
        let replacement = if spec.fields[field.rule].placeholders {
            let mut out = text.to_owned();
            for (token, value) in &revealed {
                out = out.replace(&format!("{{{{{token}}}}}"), value);
            }
            out
        } else {
            revealed
                .iter()
                .find(|(token, _)| token == text)
                .map(|(_, value)| value.to_string())
                .unwrap_or_default()
        };
        payload::replace(&mut document, &field.pointer, replacement);
    }
    let body = Zeroizing::new(serde_json::to_vec(&document).unwrap_or_default());
    zeroize_document(document);

    let Some(provider) = &callback.provider else {
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(body.to_vec()));
    };
    let url = spec.forward.as_deref().unwrap_or_default();
    let content_type: &[u8] = b"application/json";
    let relayed = match provider
        .send(
            "POST",
            url,
            std::iter::once(("content-type", content_type)),
            &[],
            body.to_vec(),
            id.as_str(),
        )
        .await
    {
        Ok(relayed) => relayed,
        Err(error) => {
            // Not delivered: let the platform's retry of this message in.
            if let Err(release) = state
                .vault
                .release_message(&spec.name, message_id, Vec::new())
                .await
            {
                tracing::error!(request_id = %id, error = %release, "could not release a callback message id");
            }
            return Err(upstream_answer(error, &id));
        }
    };
    let status = StatusCode::from_u16(relayed.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = relayed
        .headers
        .iter()
        .find(|(name, _)| name == "content-type")
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    tracing::info!(request_id = %id, callback = %spec.name, provider_status = relayed.status, "callback delivered");
    Ok(HttpResponse::build(status)
        .content_type(content_type)
        .body(relayed.bytes))
}

/// The tokens named by `{{TOKEN}}` placeholders in a template.
fn placeholders(template: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let token = &after[..end];
        if !token.is_empty() && !token.contains("{{") {
            found.push(token.to_owned());
        }
        rest = &after[end + 2..];
    }
    found
}

/// Overwrites the revealed strings of a document before it is dropped.
fn zeroize_document(document: Value) {
    fn walk(value: Value) {
        match value {
            Value::String(text) => drop(Zeroizing::new(text)),
            Value::Array(items) => items.into_iter().for_each(walk),
            Value::Object(members) => members.into_iter().for_each(|(_, v)| walk(v)),
            _ => {}
        }
    }
    walk(document);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("Hi {{TKN_abc}}, call {{+14155550100}} or {{ }} {{unclosed"),
            ["TKN_abc", "+14155550100", " "]
        );
        assert!(placeholders("no placeholders").is_empty());
    }

    #[test]
    fn secrets() {
        assert_eq!(secret_bytes("whsec_AAEC").unwrap().as_slice(), &[0, 1, 2]);
        assert_eq!(secret_bytes("plain").unwrap().as_slice(), b"plain");
        assert!(secret_bytes("whsec_%%").is_none());
    }
}
