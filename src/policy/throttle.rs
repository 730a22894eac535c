//! Failed authentications cost the attacker, not the vault. Every argon2
//! verification (64 MiB, about 100 ms) of a key that is not cached counts as
//! an attempt: past a rate of attempts for one claimed client from one
//! source, or for one claimed client from anywhere, and while one attempt
//! of the same client from the same source is still being verified, further
//! attempts are refused at once (429 with `Retry-After`). So a flood keeps
//! at most one verification per source and client in the queue, and good
//! clients wait for a slot behind a handful at most. Keys already verified
//! (cached) are never throttled.
//!
//! The source dimension is combined with the claimed client, so that one
//! address shared by many clients (a NAT, a sidecar) that floods with one
//! client's name does not lock the others out. The rates are `[limits]`
//! settings (`auth_failures_per_source`, `auth_failures_per_client`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Distinct keys the blocked list holds (memory bound).
const BLOCKED_CAPACITY: u64 = 100_000;

/// The claimed client as a limiter key: a configured name, or one shared
/// key for every name that is not (so random names cannot grow the maps).
type Claimed = String;

/// Counts failures and says who is throttled.
pub struct Throttle {
    by_source: DefaultKeyedRateLimiter<(Option<IpAddr>, Claimed)>,
    by_client: DefaultKeyedRateLimiter<Claimed>,
    blocked: moka::sync::Cache<(Option<IpAddr>, Claimed), Instant>,
    in_flight: std::sync::Mutex<std::collections::HashSet<(Option<IpAddr>, Claimed)>>,
    clock: DefaultClock,
}

/// Why an attempt may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An attempt of the same source and client is being verified.
    Busy,
    /// Past a limit: try again after this long.
    Throttled(Duration),
}

/// An attempt under way; dropping it lets the next one of its source and
/// client in.
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    pair: (Option<IpAddr>, Claimed),
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.throttle
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pair);
    }
}

impl Throttle {
    /// A throttle allowing `per_source` failures per minute per source and
    /// claimed client, and `per_client` per claimed client.
    pub fn new(per_source: u32, per_client: u32) -> Self {
        let quota =
            |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        Self {
            by_source: RateLimiter::keyed(quota(per_source)),
            by_client: RateLimiter::keyed(quota(per_client)),
            blocked: moka::sync::Cache::builder()
                .max_capacity(BLOCKED_CAPACITY)
                .time_to_live(Duration::from_secs(60))
                .build(),
            in_flight: Default::default(),
            clock: DefaultClock::default(),
        }
    }

    /// How long `claimed` from `source` must wait, if it is throttled now.
    pub fn retry_after(&self, source: Option<IpAddr>, claimed: &str) -> Option<Duration> {
        let now = Instant::now();
        [
            self.blocked.get(&(source, claimed.to_owned())),
            self.blocked.get(&(None, format!("*{claimed}"))),
        ]
        .into_iter()
        .flatten()
        .filter(|until| *until > now)
        .max()
        .map(|until| until - now)
    }

    /// Starts a verification of `claimed` from `source`, or says why not:
    /// an attempt of the pair is still under way (the caller may wait for
    /// it: it may verify this very key), or the pair or client is throttled
    /// (for how long).
    pub fn begin(&self, source: Option<IpAddr>, claimed: &str) -> Result<Attempt<'_>, Refused> {
        if let Some(wait) = self.retry_after(source, claimed) {
            return Err(Refused::Throttled(wait));
        }
        let pair = (source, claimed.to_owned());
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.len() >= BLOCKED_CAPACITY as usize {
                return Err(Refused::Throttled(Duration::from_secs(1)));
            }
            if !in_flight.insert(pair.clone()) {
                return Err(Refused::Busy);
            }
        }
        let attempt = Attempt {
            throttle: self,
            pair: pair.clone(),
        };
        let mut wait = None;
        if let Err(not_until) = self.by_source.check_key(&pair) {
            let until = not_until.wait_time_from(self.clock.now());
            self.blocked.insert(pair, Instant::now() + until);
            wait = Some(until);
        }
        if let Err(not_until) = self.by_client.check_key(&claimed.to_owned()) {
            let until = not_until.wait_time_from(self.clock.now());
            self.blocked
                .insert((None, format!("*{claimed}")), Instant::now() + until);
            wait = Some(wait.map_or(until, |w: Duration| w.max(until)));
        }
        // Forget limiter state of keys that have recovered, so that many
        // sources do not grow the maps without bound.
        if self.by_source.len() > 10_000 {
            self.by_source.retain_recent();
            self.by_source.shrink_to_fit();
        }
        match wait {
            Some(wait) => Err(Refused::Throttled(wait.max(Duration::from_secs(1)))),
            None => Ok(attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_past_the_limit_throttle_the_pair_then_the_client() {
        let throttle = Throttle::new(3, 5);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(throttle.begin(a, "crm").is_ok());
        }
        let Some(Refused::Throttled(wait)) = throttle.begin(a, "crm").err() else {
            panic!("the fourth attempt is throttled");
        };
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60));
        assert!(throttle.retry_after(a, "crm").is_some());
        // Another client from the same source, and the same client from
        // another source, are not throttled by the pair.
        assert!(throttle.begin(a, "admin").is_ok());
        assert!(throttle.begin(b, "crm").is_ok());
        // Past the client's own limit, every source waits.
        assert!(throttle.begin(b, "crm").is_err());
        assert!(throttle
            .retry_after(Some(IpAddr::from([10, 0, 0, 3])), "crm")
            .is_some());
        assert!(throttle.begin(b, "admin").is_ok());
    }

    #[test]
    fn one_attempt_per_source_and_client_at_a_time() {
        let throttle = Throttle::new(100, 100);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let first = throttle.begin(a, "crm").ok().unwrap();
        assert_eq!(throttle.begin(a, "crm").err(), Some(Refused::Busy));
        assert!(throttle.begin(a, "admin").is_ok());
        drop(first);
        assert!(throttle.begin(a, "crm").is_ok());
    }
}
