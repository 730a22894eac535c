//! Failed authentications, aggregated: an unauthenticated flood must not
//! fill the disk with one audit record per attempt (a full disk makes the
//! whole vault answer 503). The first refusal of a kind (source, reason,
//! actor, route) in an interval is recorded at once; the ones after it are
//! counted and recorded as one record per kind when the interval ends (or
//! the server stops), with the count in `item_count`. Every refusal of an
//! authenticated caller, and every access, stays a record of its own: those
//! do not come through here.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::audit::{self, Record};

/// Kinds held before an early flush, so that many sources cannot grow the
/// map without bound.
const MAX_KINDS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    source: Option<String>,
    reason: Option<String>,
    actor: String,
    route: Option<String>,
}

struct Counted {
    /// The first record of the kind in this interval, recorded already.
    first: Record,
    /// Refusals after it.
    more: u64,
}

/// Refused authentications waiting to be recorded.
#[derive(Default)]
pub struct Refusals(Mutex<HashMap<Kind, Counted>>);

/// What to do with a refusal.
pub enum Refusal {
    /// The first of its kind in this interval: append it now.
    Record(Record),
    /// Counted; appended with the others of its kind at the next flush.
    Counted,
    /// The map is full: flush it, then append this one.
    Flush(Record),
}

impl Refusals {
    /// Counts `record`, a refused authentication.
    pub fn add(&self, record: Record) -> Refusal {
        let kind = Kind {
            source: record.source.clone(),
            reason: record.reason.clone(),
            actor: record.actor.clone(),
            route: record.route.clone(),
        };
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counted) = pending.get_mut(&kind) {
            counted.more += 1;
            return Refusal::Counted;
        }
        if pending.len() >= MAX_KINDS {
            return Refusal::Flush(record);
        }
        pending.insert(
            kind,
            Counted {
                first: record.clone(),
                more: 0,
            },
        );
        Refusal::Record(record)
    }

    /// The records of the interval that ends now: one per kind that had
    /// refusals after its first, with their number as `item_count`.
    pub fn drain(&self) -> Vec<Record> {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let now = audit::now_us();
        pending
            .into_values()
            .filter(|counted| counted.more > 0)
            .map(|counted| {
                let mut record = counted.first;
                record.request_id = format!("aggregate:{}", record.request_id);
                record.time_us = now;
                record.item_count = counted.more;
                record
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Context, Outcome};

    fn refusal(source: &str, reason: &str) -> Record {
        let mut context = Context::cli("test");
        context.source = Some(source.to_owned());
        context
            .record(Action::Authenticate, Outcome::Denied)
            .reason(reason)
    }

    #[test]
    fn the_first_of_a_kind_is_recorded_and_the_rest_counted() {
        let refusals = Refusals::default();
        assert!(matches!(
            refusals.add(refusal("10.0.0.1", "invalid_credentials")),
            Refusal::Record(_)
        ));
        for _ in 0..9_999 {
            assert!(matches!(
                refusals.add(refusal("10.0.0.1", "invalid_credentials")),
                Refusal::Counted
            ));
        }
        assert!(matches!(
            refusals.add(refusal("10.0.0.2", "invalid_credentials")),
            Refusal::Record(_)
        ));
        let drained = refusals.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].item_count, 9_999);
        assert!(drained[0].request_id.starts_with("aggregate:"));
        assert!(refusals.drain().is_empty());
        // A new interval records its first again.
        assert!(matches!(
            refusals.add(refusal("10.0.0.1", "invalid_credentials")),
            Refusal::Record(_)
        ));
    }
}
