//! `tokenvault client new`

use anyhow::anyhow;

use super::CliError;
use crate::config::valid_name;
use crate::crypto::password::{hash_api_key, new_api_key};

/// Mints an API key, prints it once, and prints the TOML snippet holding only
/// its argon2id hash.
pub fn new(name: &str, role: &str) -> Result<(), CliError> {
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
