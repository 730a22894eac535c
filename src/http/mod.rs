//! The HTTP surface: server and TLS, authentication, API handlers and error
//! answers. Nothing here knows SQL or ciphers; it calls the engine.

mod admin;
mod api;
mod auth;
pub mod callbacks;
pub mod clevertap;
pub mod context;
pub mod egress;
pub mod error;
mod files;
pub mod state;
mod subjects;
pub mod tls;

use std::io::{self, Write};
use std::net::SocketAddr;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::config::ServerSettings;
use crate::policy::Authenticator;
use crate::vault::Vault;

/// Seconds the server waits for in-flight requests after SIGTERM.
pub const SHUTDOWN_GRACE_SECS: u64 = 30;

/// Request limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Most items per batch.
    pub max_batch_items: usize,
}

/// Everything a handler needs.
pub struct AppState {
    /// The engine.
    pub vault: std::sync::Arc<Vault>,
    /// API key verification.
    pub auth: Authenticator,
    /// Request limits.
    pub limits: Limits,
    /// Egress routes.
    pub routes: crate::egress::Routes,
    /// The CleverTap Token Vault API surface, when `[clevertap]` enables it.
    pub clevertap: Option<clevertap::Surface>,
    /// Activation callbacks.
    pub callbacks: callbacks::Callbacks,
    /// `vault.db` and `audit.db`, whose sizes `/metrics` reports.
    pub data_files: (std::path::PathBuf, std::path::PathBuf),
    /// When the server started (`/readyz` reports the uptime).
    pub started: std::time::Instant,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be used.
    #[error("cannot use TLS file {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding or serving failed.
    #[error("server error: {0}")]
    Io(#[from] io::Error),
}

/// One fixed endpoint of the server: its method, path pattern and the
/// operation it performs (a metrics label). The server registers exactly
/// these; `docs/openapi.yaml` documents exactly these (a test compares).
pub struct Endpoint {
    /// HTTP method.
    pub method: Method,
    /// Path pattern, `{name}` for a segment.
    pub path: &'static str,
    /// Operation, for metrics.
    pub operation: &'static str,
    /// Attaches the handler.
    register: fn(actix_web::Route) -> actix_web::Route,
}

impl Endpoint {
    const fn new(
        method: Method,
        path: &'static str,
        operation: &'static str,
        register: fn(actix_web::Route) -> actix_web::Route,
    ) -> Self {
        Self {
            method,
            path,
            operation,
            register,
        }
    }
}

/// The fixed endpoints: always the core API, and the CleverTap surface when
/// `clevertap` is true. Egress routes and callbacks come from the
/// configuration.
pub fn endpoints(clevertap: bool) -> impl Iterator<Item = &'static Endpoint> {
    let surface: &'static [Endpoint] = if clevertap { clevertap::ENDPOINTS } else { &[] };
    api::ENDPOINTS
        .iter()
        .chain(subjects::ENDPOINTS)
        .chain(files::ENDPOINTS)
        .chain(admin::ENDPOINTS)
        .chain(surface)
}

fn register(config: &mut web::ServiceConfig, endpoints: impl Iterator<Item = &'static Endpoint>) {
    for endpoint in endpoints {
        let route = (endpoint.register)(web::method(endpoint.method.clone()));
        config.route(endpoint.path, route);
    }
}

/// The pattern `path` matches among the fixed endpoints and callbacks, and
/// the methods it takes there (this request's method was not one of them,
/// or it would have been routed).
fn allowed_methods(state: &AppState, path: &str) -> Option<(String, Vec<&'static str>)> {
    let matches = |pattern: &str| {
        let (mut want, mut have) = (pattern.split('/'), path.split('/'));
        loop {
            match (want.next(), have.next()) {
                (None, None) => return true,
                (Some(w), Some(h)) if w.starts_with('{') && !h.is_empty() => {}
                (Some(w), Some(h)) if w == h => {}
                _ => return false,
            }
        }
    };
    let mut pattern = None;
    let mut allow = Vec::new();
    for endpoint in endpoints(state.clevertap.is_some()) {
        if matches(endpoint.path) {
            pattern.get_or_insert_with(|| endpoint.path.to_owned());
            allow.push(endpoint.method.as_str());
        }
    }
    if pattern.is_none() && state.callbacks.paths().iter().any(|p| p == path) {
        let name = state.callbacks.name_of(path).unwrap_or_default();
        return Some((format!("callback:{name}"), vec!["POST"]));
    }
    allow.sort_unstable();
    allow.dedup();
    pattern.map(|pattern| (pattern, allow))
}

/// The metrics label of a request: the route (a fixed pattern, or the
/// configured route or callback name) and its operation.
#[derive(Debug, Clone)]
pub struct MetricRoute {
    /// `route:<name>`, `callback:<name>` or a path pattern.
    pub route: String,
    /// The operation.
    pub operation: &'static str,
}

