//! The working keys one namespace uses at a moment: every master key
//! version the keyring holds, the one that seals new values, and the
//! versions a blind-index lookup consults (more than one only while a
//! rotation moves rows, so that a known value keeps its token throughout).

use std::collections::BTreeMap;

use crate::crypto::keys::NamespaceKeys;
use crate::crypto::wrapping::Keyring;

/// A namespace's keys; swapped whole when a rotation starts or ends.
pub(super) struct KeySet {
    versions: BTreeMap<u32, NamespaceKeys>,
    write: u32,
    lookup: Vec<u32>,
}

impl KeySet {
    /// The keys of `namespace` writing with `write`, or `None` when the
    /// keyring does not hold that version. While `rotating`, lookups
    /// consult every version held, the write version first.
    pub(super) fn build(
        keyring: &Keyring,
        namespace: &str,
        write: u32,
        rotating: bool,
    ) -> Option<Self> {
        keyring.version(write)?;
        let versions: BTreeMap<u32, NamespaceKeys> = keyring
            .versions()
            .into_iter()
            .filter_map(|version| {
                Some((version, keyring.version(version)?.namespace_keys(namespace)))
            })
            .collect();
        let mut lookup = vec![write];
        if rotating {
            lookup.extend(versions.keys().rev().copied().filter(|v| *v != write));
        }
        Some(Self {
            versions,
            write,
            lookup,
        })
    }

    /// The keys that seal new values.
    pub(super) fn writer(&self) -> &NamespaceKeys {
        // Invariant: `build` checked that the keyring holds `write`.
        &self.versions[&self.write]
    }

    /// The version that seals new values.
    pub(super) fn write_version(&self) -> u32 {
        self.write
    }

    /// The keys of `version`, if held.
    pub(super) fn version(&self, version: u32) -> Option<&NamespaceKeys> {
        self.versions.get(&version)
    }

    /// The blind indexes of a value to look up, write version first;
    /// `write_index` is the write version's, when the caller has it.
    pub(super) fn lookup_indexes(
        &self,
        class: &str,
        normalized: &str,
        write_index: Option<[u8; 32]>,
    ) -> Vec<[u8; 32]> {
        self.lookup
            .iter()
            .enumerate()
            .filter_map(|(i, version)| match (i, write_index) {
                (0, Some(index)) => Some(index),
                _ => self
                    .versions
                    .get(version)
                    .map(|keys| keys.blind_index(class, normalized)),
            })
            .collect()
    }

    /// True when lookups consult more than the write version.
    pub(super) fn rotating(&self) -> bool {
        self.lookup.len() > 1
    }
}
