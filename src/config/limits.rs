//! `[limits]`: how much the vault lets one caller cost it, and how much
//! memory its caches may hold. Every setting has a default that suits one
//! node; docs/operations.md lists them with what each bounds.

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_failures_per_source: 10,
            auth_failures_per_client: 60,
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct RawLimits {
    auth_failures_per_source: Option<u64>,
    auth_failures_per_client: Option<u64>,
    #[serde(flatten)]
    unknown: Unknown,
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
        }
    }
}
