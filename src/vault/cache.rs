//! Known values answered from memory: a bounded map from a deterministic
//! value's blind index to its token, so that a value seen before costs no
//! read of the store.
//!
//! Correctness rests on one rule: an entry is used only while the store's
//! erasure generation ([`crate::store::Store::erasure_generation`]) is the
//! one read *before* the store lookup that produced it. The store moves the
//! generation after every commit that deletes or re-keys rows (forget,
//! subject erasure and correction, retention, rotation) and before it
//! answers any job of that commit. So:
//!
//! - an erased value is never answered from the cache once its erasure is
//!   acknowledged (every older entry is stale from then on);
//! - a lookup that raced an erasure is stored under the generation it read
//!   before, which is already stale, and is never used.
//!
//! Where rows can change without this process seeing it (PostgreSQL, with
//! other nodes), the store has no generation and nothing is cached.
//!
//! The key is the blind index alone: it is a keyed hash under a key of its
//! own per namespace and master key version, over the class and the value,
//! so two namespaces or classes never share one (short of a collision of
//! HMAC-SHA256). Entries hold tokens, never values.

use std::sync::Arc;

use crate::store::{Day, Found};

/// A cached lookup.
#[derive(Clone)]
struct Entry {
    token: Arc<str>,
    used_day: Day,
    generation: u64,
}

/// The cache; `None` inside when disabled (a capacity of 0).
pub(super) struct TokenCache(Option<moka::sync::Cache<[u8; 32], Entry>>);

impl TokenCache {
    /// A cache of at most `capacity` entries; 0 turns it off.
    pub(super) fn new(capacity: u64) -> Self {
        Self((capacity > 0).then(|| moka::sync::Cache::builder().max_capacity(capacity).build()))
    }

    /// The token stored for `index`, when a lookup made at `generation`
    /// found it.
    pub(super) fn get(&self, index: &[u8; 32], generation: u64) -> Option<Found> {
        let entry = self.0.as_ref()?.get(index)?;
        (entry.generation == generation).then(|| Found {
            token: entry.token.to_string(),
            used_day: entry.used_day,
        })
    }

    /// Remembers what a lookup begun at `generation` found.
    pub(super) fn put(&self, index: [u8; 32], found: &Found, generation: u64) {
        if let Some(cache) = &self.0 {
            cache.insert(
                index,
                Entry {
                    token: Arc::from(found.token.as_str()),
                    used_day: found.used_day,
                    generation,
                },
            );
        }
    }

    /// Whether the cache is on.
    pub(super) fn enabled(&self) -> bool {
        self.0.is_some()
    }
}
