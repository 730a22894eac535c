//! The state the server runs with, built at start and again on every
//! SIGHUP from the whole configuration file.
//!
//! A reload re-reads clients, roles, namespaces and classes, routes,
//! callbacks, the CleverTap settings, `[limits]` and `[keys]`. Settings the
//! running process cannot change (the listening address, TLS file paths,
//! the data directory, the log, turning the CleverTap surface on or off)
//! must stay as they were: a file that changes them, or that fails any
//! check, is refused whole and the old configuration keeps serving. Every
//! reload is an audit record (`config_reload`), applied or refused; an
//! applied one is recorded before the swap, so a reload that cannot be
//! recorded is not applied.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix_web::web;

use crate::audit::{Action, Context, Outcome};
use crate::config::{Config, KeySettings};
use crate::http::state::Live;
use crate::http::{self, AppState, Limits};
use crate::policy::Authenticator;
use crate::vault::rotation::SharedKeyring;
use crate::vault::Vault;

/// Builds the request-facing state of `config` around `vault`, carrying
/// over from `previous` what must outlive a reload (the CleverTap access
/// token key, the start time). Takes the routes and callbacks out of
/// `config`.
pub fn build_state(
    config: &mut Config,
    vault: Arc<Vault>,
    previous: Option<&AppState>,
) -> anyhow::Result<AppState> {
    use anyhow::anyhow;
    let callbacks = std::mem::take(&mut config.callbacks);
    let routes = std::mem::take(&mut config.routes);
    Ok(AppState {
        vault,
        auth: Authenticator::new(&config.clients, &config.roles, &config.limits),
        clevertap: config.clevertap.as_ref().map(|spec| {
            http::clevertap::Surface::reconfigured(
                spec,
                previous.and_then(|state| state.clevertap.as_ref()),
            )
        }),
        callbacks: http::callbacks::Callbacks::build(callbacks, &config.roles).map_err(|e| {
            anyhow!("{e}\nhint: check the callback's secret, headers and ca_bundle")
        })?,
        routes: crate::egress::Routes::build(routes)
            .map_err(|e| anyhow!("{e}\nhint: check the route's headers and ca_bundle"))?,
        data_files: (config.storage.database_path(), config.storage.audit_path()),
        started: previous.map_or_else(std::time::Instant::now, |state| state.started),
        limits: Limits {
            max_body_bytes: config.server.max_body_bytes,
            max_batch_items: config.server.max_batch_items,
        },
    })
}

/// What only a restart can change, as text to compare.
pub fn restart_only(config: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("server.listen", config.server.listen.to_string()),
        ("server.tls", format!("{:?}", config.server.tls)),
        ("server.client_ca", format!("{:?}", config.server.client_ca)),
        (
            "server.insecure_allow_plaintext",
            config.server.insecure_allow_plaintext.to_string(),
        ),
        ("storage.data_dir", format!("{:?}", config.storage.data_dir)),
        ("storage.backend", format!("{:?}", config.storage.backend)),
        ("log", format!("{:?}", config.log)),
        // The store's connections are opened once, with this page cache.
        (
            "limits.sqlite_cache_mib",
            config.limits.sqlite_cache_mib.to_string(),
        ),
        // The engine's cache of known values is built once too.
        (
            "limits.token_cache_entries",
            config.limits.token_cache_entries.to_string(),
        ),
        (
            "clevertap (on or off)",
            config.clevertap.is_some().to_string(),
        ),
    ]
}

