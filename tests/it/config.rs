//! Configuration loading, `config check`, `init` and start-up refusals.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

#[test]
fn config_check_reports_every_problem_and_exits_78() {
    let setup = Setup::configure_keyed("lisen = \"oops\"", STANDARD, MasterKey::Passphrase);
    let text = fs::read_to_string(&setup.config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"not-an-address\"");
    fs::write(&setup.config, text).unwrap();
    let passphrase = setup.dir.path().join("passphrase");
    fs::set_permissions(&passphrase, fs::Permissions::from_mode(0o640)).unwrap();
    let out = setup.run(&["config", "check", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("server.lisen: unknown key"), "{stderr}");
    assert!(
        stderr.contains("server.listen: `not-an-address` is not an IP address and port"),
        "{stderr}"
    );
    assert!(stderr.contains("keys.passphrase_file"), "{stderr}");
    assert!(
        stderr.contains(&format!("hint: chmod 600 {}", passphrase.display())),
        "{stderr}"
    );
    assert!(stderr.contains("3 problems"), "{stderr}");
    // serve refuses the same file with the same status, before binding.
    let out = setup.run(&["serve", "--config"]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn config_check_accepts_a_good_file_and_env_overrides_apply() {
    let setup = Setup::configure("", STANDARD);
    let out = setup.run(&["config", "check", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK: 3 namespace(s)"));
    // TOKENVAULT_SERVER__LISTEN overrides [server] listen.
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&setup.config)
        .env("TOKENVAULT_SERVER__LISTEN", "bad-from-env")
        .env("TOKENVAULT_PASSPHRASE", "not a config key, ignored")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`bad-from-env`"));
    // Plain HTTP on a public address is refused unless explicitly allowed.
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&setup.config)
        .env("TOKENVAULT_SERVER__LISTEN", "0.0.0.0:8443")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain HTTP on non-loopback address"));
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&setup.config)
        .env("TOKENVAULT_SERVER__LISTEN", "0.0.0.0:8443")
        .env("TOKENVAULT_SERVER__INSECURE_ALLOW_PLAINTEXT", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn semantic_problems_are_reported_with_their_keys() {
    let body = r#"
[namespaces.retail.classes.phone]
normalize = "trim"
format = "phone"
[namespaces.retail.classes.email]
format = "emale"
[roles.worker]
operations = ["detokenize", "fly"]
namespaces = ["nowhere"]
reveal = "sometimes"
[limits]
auth_failures_per_source = 0
auth_failures_per_client = 5000000000
"#;
    let setup = Setup::configure("", body);
    let text = fs::read_to_string(&setup.config)
        .unwrap()
        .replace("role = \"backend\"", "role = \"ghost\"");
    fs::write(&setup.config, text + "\n[clients.broken]\nrole = \"worker\"\napi_key_hash = \"plaintext-key\"\nallow_from = [\"10.0.0.300/8\"]\n").unwrap();
    let out = setup.run(&["config", "check", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    for expected in [
        "namespaces.retail.classes.phone.normalize: format = \"phone\" needs normalize = \"e164\"",
        "namespaces.retail.classes.email.format: `emale` is not one of",
        "roles.worker.operations: `fly` is not one of",
        "roles.worker.namespaces: namespace `nowhere` is not defined",
        "roles.worker.purposes: a role with detokenize needs at least one allowed purpose",
        "roles.worker.reveal: `sometimes` is not one of: plain, masked",
        "clients.crm.role: role `ghost` is not defined",
        "clients.broken.api_key_hash: not an argon2id hash",
        "clients.broken.allow_from: `10.0.0.300/8` is not an IP address or CIDR block",
        "limits.auth_failures_per_source: must be from 1 to",
        "limits.auth_failures_per_client: must be from 1 to",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
pub fn init_refuses_to_overwrite_and_serve_needs_the_right_passphrase() {
    let setup = Setup::new_passphrase("");
    // The keyring as stored: keyring.json, or the row in PostgreSQL.
    let keyring = || match &setup.postgres {
        Some(cluster) => cluster
            .psql_in("vault", "SELECT md5(document) FROM tokenvault.keyring")
            .into_bytes(),
        None => {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&setup.data_dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
            fs::read(setup.data_dir.join("keyring.json")).unwrap()
        }
    };
    let before = keyring();
    assert!(before.len() > 16);
    let out = setup.run(&["init", "--config"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(keyring(), before);
    // Wrong passphrase: clear error with a hint, exit 1, nothing served.
    fs::write(
        setup.dir.path().join("passphrase"),
        "a different passphrase!",
    )
    .unwrap();
    let out = setup.run(&["serve", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot unwrap the master key") && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(!stderr.contains("a different passphrase"));
}

/// A customer-supplied key file opens the vault; other bytes in its place
/// do not.
#[test]
pub fn keyfile_source_works_end_to_end() {
    let setup = Setup::new("");
    let config = fs::read_to_string(&setup.config).unwrap();
    assert!(config.contains("source = \"keyfile\""), "{config}");
    let mut server = setup.serve();
    let tokens = tokenize(&server, "admin", "retail", &[("email", "byok@example.com")]);
    let values = detokenize(&server, "admin", "retail", "support", &tokens);
    assert_eq!(values[0]["value"], "byok@example.com");
    server.stop();
    fs::write(setup.dir.path().join("master.key"), [42u8; 32]).unwrap();
    let out = setup.run(&["serve", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot unwrap the master key"), "{stderr}");
}

#[test]
fn the_example_configuration_is_valid_apart_from_its_files() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vault.toml.example");
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // On a build machine the certificate, key and passphrase files do not
    // exist; nothing else may be wrong.
    let problems: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("- "))
        .collect();
    assert!(!problems.is_empty() || out.status.success(), "{stderr}");
    for problem in problems {
        let key = problem.split(':').next().unwrap();
        assert!(
            ["server.tls_cert", "server.tls_key", "keys.passphrase_file"].contains(&key),
            "unexpected problem in vault.toml.example: {problem}"
        );
    }
}

#[test]
fn a_bad_route_is_a_configuration_error_naming_the_route_and_rule() {
    let route = r#"
[[routes]]
name = "clevertap"
path_prefix = "/clevertap"
upstream = "http://in1.api.clevertap.com"
namespace = "retail"
clients = ["crm", "ghost"]
unselected_pii = "tokenize"
fields = [
  { select = "$.d[*].identity", class = "name" },
  { select = "$.d[", class = "email" },
  { select = "$.d[*].x", class = "fax" },
]
"#;
    let setup = Setup::configure("", &format!("{STANDARD}\n{route}"));
    let out = setup.run(&["config", "check", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for expected in [
        "routes.clevertap.fields[1].select: `$.d[` is not a valid selector",
        "routes.clevertap.fields[2].class: class `fax` is not defined in namespace `retail`",
        "routes.clevertap.upstream: `http://in1.api.clevertap.com` is not an https:// URL",
        "routes.clevertap.clients: client `ghost` is not defined",
        "routes.clevertap.unselected_class: unselected_pii = \"tokenize\" needs unselected_class",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_bad_clevertap_section_names_each_problem() {
    let section = r#"
[roles.dispatch]
operations = ["detokenize"]
namespaces = ["retail"]
purposes = ["sms_delivery"]
clevertap_purpose = "email_dispatch"

[clevertap]
enabled = true
namespace = "retail"
email_class = "mail"
phone_class = "name"
access_token_ttl_secs = 0
colour = "blue"
"#;
    let setup = Setup::configure("", &format!("{STANDARD}\n{section}"));
    let out = setup.run(&["config", "check", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for expected in [
        "clevertap.colour: unknown key",
        "clevertap.email_class: class `mail` is not defined in namespace `retail`",
        "clevertap.phone_class: class `name` must have normalize = \"e164\"",
        "clevertap.default_class: missing",
        "hint: name the class for values that are neither email nor phone; namespace `retail` has: account, card, email, name, note, phone",
        "clevertap.access_token_ttl_secs: must be between 1 and 86400",
        "roles.dispatch.clevertap_purpose: purpose `email_dispatch` is not in the role's purposes",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    // Off means off: the same section disabled is only checked for unknown keys.
    let off = "[clevertap]\nenabled = false\nnamespace = \"nowhere\"\n";
    let setup = Setup::configure("", &format!("{STANDARD}\n{off}"));
    let out = setup.run(&["config", "check", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_key_the_example_sets_is_in_the_configuration_reference() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = fs::read_to_string(root.join("vault.toml.example")).unwrap();
    let reference = fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    for line in example.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some((key, _)) = line.split_once(" = ") {
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.insert(key.to_owned());
            }
        }
    }
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !reference.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

/// A `[[callbacks]]` section signing with the secret in `secret`.
fn callback_section(name: &str, secret: &std::path::Path, tail: &str) -> String {
    format!(
        "\n[[callbacks]]\nname = \"{name}\"\npath = \"/callbacks/{name}\"\nnamespace = \"retail\"\npurpose = \"sms_delivery\"\nrole = \"sms_worker\"\nsecret_file = \"{}\"\nfields = [ {{ select = \"$.to\" }} ]\n{tail}\n",
        secret.display()
    )
}

fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn callbacks_that_share_a_secret_or_reveal_silently_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let forward = "forward = \"https://sms.example.net/send\"";
    let one = secret_file(dir.path(), "one", "whsec_c2VjcmV0IG9uZQ==\n");
    let copy = secret_file(dir.path(), "copy", "whsec_c2VjcmV0IG9uZQ==");
    let two = secret_file(dir.path(), "two", "whsec_c2VjcmV0IHR3bw==");
    let check = |sections: &str| {
        let setup = Setup::configure("", &format!("{STANDARD}{sections}"));
        let out = setup.run(&["config", "check", "--config"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // The same file, and another file with the same text.
    for shared in [&one, &copy] {
        let (code, text) = check(
            &[
                callback_section("sms", &one, forward),
                callback_section("echo", shared, forward),
            ]
            .concat(),
        );
        assert_eq!(code, Some(78), "{text}");
        assert!(
            text.contains("callbacks.echo.secret_file: shares its secret with callback `sms`"),
            "{text}"
        );
    }
    // Neither forward nor reveal_to_caller; and both.
    let (code, text) = check(&callback_section("echo", &two, ""));
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("callbacks.echo.forward"), "{text}");
    assert!(text.contains("reveal_to_caller = true"), "{text}");
    let (code, text) = check(&callback_section(
        "echo",
        &two,
        &format!("{forward}\nreveal_to_caller = true"),
    ));
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("callbacks.echo.reveal_to_caller"), "{text}");
    // Said explicitly: accepted, with a warning.
    let (code, text) = check(
        &[
            callback_section("sms", &one, forward),
            callback_section("echo", &two, "reveal_to_caller = true"),
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: callback echo answers revealed values to whoever calls it"),
        "{text}"
    );

    // Texts that differ but decode to one key: `serve` compares the keys.
    let raw = secret_file(dir.path(), "raw", "secret one");
    let setup = Setup::new_with(
        "",
        &[
            callback_section("sms", &one, forward),
            callback_section("echo", &raw, forward),
        ]
        .concat(),
    );
    let out = setup.run(&["serve", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("callback echo: shares its signing key with callback sms"),
        "{stderr}"
    );
}

#[test]
fn config_check_refuses_a_short_passphrase_as_init_does() {
    let setup = Setup::configure_keyed("", STANDARD, MasterKey::Passphrase);
    let passphrase = setup.dir.path().join("passphrase");
    fs::write(&passphrase, "too short").unwrap();
    let out = setup.run(&["config", "check", "--config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("keys.passphrase_file: the passphrase is shorter than 12 characters"),
        "{stderr}"
    );
    let out = setup.run(&["init", "--config"]);
    assert!(!out.status.success());
}

#[test]
pub fn client_list_shows_roles_auth_and_last_use() {
    let setup = Setup::new("");
    let server = setup.serve();
    tokenize(&server, "crm", "retail", &[("name", "Listed")]);
    drop(server);
    let out = setup.run(&["client", "list", "--format", "json", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let row = |name: &str| rows.iter().find(|r| r["client"] == name).unwrap().clone();
    assert_eq!(rows.len(), CLIENTS.len());
    assert_eq!(row("crm")["role"], "backend");
    assert_eq!(row("crm")["auth"], serde_json::json!(["api_key"]));
    assert!(row("crm")["last_use"].is_string(), "{rows:?}");
    assert!(row("auditor")["last_use"].is_null());
    assert_eq!(
        row("office")["allow_from"],
        serde_json::json!(["10.20.0.0/16"])
    );
    let out = setup.run(&["client", "list", "--config"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("CLIENT"), "{table}");
    assert!(table.contains("never"));
}
