//! Detokenization budgets, persisted: what each budgeted client has spent
//! in its current minute and day, written with the reveal's audit record
//! and read at start.

use rusqlite::{params, Connection};

/// A client's spending in its current windows (minute and day numbers since
/// the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spending {
    /// Minute number.
    pub minute: u64,
    /// Values revealed in it.
    pub in_minute: u64,
    /// Day number.
    pub day: u64,
    /// Values revealed in it.
    pub in_day: u64,
}

/// Saves `client`'s spending. Writes from concurrent reveals may arrive out
/// of order: within one window the larger count wins.
pub(super) fn save(db: &Connection, client: &str, s: &Spending) -> rusqlite::Result<()> {
    let as_sql = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    db.prepare_cached(
        "INSERT INTO budget_spent (client, minute, spent_minute, day, spent_day)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (client) DO UPDATE SET
             spent_minute = CASE WHEN minute = excluded.minute
                 THEN max(spent_minute, excluded.spent_minute) ELSE excluded.spent_minute END,
             minute = max(minute, excluded.minute),
             spent_day = CASE WHEN day = excluded.day
                 THEN max(spent_day, excluded.spent_day) ELSE excluded.spent_day END,
             day = max(day, excluded.day)",
    )?
    .execute(params![
        client,
        as_sql(s.minute),
        as_sql(s.in_minute),
        as_sql(s.day),
        as_sql(s.in_day)
    ])?;
    Ok(())
}

/// Every client's saved spending.
pub(super) fn load(db: &Connection) -> rusqlite::Result<Vec<(String, Spending)>> {
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    db.prepare("SELECT client, minute, spent_minute, day, spent_day FROM budget_spent")?
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                Spending {
                    minute: as_u64(row.get(1)?),
                    in_minute: as_u64(row.get(2)?),
                    day: as_u64(row.get(3)?),
                    in_day: as_u64(row.get(4)?),
                },
            ))
        })?
        .collect()
}
