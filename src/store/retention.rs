//! Retention: each token row keeps the day it was last used (tokenized or
//! revealed), and rows of a class with `retain_days` that have not been used
//! for that long are deleted in small batches.

use rusqlite::{params, Connection};

/// A day number: days since 1970-01-01 (UTC).
pub type Day = i64;

/// Tokens used on `day`, to be marked so (only rows marked earlier are
/// written, so a token costs at most one write a day).
#[derive(Debug, Clone)]
pub struct Touch {
    /// Namespace of the tokens.
    pub namespace: String,
    /// The tokens.
    pub tokens: Vec<String>,
    /// The day they were used.
    pub day: Day,
}

/// One batch of a retention sweep: tokens a read found idle, deleted by
/// the writer if they are still idle.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Namespace swept.
    pub namespace: String,
    /// Rows last used before this day are deleted.
    pub before: Day,
    /// The candidates.
    pub tokens: Vec<String>,
}

/// Up to `limit` tokens of `class` last used before `before`, after the
/// token `after` in token order (a cursor, so that a sweep reads the table
/// once). Runs on a read connection.
pub(super) fn idle(
    db: &Connection,
    namespace: &str,
    class: &str,
    before: Day,
    after: &str,
    limit: u32,
) -> rusqlite::Result<Vec<String>> {
    db.prepare_cached(
        "SELECT token FROM tokens
         WHERE namespace = ?1 AND token > ?2 AND class = ?3 AND used_day < ?4
         ORDER BY token LIMIT ?5",
    )?
    .query_map(params![namespace, after, class, before, limit], |row| {
        row.get(0)
    })?
    .collect()
}

/// Marks `touch`'s tokens used on its day.
pub(super) fn touch(db: &Connection, touch: &Touch) -> rusqlite::Result<()> {
    let mut update = db.prepare_cached(
        "UPDATE tokens SET used_day = ?3 WHERE namespace = ?1 AND token = ?2 AND used_day < ?3",
    )?;
    for token in &touch.tokens {
        update.execute(params![touch.namespace, token, touch.day])?;
    }
    Ok(())
}

/// Deletes the sweep's tokens that are still idle (and their subject
/// links); answers the tokens deleted.
pub(super) fn sweep(db: &Connection, sweep: &Sweep) -> rusqlite::Result<Vec<String>> {
    let mut delete = db.prepare_cached(
        "DELETE FROM tokens WHERE namespace = ?1 AND token = ?2 AND used_day < ?3",
    )?;
    let mut deleted = Vec::new();
    for token in &sweep.tokens {
        if delete.execute(params![sweep.namespace, token, sweep.before])? > 0 {
            super::subjects::unlink_token(db, &sweep.namespace, token)?;
            deleted.push(token.clone());
        }
    }
    Ok(deleted)
}