/// Re-reads the configuration file on SIGHUP.
pub struct Reloader {
    /// The configuration file.
    pub path: PathBuf,
    /// `--listen`, when it overrode the file.
    pub listen: Option<std::net::SocketAddr>,
    /// What the process started with.
    pub fixed: Vec<(&'static str, String)>,
    /// The state in force.
    pub live: web::Data<Live>,
    /// The keyring (shared with the key watcher).
    pub keyring: SharedKeyring,
    /// Where the key watcher reads the key source from.
    pub key_settings: Arc<Mutex<KeySettings>>,
}

impl Reloader {
    /// Reads, checks and applies the configuration file, or refuses it
    /// whole; either way it is recorded.
    pub async fn reload(&self) {
        let old = self.live.load();
        let context = Context {
            request_id: format!("sys_{}", hex::encode(crate::crypto::random_bytes::<12>())),
            actor: "system:reload".to_owned(),
            auth: "system",
            source: None,
            route: "sighup".to_owned(),
        };
        let mut config = match self.read() {
            Ok(config) => config,
            Err(problems) => {
                for problem in &problems {
                    tracing::error!(problem = %problem, "SIGHUP: configuration refused; still serving the previous one");
                }
                crate::metrics::config_reload(false);
                let record = context
                    .record(Action::ConfigReload, Outcome::Error)
                    .reason("invalid_config")
                    .items(problems.len());
                if let Err(error) = old.vault.record(vec![record]).await {
                    tracing::error!(%error, "could not record the refused reload");
                }
                return;
            }
        };
        let store_states = {
            let vault = old.vault.clone();
            tokio::task::spawn_blocking(move || vault.key_states()).await
        };
        let states = match store_states {
            Ok(Ok(states)) => states,
            _ => {
                tracing::error!("SIGHUP: cannot read the key rotation state; still serving the previous configuration");
                crate::metrics::config_reload(false);
                return;
            }
        };
        // Counted refusals of the old state go to the trail first.
        if let Err(error) = old.vault.flush_refusals().await {
            tracing::error!(%error, "could not record counted authentication refusals");
        }
        // Built first, recorded second, swapped last: a state that cannot
        // be built or recorded never serves. (The key watcher notices the
        // new vault and gives it any key change made meanwhile.) Built on a
        // blocking thread: it reads the saved budget spending from the
        // store, which on PostgreSQL is a blocking client.
        let built = {
            let (keyring, old) = (self.keyring.clone(), old.clone());
            tokio::task::spawn_blocking(move || {
                let keyring = keyring.lock().unwrap_or_else(|p| p.into_inner());
                let vault = old.vault.reconfigured(
                    &keyring,
                    &states,
                    &config.namespaces,
                    &config.clients,
                    config.purpose_names(),
                );
                drop(keyring);
                let (routes, callbacks) = (config.routes.len(), config.callbacks.len());
                build_state(&mut config, Arc::new(vault), Some(&old))
                    .map(|state| (state, routes, callbacks, config))
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("building the new state panicked")))
        };
        let (state, routes, callbacks, config) = match built {
            Ok(built) => built,
            Err(error) => {
                crate::metrics::config_reload(false);
                tracing::error!(%error, "SIGHUP: configuration refused; still serving the previous one");
                let record = context
                    .record(Action::ConfigReload, Outcome::Error)
                    .reason("invalid_config");
                if let Err(error) = old.vault.record(vec![record]).await {
                    tracing::error!(%error, "could not record the refused reload");
                }
                return;
            }
        };
        let record = context
            .record(Action::ConfigReload, Outcome::Ok)
            .items(config.clients.len());
        if let Err(error) = old.vault.record(vec![record]).await {
            tracing::error!(%error, "SIGHUP: the reload cannot be recorded; still serving the previous configuration");
            crate::metrics::config_reload(false);
            return;
        }
        self.live.swap(state);
        *self.key_settings.lock().unwrap_or_else(|p| p.into_inner()) = config.keys.clone();
        crate::metrics::config_reload(true);
        tracing::info!(
            clients = config.clients.len(),
            namespaces = config.namespaces.len(),
            routes,
            callbacks,
            "SIGHUP: configuration reloaded"
        );
    }

    /// The configuration file, checked, with what only a restart changes
    /// compared to the start.
    fn read(&self) -> Result<Config, Vec<String>> {
        let mut config = crate::config::load(&self.path)
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        let changed: Vec<String> = restart_only(&config)
            .into_iter()
            .zip(&self.fixed)
            .filter(|((_, now), (_, then))| now != then)
            .map(|((key, _), _)| format!("{key}: changing it needs a restart"))
            .collect();
        if !changed.is_empty() {
            return Err(changed);
        }
        Ok(config)
    }
}
