//! The engine's reads of the store, on blocking threads. A large batch (a
//! file run's) is cut into parts read at once on separate read
//! connections, so that every core looks values up rather than one; a
//! request's few items stay one read.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use super::{Vault, VaultError};
use crate::store::{Found, StoreError, SubjectHash};

/// Items from which a read is cut into parts: below it, a second hop to
/// the blocking pool costs more than it saves.
const SPLIT_FROM: usize = 1024;

impl Vault {
    /// The links among `links` that are not stored yet: a known value sent
    /// again for its subject (a file run repeated, a profile updated)
    /// needs no write, and the check runs on read connections. A link
    /// read as present and erased before the caller's answer is the same
    /// as one written just before that erasure.
    pub(super) async fn unlinked(
        &self,
        namespace: &str,
        links: Vec<(String, SubjectHash)>,
    ) -> Result<Vec<(String, SubjectHash)>, VaultError> {
        if links.is_empty() {
            return Ok(links);
        }
        let store = self.store.clone();
        let owned_namespace = namespace.to_owned();
        let cuts = 0..links.len();
        let links = Arc::new(links);
        let linked = self
            .read_in_parts(links.clone(), cuts, move |part| {
                store.linked(&owned_namespace, part)
            })
            .await?;
        Ok(links
            .iter()
            .zip(linked)
            .filter(|(_, linked)| !linked)
            .map(|(link, _)| link.clone())
            .collect())
    }

    /// The tokens stored under each `(class, blind index)`; the day of
    /// last use only for the `dated` classes. `values` gives how many
    /// consecutive lookups belong to each value: a value's lookups (one
    /// per key version during a rotation) are read in one snapshot, so
    /// that a row moving between versions is seen under one of them.
    pub(super) async fn find_by_blind_index(
        &self,
        namespace: &str,
        lookups: Vec<(String, [u8; 32])>,
        values: impl Iterator<Item = usize>,
        dated: Arc<BTreeSet<String>>,
    ) -> Result<Vec<Option<Found>>, VaultError> {
        let store = self.store.clone();
        let owned_namespace = namespace.to_owned();
        let cuts = values.scan(0, |start, count| {
            let at = *start;
            *start += count;
            Some(at)
        });
        self.read_in_parts(Arc::new(lookups), cuts, move |part| {
            let keys: Vec<(&str, [u8; 32])> = part
                .iter()
                .map(|(class, index)| (class.as_str(), *index))
                .collect();
            store.find_by_blind_index(&owned_namespace, &keys, &|class| dated.contains(class))
        })
        .await
    }

    /// Answers `read` over `items`, in order. A large batch is cut, at
    /// positions among `cuts` only, into twice as many parts as this
    /// machine has cores (at most one per read connection), each read at
    /// once on its own blocking thread. With one part per core, the caller
    /// (a file run reading its next batch and writing the one before) took
    /// a core from one part while the other core, its part done, waited:
    /// 20% of a known-value run's time (docs/performance.md).
    async fn read_in_parts<T, A>(
        &self,
        items: Arc<Vec<T>>,
        cuts: impl IntoIterator<Item = usize>,
        read: impl Fn(&[T]) -> Result<Vec<A>, StoreError> + Send + Sync + 'static,
    ) -> Result<Vec<A>, VaultError>
    where
        T: Send + Sync + 'static,
        A: Send + 'static,
    {
        // Asked once: the answer reads the cgroup's CPU limit from files.
        static CORES: OnceLock<usize> = OnceLock::new();
        let parts = if items.len() < SPLIT_FROM {
            1
        } else {
            let cores =
                *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
            (2 * cores).min(self.store.read_connections())
        };
        let read = Arc::new(read);
        let tasks: Vec<_> = split(cuts, items.len(), parts)
            .into_iter()
            .map(|range| {
                let (items, read) = (items.clone(), read.clone());
                tokio::task::spawn_blocking(move || read(&items[range]))
            })
            .collect();
        let mut answers = Vec::with_capacity(items.len());
        for task in tasks {
            answers.extend(task.await.map_err(|_| StoreError::ReadTask)??);
        }
        Ok(answers)
    }
}

/// `0..len` cut into at most `parts` ranges of about equal length, each
/// starting at one of `cuts` (ascending).
fn split(cuts: impl IntoIterator<Item = usize>, len: usize, parts: usize) -> Vec<Range<usize>> {
    let target = len.div_ceil(parts.max(1)).max(1);
    let mut ranges = Vec::with_capacity(parts);
    let mut from = 0;
    for cut in cuts.into_iter().chain([len]) {
        if cut > from && (cut >= from + target || cut >= len) {
            ranges.push(from..cut.min(len));
            from = cut;
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn parts_are_even_and_whole() {
        assert_eq!(split(0..10, 10, 2), [0..5, 5..10]);
        assert_eq!(split(0..10, 10, 3), [0..4, 4..8, 8..10]);
        assert_eq!(split(0..3, 3, 1), vec![0..3]);
        assert_eq!(split(0..0, 0, 2), Vec::<std::ops::Range<usize>>::new());
    }

    /// A value's lookups are never cut apart: every range starts where a
    /// value does, and the ranges cover every lookup once.
    #[test]
    fn parts_start_only_at_cuts() {
        // Values of 2, 2, 1, 3, 2 lookups: they start at 0, 2, 4, 5, 8.
        let cuts = [0, 2, 4, 5, 8];
        assert_eq!(split(cuts, 10, 2), [0..5, 5..10]);
        assert_eq!(split(cuts, 10, 3), [0..4, 4..8, 8..10]);
        assert_eq!(split([0, 9], 10, 2), [0..9, 9..10]);
        assert_eq!(split([0], 10, 4), vec![0..10]);
    }
}
