//! `Authorization: Bearer <api key>` → an authenticated [`Caller`].

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use super::context::{request_id, LoggedClient};
use super::error::ApiError;
use super::AppState;
use crate::policy::{AuthError, Caller};

/// Extractor: the request's authenticated caller, or a 401.
pub struct Authenticated(pub Caller);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let id = request_id(&req);
            let state = req.app_data::<web::Data<AppState>>().cloned();
            let presented = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(|key| zeroize::Zeroizing::new(key.to_owned()));
            let peer = req.peer_addr().map(|addr| addr.ip());
            let outcome = match (state, presented) {
                (Some(state), Some(key)) => state.auth.authenticate(&key, peer).await,
                (_, None) => Err(AuthError::Missing),
                (None, Some(_)) => Err(AuthError::Invalid),
            };
            match outcome {
                Ok(caller) => {
                    req.extensions_mut()
                        .insert(LoggedClient(caller.client.clone()));
                    Ok(Self(caller))
                }
                Err(reason) => {
                    let source = peer.map(|ip| ip.to_string()).unwrap_or_default();
                    tracing::warn!(request_id = %id, %reason, source, "authentication failed");
                    Err(ApiError::unauthorized(&id))
                }
            }
        })
    }
}
