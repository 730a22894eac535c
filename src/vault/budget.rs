//! Per-client detokenization budgets: values revealed per minute and per
//! day, in fixed windows counted in memory. A stolen worker credential can
//! then reveal at most a budget's worth before the vault answers 429. The
//! counters restart with the process; only the vault's operator can do that.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::policy::Budget;

#[derive(Default)]
struct Spent {
    minute: u64,
    in_minute: u64,
    day: u64,
    in_day: u64,
}

/// Every client's budget and what it has spent.
#[derive(Default)]
pub struct Budgets {
    limits: BTreeMap<String, Budget>,
    spent: Mutex<BTreeMap<String, Spent>>,
}

impl Budgets {
    /// Budgets for the clients that have one.
    pub fn new(limits: BTreeMap<String, Budget>) -> Self {
        Self {
            limits: limits
                .into_iter()
                .filter(|(_, b)| b.per_minute.is_some() || b.per_day.is_some())
                .collect(),
            spent: Mutex::default(),
        }
    }

    /// Spends `count` of `client`'s budget, all or nothing: false (and
    /// nothing spent) when it would go over either window.
    pub fn spend(&self, client: &str, count: u64) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.spend_at(client, count, now)
    }

    fn spend_at(&self, client: &str, count: u64, now: u64) -> bool {
        let Some(limit) = self.limits.get(client) else {
            return true;
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
            return false;
        }
        entry.in_minute += count;
        entry.in_day += count;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_refuse_all_or_nothing_and_roll_over() {
        let budgets = Budgets::new(BTreeMap::from([(
            "worker".to_owned(),
            Budget {
                per_minute: Some(5),
                per_day: Some(8),
            },
        )]));
        let t = 86_400 * 100;
        assert!(budgets.spend_at("worker", 3, t));
        assert!(!budgets.spend_at("worker", 3, t), "6 > 5 per minute");
        assert!(budgets.spend_at("worker", 2, t + 1));
        assert!(!budgets.spend_at("worker", 1, t + 2));
        assert!(budgets.spend_at("worker", 3, t + 60), "a new minute");
        assert!(!budgets.spend_at("worker", 1, t + 120), "8 per day spent");
        assert!(budgets.spend_at("worker", 5, t + 86_400), "a new day");
        assert!(budgets.spend_at("other", 1_000_000, t), "no budget set");
    }
}
