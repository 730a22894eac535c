//! `tokenvault status`: what an operator checks first. Offline facts come
//! from the data directory (readable beside a running vault); readiness
//! comes from the running vault's `/readyz`, if one answers.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{CliError, DEFAULT_CONFIG};

/// Arguments of `status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Configuration file.
    #[arg(long, env = "TOKENVAULT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// `table` (the default) or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

/// Prints the status.
pub fn run(args: StatusArgs) -> Result<(), CliError> {
    if args.format != "table" && args.format != "json" {
        return Err(anyhow::anyhow!("--format must be table or json").into());
    }
    let status = gather(&args.config)?;
    let text = if args.format == "json" {
        format!("{status}\n")
    } else {
        table(&status)
    };
    super::write_stdout(text.as_bytes())
}

fn gather(config_path: &Path) -> Result<Value, CliError> {
    let bytes = std::fs::read(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = crate::config::load(config_path)?;
    let storage = &config.storage;
    let facts = match &storage.backend {
        crate::config::Backend::Sqlite => sqlite_facts(storage)?,
        crate::config::Backend::Postgres(settings) => postgres_facts(settings)?,
    };
    let Facts {
        versions,
        rows,
        states,
        head,
        last_backup,
    } = facts;
    let mut tokens = serde_json::Map::new();
    let mut per_version = serde_json::Map::new();
    for (namespace, version, count) in &rows {
        let add = |map: &mut serde_json::Map<String, Value>, key: String| {
            let now = map.get(&key).and_then(Value::as_u64).unwrap_or(0);
            map.insert(key, json!(now + count));
        };
        add(&mut tokens, namespace.clone());
        add(&mut per_version, format!("v{version}"));
    }
    let rotations: Vec<Value> = states
        .iter()
        .filter(|state| state.rotating)
        .map(|state| {
            let left: u64 = rows
                .iter()
                .filter(|(ns, v, _)| *ns == state.namespace && *v != state.version)
                .map(|(_, _, n)| n)
                .sum();
            json!({
                "namespace": state.namespace,
                "to_version": state.version,
                "paused": state.paused,
                "moved": state.moved,
                "left": left,
            })
        })
        .collect();
    let last_backup = last_backup.map(crate::audit::format_time);
    let vault = match super::healthcheck::readiness(&config, None) {
        Ok((url, code, body)) => json!({
            "running": true,
            "url": url,
            "ready": code.is_success(),
            "uptime_seconds": body.get("uptime_seconds").cloned().unwrap_or(Value::Null),
            "checks": body.get("checks").cloned().unwrap_or(Value::Null),
        }),
        Err(_) => json!({"running": false}),
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": {
            "path": config_path.display().to_string(),
            "sha256": hex::encode(Sha256::digest(&bytes)),
        },
        "data_dir": storage.data_dir.display().to_string(),
        "storage": match &storage.backend {
            crate::config::Backend::Sqlite => json!("sqlite"),
            crate::config::Backend::Postgres(settings) => json!(format!("postgres {} (schema {})", settings.url, settings.schema)),
        },
        "vault": vault,
        "master_keys": {
            "versions": versions,
            "current": versions.last(),
            "rows": per_version,
            "rotations": rotations,
        },
        "tokens": tokens,
        "audit_head": head.map(|h| h.seq),
        "last_backup": last_backup,
    }))
}

fn table(status: &Value) -> String {
    let vault = &status["vault"];
    let state = match (vault["running"].as_bool(), vault["ready"].as_bool()) {
        (Some(true), Some(true)) => format!(
            "ready ({}), up {} s",
            vault["url"].as_str().unwrap_or(""),
            vault["uptime_seconds"]
        ),
        (Some(true), _) => format!(
            "NOT READY ({}): {}",
            vault["url"].as_str().unwrap_or(""),
            vault["checks"]
        ),
        _ => "not running".to_owned(),
    };
    let keys = &status["master_keys"];
    let tokens: Vec<String> = status["tokens"]
        .as_object()
        .map(|m| m.iter().map(|(ns, n)| format!("{ns} {n}")).collect())
        .unwrap_or_default();
    let rotations: Vec<String> = keys["rotations"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|r| {
                    format!(
                        "{} to v{}{}: {} moved, {} left",
                        r["namespace"].as_str().unwrap_or(""),
                        r["to_version"],
                        if r["paused"] == true { " (paused)" } else { "" },
                        r["moved"],
                        r["left"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "version       {}\nconfiguration {} (sha256 {})\ndata          {}\nvault         {state}\nmaster keys   {} (current v{}; rows {})\nrotations     {}\ntokens        {}\naudit head    {}\nlast backup   {}\n",
        status["version"].as_str().unwrap_or(""),
        status["config"]["path"].as_str().unwrap_or(""),
        &status["config"]["sha256"].as_str().unwrap_or("")[..16],
        status["data_dir"].as_str().unwrap_or(""),
        keys["versions"],
        keys["current"],
        keys["rows"],
        if rotations.is_empty() { "none".to_owned() } else { rotations.join("; ") },
        if tokens.is_empty() { "none".to_owned() } else { tokens.join(", ") },
        status["audit_head"].as_u64().map_or("none".to_owned(), |s| s.to_string()),
        status["last_backup"].as_str().unwrap_or("never"),
    )
}

/// What `status` reads from the store, whichever it is.
pub(super) struct Facts {
    pub(super) versions: Vec<u32>,
    pub(super) rows: Vec<(String, u32, u64)>,
    pub(super) states: Vec<crate::store::KeyState>,
    pub(super) head: Option<crate::audit::Head>,
    pub(super) last_backup: Option<i64>,
}

pub(super) fn sqlite_facts(storage: &crate::config::StorageSettings) -> Result<Facts, CliError> {
    Ok(Facts {
        versions: crate::crypto::wrapping::versions_on_disk(&storage.keyring_path())
            .map_err(|error| anyhow::anyhow!("{error}"))?,
        rows: crate::store::rows_per_key_version_offline(&storage.database_path())
            .context("cannot read vault.db")?,
        states: crate::store::key_states_offline(&storage.database_path())
            .context("cannot read vault.db")?,
        head: crate::store::recorded_audit_head_offline(&storage.database_path())
            .context("cannot read vault.db")?,
        last_backup: crate::store::trail::last_of_action(&storage.audit_path(), "backup_create")
            .context("cannot read the audit trail")?,
    })
}

fn postgres_facts(settings: &crate::config::PostgresSettings) -> Result<Facts, CliError> {
    postgres_facts_of(&*super::storage::connect_postgres(settings)?)
}

/// [`Facts`] read from a PostgreSQL store.
pub(super) fn postgres_facts_of(pg: &crate::store::pg::PgStore) -> Result<Facts, CliError> {
    let failed = |error: crate::store::pg::PgError| anyhow::anyhow!("{error}");
    let document = pg.keyring().map_err(failed)?.ok_or_else(|| {
        anyhow::anyhow!("no keyring is stored in the database\nhint: run `tokenvault init` once")
    })?;
    Ok(Facts {
        versions: document
            .versions(super::KEYRING_IN_DATABASE)
            .map_err(|error| anyhow::anyhow!("{error}"))?,
        rows: pg.rows_per_key_version().map_err(failed)?,
        states: pg.key_states().map_err(failed)?,
        head: pg.recorded_audit_head().map_err(failed)?,
        last_backup: pg.last_of_action("backup_create").map_err(failed)?,
    })
}
