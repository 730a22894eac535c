//! The engine's clock: days of use for retention come from it, so that
//! tests and simulations can move time without waiting.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::store::Day;

/// Microseconds per day.
const DAY_US: i64 = 86_400_000_000;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> i64;

    /// Days since the Unix epoch (UTC).
    fn today(&self) -> Day {
        self.now_us().div_euclid(DAY_US)
    }
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        crate::audit::now_us()
    }
}

/// A clock that moves only when told (tests, simulations).
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at the system's current time.
    pub fn new() -> Self {
        Self(AtomicI64::new(crate::audit::now_us()))
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance_secs(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1_000_000, Ordering::SeqCst);
    }

    /// Sets the clock to `seconds` since the epoch.
    pub fn set_secs(&self, seconds: i64) {
        self.0.store(seconds * 1_000_000, Ordering::SeqCst);
    }

    /// Moves the clock forward by `days`.
    pub fn advance_days(&self, days: i64) {
        self.0.fetch_add(days * DAY_US, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
