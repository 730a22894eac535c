//! `tokenvault serve` and `tokenvault serve --dev`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;

use super::CliError;
use crate::audit::{Action, Outcome};
use crate::config::{Backend, Config, ConfigErrors, KeySettings};
use crate::crypto::password::{hash_api_key, new_api_key};
use crate::crypto::wrapping::{Keyring, KeyringError};
use crate::http;
use crate::store::Store;
use crate::vault::{AuditState, Vault};

/// Address of `serve --dev`.
pub const DEV_LISTEN: &str = "127.0.0.1:8200";
/// Environment variable that fixes the dev root API key.
pub const DEV_API_KEY_ENV: &str = "TOKENVAULT_DEV_API_KEY";

/// Arguments of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long, env = "TOKENVAULT_CONFIG", default_value = super::DEFAULT_CONFIG, conflicts_with = "dev")]
    config: PathBuf,
    /// Try tokenvault out: no config, temporary data, in-memory key, plain
    /// HTTP on 127.0.0.1:8200. Never for real data.
    #[arg(long)]
    dev: bool,
    /// Listen on this address instead of the configured one.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    crate::harden::harden_process();
    if args.dev {
        let _guard = crate::telemetry::init_server(&crate::telemetry::LogSettings::default())
            .map_err(|e| anyhow!(e))?;
        return run_dev(args.listen);
    }
    let mut config = crate::config::load(&args.config)?;
    // Kept alive to the end of `run`: it flushes the log file writer.
    let _guard = crate::telemetry::init_server(&config.log).map_err(|e| anyhow!(e))?;
    if let Some(listen) = args.listen {
        if !listen.ip().is_loopback()
            && config.server.tls.is_none()
            && !config.server.insecure_allow_plaintext
        {
            return Err(CliError::Config(ConfigErrors(vec![
                crate::config::Problem {
                    key: "--listen".to_owned(),
                    message: format!("plain HTTP on non-loopback address {listen} is refused"),
                    hint: Some("configure tls_cert and tls_key".to_owned()),
                },
            ])));
        }
        config.server.listen = listen;
    }
    let source = config
        .keys
        .kek_source()
        .map_err(|problem| CliError::Config(ConfigErrors(vec![problem])))?;
    if let Backend::Postgres(settings) = &config.storage.backend {
        let pg = super::storage::open_postgres(settings)?;
        let document = pg.keyring().map_err(|error| anyhow!("{error}"))?.ok_or_else(|| {
            anyhow!(
                "no keyring is stored in the database\nhint: run `tokenvault init --config {}` once, on one node",
                args.config.display()
            )
        })?;
        let keyring = Keyring::open_document(&document, &source, super::KEYRING_IN_DATABASE)
            .map_err(|error| match error {
                KeyringError::Unwrap => {
                    anyhow!("{error}\nhint: check the passphrase or key file named in [keys]")
                }
                other => anyhow!(other),
            })?;
        drop(source);
        return start(
            config,
            keyring,
            Some(pg),
            "serve",
            Some(args.config),
            args.listen,
        );
    }
    let keyring_path = config.storage.keyring_path();
    if !keyring_path.exists() {
        return Err(anyhow!(
            "no keyring at {}\nhint: run `tokenvault init --config {}` first",
            keyring_path.display(),
            args.config.display()
        )
        .into());
    }
    let keyring = Keyring::open(&keyring_path, &source).map_err(|error| match error {
        KeyringError::Unwrap => {
            anyhow!("{error}\nhint: check the passphrase or key file named in [keys]")
        }
        other => anyhow!(other),
    })?;
    drop(source);
    start(
        config,
        keyring,
        None,
        "serve",
        Some(args.config),
        args.listen,
    )
}

