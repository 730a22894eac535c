//! The HTTP side of egress routes: finds the route, authenticates, hands
//! the request to the pipeline in `crate::egress`, and turns its answer or
//! failure into a response. Every request that reaches a route gets exactly
//! one audit record, written by the engine.

use actix_web::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{authenticate_with_key_header, Authenticated, CERTIFICATE_AUTH};
use super::context::{LoggedNamespace, RequestId};
use super::error::{ApiError, ErrorCode};
use super::MetricRoute;
use crate::egress::refusal::{Problem, Refusal};
use crate::egress::upstream::UpstreamError;
use crate::egress::{Failure, Incoming};
use crate::http::state::State;

/// Handles every request that no API route matched: a callback, an egress
/// route, or 404.
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
        route: route.label.clone(),
        operation: "forward",
    });
    let Authenticated(caller, mut context) =
        authenticate_with_key_header(&req, route.spec.client_key_header.as_deref()).await?;
    context.route = route.label.clone();
    actix_web::HttpMessage::extensions_mut(&req)
        .insert(LoggedNamespace(route.spec.namespace.clone()));
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let incoming = Incoming {
        context: &context,
        caller: &caller,
        certified: context.auth == CERTIFICATE_AUTH,
        rest,
        method: req.method().as_str(),
        headers: &headers,
        query: req.query_string(),
        content_type: header(CONTENT_TYPE),
        content_encoding: header(CONTENT_ENCODING),
        max_body_bytes: state.limits.max_body_bytes,
        request_id: id.as_str(),
    };
    let read_body = async {
        super::api::read_body(&state, &req, payload, &id)
            .await
            .map_err(|error| {
                let problem = match error.code() {
                    ErrorCode::PayloadTooLarge => Problem::TooLarge,
                    _ => Problem::Invalid,
                };
                Refusal::new(problem, error.message(), "body_rejected")
            })
    };
    let relayed = crate::egress::forward(&state.vault, route, incoming, read_body)
        .await
        .map_err(|failure| answer_failure(failure, &id))?;
    let status = StatusCode::from_u16(relayed.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = HttpResponse::build(status);
    for (name, value) in &relayed.headers {
        answer.append_header((name.as_str(), value.as_slice()));
    }
    let revealed =
        crate::egress::response::reveal(&state.vault, route, &caller, &context, &relayed)
            .await
            .map_err(|error| ApiError::from_vault(error, &id))?;
    Ok(match revealed {
        Some(body) => answer.body(body.to_vec()),
        None => answer.body(relayed.bytes),
    })
}

/// The answer to a request that was not forwarded, or whose exchange failed.
fn answer_failure(failure: Failure, id: &RequestId) -> ApiError {
    match failure {
        Failure::Refused(refusal) => {
            ApiError::new(refused_code(refusal.problem), refusal.message, id)
        }
        Failure::Vault { error, field } => match (&error, field) {
            (crate::vault::VaultError::Item { problem, .. }, Some(field)) => ApiError::new(
                ErrorCode::Unprocessable,
                format!("field {field} cannot be tokenized: {problem}"),
                id,
            ),
            (crate::vault::VaultError::TokenTooLong { limit, .. }, Some(field)) => ApiError::new(
                ErrorCode::Unprocessable,
                format!("the token for {field} exceeds {limit} bytes"),
                id,
            ),
            _ => ApiError::from_vault(error, id),
        },
        Failure::Rewrite => {
            tracing::error!(request_id = %id, "the rewrite failed after the forward was recorded; nothing was sent");
            ApiError::new(ErrorCode::Internal, "internal error", id)
        }
        Failure::Upstream(error) => upstream_answer(error, id),
    }
}

fn refused_code(problem: Problem) -> ErrorCode {
    match problem {
        Problem::Invalid => ErrorCode::InvalidRequest,
        Problem::Forbidden => ErrorCode::Forbidden,
        Problem::TooLarge => ErrorCode::PayloadTooLarge,
        Problem::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
        Problem::Unprocessable => ErrorCode::Unprocessable,
    }
}

/// The answer to a failed exchange with an upstream (logged and counted by
/// the upstream).
pub(super) fn upstream_answer(error: UpstreamError, id: &RequestId) -> ApiError {
    match error {
        UpstreamError::Timeout => ApiError::new(
            ErrorCode::GatewayTimeout,
            "the upstream did not answer in time",
            id,
        ),
        UpstreamError::Connect | UpstreamError::Transfer => ApiError::new(
            ErrorCode::BadGateway,
            "the upstream could not be reached or failed",
            id,
        ),
        UpstreamError::Refused => ApiError::new(
            ErrorCode::BadGateway,
            "the destination is not on the egress allow-list (its origin, name or address)",
            id,
        ),
        UpstreamError::Redirect => ApiError::new(
            ErrorCode::BadGateway,
            "the upstream answered with a redirect, which the vault neither follows nor passes on",
            id,
        ),
    }
}
