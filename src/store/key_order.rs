//! Batches of point lookups searched in their index's key order.
//!
//! A file run looks up thousands of random keys at once in B-trees far
//! larger than a read connection's page cache. In arrival order, nearly
//! every search reads an interior page from the OS on its way to the leaf.
//! In key order, neighbouring searches walk down the same interior pages,
//! which then stay in the cache, so mostly only the leaves are read.

use std::cmp::Ordering;

/// The positions of `items` in ascending order, as `compare` orders them.
pub(super) fn key_order<T>(items: &[T], compare: impl Fn(&T, &T) -> Ordering) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by(|&a, &b| compare(&items[a], &items[b]));
    order
}

/// `answers`, one for each position of `order` in that order, put back in
/// the order of the input.
pub(super) fn in_input_order<A>(order: &[usize], answers: Vec<A>) -> Vec<A> {
    let mut placed: Vec<(usize, A)> = order.iter().copied().zip(answers).collect();
    placed.sort_unstable_by_key(|(at, _)| *at);
    placed.into_iter().map(|(_, answer)| answer).collect()
}

#[cfg(test)]
mod tests {
    use super::{in_input_order, key_order};

    #[test]
    fn answers_return_to_their_inputs() {
        let keys = ["pear", "apple", "fig", "apple", "kiwi"];
        let order = key_order(&keys, |a, b| a.cmp(b));
        let searched: Vec<&str> = order.iter().map(|&at| keys[at]).collect();
        assert_eq!(searched, ["apple", "apple", "fig", "kiwi", "pear"]);
        // Each answer names its key; back in input order they line up.
        let answers: Vec<String> = searched.iter().map(|key| format!("{key}!")).collect();
        assert_eq!(
            in_input_order(&order, answers),
            ["pear!", "apple!", "fig!", "apple!", "kiwi!"]
        );
        assert!(in_input_order::<u8>(&key_order::<u8>(&[], |a, b| a.cmp(b)), vec![]).is_empty());
    }
}
