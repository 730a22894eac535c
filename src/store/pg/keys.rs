//! Changes to the master keys on PostgreSQL (`tokenvault keys rotate`,
//! `pause`, `resume`, `retire`, `rewrap`), and the check by which every
//! node seals new values with the version the database says.
//!
//! A change is one transaction: the audit head locked first (as in every
//! write), then the keyring row, then the rotation state, then the audit
//! record. So the keyring, the state and the trail change together or not
//! at all, and a node never sees a rotation without its key.
//!
//! Every write transaction holds the audit head, so they run one at a
//! time across nodes; the insert check below reads the write version after
//! any `keys rotate` that committed before it.

use std::collections::BTreeMap;

use postgres::{GenericClient, Transaction};

use super::super::rotation::KeyState;
use super::{reads, trail, PgError, PgStore};
use crate::audit::Record;
use crate::crypto::keys::AuditKey;
use crate::crypto::wrapping::KeyringDocument;

/// What a keys command sees, read in its transaction with the keyring
/// locked.
pub struct KeysView {
    /// The stored keyring.
    pub document: KeyringDocument,
    /// Every namespace's write version and rotation.
    pub states: Vec<KeyState>,
    /// Every namespace the database holds anything for.
    pub namespaces: Vec<String>,
}

/// What a keys command changes, with its audit records.
#[derive(Default)]
pub struct KeysChange {
    /// The next keyring, if it changes.
    pub document: Option<KeyringDocument>,
    /// Namespaces that start moving to `to_version`.
    pub rotate: Vec<String>,
    /// Namespaces pinned to the version they write with (a rotation of
    /// some namespaces leaves the others where they are).
    pub keep: Vec<(String, u32)>,
    /// The version a rotation moves to.
    pub to_version: u32,
    /// Rows per second a rotation may move (0: no limit).
    pub rate: u32,
    /// Pause (true) or resume (false) running rotations, of one namespace
    /// or all.
    pub pause: Option<(Option<String>, bool)>,
    /// A version that must be unused (no namespace writes with it, no row
    /// is sealed under it), checked before anything changes.
    pub unused: Option<u32>,
    /// The audit records.
    pub records: Vec<Record>,
}

/// Why a keys change was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysRefused {
    /// No keyring is stored.
    #[error("no keyring is stored in the database")]
    NoKeyring,
    /// The version is still in use (`keys retire`).
    #[error("master key v{version} is still in use: {reason}")]
    InUse {
        /// The version.
        version: u32,
        /// Which namespace writes with it, or holds rows under it.
        reason: String,
    },
    /// The command itself refused (a bad key source, no such version).
    #[error("{0}")]
    Command(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] PgError),
}

impl PgStore {
    /// Makes the change `decide` answers for what it is shown, in one
    /// transaction; answers how many rotations a pause or resume changed.
    pub fn change_keys(
        &self,
        key: &AuditKey,
        decide: impl FnOnce(&KeysView) -> Result<KeysChange, String>,
    ) -> Result<u64, KeysRefused> {
        let mut client = self.borrow()?;
        let mut transaction = client.transaction().map_err(PgError::from)?;
        let locked = trail::lock(&mut transaction, key)?;
        let document = transaction
            .query_opt("SELECT document FROM keyring WHERE id = 1 FOR UPDATE", &[])
            .map_err(PgError::from)?
            .map(|row| KeyringDocument::from_bytes(row.get(0)))
            .ok_or(KeysRefused::NoKeyring)?;
        let view = KeysView {
            document,
            states: reads::key_states(&mut transaction)?,
            namespaces: namespaces(&mut transaction)?,
        };
        let change = decide(&view).map_err(KeysRefused::Command)?;
        if let Some(version) = change.unused {
            if let Some(reason) = version_in_use(&mut transaction, version)? {
                return Err(KeysRefused::InUse { version, reason });
            }
        }
        let now = super::super::unix_now();
        if let Some(next) = &change.document {
            transaction
                .execute(
                    "UPDATE keyring SET document = $1, changed_at = $2 WHERE id = 1",
                    &[&next.as_bytes(), &now],
                )
                .map_err(PgError::from)?;
        }
        for namespace in &change.rotate {
            transaction
                .execute(
                    "INSERT INTO namespace_keys (namespace, version, rotating, paused, moved, rate, changed_at)
                     VALUES ($1, $2, true, false, 0, $3, $4)
                     ON CONFLICT (namespace) DO UPDATE SET version = excluded.version,
                         rotating = true, paused = false, moved = 0, rate = excluded.rate,
                         changed_at = excluded.changed_at",
                    &[
                        namespace,
                        &super::changes::version_sql(change.to_version),
                        &i64::from(change.rate),
                        &now,
                    ],
                )
                .map_err(PgError::from)?;
        }
        for (namespace, version) in &change.keep {
            pin(&mut transaction, namespace, *version, now)?;
        }
        let mut paused = 0;
        if let Some((namespace, pause)) = &change.pause {
            paused = transaction
                .execute(
                    "UPDATE namespace_keys SET paused = $1
                     WHERE rotating AND paused <> $1 AND ($2::text IS NULL OR namespace = $2)",
                    &[pause, namespace],
                )
                .map_err(PgError::from)?;
        }
        trail::append(&mut transaction, key, locked, &change.records)?;
        transaction.commit().map_err(PgError::from)?;
        Ok(paused)
    }
}

