//! Checks across sections: callbacks that share a secret, client
//! certificates against the CA and each other.

#[allow(unused_imports)]
use super::*;

/// Refuses two callbacks that share a secret (the same file or variable, or
/// the same text): the Standard Webhooks signature covers the message id,
/// timestamp and body, not the path, so a message signed for one callback
/// would be genuine at the other. A secret that cannot be read here (a
/// systemd credential) is compared when the server builds its callbacks.
pub(super) fn check_callback_secrets(callbacks: &[CallbackSpec], problems: &mut Vec<Problem>) {
    let read: Vec<Option<Zeroizing<String>>> = callbacks
        .iter()
        .map(|spec| spec.secret.read().ok())
        .collect();
    for (i, spec) in callbacks.iter().enumerate() {
        let shared = callbacks[..i].iter().enumerate().find(|(j, earlier)| {
            let same_source = match (&spec.secret, &earlier.secret) {
                (SecretRef::File(a), SecretRef::File(b)) => {
                    a == b
                        || a.canonicalize()
                            .ok()
                            .is_some_and(|a| b.canonicalize().ok() == Some(a))
                }
                (SecretRef::Env(a), SecretRef::Env(b)) => a == b,
                _ => false,
            };
            same_source || (read[i].is_some() && read[i] == read[*j])
        });
        if let Some((_, earlier)) = shared {
            let key = match spec.secret {
                SecretRef::File(_) => "secret_file",
                SecretRef::Env(_) => "secret_env",
            };
            problems.push(
                Problem::new(
                    format!("callbacks.{}.{key}", spec.name),
                    format!(
                        "shares its secret with callback `{}`: the signature does not cover the path, so a message signed for one is genuine at the other",
                        earlier.name
                    ),
                )
                .hint("give every callback its own secret (and the platform each endpoint's)"),
            );
        }
    }
}

/// Client certificates need `tls_client_ca`, and one identity names one
/// client.
pub(super) fn check_client_certificates(
    mtls: bool,
    clients: &BTreeMap<String, ClientSpec>,
    routes: &[RouteSpec],
    callbacks: &[CallbackSpec],
    problems: &mut Vec<Problem>,
) {
    let hint = "set server.tls_client_ca to the CA that issues client certificates";
    let mut identities: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, client) in clients {
        let Some(identity) = &client.cert_identity else {
            continue;
        };
        if !mtls {
            problems.push(
                Problem::new(
                    format!("clients.{name}.cert_identity"),
                    "needs client certificates",
                )
                .hint(hint),
            );
        }
        if let Some(other) = identities.insert(identity, name) {
            problems.push(Problem::new(
                format!("clients.{name}.cert_identity"),
                format!("client `{other}` has the same identity"),
            ));
        }
    }
    if mtls {
        return;
    }
    let requiring = routes
        .iter()
        .filter(|r| r.require_client_cert)
        .map(|r| format!("routes.{}", r.name))
        .chain(
            callbacks
                .iter()
                .filter(|c| c.require_client_cert)
                .map(|c| format!("callbacks.{}", c.name)),
        );
    for section in requiring {
        problems.push(
            Problem::new(
                format!("{section}.require_client_cert"),
                "needs client certificates",
            )
            .hint(hint),
        );
    }
}
