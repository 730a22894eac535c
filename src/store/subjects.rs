//! Data subjects: links from tokens to the keyed hashes of the customers
//! whose values they are (a value may belong to several), and the
//! per-subject writes (link, forget).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

/// A subject's keyed hash (HMAC of its identifier under the namespace's
/// subject key); the identifier itself is never stored.
pub type SubjectHash = [u8; 32];

/// A per-subject change, committed with its audit record.
#[derive(Debug, Clone)]
pub enum SubjectWrite {
    /// Links each token to its subject (idempotent).
    Link {
        /// Namespace of the tokens.
        namespace: String,
        /// `(token, subject)` pairs.
        links: Vec<(String, SubjectHash)>,
    },
    /// Right to erasure: unlinks every token of the subject, and deletes
    /// (with its sealed value) every token no other subject is linked to.
    Forget {
        /// Namespace of the subject.
        namespace: String,
        /// The subject.
        subject: SubjectHash,
    },
}

/// What a [`SubjectWrite::Forget`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Tokens deleted with their values, per class.
    pub deleted: BTreeMap<String, u64>,
    /// The deleted tokens themselves (for the audit record).
    pub deleted_tokens: Vec<String>,
    /// Tokens kept because another subject is linked to them; only this
    /// subject's link was removed.
    pub unlinked_shared: u64,
    /// Sequence number of the write's first audit record, once committed.
    pub audit_seq: Option<u64>,
}

impl Erasure {
    /// Tokens deleted, all classes together.
    pub fn deleted_total(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// Links `token` to `subject` (no-op when linked already).
pub(super) fn link(
    db: &Connection,
    namespace: &str,
    subject: &SubjectHash,
    token: &str,
    now: i64,
) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT OR IGNORE INTO subject_links (namespace, subject_hash, token, linked_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![namespace, &subject[..], token, now])?;
    Ok(())
}

/// Applies `write` inside the writer's transaction.
pub(super) fn apply(db: &Connection, write: &SubjectWrite, now: i64) -> rusqlite::Result<Erasure> {
    match write {
        SubjectWrite::Link { namespace, links } => {
            for (token, subject) in links {
                link(db, namespace, subject, token, now)?;
            }
            Ok(Erasure::default())
        }
        SubjectWrite::Forget { namespace, subject } => forget(db, namespace, subject),
    }
}

fn forget(db: &Connection, namespace: &str, subject: &SubjectHash) -> rusqlite::Result<Erasure> {
    // The subject's tokens, each with its class and how many other
    // subjects share it.
    let linked: Vec<(String, Option<String>, i64)> = db
        .prepare_cached(
            "SELECT l.token, t.class,
                    (SELECT count(*) FROM subject_links o
                     WHERE o.namespace = l.namespace AND o.token = l.token
                       AND o.subject_hash != l.subject_hash)
             FROM subject_links l
             LEFT JOIN tokens t ON t.namespace = l.namespace AND t.token = l.token
             WHERE l.namespace = ?1 AND l.subject_hash = ?2",
        )?
        .query_map(params![namespace, &subject[..]], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut erasure = Erasure::default();
    let mut delete_token =
        db.prepare_cached("DELETE FROM tokens WHERE namespace = ?1 AND token = ?2")?;
    for (token, class, others) in &linked {
        if *others > 0 {
            erasure.unlinked_shared += 1;
            continue;
        }
        if delete_token.execute(params![namespace, token])? > 0 {
            if let Some(class) = class {
                *erasure.deleted.entry(class.clone()).or_default() += 1;
            }
            erasure.deleted_tokens.push(token.clone());
        }
    }
    db.prepare_cached("DELETE FROM subject_links WHERE namespace = ?1 AND subject_hash = ?2")?
        .execute(params![namespace, &subject[..]])?;
    Ok(erasure)
}

/// Deletes every link of a token (the token itself is being deleted).
pub(super) fn unlink_token(db: &Connection, namespace: &str, token: &str) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM subject_links WHERE namespace = ?1 AND token = ?2")?
        .execute(params![namespace, token])?;
    Ok(())
}

/// The tokens linked to `subject`.
pub(super) fn tokens_of(
    db: &Connection,
    namespace: &str,
    subject: &SubjectHash,
) -> rusqlite::Result<Vec<String>> {
    db.prepare_cached(
        "SELECT token FROM subject_links WHERE namespace = ?1 AND subject_hash = ?2 ORDER BY token",
    )?
    .query_map(params![namespace, &subject[..]], |row| row.get(0))?
    .collect()
}
