//! The whole file as serde reads it, and the one pass that turns it into
//! a [`Config`](super::Config), collecting every problem.

#[allow(unused_imports)]
use super::*;

#[derive(Deserialize, Default)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) storage: RawStorage,
    pub(super) keys: Option<RawKeys>,
    #[serde(default)]
    pub(super) namespaces: BTreeMap<String, RawNamespace>,
    #[serde(default)]
    pub(super) roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    pub(super) clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    pub(super) clevertap: Option<RawClevertap>,
    #[serde(default)]
    pub(super) callbacks: Vec<RawCallback>,
    #[serde(default)]
    pub(super) limits: limits::RawLimits,
    #[serde(flatten)]
    pub(super) unknown: Unknown,
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        unknown_keys(&mut problems, "", &self.unknown);
        let server = self.server.validate(&mut problems);
        let storage = self.storage.validate(&mut problems);
        let keys = match self.keys {
            Some(keys) => keys.validate(&mut problems),
            None => {
                problems.push(Problem::new("keys", "section is missing").hint(
                    "add [keys] with source = \"passphrase\" and passphrase_file, or source = \"keyfile\" and key_file",
                ));
                None
            }
        };
        let mut namespaces = BTreeMap::new();
        for (name, raw) in self.namespaces {
            if let Some(spec) = raw.validate(&name, &mut problems) {
                namespaces.insert(name, spec);
            }
        }
        let mut roles = BTreeMap::new();
        for (name, raw) in self.roles {
            if let Some(role) = raw.validate(&name, &namespaces, &mut problems) {
                roles.insert(name, role);
            }
        }
        let log = self.log.validate(&mut problems);
        let limits = self.limits.validate(&mut problems);
        let routes_raw = self.routes;
        let mut clients = BTreeMap::new();
        for (name, raw) in self.clients {
            if let Some(client) = raw.validate(&name, &roles, &mut problems) {
                clients.insert(name, client);
            }
        }
        let mut routes = Vec::new();
        let mut prefixes = BTreeSet::new();
        for (index, raw) in routes_raw.into_iter().enumerate() {
            if let Some(route) = raw.validate(index, &namespaces, &clients, &mut problems) {
                if !prefixes.insert(route.path_prefix.clone()) {
                    problems.push(Problem::new(
                        format!("routes.{}.path_prefix", route.name),
                        "another route has the same prefix",
                    ));
                }
                routes.push(route);
            }
        }
        let clevertap = self
            .clevertap
            .and_then(|raw| raw.validate(&namespaces, &mut problems));
        let mut callbacks: Vec<CallbackSpec> = Vec::new();
        for (index, raw) in self.callbacks.into_iter().enumerate() {
            if let Some(callback) = raw.validate(index, &namespaces, &roles, &mut problems) {
                let taken = callbacks
                    .iter()
                    .any(|c| c.path == callback.path || c.name == callback.name)
                    || routes
                        .iter()
                        .any(|r| callback.path.starts_with(r.path_prefix.as_str()));
                if taken {
                    problems.push(Problem::new(
                        format!("callbacks.{}.path", callback.name),
                        "another callback or route has the same name or path",
                    ));
                }
                callbacks.push(callback);
            }
        }
        check_callback_secrets(&callbacks, &mut problems);
        let mtls = server.as_ref().is_some_and(|s| s.client_ca.is_some());
        check_client_certificates(mtls, &clients, &routes, &callbacks, &mut problems);
        match (server, keys) {
            (Some(server), Some(keys)) if problems.is_empty() => Ok(Config {
                server,
                storage,
                keys,
                namespaces,
                roles,
                clients,
                log,
                routes,
                clevertap,
                callbacks,
                limits,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        Jail::expect_with(|jail| {
            let bad = format!(
                "[server]\nmax_body_bytes = 0\nbogus = 1\n{}",
                BASE.replace("role = \"backend\"", "role = \"nobody\"")
            );
            let refused = problems(load_in(jail, &bad));
            assert!(refused.len() >= 3, "{refused:?}");
            Ok(())
        });
    }
}
