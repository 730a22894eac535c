//! Edited or swapped ciphertexts never detokenize to a wrong value.

use rusqlite::{params, Connection};

use crate::support::*;

#[test]
fn flipped_and_swapped_ciphertexts_fail_cleanly() {
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

    let db = Connection::open(setup.data_dir.join("vault.db")).unwrap();
    let sealed = |token: &str| -> Vec<u8> {
        db.query_row(
            "SELECT sealed FROM tokens WHERE namespace = 'retail' AND token = ?1",
            params![token],
            |r| r.get(0),
        )
        .unwrap()
    };
    let mut flipped = sealed(&tokens[0]);
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let (one, two) = (sealed(&tokens[1]), sealed(&tokens[2]));
    let update = |token: &str, bytes: &[u8]| {
        let changed = db
            .execute(
                "UPDATE tokens SET sealed = ?1 WHERE namespace = 'retail' AND token = ?2",
                params![bytes, token],
            )
            .unwrap();
        assert_eq!(changed, 1);
    };
    update(&tokens[0], &flipped);
    update(&tokens[1], &two);
    update(&tokens[2], &one);
    drop(db);

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
