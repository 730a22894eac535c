//! `[limits]`: how much the vault lets one caller cost it, and how much
//! memory its caches may hold. Every setting has a default that suits one
//! node; docs/operations.md lists them with what each bounds.

use figment::providers::Env;
use figment::Figment;

use super::{extraction_problems, ConfigErrors, ENV_PREFIX};
use serde::Deserialize;

use super::{unknown_keys, Problem, Unknown};

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Failed authentications one source address may make for one claimed
    /// client per minute (also the burst) before it is answered 429.
    pub auth_failures_per_source: u32,
    /// Failed authentications for one claimed client from all sources
    /// together per minute.
    pub auth_failures_per_client: u32,
    /// Page cache of each of the server's connections to `vault.db` (one
    /// writer and four readers), in MiB.
    pub sqlite_cache_mib: u32,
    /// Verified API keys remembered (for ten minutes each), so that a
    /// client's next request skips the argon2id verification.
    pub auth_cache_entries: u32,
    /// Known values remembered (blind index to token) so that tokenizing
    /// them again reads nothing from the store. Each entry takes about 420
    /// bytes with the cache's bookkeeping (measured); it holds a token,
    /// never a value.
    pub token_cache_entries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_failures_per_source: 10,
            auth_failures_per_client: 60,
            sqlite_cache_mib: 16,
            auth_cache_entries: 10_000,
            token_cache_entries: 100_000,
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct RawLimits {
    pub(super) auth_failures_per_source: Option<u64>,
    pub(super) auth_failures_per_client: Option<u64>,
    pub(super) sqlite_cache_mib: Option<u64>,
    pub(super) auth_cache_entries: Option<u64>,
    pub(super) token_cache_entries: Option<u64>,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawLimits {
    pub(super) fn validate(self, problems: &mut Vec<Problem>) -> Limits {
        unknown_keys(problems, "limits", &self.unknown);
        let defaults = Limits::default();
        let mut count = |key: &str, value: Option<u64>, default: u32| match value {
            None => default,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n > 0 => n,
                _ => {
                    problems.push(Problem::new(
                        format!("limits.{key}"),
                        format!("must be from 1 to {}", u32::MAX),
                    ));
                    default
                }
            },
        };
        Limits {
            auth_failures_per_source: count(
                "auth_failures_per_source",
                self.auth_failures_per_source,
                defaults.auth_failures_per_source,
            ),
            auth_failures_per_client: count(
                "auth_failures_per_client",
                self.auth_failures_per_client,
                defaults.auth_failures_per_client,
            ),
            sqlite_cache_mib: count(
                "sqlite_cache_mib",
                self.sqlite_cache_mib,
                defaults.sqlite_cache_mib,
            ),
            auth_cache_entries: count(
                "auth_cache_entries",
                self.auth_cache_entries,
                defaults.auth_cache_entries,
            ),
            token_cache_entries: count(
                "token_cache_entries",
                self.token_cache_entries,
                defaults.token_cache_entries,
            ),
        }
    }
}

impl Limits {
    /// `[limits]` from `TOKENVAULT_LIMITS__*` alone, for `serve --dev`,
    /// which reads no file.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        #[derive(Deserialize, Default)]
        struct OnlyLimits {
            #[serde(default)]
            limits: RawLimits,
        }
        let raw: OnlyLimits = Figment::new()
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| key.as_str().to_ascii_lowercase().starts_with("limits__"))
                    .split("__"),
            )
            .extract()
            .map_err(extraction_problems)?;
        let mut problems = Vec::new();
        let limits = raw.limits.validate(&mut problems);
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    #[test]
    fn limits_come_from_the_file_or_the_environment() {
        use super::super::testing::*;
        Jail::expect_with(|jail| {
            let config = load_in(
                jail,
                &format!("[limits]\nauth_failures_per_source = 3\n{BASE}"),
            )
            .unwrap();
            assert_eq!(config.limits.auth_failures_per_source, 3);
            jail.set_env("TOKENVAULT_LIMITS__AUTH_FAILURES_PER_SOURCE", "7");
            assert_eq!(
                super::Limits::from_env().unwrap().auth_failures_per_source,
                7
            );
            jail.set_env("TOKENVAULT_LIMITS__SQLITE_CACHE_MIB", "0");
            assert!(super::Limits::from_env().is_err());
            Ok(())
        });
    }
}
