//! Key rotation in the running vault.
//!
//! `tokenvault keys rotate` adds a master key version to the keyring and
//! records, in `vault.db`, which namespaces now seal with it. The server's
//! key watcher notices both within a second:
//!
//! 1. it opens the keyring again when its versions changed on disk;
//! 2. it swaps each namespace's key set, so that new values are sealed
//!    under the new version at once, and known values are looked up under
//!    every version while rows move (the same value keeps its token);
//! 3. it waits until no request still holds an old key set, so that no row
//!    can arrive under the old version any more;
//! 4. it reads rows still under another version in small batches, opens
//!    each, seals it again (and recomputes its blind index) under the new
//!    version, and has the writer swap the bytes only if the row is
//!    unchanged since it was read;
//! 5. when a pass finds nothing left, the writer ends the rotation in the
//!    same transaction that checks it, with an audit record.
//!
//! All the state is in `vault.db` (write versions, `rotating`, `paused`,
//! the rows' own versions), so a restart resumes where it stopped, and
//! `keys pause|resume` work from another process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::keyset::KeySet;
use super::{Vault, VaultError};
use crate::audit::{Action, Context, Outcome};
use crate::crypto::seal::Binding;
use crate::crypto::wrapping::{self, Keyring};
use crate::store::rotation::MOVE_BATCH;
use crate::store::{KeyState, Move, Rekey, StaleRow, StoreError};

/// How often the watcher looks for a change of keys or rotation state.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a namespace whose remaining rows cannot move waits before the
/// watcher tries it again.
const STUCK_RETRY: Duration = Duration::from_secs(60);

/// Opens the keyring again (reads the key source anew each time).
/// Blocking: the watcher calls it on a blocking thread.
pub type Reopen = Arc<dyn Fn() -> Result<Keyring, String> + Send + Sync>;

/// The master key versions of the stored keyring (the file in the data
/// directory, or the row in PostgreSQL), read without unwrapping it, to
/// notice a change. Blocking, like [`Reopen`].
pub type StoredVersions = Arc<dyn Fn() -> Result<Vec<u32>, String> + Send + Sync>;

/// The stored versions of the keyring file at `path`.
pub fn versions_in_file(path: PathBuf) -> StoredVersions {
    Arc::new(move || wrapping::versions_on_disk(&path).map_err(|error| error.to_string()))
}

/// The vault in force (a reload replaces it).
pub type Current = Box<dyn Fn() -> Arc<Vault> + Send + Sync>;

/// The keyring the server holds, shared by the watcher and the reload. A
/// reload holds its lock while it builds and swaps the new vault, and the
/// watcher while it swaps key sets, so neither misses the other's change.
pub type SharedKeyring = Arc<std::sync::Mutex<Keyring>>;

/// Follows the keyring and the rotation state, and moves rows.
pub struct KeyWatcher {
    keyring: SharedKeyring,
    current: Current,
    /// Where the keyring is stored (none: an in-memory keyring,
    /// `serve --dev`).
    stored: Option<StoredVersions>,
    reopen: Reopen,
    adopted: Option<Vec<(String, u32, bool)>>,
    draining: Vec<Weak<KeySet>>,
    cursors: BTreeMap<String, String>,
    moved_in_pass: BTreeMap<String, u64>,
    stuck: BTreeMap<String, Instant>,
    reopen_failed: bool,
    /// The vault last adopted into (its address), to adopt into a new one.
    vault_identity: usize,
    /// When the last progress line was logged, per namespace.
    reported: BTreeMap<String, Instant>,
}

