//! The PostgreSQL schema, in versioned steps that mirror SQLite's.
//!
//! Each component (`vault`, the tables of `vault.db`; `audit`, the trail of
//! `audit.db`) has the same steps, by name and number, as its SQLite
//! migrations: a step added on one side without the other fails a test
//! here and is refused by [`check_in_step`] before anything is migrated.
//! `keyring` exists only here: with SQLite the wrapped keyring is a file in
//! the data directory, with PostgreSQL every node must read the same one.
//!
//! The database keeps one row per component in `schema_versions`. Steps
//! are applied in one transaction under an advisory lock, so nodes starting
//! together migrate once and the others wait and find nothing to do.

/// A group of tables migrated together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Tokens, consent, callbacks, budgets, subjects, key rotation.
    Vault,
    /// The audit trail and its head.
    Audit,
    /// The wrapped keyring shared by every node.
    Keyring,
}

impl Component {
    /// Every component, in the order they are migrated.
    pub const ALL: [Component; 3] = [Component::Vault, Component::Audit, Component::Keyring];

    /// The name kept in `schema_versions`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vault => "vault",
            Self::Audit => "audit",
            Self::Keyring => "keyring",
        }
    }

    /// The steps, in order: name and SQL.
    pub fn steps(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Vault => VAULT,
            Self::Audit => AUDIT,
            Self::Keyring => KEYRING,
        }
    }

    /// The names SQLite's migrations give the same component, if it has
    /// any there.
    pub fn sqlite_step_names(self) -> Option<Vec<&'static str>> {
        match self {
            Self::Vault => Some(super::super::schema::step_names()),
            Self::Audit => Some(super::super::trail::step_names()),
            Self::Keyring => None,
        }
    }
}

/// Refuses a build whose PostgreSQL steps and SQLite steps differ.
pub fn check_in_step() -> Result<(), String> {
    for component in Component::ALL {
        let Some(sqlite) = component.sqlite_step_names() else {
            continue;
        };
        let postgres: Vec<&str> = component.steps().iter().map(|(name, _)| *name).collect();
        compare(component.name(), &sqlite, &postgres)?;
    }
    Ok(())
}

fn compare(component: &str, sqlite: &[&str], postgres: &[&str]) -> Result<(), String> {
    if sqlite == postgres {
        return Ok(());
    }
    let at = sqlite
        .iter()
        .zip(postgres)
        .position(|(a, b)| a != b)
        .unwrap_or(sqlite.len().min(postgres.len()));
    Err(format!(
        "the {component} schema steps differ from step {}: SQLite has {}, PostgreSQL has {}",
        at + 1,
        sqlite.get(at).copied().unwrap_or("nothing"),
        postgres.get(at).copied().unwrap_or("nothing"),
    ))
}

/// `schema_versions` itself, created before any step.
pub const VERSIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_versions (
    component  TEXT   NOT NULL PRIMARY KEY,
    version    INTEGER NOT NULL,
    step       TEXT   NOT NULL,
    changed_at BIGINT NOT NULL
)";