/// Starts serving. `config_path` is the file a SIGHUP re-reads (none for
/// `--dev`), `listen_override` the `--listen` that replaced its address.
fn start(
    mut config: Config,
    keyring: Keyring,
    postgres: Option<Arc<crate::store::pg::PgStore>>,
    command: &str,
    config_path: Option<PathBuf>,
    listen_override: Option<SocketAddr>,
) -> Result<(), CliError> {
    // Held until the server stops: one vault per data directory, and no
    // restore into it meanwhile.
    let _lock = crate::store::lock_data_dir(&config.storage.data_dir).map_err(|error| {
        anyhow!("{error}\nhint: another tokenvault serves this data directory; stop it first")
    })?;
    let shared_db = postgres.clone();
    let store = Arc::new(match postgres {
        Some(pg) => Store::open_postgres(pg, keyring.audit_key())
            .context("cannot open the PostgreSQL store")?,
        None => Store::open(
            &config.storage.database_path(),
            &config.storage.audit_path(),
            keyring.audit_key(),
            config.limits.sqlite_cache_mib,
        )
        .with_context(|| {
            format!(
                "cannot open the stores in {}",
                config.storage.data_dir.display()
            )
        })?,
    });
    let mut vault = Vault::new(store.clone(), &keyring, &config.namespaces);
    vault.set_token_cache(config.limits.token_cache_entries);
    vault.set_tombstones(crate::store::tombstones::Tombstones::in_dir(
        &config.storage.data_dir,
    ));
    vault.set_budgets(&config.clients);
    vault.set_purpose_names(config.purpose_names());
    let vault = Arc::new(vault);
    let state = super::reload::build_state(&mut config, vault.clone(), None)?;
    let live = actix_web::web::Data::new(http::state::Live::new(state));
    // Rotations in progress are resumed; the watcher follows later ones.
    let keyring: crate::vault::rotation::SharedKeyring = Arc::new(std::sync::Mutex::new(keyring));
    let key_settings = Arc::new(std::sync::Mutex::new(config.keys.clone()));
    let mut watcher = {
        use crate::vault::rotation::{versions_in_file, Reopen, StoredVersions};
        let settings = key_settings.clone();
        let source = move || {
            let settings = settings.lock().unwrap_or_else(|p| p.into_inner()).clone();
            settings.kek_source().map_err(|problem| problem.to_string())
        };
        // The keyring file, or on PostgreSQL the row every node shares.
        let (stored, reopen): (StoredVersions, Reopen) = match shared_db {
            Some(pg) => {
                let (probe, db) = (pg.clone(), pg);
                let stored: StoredVersions = Arc::new(move || {
                    probe
                        .keyring()
                        .map_err(|error| error.to_string())?
                        .ok_or_else(|| "no keyring in the database".to_owned())?
                        .versions(super::KEYRING_IN_DATABASE)
                        .map_err(|error| error.to_string())
                });
                let reopen: Reopen = Arc::new(move || {
                    let document = db
                        .keyring()
                        .map_err(|error| error.to_string())?
                        .ok_or_else(|| "no keyring in the database".to_owned())?;
                    Keyring::open_document(&document, &source()?, super::KEYRING_IN_DATABASE)
                        .map_err(|error| error.to_string())
                });
                (stored, reopen)
            }
            None => {
                let path = config.storage.keyring_path();
                let reopen_path = path.clone();
                let reopen: Reopen = Arc::new(move || {
                    Keyring::open(&reopen_path, &source()?).map_err(|error| error.to_string())
                });
                (versions_in_file(path), reopen)
            }
        };
        let ephemeral = matches!(config.keys, KeySettings::Ephemeral);
        let current_live = live.clone();
        crate::vault::rotation::KeyWatcher::new(
            keyring.clone(),
            (!ephemeral).then_some(stored),
            reopen,
            Box::new(move || current_live.load().vault.clone()),
        )
    };
    let reloader = config_path.map(|path| super::reload::Reloader {
        path,
        listen: listen_override,
        fixed: super::reload::restart_only(&config),
        live: live.clone(),
        keyring: keyring.clone(),
        key_settings,
    });
    tracing::info!(
        namespaces = config.namespaces.len(),
        clients = config.clients.len(),
        core_dumps_disabled = crate::harden::core_dumps_disabled(),
        "vault ready"
    );
    let context = crate::audit::Context::cli(command);
    let startup = vec![
        context
            .record(Action::ConfigLoad, Outcome::Ok)
            .items(config.clients.len()),
        context.record(Action::KeyUnwrap, Outcome::Ok),
    ];
    let served = actix_web::rt::System::new().block_on(async {
        // Fail closed from the start: a vault that cannot audit does not
        // serve. A trail whose tail was cut is the exception: the vault
        // listens, so that /readyz can say why it refuses every reveal and
        // write (503), until an operator runs `audit acknowledge-gap`.
        if let Err(error) = vault.record(startup).await {
            // The audit state may ask the database: off this thread.
            let state = {
                let vault = vault.clone();
                actix_web::rt::task::spawn_blocking(move || vault.audit_state())
                    .await
                    .unwrap_or(AuditState::Failing)
            };
            if state != AuditState::Broken {
                return Err(anyhow!("cannot write to the audit trail: {error}\nhint: check that audit.db in the data directory is writable and not locked"));
            }
            tracing::error!(
                reason = "audit_chain_mismatch",
                "serving with the audit trail broken: every reveal and write answers 503 until `tokenvault audit acknowledge-gap`"
            );
        }
        // The key versions each namespace writes with, before the first
        // request; the watcher then follows rotations.
        if let Err(error) = watcher.follow(&vault).await {
            return Err(anyhow!("cannot read the key rotation state: {error}"));
        }
        actix_web::rt::spawn(watcher.run());
        // Erasures recorded after this copy of the data was made (a
        // restored backup) are applied before anything is served.
        match vault.apply_tombstones().await {
            Ok(0) => {}
            Ok(deleted) => tracing::warn!(deleted, "re-applied erasures from the tombstone list"),
            Err(error) => {
                return Err(anyhow!("cannot re-apply the erasures on the tombstone list: {error}\nhint: the vault does not serve data it may have been asked to erase; check `forgotten` in the data directory"));
            }
        }
        let reload: Option<http::Reload> = reloader.map(|reloader| {
            let reloader = std::rc::Rc::new(reloader);
            let reload: http::Reload = std::rc::Rc::new(move || {
                let reloader = reloader.clone();
                Box::pin(async move { reloader.reload().await })
            });
            reload
        });
        http::serve(live, &config.server, reload).await.map_err(|error| anyhow!(error))
    });
    store.shutdown();
    served.map_err(CliError::from)
}

