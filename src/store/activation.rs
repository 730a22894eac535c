//! Activation state in `vault.db`: consent events (append-only; the newest
//! event matching a token or subject and a purpose decides) and the message
//! ids of accepted callbacks (replay protection that survives a restart).

use rusqlite::{params, Connection, OptionalExtension};

/// What a consent event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentTarget {
    /// One token.
    Token(String),
    /// Every token stored with this subject (its keyed hash).
    Subject([u8; 32]),
}

impl ConsentTarget {
    pub(crate) fn scope(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::Subject(_) => "subject",
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Token(token) => token.as_bytes(),
            Self::Subject(hash) => hash,
        }
    }
}

/// A consent change.
#[derive(Debug, Clone)]
pub struct ConsentEvent {
    /// Namespace of the token or subject.
    pub namespace: String,
    /// Token or subject.
    pub target: ConsentTarget,
    /// Purpose withdrawn or restored; `*` for every purpose.
    pub purpose: String,
    /// True: withdrawn; false: restored.
    pub withdrawn: bool,
    /// When, in microseconds since the epoch.
    pub changed_at: i64,
    /// Who or what asked (a client name, `cli:<user>`, and a caller's note).
    pub source: String,
}

/// A stored consent event, as `consent show` prints it.
#[derive(Debug, Clone)]
pub struct ConsentRecord {
    /// `token` or `subject`.
    pub scope: String,
    /// Purpose or `*`.
    pub purpose: String,
    /// Withdrawn (true) or restored.
    pub withdrawn: bool,
    /// Microseconds since the epoch.
    pub changed_at: i64,
    /// Who or what asked.
    pub source: String,
}

/// A write of the activation tables, done by the store's writer.
#[derive(Debug)]
pub enum ActivationWrite {
    /// Append a consent event.
    Consent(ConsentEvent),
    /// Accept a callback message id; answers false if it was seen before,
    /// at this callback or any other.
    Claim {
        /// Callback name.
        callback: String,
        /// The message id from the signed headers.
        message_id: String,
        /// When the id may be forgotten (unix seconds): past the timestamp
        /// tolerance, a replay is refused by its timestamp anyway.
        expires_at: i64,
    },
    /// Forget a claimed message id (its delivery failed before reaching the
    /// provider, so the platform's retry must be accepted).
    Release {
        /// Callback name.
        callback: String,
        /// The message id.
        message_id: String,
    },
}

/// Applies one write inside the writer's transaction.
pub(super) fn apply(db: &Connection, write: &ActivationWrite, now: i64) -> rusqlite::Result<bool> {
    match write {
        ActivationWrite::Consent(event) => {
            db.prepare_cached(
                "INSERT INTO consent_events (namespace, scope, target, purpose, withdrawn, changed_at, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                event.namespace,
                event.target.scope(),
                event.target.bytes(),
                event.purpose,
                event.withdrawn,
                event.changed_at,
                event.source
            ])?;
            Ok(true)
        }
        ActivationWrite::Claim {
            callback,
            message_id,
            expires_at,
        } => {
            db.prepare_cached("DELETE FROM callback_message_ids WHERE expires_at < ?1")?
                .execute(params![now])?;
            // One id, one acceptance, whichever callback it arrives at.
            let inserted = db
                .prepare_cached(
                    "INSERT INTO callback_message_ids (message_id, callback, expires_at)
                     VALUES (?1, ?2, ?3) ON CONFLICT (message_id) DO NOTHING",
                )?
                .execute(params![message_id, callback, expires_at])?;
            Ok(inserted == 1)
        }
        ActivationWrite::Release {
            callback,
            message_id,
        } => {
            // Only the callback that claimed the id releases it.
            db.prepare_cached(
                "DELETE FROM callback_message_ids WHERE callback = ?1 AND message_id = ?2",
            )?
            .execute(params![callback, message_id])?;
            Ok(true)
        }
    }
}

/// True when the newest event for the token, or for any subject linked to
/// it, about `purpose` or `*`, withdrew it. Token events and subject events
/// are separate, and a withdrawal by any of them blocks: a shared value is
/// every linked subject's data.
pub(super) fn withdrawn(
    db: &Connection,
    namespace: &str,
    token: &str,
    purpose: &str,
    scopes: Scopes,
) -> rusqlite::Result<bool> {
    let mut newest = db.prepare_cached(
        "SELECT withdrawn FROM consent_events
         WHERE namespace = ?1 AND scope = ?2 AND target = ?3 AND purpose IN (?4, '*')
         ORDER BY id DESC LIMIT 1",
    )?;
    let token_withdrawn: Option<bool> = newest
        .query_row(
            params![namespace, "token", token.as_bytes(), purpose],
            |row| row.get(0),
        )
        .optional()?;
    if token_withdrawn == Some(true) {
        return Ok(true);
    }
    if !scopes.subject {
        return Ok(false);
    }
    for subject in subjects_of(db, namespace, token)? {
        let subject_withdrawn: Option<bool> = newest
            .query_row(params![namespace, "subject", subject, purpose], |row| {
                row.get(0)
            })
            .optional()?;
        if subject_withdrawn == Some(true) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Which scopes of consent events a namespace has any of.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scopes {
    pub(super) token: bool,
    pub(super) subject: bool,
}

/// Which scopes have events in `namespace` (two index lookups).
pub(super) fn scopes_with_events(db: &Connection, namespace: &str) -> rusqlite::Result<Scopes> {
    let mut any = db.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM consent_events WHERE namespace = ?1 AND scope = ?2)",
    )?;
    Ok(Scopes {
        token: any.query_row(params![namespace, "token"], |row| row.get(0))?,
        subject: any.query_row(params![namespace, "subject"], |row| row.get(0))?,
    })
}

/// Every consent event for `target`, oldest first.
pub(super) fn history(
    db: &Connection,
    namespace: &str,
    target: &ConsentTarget,
) -> rusqlite::Result<Vec<ConsentRecord>> {
    let mut statement = db.prepare_cached(
        "SELECT scope, purpose, withdrawn, changed_at, source FROM consent_events
         WHERE namespace = ?1 AND scope = ?2 AND target = ?3 ORDER BY id",
    )?;
    let rows = statement.query_map(params![namespace, target.scope(), target.bytes()], |row| {
        Ok(ConsentRecord {
            scope: row.get(0)?,
            purpose: row.get(1)?,
            withdrawn: row.get(2)?,
            changed_at: row.get(3)?,
            source: row.get(4)?,
        })
    })?;
    rows.collect()
}

/// The subject hashes linked to a token.
pub(super) fn subjects_of(
    db: &Connection,
    namespace: &str,
    token: &str,
) -> rusqlite::Result<Vec<Vec<u8>>> {
    db.prepare_cached("SELECT subject_hash FROM subject_links WHERE namespace = ?1 AND token = ?2")?
        .query_map(params![namespace, token], |row| row.get(0))?
        .collect()
}
