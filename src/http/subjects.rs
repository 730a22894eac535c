//! `/v1/subjects/*`: a data subject's rights (erasure with a signed receipt,
//! access), and the receipt key a receipt is checked with.

use crate::http::state::State;
use actix_web::http::header::CACHE_CONTROL;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::api::{log_namespace, read_json};
use super::auth::Authenticated;
use super::context::RequestId;
use super::error::ApiError;
use super::{AppState, Endpoint};
use crate::pii::Pii;

/// The subject routes.
pub(super) const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::POST, "/v1/subjects/forget", "subject_forget", |r| {
        r.to(forget)
    }),
    Endpoint::new(Method::POST, "/v1/subjects/export", "subject_export", |r| {
        r.to(export)
    }),
    Endpoint::new(
        Method::POST,
        "/v1/subjects/correct",
        "subject_correct",
        |r| r.to(correct),
    ),
    Endpoint::new(Method::GET, "/v1/receipts/key", "receipt_key", |r| {
        r.to(receipt_key)
    }),
];

/// Names a subject: the identifier given at tokenization (`subject`, a
/// route's `subject` selector, the CleverTap surface's metadata key).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectRequest {
    namespace: String,
    subject: Pii,
}

/// `POST /v1/subjects/forget`: erases the subject; answers the signed
/// receipt.
async fn forget(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request = subject_request(&state, &req, payload, &id).await?;
    let receipt = state
        .vault
        .forget_subject(&context, &caller, &request.namespace, &request.subject)
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    Ok(HttpResponse::Ok().json(receipt.to_json()))
}

/// `POST /v1/subjects/export`: every value held for the subject, with its
/// token and class, and the subject's consent history.
async fn export(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request = subject_request(&state, &req, payload, &id).await?;
    let export = state
        .vault
        .export_subject(&context, &caller, &request.namespace, &request.subject)
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    let values: Vec<_> = export
        .values
        .iter()
        .map(|(token, class, value)| json!({"token": token, "class": class, "value": value.expose()}))
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({
            "namespace": request.namespace,
            "values": values,
            "consent": export.consent,
        })))
}

/// A corrected value for one of a subject's tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorrectRequest {
    namespace: String,
    subject: Pii,
    token: String,
    value: Pii,
}

/// `POST /v1/subjects/correct`: replaces the value of one of the subject's
/// tokens, keeping the token.
async fn correct(
    state: State,
    Authenticated(caller, context): Authenticated,
    id: RequestId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: CorrectRequest = read_json(&state, &req, payload, &id).await?;
    log_namespace(&state, &req, &request.namespace);
    if request.subject.expose().trim().is_empty() {
        return Err(ApiError::new(
            super::error::ErrorCode::InvalidRequest,
            "subject must not be empty",
            &id,
        ));
    }
    let class = state
        .vault
        .correct_subject(
            &context,
            &caller,
            &request.namespace,
            &request.subject,
            &request.token,
            &request.value,
        )
        .await
        .map_err(|error| ApiError::from_vault(error, &id))?;
    Ok(HttpResponse::Ok().json(json!({"token": request.token, "class": class})))
}

/// `GET /v1/receipts/key`: the public key receipts are signed with. No
/// authentication: anyone holding a receipt may check it.
async fn receipt_key(state: State) -> HttpResponse {
    HttpResponse::Ok().json(state.vault.receipt_public_key())
}

async fn subject_request(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    id: &RequestId,
) -> Result<SubjectRequest, ApiError> {
    let request: SubjectRequest = read_json(state, req, payload, id).await?;
    log_namespace(state, req, &request.namespace);
    if request.subject.expose().trim().is_empty() {
        return Err(ApiError::new(
            super::error::ErrorCode::InvalidRequest,
            "subject must not be empty",
            id,
        ));
    }
    Ok(request)
}
