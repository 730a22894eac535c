//! Edited or swapped ciphertexts never detokenize to a wrong value.

use rusqlite::{params, Connection};

use crate::pg_cluster::PgCluster;
use crate::support::*;

/// The token rows of `setup`'s store, edited behind the vault's back.
enum Store<'a> {
    Sqlite(Connection),
    Postgres(&'a PgCluster),
}

impl<'a> Store<'a> {
    fn open(setup: &'a Setup) -> Self {
        match &setup.postgres {
            Some(cluster) => Self::Postgres(cluster),
            None => Self::Sqlite(Connection::open(setup.data_dir.join("vault.db")).unwrap()),
        }
    }

    fn sealed(&mut self, token: &str) -> Vec<u8> {
        match self {
            Self::Sqlite(db) => db
                .query_row(
                    "SELECT sealed FROM tokens WHERE namespace = 'retail' AND token = ?1",
                    params![token],
                    |r| r.get(0),
                )
                .unwrap(),
            Self::Postgres(cluster) => hex::decode(
                cluster
                    .psql_in(
                        "vault",
                        &format!(
                            "SELECT encode(sealed, 'hex') FROM tokenvault.tokens \
                             WHERE namespace = 'retail' AND token = '{token}'"
                        ),
                    )
                    .trim(),
            )
            .unwrap(),
        }
    }

    fn update(&mut self, token: &str, bytes: &[u8]) {
        let changed = match self {
            Self::Sqlite(db) => db
                .execute(
                    "UPDATE tokens SET sealed = ?1 WHERE namespace = 'retail' AND token = ?2",
                    params![bytes, token],
                )
                .unwrap(),
            Self::Postgres(cluster) => {
                let out = cluster.psql_in(
                    "vault",
                    &format!(
                        "WITH changed AS (UPDATE tokenvault.tokens SET sealed = '\\x{}'::bytea \
                         WHERE namespace = 'retail' AND token = '{token}' RETURNING 1) \
                         SELECT count(*) FROM changed",
                        hex::encode(bytes)
                    ),
                );
                out.trim().parse().unwrap()
            }
        };
        assert_eq!(changed, 1);
    }
}

#[test]
pub fn flipped_and_swapped_ciphertexts_fail_cleanly() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let values = [
        "flip.me@example.com",
        "swap.one@example.com",
        "swap.two@example.com",
        "intact@example.com",
    ];
    let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("email", *v)).collect();
    let tokens = tokenize(&server, "crm", "retail", &pairs);
    assert!(server.stop().success());

    // The database's own tools do the edits: sqlite on the file, or psql
    // as PostgreSQL's superuser.
    let mut store = Store::open(&setup);
    let mut flipped = store.sealed(&tokens[0]);
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let (one, two) = (store.sealed(&tokens[1]), store.sealed(&tokens[2]));
    store.update(&tokens[0], &flipped);
    store.update(&tokens[1], &two);
    store.update(&tokens[2], &one);
    drop(store);

    let server = setup.serve();
    let answers = detokenize(&server, "admin", "retail", "support", &tokens);
    for (i, answer) in answers.iter().take(3).enumerate() {
        assert_eq!(
            answer["error"]["code"], "integrity_error",
            "token {i}: {answer}"
        );
        assert!(
            answer.get("value").is_none(),
            "token {i} revealed something: {answer}"
        );
    }
    assert_eq!(answers[3]["value"], "intact@example.com");
    // The server keeps serving, reads and writes.
    let status = http()
        .get(server.url("/readyz"))
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
    let more = tokenize(
        &server,
        "crm",
        "retail",
        &[("email", "after.tamper@example.com")],
    );
    assert_eq!(
        detokenize(&server, "admin", "retail", "support", &more)[0]["value"],
        "after.tamper@example.com"
    );
    assert!(server.logs().contains("failed authentication"));
}