fn pin(
    client: &mut impl GenericClient,
    namespace: &str,
    version: u32,
    now: i64,
) -> Result<(), PgError> {
    client.execute(
        "INSERT INTO namespace_keys (namespace, version, rotating, paused, moved, rate, changed_at)
         VALUES ($1, $2, false, false, 0, 0, $3) ON CONFLICT (namespace) DO NOTHING",
        &[&namespace, &super::changes::version_sql(version), &now],
    )?;
    Ok(())
}

/// Every namespace the database holds anything for.
fn namespaces(client: &mut impl GenericClient) -> Result<Vec<String>, PgError> {
    Ok(client
        .query(
            "SELECT DISTINCT namespace FROM tokens
             UNION SELECT namespace FROM subject_links
             UNION SELECT namespace FROM consent_events
             UNION SELECT namespace FROM namespace_keys",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Why `version` may not be retired yet, if it may not.
fn version_in_use(
    client: &mut impl GenericClient,
    version: u32,
) -> Result<Option<String>, PgError> {
    let version = super::changes::version_sql(version);
    if let Some(row) = client.query_opt(
        "SELECT namespace FROM namespace_keys WHERE version = $1 LIMIT 1",
        &[&version],
    )? {
        let namespace: String = row.get(0);
        return Ok(Some(format!(
            "namespace {namespace} seals new values with it"
        )));
    }
    Ok(client
        .query_opt(
            "SELECT namespace FROM tokens WHERE key_version = $1 LIMIT 1",
            &[&version],
        )?
        .map(|row| {
            let namespace: String = row.get(0);
            format!("rows of namespace {namespace} are still sealed under it")
        }))
}

/// The version each namespace of `inserts` (namespace, version sealed
/// with) writes with, pinning a namespace written for the first time to
/// the version of its first insert.
///
/// A node that has not yet noticed a `keys rotate` (it looks every
/// second) would otherwise store a new value under the old version, and
/// look it up under the old version only: the same value could then get a
/// second token from a node that already seals under the new one. Its
/// insert is refused instead, and the vault tries again once it has
/// adopted the new keys.
pub(super) fn write_versions(
    transaction: &mut Transaction<'_>,
    inserts: &[(&str, u32)],
) -> Result<BTreeMap<String, u32>, PgError> {
    let mut names: Vec<&str> = inserts.iter().map(|(namespace, _)| *namespace).collect();
    names.sort_unstable();
    names.dedup();
    let mut writes = read_write_versions(transaction, &names)?;
    let mut pinned = false;
    for (namespace, version) in inserts {
        if !writes.contains_key(*namespace) {
            pin(transaction, namespace, *version, super::super::unix_now())?;
            writes.insert((*namespace).to_owned(), *version);
            pinned = true;
        }
    }
    if pinned {
        // Another node may have pinned first.
        writes = read_write_versions(transaction, &names)?;
    }
    Ok(writes)
}

fn read_write_versions(
    client: &mut impl GenericClient,
    names: &[&str],
) -> Result<BTreeMap<String, u32>, PgError> {
    Ok(client
        .query(
            "SELECT namespace, version FROM namespace_keys WHERE namespace = ANY($1)",
            &[&names],
        )?
        .iter()
        .map(|row| {
            let version: i32 = row.get(1);
            (row.get(0), u32::try_from(version).unwrap_or(0))
        })
        .collect())
}
