//! The configuration in force, swappable while serving.
//!
//! A SIGHUP builds a whole new [`AppState`] from the configuration file and
//! swaps it in; requests that arrive afterwards see only the new one (on
//! keep-alive connections too), requests in flight finish with the one
//! they started with. Handlers take [`State`], which is the state current
//! when the request first asked for it, the same for the whole request.

use std::future::{ready, Ready};
use std::ops::Deref;
use std::sync::{Arc, RwLock};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use super::error::ApiError;
use super::AppState;

/// The state in force.
pub struct Live {
    current: RwLock<Arc<AppState>>,
}

impl Live {
    /// Starts with `state`.
    pub fn new(state: AppState) -> Self {
        Self {
            current: RwLock::new(Arc::new(state)),
        }
    }

    /// The state in force now.
    pub fn load(&self) -> Arc<AppState> {
        // A poisoned lock only means a swap panicked; the Arc is whole.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `state` in force; answers the one it replaces.
    pub fn swap(&self, state: AppState) -> Arc<AppState> {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, Arc::new(state))
    }
}

/// The state a request runs under (extractor).
#[derive(Clone)]
pub struct State(Arc<AppState>);

impl State {
    /// The state of `req`: the one it already uses, or the one in force.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        if let Some(state) = req.extensions().get::<State>() {
            return Some(state.clone());
        }
        let live = req.app_data::<web::Data<Live>>()?;
        let state = State(live.load());
        req.extensions_mut().insert(state.clone());
        Some(state)
    }
}

impl Deref for State {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl FromRequest for State {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::of(req).ok_or_else(|| {
            ApiError::new(
                super::error::ErrorCode::Unavailable,
                "the server is not configured",
                &super::context::request_id(req),
            )
        }))
    }
}