fn run_dev(listen: Option<SocketAddr>) -> Result<(), CliError> {
    let listen = listen.unwrap_or_else(|| DEV_LISTEN.parse().expect("constant address"));
    if !listen.ip().is_loopback() {
        return Err(anyhow!(
            "--dev listens on loopback only\nhint: use a configuration file to listen elsewhere"
        )
        .into());
    }
    let data_dir = tempfile::Builder::new()
        .prefix("tokenvault-dev-")
        .tempdir()
        .context("cannot create a temporary data directory")?;
    let api_key = std::env::var(DEV_API_KEY_ENV)
        .ok()
        .filter(|key| !key.is_empty())
        .unwrap_or_else(|| new_api_key("root"));
    let mut config = Config::dev(listen, data_dir.path().to_owned(), hash_api_key(&api_key));
    config.limits = crate::config::Limits::from_env().map_err(|errors| anyhow!("{errors}"))?;
    debug_assert!(matches!(config.keys, KeySettings::Ephemeral));
    let banner = "=".repeat(76);
    println!("{banner}");
    println!("  DEVELOPMENT MODE: for trying tokenvault out, never for real data.");
    println!("  Plain HTTP, a master key that exists only in memory, and a temporary");
    println!(
        "  data directory ({}) deleted on exit.",
        data_dir.path().display()
    );
    println!("{banner}");
    println!("root API key: {api_key}");
    println!("namespace `default`, classes: email, phone, name, account, card (deterministic), note (random)");
    println!();
    println!("try it:");
    println!(
        "  curl -s http://{listen}/v1/tokenize -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\n    -d '{{\"namespace\":\"default\",\"items\":[{{\"class\":\"email\",\"value\":\"alice@example.com\"}}]}}'"
    );
    println!(
        "  curl -s http://{listen}/v1/detokenize -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\n    -d '{{\"namespace\":\"default\",\"purpose\":\"support\",\"tokens\":[\"<token from above>\"]}}'"
    );
    println!("{banner}");
    tracing::warn!("development mode: temporary data, in-memory key, plain HTTP");
    let result = start(
        config,
        Keyring::ephemeral(),
        None,
        "serve --dev",
        None,
        None,
    );
    drop(data_dir);
    result
}