impl KeyWatcher {
    /// A watcher over the keyring the server started with, following the
    /// vault `current` answers.
    pub fn new(
        keyring: SharedKeyring,
        stored: Option<StoredVersions>,
        reopen: Reopen,
        current: Current,
    ) -> Self {
        Self {
            keyring,
            current,
            stored,
            reopen,
            adopted: None,
            draining: Vec::new(),
            cursors: BTreeMap::new(),
            moved_in_pass: BTreeMap::new(),
            stuck: BTreeMap::new(),
            reopen_failed: false,
            vault_identity: 0,
            reported: BTreeMap::new(),
        }
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        loop {
            let vault = (self.current)();
            match self.tick(&vault).await {
                // Rows moved: go on at once (the rate limit sleeps inside).
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => tokio::time::sleep(POLL_INTERVAL).await,
                Err(error) => {
                    tracing::warn!(%error, "key rotation step failed; retrying");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }

    /// One step: adopt what changed, then move one batch of one rotating
    /// namespace. Answers true when rows moved.
    pub async fn tick(&mut self, vault: &Vault) -> Result<bool, VaultError> {
        let states = self.follow(vault).await?;
        // No row may still arrive under an old key set.
        self.draining.retain(|old| old.strong_count() > 0);
        if !self.draining.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(true);
        }
        for state in states.iter().filter(|s| s.rotating && !s.paused) {
            let held = self.keyring().version(state.version).is_some();
            if !vault.namespaces.contains_key(&state.namespace) || !held {
                continue;
            }
            if self
                .stuck
                .get(&state.namespace)
                .is_some_and(|since| since.elapsed() < STUCK_RETRY)
            {
                continue;
            }
            if self.step(vault, state).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the rotation state (and the keyring, when its versions changed
    /// on disk) and gives the vault the key sets they call for. Answers the
    /// state read.
    pub async fn follow(&mut self, vault: &Vault) -> Result<Vec<KeyState>, VaultError> {
        let store = vault.store.clone();
        let held = self.keyring().versions();
        let states = tokio::task::spawn_blocking(move || store.key_states())
            .await
            .map_err(|_| StoreError::ReadTask)??;
        // Only the write versions and whether lookups span versions shape
        // the key sets; progress counts do not.
        let shape: Vec<(String, u32, bool)> = states
            .iter()
            .map(|s| (s.namespace.clone(), s.version, s.rotating))
            .collect();
        let mut changed = self.adopted.as_ref() != Some(&shape);
        if let Some(stored) = self.stored.clone() {
            let on_disk = tokio::task::spawn_blocking(move || stored())
                .await
                .ok()
                .and_then(Result::ok);
            if on_disk.is_some_and(|versions| versions != held) {
                let reopen = self.reopen.clone();
                let reopened = tokio::task::spawn_blocking(move || reopen())
                    .await
                    .unwrap_or_else(|_| Err("reopening the keyring panicked".to_owned()));
                match reopened {
                    Ok(keyring) => {
                        tracing::info!(versions = ?keyring.versions(), "keyring reopened");
                        *self.keyring() = keyring;
                        self.reopen_failed = false;
                        changed = true;
                    }
                    Err(error) => {
                        if !self.reopen_failed {
                            tracing::error!(%error, "the stored keyring changed but cannot be opened; new values stay under the current key");
                            self.reopen_failed = true;
                        }
                    }
                }
            }
        }
        let identity = Arc::as_ptr(&(self.current)()) as usize;
        if changed || self.vault_identity != identity {
            // Under the keyring's lock, on the vault in force at that moment
            // (a reload swaps the vault under the same lock).
            let keyring = self.keyring.lock().unwrap_or_else(|p| p.into_inner());
            let vault = (self.current)();
            self.draining.extend(vault.adopt_keys(&keyring, &states));
            self.vault_identity = Arc::as_ptr(&vault) as usize;
            self.adopted = Some(shape);
        }
        Ok(states)
    }

    /// Moves one batch of `state`'s namespace, or ends its rotation.
    async fn step(&mut self, vault: &Vault, state: &KeyState) -> Result<bool, VaultError> {
        let namespace = state.namespace.clone();
        let cursor = self.cursors.get(&namespace).cloned().unwrap_or_default();
        let store = vault.store.clone();
        let (owned, version, after) = (namespace.clone(), state.version, cursor.clone());
        let rows = tokio::task::spawn_blocking(move || {
            store.stale_rows(&owned, version, &after, MOVE_BATCH)
        })
        .await
        .map_err(|_| StoreError::ReadTask)??;
        if rows.is_empty() {
            if !cursor.is_empty() {
                // End of a pass: the next pass starts over and finds what
                // was left (or nothing).
                let moved = self.moved_in_pass.remove(&namespace).unwrap_or(0);
                self.cursors.remove(&namespace);
                if moved == 0 {
                    tracing::warn!(namespace, "rows remain under an old key version and cannot move (their value has another token under the new key, or their key is missing); retrying later");
                    self.stuck.insert(namespace, Instant::now());
                }
                return Ok(true);
            }
            let record = system_context()
                .record(Action::KeyRotate, Outcome::Ok)
                .namespace(&namespace)
                .reason("completed")
                .items(usize::try_from(state.moved).unwrap_or(usize::MAX));
            let outcome = vault
                .store
                .rekey(
                    Rekey::Finish {
                        namespace: namespace.clone(),
                        version,
                    },
                    vec![record],
                )
                .await?;
            if outcome.finished {
                tracing::info!(
                    namespace,
                    version,
                    moved = state.moved,
                    "key rotation completed"
                );
            }
            return Ok(false);
        }
        let last = rows.last().map(|row| row.token.clone()).unwrap_or_default();
        let count = rows.len() as u64;
        let moves = vault.reseal(&namespace, version, rows)?;
        let outcome = vault
            .store
            .rekey(
                Rekey::Move {
                    namespace: namespace.clone(),
                    version,
                    moves,
                },
                Vec::new(),
            )
            .await?;
        *self.moved_in_pass.entry(namespace.clone()).or_default() += outcome.moved;
        crate::metrics::rotation_moved(&namespace, outcome.moved);
        self.cursors.insert(namespace.clone(), last);
        let report = self
            .reported
            .get(&namespace)
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if report {
            tracing::info!(
                namespace,
                version,
                moved = state.moved + outcome.moved,
                "key rotation in progress"
            );
            self.reported.insert(namespace, Instant::now());
        }
        if state.rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(
                count as f64 / f64::from(state.rate),
            ))
            .await;
        }
        Ok(true)
    }
}

impl KeyWatcher {
    fn keyring(&self) -> std::sync::MutexGuard<'_, Keyring> {
        // A poisoned lock only means a holder panicked; the keyring is whole.
        self.keyring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn system_context() -> Context {
    Context {
        request_id: format!("sys_{}", hex::encode(crate::crypto::random_bytes::<12>())),
        actor: "system:key-rotation".to_owned(),
        auth: "system",
        source: None,
        route: "key-rotation".to_owned(),
    }
}

impl Vault {
    /// Swaps every namespace's key set for the one `states` and `keyring`
    /// say; answers the replaced sets, to wait on until no request holds
    /// them. A namespace without a state writes with the newest version.
    pub(super) fn adopt_keys(&self, keyring: &Keyring, states: &[KeyState]) -> Vec<Weak<KeySet>> {
        let newest = keyring.current().version();
        let mut replaced = Vec::new();
        for (name, ns) in &self.namespaces {
            let state = states.iter().find(|state| &state.namespace == name);
            let (write, rotating) = state.map_or((newest, false), |s| (s.version, s.rotating));
            let Some(keys) = KeySet::build(keyring, name, write, rotating) else {
                tracing::error!(
                    namespace = name.as_str(),
                    version = write,
                    "the keyring does not hold the version this namespace writes with; keeping its current keys"
                );
                continue;
            };
            let mut slot = ns
                .keys
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let old = std::mem::replace(&mut *slot, Arc::new(keys));
            if old.write_version() != write {
                tracing::info!(
                    namespace = name.as_str(),
                    from = old.write_version(),
                    to = write,
                    "new values are sealed under a new key version"
                );
            }
            replaced.push(Arc::downgrade(&old));
        }
        replaced
    }

    /// Opens each row and seals it again under `version`, with its blind
    /// index recomputed. A row that does not open is left where it is (and
    /// logged): it stays under its version, and `keys retire` refuses.
    fn reseal(
        &self,
        namespace: &str,
        version: u32,
        rows: Vec<StaleRow>,
    ) -> Result<Vec<Move>, VaultError> {
        let ns = self.namespace(namespace)?;
        let keys = ns.keys();
        let Some(new) = keys.version(version) else {
            return Ok(Vec::new());
        };
        let mut moves = Vec::with_capacity(rows.len());
        for row in rows {
            let stored = crate::store::StoredValue {
                class: row.class.clone(),
                key_version: row.key_version,
                sealed: row.sealed.clone(),
                used_day: 0,
            };
            let Some(plain) = ns.unseal(namespace, &row.token, &stored) else {
                continue;
            };
            let plain = crate::pii::Pii::new(plain);
            let binding = Binding {
                namespace,
                class: &row.class,
                token: &row.token,
            };
            moves.push(Move {
                sealed: new.sealer().seal(binding, plain.expose().as_bytes()),
                blind_index: row
                    .indexed
                    .then(|| new.blind_index(&row.class, plain.expose())),
                token: row.token,
                old_version: row.key_version,
                old_sealed: row.sealed,
            });
        }
        Ok(moves)
    }
}