const VAULT: &[(&str, &str)] = &[
    (
        "tokens",
        "CREATE TABLE tokens (
             namespace    TEXT    NOT NULL,
             token        TEXT    NOT NULL,
             class        TEXT    NOT NULL,
             key_version  INTEGER NOT NULL,
             sealed       BYTEA   NOT NULL,
             blind_index  BYTEA,
             subject_hash BYTEA,
             created_at   BIGINT  NOT NULL,
             PRIMARY KEY (namespace, token)
         );
         CREATE UNIQUE INDEX tokens_by_blind_index
             ON tokens (namespace, class, blind_index) WHERE blind_index IS NOT NULL;
         CREATE INDEX tokens_by_subject
             ON tokens (namespace, subject_hash) WHERE subject_hash IS NOT NULL;",
    ),
    (
        "audit_head",
        "CREATE TABLE audit_head (
             id  INTEGER PRIMARY KEY CHECK (id = 1),
             seq BIGINT  NOT NULL,
             mac BYTEA   NOT NULL
         );",
    ),
    (
        "consent",
        "CREATE TABLE consent_events (
             id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             namespace  TEXT    NOT NULL,
             scope      TEXT    NOT NULL CHECK (scope IN ('token', 'subject')),
             target     BYTEA   NOT NULL,
             purpose    TEXT    NOT NULL,
             withdrawn  BOOLEAN NOT NULL,
             changed_at BIGINT  NOT NULL,
             source     TEXT    NOT NULL
         );
         CREATE INDEX consent_by_target ON consent_events (namespace, scope, target);
         CREATE TABLE callback_messages (
             callback   TEXT   NOT NULL,
             message_id TEXT   NOT NULL,
             expires_at BIGINT NOT NULL,
             PRIMARY KEY (callback, message_id)
         );",
    ),
    (
        "callback_message_ids",
        "CREATE TABLE callback_message_ids (
             message_id TEXT   NOT NULL PRIMARY KEY,
             callback   TEXT   NOT NULL,
             expires_at BIGINT NOT NULL
         );
         INSERT INTO callback_message_ids (message_id, callback, expires_at)
             SELECT message_id, min(callback), max(expires_at) FROM callback_messages
             GROUP BY message_id
             ON CONFLICT DO NOTHING;
         DROP TABLE callback_messages;",
    ),
    (
        "subject_links",
        "CREATE TABLE subject_links (
             namespace    TEXT   NOT NULL,
             subject_hash BYTEA  NOT NULL,
             token        TEXT   NOT NULL,
             linked_at    BIGINT NOT NULL,
             PRIMARY KEY (namespace, subject_hash, token)
         );
         CREATE INDEX subject_links_by_token ON subject_links (namespace, token);
         INSERT INTO subject_links (namespace, subject_hash, token, linked_at)
             SELECT namespace, subject_hash, token, created_at FROM tokens
             WHERE subject_hash IS NOT NULL;
         DROP INDEX tokens_by_subject;
         ALTER TABLE tokens DROP COLUMN subject_hash;",
    ),
    (
        "used_day",
        "ALTER TABLE tokens ADD COLUMN used_day BIGINT NOT NULL DEFAULT 0;
         UPDATE tokens SET used_day = created_at / 86400;
         CREATE INDEX tokens_by_use ON tokens (namespace, class, used_day);",
    ),
    ("drop_tokens_by_use", "DROP INDEX IF EXISTS tokens_by_use;"),
    (
        "budget_spent",
        "CREATE TABLE budget_spent (
             client       TEXT   NOT NULL PRIMARY KEY,
             minute       BIGINT NOT NULL,
             spent_minute BIGINT NOT NULL,
             day          BIGINT NOT NULL,
             spent_day    BIGINT NOT NULL
         );",
    ),
    (
        "namespace_keys",
        "CREATE TABLE namespace_keys (
             namespace  TEXT    NOT NULL PRIMARY KEY,
             version    INTEGER NOT NULL,
             rotating   BOOLEAN NOT NULL,
             paused     BOOLEAN NOT NULL,
             moved      BIGINT  NOT NULL,
             rate       BIGINT  NOT NULL,
             changed_at BIGINT  NOT NULL
         );",
    ),
];

const AUDIT: &[(&str, &str)] = &[
    (
        "records",
        "CREATE TABLE records (
             seq        BIGINT PRIMARY KEY,
             time_us    BIGINT NOT NULL,
             request_id TEXT   NOT NULL,
             actor      TEXT   NOT NULL,
             auth       TEXT   NOT NULL,
             source     TEXT,
             action     TEXT   NOT NULL,
             namespace  TEXT,
             route      TEXT,
             purpose    TEXT,
             item_count BIGINT NOT NULL,
             tokens     TEXT   NOT NULL,
             outcome    TEXT   NOT NULL,
             reason     TEXT,
             mac        BYTEA  NOT NULL
         );
         CREATE INDEX records_by_time ON records (time_us);",
    ),
    (
        "gap_columns",
        "ALTER TABLE records ADD COLUMN gap_first BIGINT;
         ALTER TABLE records ADD COLUMN gap_last BIGINT;",
    ),
    (
        "unrecognized",
        "ALTER TABLE records ADD COLUMN unrecognized TEXT;",
    ),
    ("file", "ALTER TABLE records ADD COLUMN file TEXT;"),
];

const KEYRING: &[(&str, &str)] = &[(
    "keyring",
    "CREATE TABLE keyring (
         id         INTEGER PRIMARY KEY CHECK (id = 1),
         document   BYTEA   NOT NULL,
         changed_at BIGINT  NOT NULL
     );",
)];

#[cfg(test)]
mod tests {
    use super::*;

    /// A step added to one backend and not the other fails here.
    #[test]
    fn both_backends_have_the_same_steps_in_the_same_order() {
        check_in_step().unwrap();
        assert_eq!(Component::Vault.steps().len(), 9);
        assert_eq!(Component::Audit.steps().len(), 4);
    }

    /// A step missing on one side, or two steps swapped, is named.
    #[test]
    fn a_mismatch_names_the_first_differing_step() {
        let error = compare("vault", &["a", "b", "c"], &["a", "b"]).unwrap_err();
        assert!(
            error.contains("step 3: SQLite has c, PostgreSQL has nothing"),
            "{error}"
        );
        let error = compare("audit", &["a", "b"], &["b", "a"]).unwrap_err();
        assert!(
            error.contains("step 1: SQLite has a, PostgreSQL has b"),
            "{error}"
        );
    }
}
