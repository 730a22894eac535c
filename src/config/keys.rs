//! `[keys]` and secrets given by reference (files, environment variables,
//! systemd credentials).

#[allow(unused_imports)]
use super::*;

/// `[keys]`: where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KeySettings {
    /// An argon2id-stretched passphrase, read from a file or a variable.
    Passphrase(SecretRef),
    /// A 32-byte key file supplied by the customer.
    KeyFile(PathBuf),
    /// A key that lives only in memory (`serve --dev`); never from a file.
    Ephemeral,
}

/// A secret given by reference, never inline.
#[derive(Debug, Clone)]
pub enum SecretRef {
    /// Read from this file (mode 0600 or stricter).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

impl SecretRef {
    /// Reads the secret (a trailing newline in a file is dropped). The error
    /// names the file or variable, never the content.
    pub fn read(&self) -> Result<Zeroizing<String>, String> {
        match self {
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok(Zeroizing::new(
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                ))
            }
            Self::Env(name) => std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .map(Zeroizing::new)
                .ok_or_else(|| format!("environment variable {name} is not set")),
        }
    }
}

/// Where systemd puts the credentials of `LoadCredential=`.
pub const SYSTEMD_CREDENTIALS: &str = "/run/credentials/";

impl KeySettings {
    /// The secret file, when it is a systemd credential that exists only
    /// inside the running unit and this process is not that unit (so it
    /// cannot be checked here).
    pub fn unloaded_credential(&self) -> Option<&Path> {
        let path = match self {
            Self::Passphrase(SecretRef::File(path)) | Self::KeyFile(path) => path,
            _ => return None,
        };
        let inside_unit = std::env::var_os("CREDENTIALS_DIRECTORY").is_some();
        (path.starts_with(SYSTEMD_CREDENTIALS) && !inside_unit && !path.exists())
            .then_some(path.as_path())
    }

    /// Reads the key-encryption material this setting points at.
    pub fn kek_source(&self) -> Result<KekSource, Problem> {
        match self {
            Self::Passphrase(SecretRef::File(path)) => {
                check_secret_file("keys.passphrase_file", path)?;
                let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|error| {
                    Problem::new(
                        "keys.passphrase_file",
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?);
                // A trailing newline is an editor's, not the operator's.
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                Ok(KekSource::Passphrase(bytes))
            }
            Self::Passphrase(SecretRef::Env(name)) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => {
                    Ok(KekSource::Passphrase(Zeroizing::new(value.into_bytes())))
                }
                _ => Err(Problem::new(
                    "keys.passphrase_env",
                    format!("environment variable {name} is not set"),
                )
                .hint(format!(
                    "export {name} before starting tokenvault, or use passphrase_file"
                ))),
            },
            Self::KeyFile(path) => {
                check_secret_file("keys.key_file", path)?;
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|error| {
                    Problem::new(
                        "keys.key_file",
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?);
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Problem::new(
                        "keys.key_file",
                        format!("{} must hold exactly 32 raw bytes", path.display()),
                    )
                    .hint(format!(
                        "create one with: head -c 32 /dev/urandom > {}",
                        path.display()
                    ))
                })?;
                Ok(KekSource::KeyFile(Zeroizing::new(key)))
            }
            Self::Ephemeral => Err(Problem::new(
                "keys",
                "the in-memory key of --dev has no source to read",
            )),
        }
    }
}

/// Refuses a secret file that is missing or readable by group or others.
pub(super) fn check_secret_file(key: &str, path: &Path) -> Result<(), Problem> {
    let metadata = std::fs::metadata(path).map_err(|error| {
        Problem::new(key, format!("cannot read {}: {error}", path.display()))
            .hint("create the file, owned by the tokenvault user, with mode 600")
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Problem::new(
            key,
            format!(
                "{} is readable by group or others (mode {mode:o})",
                path.display()
            ),
        )
        .hint(format!("chmod 600 {}", path.display())));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct RawSecret {
    pub(super) env: Option<String>,
    pub(super) file: Option<PathBuf>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

#[derive(Deserialize)]
pub(super) struct RawKeys {
    pub(super) source: Option<String>,
    pub(super) passphrase_file: Option<PathBuf>,
    pub(super) passphrase_env: Option<String>,
    pub(super) key_file: Option<PathBuf>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawKeys {
    pub(super) fn validate(self, problems: &mut Vec<Problem>) -> Option<KeySettings> {
        unknown_keys(problems, "keys", &self.unknown);
        let settings = match self.source.as_deref() {
            Some("passphrase") => match (self.passphrase_file, self.passphrase_env) {
                (Some(file), None) => Some(KeySettings::Passphrase(SecretRef::File(file))),
                (None, Some(env)) => Some(KeySettings::Passphrase(SecretRef::Env(env))),
                _ => {
                    problems.push(Problem::new(
                        "keys.passphrase_file",
                        "source = \"passphrase\" needs exactly one of passphrase_file and passphrase_env",
                    ));
                    None
                }
            },
            Some("keyfile") => match self.key_file {
                Some(path) => Some(KeySettings::KeyFile(path)),
                None => {
                    problems.push(Problem::new(
                        "keys.key_file",
                        "source = \"keyfile\" needs key_file",
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(Problem::new(
                    "keys.source",
                    format!("`{other}` is not one of: passphrase, keyfile"),
                ));
                None
            }
            None => {
                problems.push(
                    Problem::new("keys.source", "missing")
                        .hint("set source = \"passphrase\" or \"keyfile\""),
                );
                None
            }
        }?;
        // Read (and permission-check) the secret now, so that `config check`
        // reports a bad secret file together with everything else; a systemd
        // credential exists only inside the running unit and is read there.
        if settings.unloaded_credential().is_none() {
            if let Err(problem) = settings.kek_source() {
                problems.push(problem);
            }
        }
        Some(settings)
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_passphrase_file_others_can_read_is_refused() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, BASE).unwrap();
            let KeySettings::Passphrase(SecretRef::File(path)) = &config.keys else {
                panic!("{:?}", config.keys);
            };
            assert!(config.keys.kek_source().is_ok());
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let problem = config.keys.kek_source().unwrap_err().to_string();
            assert!(problem.contains("keys.passphrase_file"), "{problem}");
            Ok(())
        });
    }

    #[test]
    fn a_passphrase_from_the_environment_and_never_inline() {
        Jail::expect_with(|jail| {
            let env = "[keys]\nsource = \"passphrase\"\npassphrase_env = \"VAULT_PASS\"\n";
            let dir = jail.directory().display().to_string();
            let text = format!("[storage]\ndata_dir = \"{dir}/data\"\n{env}{BASE}");
            jail.create_file("env.toml", &text)?;
            let unset = crate::config::load(&jail.directory().join("env.toml"))
                .unwrap_err()
                .to_string();
            assert!(unset.contains("VAULT_PASS is not set"), "{unset}");
            jail.set_env("VAULT_PASS", "a passphrase long enough");
            let config = crate::config::load(&jail.directory().join("env.toml")).unwrap();
            assert!(config.keys.kek_source().is_ok());
            let inline = text.replace(
                "passphrase_env = \"VAULT_PASS\"",
                "passphrase = \"hunter2 hunter2\"",
            );
            jail.create_file("inline.toml", &inline)?;
            let refused = crate::config::load(&jail.directory().join("inline.toml"))
                .unwrap_err()
                .to_string();
            assert!(refused.contains("keys.passphrase"), "{refused}");
            assert!(
                !refused.contains("hunter2"),
                "the secret is echoed: {refused}"
            );
            Ok(())
        });
    }
}
