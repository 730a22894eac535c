//! Data subjects: links from tokens to the keyed hashes of the customers
//! whose values they are (a value may belong to several), and the
//! per-subject writes (link, forget).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

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
    /// Rectification: the token's value replaced, the token kept.
    Correct(Correction),
}

/// A new value for one of a subject's tokens, sealed by the engine.
#[derive(Debug, Clone)]
pub struct Correction {
    /// Namespace of the token.
    pub namespace: String,
    /// The subject the token must belong to (and only to).
    pub subject: SubjectHash,
    /// The token.
    pub token: String,
    /// Its class (checked against the stored row).
    pub class: String,
    /// Master key version of `sealed`.
    pub key_version: u32,
    /// The new value, sealed.
    pub sealed: Vec<u8>,
    /// The new value's blind index, for a deterministic class.
    pub blind_index: Option<SubjectHash>,
}

/// Why a correction was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorrectionRefused {
    /// The token is not linked to the subject (or does not exist).
    #[error("the token is not one of this subject's")]
    NotTheSubjects,
    /// Other subjects share the token: one of them cannot change it for all.
    #[error("other subjects share this token; it cannot be corrected for one of them")]
    Shared,
    /// Another token already stands for the new value.
    #[error("the new value already has another token")]
    ValueHasAnotherToken,
}

impl CorrectionRefused {
    /// The audit record's reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotTheSubjects => "not_the_subjects_token",
            Self::Shared => "shared_token",
            Self::ValueHasAnotherToken => "value_has_another_token",
        }
    }
}

/// What a [`SubjectWrite`] did.
#[derive(Debug, Clone)]
pub enum SubjectOutcome {
    /// Links written.
    Linked,
    /// A subject erased.
    Erased(Erasure),
    /// A correction applied, or why not.
    Corrected(Result<(), CorrectionRefused>),
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
pub(super) fn apply(
    db: &Connection,
    write: &SubjectWrite,
    now: i64,
) -> rusqlite::Result<SubjectOutcome> {
    match write {
        SubjectWrite::Link { namespace, links } => {
            for (token, subject) in links {
                link(db, namespace, subject, token, now)?;
            }
            Ok(SubjectOutcome::Linked)
        }
        SubjectWrite::Forget { namespace, subject } => {
            forget(db, namespace, subject).map(SubjectOutcome::Erased)
        }
        SubjectWrite::Correct(correction) => correct(db, correction).map(SubjectOutcome::Corrected),
    }
}

fn correct(db: &Connection, c: &Correction) -> rusqlite::Result<Result<(), CorrectionRefused>> {
    let subjects = tokens_subjects(db, &c.namespace, &c.token)?;
    if !subjects.iter().any(|s| s[..] == c.subject[..]) {
        return Ok(Err(CorrectionRefused::NotTheSubjects));
    }
    if subjects.len() > 1 {
        return Ok(Err(CorrectionRefused::Shared));
    }
    if let Some(index) = &c.blind_index {
        let holder: Option<String> = db
            .prepare_cached(
                "SELECT token FROM tokens WHERE namespace = ?1 AND class = ?2 AND blind_index = ?3",
            )?
            .query_row(params![c.namespace, c.class, &index[..]], |row| row.get(0))
            .optional()?;
        if holder.is_some_and(|holder| holder != c.token) {
            return Ok(Err(CorrectionRefused::ValueHasAnotherToken));
        }
    }
    // The old value's blind index goes with it: it maps to nothing now.
    let updated = db
        .prepare_cached(
            "UPDATE tokens SET sealed = ?3, key_version = ?4, blind_index = ?5
             WHERE namespace = ?1 AND token = ?2 AND class = ?6",
        )?
        .execute(params![
            c.namespace,
            c.token,
            c.sealed,
            c.key_version,
            c.blind_index.as_ref().map(|i| &i[..]),
            c.class,
        ])?;
    Ok(if updated == 1 {
        Ok(())
    } else {
        Err(CorrectionRefused::NotTheSubjects)
    })
}

fn tokens_subjects(
    db: &Connection,
    namespace: &str,
    token: &str,
) -> rusqlite::Result<Vec<Vec<u8>>> {
    db.prepare_cached("SELECT subject_hash FROM subject_links WHERE namespace = ?1 AND token = ?2")?
        .query_map(params![namespace, token], |row| row.get(0))?
        .collect()
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
