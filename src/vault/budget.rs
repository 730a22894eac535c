//! Per-client detokenization budgets: values revealed per minute and per
//! day, in fixed windows. A stolen worker credential can then reveal at most
//! a budget's worth before the vault answers 429. The counters are kept in
//! memory and saved with each reveal's audit record, and read back at
//! start: a restart does not refill a budget.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::clock::{Clock, SystemClock};

use crate::policy::Budget;
use crate::store::Spending;

/// Every client's budget and what it has spent.
pub struct Budgets {
    limits: BTreeMap<String, Budget>,
    spent: Mutex<BTreeMap<String, Spending>>,
    /// The engine's clock: the windows are its minutes and days.
    clock: Arc<dyn Clock>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new(BTreeMap::new(), Arc::new(SystemClock))
    }
}

impl Budgets {
    /// Budgets for the clients that have one, in windows of `clock`.
    pub fn new(limits: BTreeMap<String, Budget>, clock: Arc<dyn Clock>) -> Self {
        Self {
            limits: limits
                .into_iter()
                .filter(|(_, b)| b.per_minute.is_some() || b.per_day.is_some())
                .collect(),
            spent: Mutex::default(),
            clock,
        }
    }

    /// Takes back what was saved (at start), for the clients that still
    /// have a budget.
    pub fn restore(&self, saved: Vec<(String, Spending)>) {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for (client, spending) in saved {
            if self.limits.contains_key(&client) {
                spent.insert(client, spending);
            }
        }
    }

    /// Spends `count` of `client`'s budget, all or nothing. `Err` (and
    /// nothing spent) when it would go over either window; otherwise the
    /// client's spending to save, when it has a budget.
    pub fn spend(&self, client: &str, count: u64) -> Result<Option<Spending>, Exceeded> {
        let now = u64::try_from(self.clock.now_us() / 1_000_000).unwrap_or(0);
        self.spend_at(client, count, now)
    }

    fn spend_at(&self, client: &str, count: u64, now: u64) -> Result<Option<Spending>, Exceeded> {
        let Some(limit) = self.limits.get(client) else {
            return Ok(None);
        };
        // A poisoned lock only means a panic between two integer updates.
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let entry = spent.entry(client.to_owned()).or_default();
        let (minute, day) = (now / 60, now / 86_400);
        if entry.minute != minute {
            entry.minute = minute;
            entry.in_minute = 0;
        }
        if entry.day != day {
            entry.day = day;
            entry.in_day = 0;
        }
        let fits = |used: u64, max: Option<u64>| max.is_none_or(|max| used + count <= max);
        if !fits(entry.in_minute, limit.per_minute) || !fits(entry.in_day, limit.per_day) {
            return Err(Exceeded);
        }
        entry.in_minute += count;
        entry.in_day += count;
        Ok(Some(*entry))
    }
}

/// A budget would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_refuse_all_or_nothing_and_roll_over() {
        let budgets = Budgets::new(
            BTreeMap::from([(
                "worker".to_owned(),
                Budget {
                    per_minute: Some(5),
                    per_day: Some(8),
                },
            )]),
            Arc::new(SystemClock),
        );
        let t = 86_400 * 100;
        assert!(budgets.spend_at("worker", 3, t).is_ok());
        assert!(
            budgets.spend_at("worker", 3, t).is_err(),
            "6 > 5 per minute"
        );
        assert!(budgets.spend_at("worker", 2, t + 1).is_ok());
        assert!(budgets.spend_at("worker", 1, t + 2).is_err());
        assert!(
            budgets.spend_at("worker", 3, t + 60).is_ok(),
            "a new minute"
        );
        assert!(
            budgets.spend_at("worker", 1, t + 120).is_err(),
            "8 per day spent"
        );
        assert!(
            budgets.spend_at("worker", 5, t + 86_400).is_ok(),
            "a new day"
        );
        assert_eq!(
            budgets.spend_at("other", 1_000_000, t),
            Ok(None),
            "no budget set"
        );
    }
}
