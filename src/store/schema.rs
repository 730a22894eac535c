//! Numbered schema migrations of `vault.db`, applied at start-up.

use rusqlite_migration::{Migrations, M};

/// Every migration, in order. Never edit one that has shipped: add another.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE tokens (
             namespace    TEXT    NOT NULL,
             token        TEXT    NOT NULL,
             class        TEXT    NOT NULL,
             key_version  INTEGER NOT NULL,
             sealed       BLOB    NOT NULL,
             blind_index  BLOB,
             subject_hash BLOB,
             created_at   INTEGER NOT NULL,
             PRIMARY KEY (namespace, token)
         ) WITHOUT ROWID;
         CREATE UNIQUE INDEX tokens_by_blind_index
             ON tokens (namespace, class, blind_index) WHERE blind_index IS NOT NULL;
         CREATE INDEX tokens_by_subject
             ON tokens (namespace, subject_hash) WHERE subject_hash IS NOT NULL;",
        ),
        // The audit chain's newest sequence number and MAC, kept apart from
        // audit.db so that records cut off its end are detected.
        M::up(
            "CREATE TABLE audit_head (
                 id  INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL,
                 mac BLOB    NOT NULL
             );",
        ),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }
}
