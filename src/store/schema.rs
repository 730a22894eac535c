//! Numbered schema migrations of `vault.db`, applied at start-up.
//!
//! Each step has a name; the PostgreSQL store (`pg::schema`) has a step of
//! the same name at the same number, and a test keeps the two lists equal.

use rusqlite_migration::{Migrations, M};

/// Every migration, in order, with its name. Never edit one that has
/// shipped: add another (here and in `pg::schema`).
pub fn steps() -> Vec<(&'static str, M<'static>)> {
    vec![
        (
            "tokens",
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
        ),
        // The audit chain's newest sequence number and MAC, kept apart from
        // audit.db so that records cut off its end are detected.
        (
            "audit_head",
            M::up(
                "CREATE TABLE audit_head (
                 id  INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL,
                 mac BLOB    NOT NULL
             );",
            ),
        ),
        // Consent changes (append-only: the newest matching event decides),
        // and the callback message ids already accepted (replay protection
        // that survives a restart).
        (
            "consent",
            M::up(
                "CREATE TABLE consent_events (
                 id         INTEGER PRIMARY KEY,
                 namespace  TEXT    NOT NULL,
                 scope      TEXT    NOT NULL CHECK (scope IN ('token', 'subject')),
                 target     BLOB    NOT NULL,
                 purpose    TEXT    NOT NULL,
                 withdrawn  INTEGER NOT NULL,
                 changed_at INTEGER NOT NULL,
                 source     TEXT    NOT NULL
             );
             CREATE INDEX consent_by_target ON consent_events (namespace, scope, target);
             CREATE TABLE callback_messages (
                 callback   TEXT    NOT NULL,
                 message_id TEXT    NOT NULL,
                 expires_at INTEGER NOT NULL,
                 PRIMARY KEY (callback, message_id)
             ) WITHOUT ROWID;",
            ),
        ),
        // Message ids are accepted once across every callback, not once per
        // callback: the signature does not cover the path, so a message
        // accepted at one callback must not reveal again at another.
        (
            "callback_message_ids",
            M::up(
                "CREATE TABLE callback_message_ids (
                 message_id TEXT    NOT NULL PRIMARY KEY,
                 callback   TEXT    NOT NULL,
                 expires_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             INSERT OR IGNORE INTO callback_message_ids (message_id, callback, expires_at)
                 SELECT message_id, callback, max(expires_at) FROM callback_messages
                 GROUP BY message_id;
             DROP TABLE callback_messages;",
            ),
        ),
        // A value may belong to several data subjects (a shared family
        // phone, an email re-used after an account merge): links from token
        // to keyed subject hash replace the one column that kept the first
        // writer's subject.
        (
            "subject_links",
            M::up(
                "CREATE TABLE subject_links (
                 namespace    TEXT    NOT NULL,
                 subject_hash BLOB    NOT NULL,
                 token        TEXT    NOT NULL,
                 linked_at    INTEGER NOT NULL,
                 PRIMARY KEY (namespace, subject_hash, token)
             ) WITHOUT ROWID;
             CREATE INDEX subject_links_by_token ON subject_links (namespace, token);
             INSERT INTO subject_links (namespace, subject_hash, token, linked_at)
                 SELECT namespace, subject_hash, token, created_at FROM tokens
                 WHERE subject_hash IS NOT NULL;
             DROP INDEX tokens_by_subject;
             ALTER TABLE tokens DROP COLUMN subject_hash;",
            ),
        ),
        // The day each token was last used (tokenized or revealed), for
        // retention; existing rows count as used the day they were made.
        (
            "used_day",
            M::up(
                "ALTER TABLE tokens ADD COLUMN used_day INTEGER NOT NULL DEFAULT 0;
             UPDATE tokens SET used_day = created_at / 86400;
             CREATE INDEX tokens_by_use ON tokens (namespace, class, used_day);",
            ),
        ),
        // That index cost a third of the insert rate for every class, while
        // only classes with retain_days need it: sweeps walk the table in
        // token order on a read connection instead.
        (
            "drop_tokens_by_use",
            M::up("DROP INDEX IF EXISTS tokens_by_use;"),
        ),
        // What each budgeted client has revealed in its current minute and
        // day, so that a restart does not refill a budget.
        (
            "budget_spent",
            M::up(
                "CREATE TABLE budget_spent (
                 client       TEXT    NOT NULL PRIMARY KEY,
                 minute       INTEGER NOT NULL,
                 spent_minute INTEGER NOT NULL,
                 day          INTEGER NOT NULL,
                 spent_day    INTEGER NOT NULL
             ) WITHOUT ROWID;",
            ),
        ),
        // Key rotation: the master key version each rotated namespace seals
        // with, and the progress of moving its rows there.
        (
            "namespace_keys",
            M::up(
                "CREATE TABLE namespace_keys (
                 namespace  TEXT    NOT NULL PRIMARY KEY,
                 version    INTEGER NOT NULL,
                 rotating   INTEGER NOT NULL,
                 paused     INTEGER NOT NULL,
                 moved      INTEGER NOT NULL,
                 rate       INTEGER NOT NULL,
                 changed_at INTEGER NOT NULL
             ) WITHOUT ROWID;",
            ),
        ),
    ]
}

/// The names of the steps, in order.
pub fn step_names() -> Vec<&'static str> {
    steps().into_iter().map(|(name, _)| name).collect()
}

/// The migrations of `vault.db`.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(steps().into_iter().map(|(_, step)| step).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }

    /// A store written before subject links (version 4) keeps every row,
    /// and each row's subject becomes a link.
    #[test]
    fn a_version_4_store_moves_its_subjects_into_links() {
        let mut db = rusqlite::Connection::open_in_memory().unwrap();
        super::migrations().to_version(&mut db, 4).unwrap();
        db.execute_batch(
            "INSERT INTO tokens (namespace, token, class, key_version, sealed, blind_index, subject_hash, created_at)
             VALUES ('retail', 'T1', 'email', 1, x'01', x'aa', x'0102', 86400 * 3),
                    ('retail', 'T2', 'name', 1, x'02', NULL, NULL, 86400 * 5);",
        )
        .unwrap();
        super::migrations().to_latest(&mut db).unwrap();
        let rows: Vec<(String, i64)> = db
            .prepare("SELECT token, used_day FROM tokens ORDER BY token")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("T1".to_owned(), 3), ("T2".to_owned(), 5)]);
        let links: Vec<(Vec<u8>, String)> = db
            .prepare("SELECT subject_hash, token FROM subject_links")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(links, [(vec![1, 2], "T1".to_owned())]);
        let columns: Vec<String> = db
            .prepare("SELECT name FROM pragma_table_info('tokens')")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!columns.contains(&"subject_hash".to_owned()), "{columns:?}");
    }
}
