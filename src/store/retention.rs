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

/// One batch of a retention sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Namespace swept.
    pub namespace: String,
    /// Class swept.
    pub class: String,
    /// Rows last used before this day are deleted.
    pub before: Day,
    /// Most rows deleted in this batch (one small transaction).
    pub limit: u32,
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

/// Deletes one batch of idle rows (and their subject links); answers the
/// tokens deleted.
pub(super) fn sweep(db: &Connection, sweep: &Sweep) -> rusqlite::Result<Vec<String>> {
    let idle: Vec<String> = db
        .prepare_cached(
            "SELECT token FROM tokens
             WHERE namespace = ?1 AND class = ?2 AND used_day < ?3
             ORDER BY used_day LIMIT ?4",
        )?
        .query_map(
            params![sweep.namespace, sweep.class, sweep.before, sweep.limit],
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = db.prepare_cached("DELETE FROM tokens WHERE namespace = ?1 AND token = ?2")?;
    for token in &idle {
        delete.execute(params![sweep.namespace, token])?;
        super::subjects::unlink_token(db, &sweep.namespace, token)?;
    }
    Ok(idle)
}