/// How often counted authentication refusals are recorded.
pub const REFUSAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// What a SIGHUP does besides reloading the certificate: re-read the
/// configuration and swap the state.
pub type Reload = std::rc::Rc<dyn Fn() -> futures_util::future::LocalBoxFuture<'static, ()>>;

/// Binds and serves until SIGTERM or SIGINT, then drains in-flight requests.
/// Prints `tokenvault listening on <url>` on stdout once bound. Callbacks
/// and egress routes are found per request in the state in force, so a
/// reload can add and remove them; the CleverTap surface's endpoints are
/// registered once (turning it on or off needs a restart).
pub async fn serve(
    live: web::Data<state::Live>,
    settings: &ServerSettings,
    reload: Option<Reload>,
) -> Result<(), ServeError> {
    let tls = settings
        .tls
        .as_ref()
        .map(|files| tls::server_config(files, settings.client_ca.as_deref()))
        .transpose()?;
    let clevertap = live.load().clevertap.is_some();
    let data = live.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(context::request_context))
            .configure(|config| register(config, endpoints(clevertap)))
            .default_service(web::to(egress::handle))
    })
    .on_connect(tls::on_connect)
    .shutdown_timeout(SHUTDOWN_GRACE_SECS)
    // The vault registers its own signal handlers, before it says it is
    // listening (below): actix's are installed only once the server runs,
    // and a signal in between took the default action (exit at once).
    .disable_signals();
    let (server, scheme, certificate) = match tls {
        Some(tls) => (
            server.bind_rustls_0_23(settings.listen, tls.config)?,
            "https",
            Some(tls.certificate),
        ),
        None => (server.bind(settings.listen)?, "http", None),
    };
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stops = StopSignals::register()?;
    actix_web::rt::spawn(tls::reload_on_sighup(hangups, certificate, reload));
    // Counted authentication refusals go to the audit trail once a minute,
    // and once more when the server stops.
    let flusher = live.clone();
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(REFUSAL_INTERVAL);
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(error) = flusher.load().vault.flush_refusals().await {
                tracing::error!(%error, "could not record counted authentication refusals");
            }
        }
    });
    // Retention: classes with retain_days are swept every hour, the first
    // time a minute after start.
    let sweeper = live.clone();
    actix_web::rt::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let mut every = tokio::time::interval(crate::vault::retention::SWEEP_INTERVAL);
        loop {
            every.tick().await;
            let vault = sweeper.load().vault.clone();
            match vault.sweep_retention().await {
                Ok(swept) => {
                    for class in swept.iter().filter(|s| s.deleted > 0) {
                        tracing::info!(namespace = %class.namespace, class = %class.class, deleted = class.deleted, "retention sweep");
                    }
                }
                Err(error) => tracing::error!(%error, "retention sweep failed"),
            }
        }
    });
    let addresses: Vec<SocketAddr> = server.addrs();
    // The human-readable line goes to stdout, unless stdout carries JSON
    // log lines: then every line there must be JSON, and it goes to stderr.
    let mut out: Box<dyn Write> = if crate::telemetry::stdout_is_json_log() {
        Box::new(io::stderr().lock())
    } else {
        Box::new(io::stdout().lock())
    };
    for address in &addresses {
        writeln!(out, "tokenvault listening on {scheme}://{address}")?;
        tracing::info!(%address, scheme, "listening");
    }
    out.flush()?;
    drop(out);
    let server = server.run();
    actix_web::rt::spawn(stops.stop(server.handle()));
    server.await?;
    if let Err(error) = live.load().vault.flush_refusals().await {
        tracing::error!(%error, "could not record counted authentication refusals");
    }
    tracing::info!("server stopped; in-flight requests drained");
    Ok(())
}

/// The signals that stop the server, registered up front.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Stops the server at the first SIGTERM (gracefully: in-flight
    /// requests drain for up to the shutdown grace), SIGINT or SIGQUIT (at
    /// once), as actix's own handlers did.
    async fn stop(self, server: actix_web::dev::ServerHandle) {
        let (mut terminate, mut interrupt, mut quit) = (self.terminate, self.interrupt, self.quit);
        let graceful = tokio::select! {
            _ = terminate.recv() => true,
            _ = interrupt.recv() => false,
            _ = quit.recv() => false,
        };
        tracing::info!(graceful, "stopping");
        server.stop(graceful).await;
    }
}

#[cfg(test)]
mod tests {
    /// A route or a callback can never shadow a path the vault serves: the
    /// configuration's reserved list covers every fixed endpoint.
    #[test]
    fn every_fixed_endpoint_is_reserved_from_routes_and_callbacks() {
        for endpoint in super::endpoints(true) {
            assert!(
                crate::config::ServedPath::reserved_by(endpoint.path).is_some(),
                "{} is not in config::RESERVED_PATHS",
                endpoint.path
            );
        }
    }
}
