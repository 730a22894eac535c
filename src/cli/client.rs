//! `tokenvault client new|list|revoke`

use std::path::Path;

use anyhow::{anyhow, Context as _};

use super::CliError;
use crate::audit::{Action, Context, Outcome};
use crate::config::valid_name;
use crate::crypto::password::{hash_api_key, new_api_key};

/// Mints an API key, prints it once, and prints the TOML snippet holding only
/// its argon2id hash.
///
/// With a configuration, the role must exist there and the creation is
/// appended to that vault's audit trail (before the key is shown).
pub fn new(name: &str, role: &str, config_path: Option<&Path>) -> Result<(), CliError> {
    if !valid_name(name) {
        return Err(anyhow!(
            "client name `{name}` is not allowed\nhint: use lower-case letters, digits, `_` and `-`, at most 64"
        )
        .into());
    }
    if !valid_name(role) {
        return Err(anyhow!(
            "role name `{role}` is not allowed\nhint: use the name of a [roles.NAME] section"
        )
        .into());
    }
    match config_path {
        Some(path) => record_creation(path, name, role)?,
        None => eprintln!(
            "note: role `{role}` was not checked against a configuration\nhint: pass --config /etc/tokenvault/vault.toml to check the role and record the creation in the audit trail"
        ),
    }
    let key = new_api_key(name);
    let hash = hash_api_key(&key);
    println!(
        "API key for client `{name}` (shown once; give it to the client and keep no other copy):"
    );
    println!();
    println!("    {key}");
    println!();
    println!("Add this to vault.toml (it holds only the key's argon2id hash):");
    println!();
    println!("[clients.{name}]");
    println!("role = \"{role}\"");
    println!("api_key_hash = \"{hash}\"");
    println!("# allow_from = [\"10.0.0.0/8\"]   # optional source address allow-list");
    Ok(())
}

fn record_creation(config_path: &Path, name: &str, role: &str) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    if !config.roles.contains_key(role) {
        return Err(anyhow!(
            "role `{role}` is not defined in {}\nhint: add a [roles.{role}] section first",
            config_path.display()
        )
        .into());
    }
    let record = Context::cli(&format!("client new {name} --role {role}"))
        .record(Action::ClientCreate, Outcome::Ok);
    super::record_offline(&config, &[record], "the new client")?;
    Ok(())
}

/// Lists the configured clients with their role, authentication kinds,
/// allowed sources and last successful use.
pub fn list(config_path: &Path, format: &str) -> Result<(), CliError> {
    if format != "table" && format != "json" {
        return Err(anyhow!("--format must be table or json").into());
    }
    let config = crate::config::load(config_path)?;
    let last_use = match &config.storage.backend {
        crate::config::Backend::Sqlite => {
            crate::store::trail::last_use_by_actor(&config.storage.audit_path())
                .context("cannot read the audit trail")?
        }
        crate::config::Backend::Postgres(settings) => super::storage::connect_postgres(settings)?
            .last_use_by_actor()
            .map_err(|error| anyhow!("cannot read the audit trail: {error}"))?,
    };
    let rows: Vec<serde_json::Value> = config
        .clients
        .iter()
        .map(|(name, spec)| {
            let mut auth = Vec::new();
            if spec.api_key_hash.is_some() {
                auth.push("api_key".to_owned());
            }
            if let Some(identity) = &spec.cert_identity {
                auth.push(format!("certificate:{identity}"));
            }
            serde_json::json!({
                "client": name,
                "role": spec.role,
                "auth": auth,
                "allow_from": spec.allow_from.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "last_use": last_use.get(name).map(|t| crate::audit::format_time(*t)),
            })
        })
        .collect();
    let mut text = String::new();
    if format == "json" {
        for row in &rows {
            text.push_str(&row.to_string());
            text.push('\n');
        }
    } else {
        text.push_str(&format!(
            "{:<20} {:<20} {:<30} {:<20} {}\n",
            "CLIENT", "ROLE", "AUTH", "FROM", "LAST USE"
        ));
        for row in &rows {
            let list = |key: &str| {
                let items: Vec<&str> = row[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                if items.is_empty() {
                    "any".to_owned()
                } else {
                    items.join(",")
                }
            };
            text.push_str(&format!(
                "{:<20} {:<20} {:<30} {:<20} {}\n",
                row["client"].as_str().unwrap_or_default(),
                row["role"].as_str().unwrap_or_default(),
                list("auth"),
                list("allow_from"),
                row["last_use"].as_str().unwrap_or("never"),
            ));
        }
    }
    super::write_stdout(text.as_bytes())
}

/// Removes client `name` from the configuration file in place (with
/// toml_edit: comments, order and layout of everything else stay), after
/// checking that the file without it is still a valid configuration;
/// records the revocation; and sends SIGHUP to the vault serving the data
/// directory, which refuses the client from its next request.
pub fn revoke(name: &str, config_path: &Path) -> Result<(), CliError> {
    let config = crate::config::load(config_path)?;
    if !config.clients.contains_key(name) {
        return Err(anyhow!(
            "no client `{name}` in {}\nhint: `tokenvault client list` shows the configured clients",
            config_path.display()
        )
        .into());
    }
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {}", config_path.display()))?;
    let removed = document
        .get_mut("clients")
        .and_then(toml_edit::Item::as_table_like_mut)
        .and_then(|clients| clients.remove(name));
    if removed.is_none() {
        return Err(anyhow!(
            "client `{name}` is not written as a [clients.{name}] table in {}; remove it by hand",
            config_path.display()
        )
        .into());
    }
    // Written beside the file, checked, then renamed over it: never a
    // half-written or invalid configuration in place.
    let next = config_path.with_extension("toml.revoke");
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mode = std::fs::metadata(config_path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o640);
        let _ = std::fs::remove_file(&next);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&next)
            .with_context(|| format!("cannot write {}", next.display()))?;
        use std::io::Write as _;
        file.write_all(document.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", next.display()))?;
    }
    if let Err(errors) = crate::config::load(&next) {
        let _ = std::fs::remove_file(&next);
        return Err(anyhow!(
            "without client `{name}` the configuration would not load:\n{errors}\nhint: nothing was changed"
        )
        .into());
    }
    let record = Context::cli(&format!("client revoke {name}"))
        .record(Action::ClientRevoke, Outcome::Ok)
        .items(1);
    if let Err(error) = super::record_offline(&config, &[record], "the revocation") {
        // Nothing was changed: the configuration in place is the old one.
        let _ = std::fs::remove_file(&next);
        return Err(error);
    }
    std::fs::rename(&next, config_path)
        .with_context(|| format!("cannot replace {}", config_path.display()))?;
    match crate::store::serving_pid(&config.storage.data_dir) {
        Some(pid) => {
            if !crate::harden::signal_reload(pid) {
                return Err(anyhow!(
                    "client `{name}` removed from {}, but the running vault (pid {pid}) could not be told to reload\nhint: run `systemctl reload tokenvault`",
                    config_path.display()
                )
                .into());
            }
            println!(
                "client `{name}` removed from {}; the running vault (pid {pid}) reloads and refuses it from its next request",
                config_path.display()
            );
        }
        None => println!(
            "client `{name}` removed from {}; no vault is serving, it takes effect at the next start",
            config_path.display()
        ),
    }
    Ok(())
}
