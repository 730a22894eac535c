//! The engine: tokenize, detokenize, forget. The one place that joins
//! crypto, store and policy; `http` and `cli` call only this.

mod budget;
mod cache;
pub mod classify;
pub mod clock;
mod files;
mod forward;
mod keyset;
mod reads;
pub mod receipts;
mod refusals;
pub mod retention;
pub mod rotation;
mod subjects;

pub use files::{Ended, FileTokenizeRun};
pub use forward::{AuditedRefusal, ForwardError, ForwardPlan};
pub use subjects::SubjectExport;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::audit::{self, Action, Context, Outcome, Record, TextKind, Unrecognized};
use crate::config::{ClassSpec, NamespaceSpec};
use crate::crypto::keys::{AuditKey, SubjectKey};
use crate::crypto::seal::Binding;
use crate::crypto::tokens::{self, FormatError};
use crate::crypto::wrapping::Keyring;
use crate::normalize::{self, NormalizeError};
use crate::pii::Pii;
use crate::policy::{mask, Caller, Denied, Operation, Reveal};
use crate::store::{
    ActivationWrite, ConsentEvent, ConsentTarget, Found, InsertOutcome, NewRow, Store, StoreError,
    StoredValue, SubjectHash, SubjectWrite, Touch,
};

pub use crate::store::AuditState;

/// Largest value accepted for tokenization, in bytes.
pub const MAX_VALUE_CHARS: usize = 4096;
/// Times a taken token is re-minted before the request fails.
const MINT_ATTEMPTS: usize = 8;
/// Times a phone token that equals a stored number, or a taken token of a
/// class with number blocks, is re-minted before the request fails (a small
/// number block can be nearly full).
const PHONE_MINT_ATTEMPTS: usize = 64;

/// One value to tokenize.
#[derive(Debug)]
pub struct TokenizeItem {
    /// Data class name within the namespace.
    pub class: String,
    /// The plaintext.
    pub value: Pii,
    /// The customer this value belongs to; stored only as a keyed hash.
    pub subject: Option<Pii>,
    /// The value was written as a JSON number (its digits, as written):
    /// normalization reads it as the class's normalization says (a phone
    /// number's digits are the international number).
    pub number: bool,
}

/// The token of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The token.
    pub token: String,
    /// True when this call created it.
    pub created: bool,
}

/// The answer for one token of a detokenize call.
#[derive(Debug)]
pub enum Detokenized {
    /// The value (plain or masked, as the caller's role says).
    Value {
        /// Data class name.
        class: String,
        /// The revealed value.
        value: Pii,
    },
    /// No such token, or one the caller may not see: indistinguishable.
    NotFound,
    /// The stored row failed authentication: edited, moved or its key is
    /// missing. Nothing is revealed.
    Integrity,
    /// The token's subject or the token itself has withdrawn consent for
    /// the purpose. Nothing is revealed.
    ConsentWithdrawn,
}

/// Whom a consent change is about.
#[derive(Debug)]
pub enum ConsentSubject {
    /// One token.
    Token(String),
    /// Every token stored with this subject (the `subject` given at
    /// tokenization).
    Subject(Pii),
}

/// Why an item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ItemProblem {
    /// The namespace has no such class.
    #[error("unknown class")]
    UnknownClass,
    /// The value failed normalization.
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
    /// No token of the class's format fits the value.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The value is longer than [`MAX_VALUE_CHARS`].
    #[error("value is longer than {MAX_VALUE_CHARS} characters")]
    TooLong,
}

/// An engine failure. Messages never contain a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Policy refused the request.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The namespace is not configured.
    #[error("unknown namespace")]
    UnknownNamespace,
    /// A consent change names a purpose no configuration names.
    #[error("unknown purpose: name one the configuration uses, or `*`")]
    UnknownPurpose,
    /// A consent change names a token that does not exist.
    #[error("no such token in this namespace")]
    UnknownToken,
    /// One item is invalid.
    #[error("item {index}: {problem}")]
    Item {
        /// Position of the item in the request.
        index: usize,
        /// What is wrong with it.
        problem: ItemProblem,
    },
    /// One value is longer than [`MAX_VALUE_CHARS`].
    #[error("item {index}: value is longer than {MAX_VALUE_CHARS} characters")]
    ValueTooLarge {
        /// Position of the item in the request.
        index: usize,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every minted token was already taken.
    #[error("could not mint an unused token")]
    Exhausted,
    /// An item's token is longer than the destination takes (an egress
    /// route's platform limit).
    #[error("item {index}: the token exceeds {limit} bytes")]
    TokenTooLong {
        /// Position of the item in the request.
        index: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The client's detokenization budget would be exceeded.
    #[error("detokenization budget exceeded")]
    BudgetExceeded,
    /// A stored value failed authentication (moved, altered, or sealed
    /// under a key this vault does not hold); nothing was revealed.
    #[error("a stored value failed authentication; nothing was revealed")]
    Integrity,
    /// A correction that would break what the token promises.
    #[error("{0}")]
    Uncorrectable(Uncorrectable),
}

/// Why a subject's value cannot be corrected in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Uncorrectable {
    /// Refused by the store (not the subject's token, shared, or the new
    /// value already has a token).
    #[error(transparent)]
    Store(#[from] crate::store::CorrectionRefused),
    /// The token shows the value's last four characters, and the new value
    /// has others.
    #[error("the token shows the value's last four characters; tokenize the new value instead")]
    LastFourDiffer,
}

impl VaultError {
    /// The audit record's outcome and reason code for this failure.
    fn audit_outcome(&self) -> (Outcome, &'static str) {
        match self {
            Self::Denied(Denied::Operation) => (Outcome::Denied, "operation_not_granted"),
            Self::Denied(Denied::Namespace) => (Outcome::Denied, "namespace_not_granted"),
            Self::Denied(Denied::Class(_)) => (Outcome::Denied, "class_not_granted"),
            Self::Denied(Denied::Purpose) => (Outcome::Denied, "purpose_not_granted"),
            Self::UnknownNamespace => (Outcome::Error, "unknown_namespace"),
            Self::UnknownPurpose => (Outcome::Error, "unknown_purpose"),
            Self::UnknownToken => (Outcome::Error, "not_found"),
            Self::Item { .. } => (Outcome::Error, "invalid_item"),
            Self::ValueTooLarge { .. } => (Outcome::Error, "value_too_large"),
            Self::Store(StoreError::Audit(_)) => (Outcome::Error, "audit_unavailable"),
            Self::Store(_) => (Outcome::Error, "store_unavailable"),
            Self::Exhausted => (Outcome::Error, "token_space_exhausted"),
            Self::TokenTooLong { .. } => (Outcome::Error, "token_too_long"),
            Self::BudgetExceeded => (Outcome::Denied, "budget_exceeded"),
            Self::Integrity => (Outcome::Error, "integrity_error"),
            Self::Uncorrectable(Uncorrectable::Store(refused)) => (Outcome::Error, refused.code()),
            Self::Uncorrectable(Uncorrectable::LastFourDiffer) => {
                (Outcome::Error, "last_four_differ")
            }
        }
    }
}

struct Namespace {
    spec: NamespaceSpec,
    /// Working keys per master key version; swapped whole by a rotation.
    /// A request holds its `Arc` until its rows are committed, so that a
    /// rotation knows when no row can still arrive under the old version.
    keys: std::sync::RwLock<Arc<keyset::KeySet>>,
    /// The subject-hash key (the same across rotations).
    subject: SubjectKey,
    /// Classes with `retain_days`: lookups read their day of last use, and
    /// the cache of known values skips them.
    dated: Arc<std::collections::BTreeSet<String>>,
}

impl Namespace {
    fn keys(&self) -> Arc<keyset::KeySet> {
        // A poisoned lock only means a swap panicked; the Arc is whole.
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The plaintext of a stored value, or `None` (logged) when it fails
    /// authentication: it was moved, altered, or sealed under a key this
    /// vault does not hold.
    fn unseal(&self, namespace: &str, token: &str, stored: &StoredValue) -> Option<String> {
        let keys = self.keys();
        let opened = keys.version(stored.key_version).and_then(|keys| {
            let binding = Binding {
                namespace,
                class: &stored.class,
                token,
            };
            keys.sealer()
                .open(binding, stored.key_version, &stored.sealed)
                .ok()
        });
        let plain = opened.and_then(|bytes| String::from_utf8(bytes.to_vec()).ok());
        if plain.is_none() {
            tracing::error!(
                namespace,
                token,
                "stored value failed authentication; nothing revealed"
            );
        }
        plain
    }
}

/// The tokenization engine.
pub struct Vault {
    store: Arc<Store>,
    namespaces: BTreeMap<String, Namespace>,
    budgets: budget::Budgets,
    /// Fingerprints caller text that the audit trail may not hold.
    audit_key: AuditKey,
    /// Purposes the configuration names; any other purpose a caller sends
    /// is recorded as a fingerprint.
    purposes: std::collections::BTreeSet<String>,
    /// Refused authentications, aggregated per interval.
    refusals: refusals::Refusals,
    /// Signs erasure receipts.
    receipt_key: crate::crypto::receipts::ReceiptKey,
    /// Days of use, for retention.
    clock: Arc<dyn clock::Clock>,
    /// Subjects ever forgotten, re-applied at start (none: not kept, for
    /// tests and benchmarks that need no restore).
    tombstones: Option<crate::store::tombstones::Tombstones>,
    /// Known values' tokens by blind index (see `cache`); shared by the
    /// vaults a reload builds over the same store.
    cache: Arc<cache::TokenCache>,
}

/// What a reveal found, before it is recorded.
struct Revealed {
    answers: Vec<Detokenized>,
    /// Which tokens exist (for the record).
    exists: Vec<bool>,
    /// Revealed tokens not yet marked used today.
    used: Vec<String>,
    /// The client's budget spending to save, when it has a budget.
    spending: Option<(String, crate::store::Spending)>,
}

/// A value to look up by its blind indexes.
struct Lookup<'a> {
    /// Where its answer goes.
    position: usize,
    class: &'a str,
    /// The normalized value.
    value: &'a str,
    /// Its index under the write version, when already computed.
    write_index: Option<[u8; 32]>,
}

struct Pending<'a> {
    class_name: &'a str,
    class: &'a ClassSpec,
    normalized: Pii,
    blind_index: Option<[u8; 32]>,
    subject_hash: Option<[u8; 32]>,
    candidate: String,
}

impl Vault {
    /// Builds the engine over an open store, with the keyring's keys.
    pub fn new(
        store: Arc<Store>,
        keyring: &Keyring,
        namespaces: &BTreeMap<String, NamespaceSpec>,
    ) -> Self {
        crate::phone::warm_up();
        let current = keyring.current().version();
        let namespaces = namespaces
            .iter()
            .map(|(name, spec)| {
                // Invariant: the keyring holds its current version.
                let keys = keyset::KeySet::build(keyring, name, current, false)
                    .expect("the keyring holds its current version");
                (
                    name.clone(),
                    Namespace {
                        dated: Arc::new(
                            spec.classes
                                .iter()
                                .filter(|(_, class)| class.retain_days.is_some())
                                .map(|(name, _)| name.clone())
                                .collect(),
                        ),
                        spec: spec.clone(),
                        keys: std::sync::RwLock::new(Arc::new(keys)),
                        subject: keyring.subject_key(name),
                    },
                )
            })
            .collect();
        Self {
            store,
            namespaces,
            budgets: budget::Budgets::default(),
            audit_key: keyring.audit_key(),
            purposes: Default::default(),
            refusals: Default::default(),
            receipt_key: keyring.receipt_key(),
            clock: Arc::new(clock::SystemClock),
            tombstones: None,
            cache: Arc::new(cache::TokenCache::new(u64::from(
                crate::config::Limits::default().token_cache_entries,
            ))),
        }
    }

    /// Remembers at most `entries` known values' tokens (0: none).
    pub fn set_token_cache(&mut self, entries: u32) {
        self.cache = Arc::new(cache::TokenCache::new(u64::from(entries)));
    }

    /// A vault over the same store with a new configuration (a reload).
    /// Namespaces that remain keep their key sets, the very same ones, so
    /// that a rotation waiting for requests under old keys waits for this
    /// vault's requests too; new namespaces get theirs from `keyring` and
    /// the rotation `states`. Budgets are read back from the store, where
    /// every reveal saves them, so no client's budget refills.
    pub fn reconfigured(
        &self,
        keyring: &Keyring,
        states: &[crate::store::KeyState],
        namespaces: &BTreeMap<String, NamespaceSpec>,
        clients: &BTreeMap<String, crate::policy::ClientSpec>,
        purposes: std::collections::BTreeSet<String>,
    ) -> Self {
        let mut vault = Self::new(self.store.clone(), keyring, namespaces);
        for (name, ns) in &vault.namespaces {
            let keys = match self.namespaces.get(name) {
                Some(old) => old.keys(),
                None => {
                    let state = states.iter().find(|state| &state.namespace == name);
                    let (write, rotating) = state
                        .map_or((keyring.current().version(), false), |s| {
                            (s.version, s.rotating)
                        });
                    match keyset::KeySet::build(keyring, name, write, rotating) {
                        Some(keys) => Arc::new(keys),
                        None => continue,
                    }
                }
            };
            *ns.keys
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        }
        vault.tombstones = self.tombstones.clone();
        vault.clock = self.clock.clone();
        vault.cache = self.cache.clone();
        vault.set_budgets(clients);
        vault.set_purpose_names(purposes);
        vault
    }

    /// The bytes the token store and the audit trail take. Blocking.
    pub fn store_sizes(&self) -> Result<(u64, u64), VaultError> {
        Ok(self.store.sizes()?)
    }

    /// The rotation state of every rotated namespace. Blocking.
    pub fn key_states(&self) -> Result<Vec<crate::store::KeyState>, VaultError> {
        Ok(self.store.key_states()?)
    }

    /// Keeps the tombstone list of forgotten subjects at `tombstones`.
    pub fn set_tombstones(&mut self, tombstones: crate::store::tombstones::Tombstones) {
        self.tombstones = Some(tombstones);
    }

    /// Replaces the clock (tests, simulations): retention's days and the
    /// budgets' minute and day windows count by it. Call before
    /// `set_budgets`.
    pub fn set_clock(&mut self, clock: Arc<dyn clock::Clock>) {
        self.clock = clock;
    }

    /// Sets the purposes the configuration names (see
    /// `Config::purpose_names`): the only purposes recorded by name.
    pub fn set_purpose_names(&mut self, purposes: std::collections::BTreeSet<String>) {
        self.purposes = purposes;
    }

    /// A record of `action` in `namespace`: by name when it is configured,
    /// otherwise as a fingerprint. Every record the engine writes about a
    /// data request starts here, so that no caller text reaches the trail.
    fn start_record(&self, context: &Context, action: Action, namespace: &str) -> Record {
        let record = context.record(action, Outcome::Ok);
        if self.namespaces.contains_key(namespace) {
            record.namespace(namespace)
        } else {
            self.unrecognized(record, TextKind::Namespace, namespace)
        }
    }

    /// Adds `purpose`: by name when the configuration names it, otherwise as
    /// a fingerprint.
    fn with_purpose(&self, record: Record, purpose: &str) -> Record {
        if self.purposes.contains(purpose) {
            record.purpose(purpose)
        } else {
            self.unrecognized(record, TextKind::Purpose, purpose)
        }
    }

    /// Adds the caller's `tokens`: those that exist by name, the others as
    /// fingerprints (an email sent as a token must not land in the trail).
    fn with_tokens(&self, mut record: Record, tokens: &[String], exists: &[bool]) -> Record {
        for (token, exists) in tokens.iter().zip(exists) {
            if *exists {
                record.tokens.push(token.clone());
            } else {
                record = self.unrecognized(record, TextKind::Token, token);
            }
        }
        record
    }

    fn unrecognized(&self, mut record: Record, kind: TextKind, text: &str) -> Record {
        record
            .unrecognized
            .push(Unrecognized::of(&self.audit_key, kind, text));
        record
    }

    /// Which of `tokens` exist in `namespace`; on any failure, none (so
    /// that the record holds fingerprints, never text it could not check).
    async fn existing(&self, namespace: &str, tokens: &[String]) -> Vec<bool> {
        if !self.namespaces.contains_key(namespace) {
            return vec![false; tokens.len()];
        }
        let store = self.store.clone();
        let (owned_namespace, owned_tokens) = (namespace.to_owned(), tokens.to_vec());
        tokio::task::spawn_blocking(move || store.existing(&owned_namespace, &owned_tokens))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| vec![false; tokens.len()])
    }

    /// Sets the clients' budgets, with what each has spent in its current
    /// windows as saved in the store (a restart does not refill a budget).
    pub fn set_budgets(&mut self, clients: &BTreeMap<String, crate::policy::ClientSpec>) {
        self.budgets = budget::Budgets::new(
            clients
                .iter()
                .map(|(name, spec)| (name.clone(), spec.budget))
                .collect(),
            self.clock.clone(),
        );
        match self.store.budget_spending() {
            Ok(saved) => self.budgets.restore(saved),
            Err(error) => tracing::error!(%error, "could not read the saved budget spending"),
        }
    }

    /// True when the store answers and the writer runs.
    pub fn is_ready(&self) -> bool {
        self.store.is_ready()
    }

    /// The configured namespaces and their classes.
    pub fn namespace_spec(&self, namespace: &str) -> Option<&NamespaceSpec> {
        self.namespaces.get(namespace).map(|ns| &ns.spec)
    }

    fn namespace(&self, namespace: &str) -> Result<&Namespace, VaultError> {
        self.namespaces
            .get(namespace)
            .ok_or(VaultError::UnknownNamespace)
    }

    /// Appends audit records from a surface (authentication failures, audit
    /// reads); answers once they are durable.
    pub async fn record(&self, records: Vec<Record>) -> Result<(), VaultError> {
        Ok(self.store.append_audit(records).await?)
    }

    /// Whether `caller` may download a backup; a refusal is recorded.
    /// Answers the record to complete once the backup is written.
    pub async fn authorize_backup(
        &self,
        context: &Context,
        caller: &Caller,
    ) -> Result<Record, VaultError> {
        let record = context.record(Action::BackupCreate, Outcome::Ok);
        if !caller.role.operations.contains(&Operation::Backup) {
            let error = VaultError::Denied(Denied::Operation);
            self.record_failure(record, &error).await;
            return Err(error);
        }
        Ok(record)
    }

    /// Records a refused authentication (no credentials, wrong ones, a
    /// throttled or disallowed source, a bad callback signature): the first
    /// of its kind in an interval at once, the rest as one counted record
    /// at the next [`Vault::flush_refusals`].
    ///
    /// Answers whether this refusal was the first of its kind in the
    /// interval (the one worth a warning in the log).
    pub async fn record_refused_authentication(&self, record: Record) -> Result<bool, VaultError> {
        match self.refusals.add(record) {
            refusals::Refusal::Record(record) => self.record(vec![record]).await.map(|_| true),
            refusals::Refusal::Counted => Ok(false),
            refusals::Refusal::Flush(record) => {
                self.flush_refusals().await?;
                self.record(vec![record]).await.map(|_| true)
            }
        }
    }

    /// Appends the counted refusals of the interval that ends now.
    pub async fn flush_refusals(&self) -> Result<(), VaultError> {
        let records = self.refusals.drain();
        if records.is_empty() {
            return Ok(());
        }
        self.record(records).await
    }

    /// Reads the audit trail for a caller whose role has `audit_read`. The
    /// read is itself recorded, before anything is returned.
    pub async fn audit_records(
        &self,
        context: &Context,
        caller: &Caller,
        filter: audit::Filter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<audit::Stored>, VaultError> {
        let record = context.record(Action::AuditRead, Outcome::Ok);
        if !caller.role.operations.contains(&Operation::AuditRead) {
            let error = VaultError::Denied(Denied::Operation);
            self.record_failure(record, &error).await;
            return Err(error);
        }
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || store.query_audit(&filter, after, limit))
            .await
            .map_err(|_| StoreError::ReadTask)??;
        self.store
            .append_audit(vec![record.items(found.len())])
            .await?;
        Ok(found)
    }

    /// The audit trail's state: appending, failing to append, or broken
    /// (its tail does not match the recorded head).
    pub fn audit_state(&self) -> crate::store::AuditState {
        self.store.audit_state()
    }

    /// Records a failed request; a failure to record it is logged (the
    /// request reveals nothing either way).
    async fn record_failure(&self, record: Record, error: &VaultError) {
        if matches!(error, VaultError::Store(StoreError::Audit(_))) {
            return;
        }
        let (outcome, reason) = error.audit_outcome();
        let record = Record { outcome, ..record }.reason(reason);
        if let Err(failure) = self.store.append_audit(vec![record]).await {
            tracing::error!(error = %failure, "could not record a refused request in the audit trail");
        }
    }

    /// Tokenizes `items`, in order. Tokens are returned only after the rows
    /// mapping them and the audit record are durably committed.
    pub async fn tokenize(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        items: Vec<TokenizeItem>,
    ) -> Result<Vec<Tokenized>, VaultError> {
        let record = self.start_record(context, Action::Tokenize, namespace);
        self.tokenize_recorded(record, caller, namespace, items, None)
            .await
    }

    /// Tokenizes `items` under `record` (a tokenization's, or a forward's),
    /// which is written exactly once: with the tokens when they are
    /// committed, or with the failure. No token longer than `limit` bytes
    /// is given out or stored.
    async fn tokenize_recorded(
        &self,
        record: Record,
        caller: &Caller,
        namespace: &str,
        items: Vec<TokenizeItem>,
        limit: Option<usize>,
    ) -> Result<Vec<Tokenized>, VaultError> {
        let record = record.items(items.len());
        let sealing_with = self
            .namespace(namespace)
            .ok()
            .map(|ns| ns.keys().writer().sealer().version());
        let mut result = self
            .tokenize_audited(vec![record.clone()], caller, namespace, &items, limit)
            .await;
        if let Err(VaultError::Store(StoreError::KeyVersionChanged(_))) = &result {
            // Another node rotated the keys and this one has not adopted
            // them yet (PostgreSQL): once it has, the request runs again
            // under the new keys; nothing of the first try was stored.
            if self.new_keys_adopted(namespace, sealing_with).await {
                result = self
                    .tokenize_audited(vec![record.clone()], caller, namespace, &items, limit)
                    .await;
            }
        }
        drop(items);
        match result {
            Ok(tokens) => Ok(tokens),
            Err(error) => {
                self.record_failure(record, &error).await;
                Err(error)
            }
        }
    }

    /// Waits, up to a few of the key watcher's polls, until `namespace`
    /// seals with another version than `before`; true when it does.
    async fn new_keys_adopted(&self, namespace: &str, before: Option<u32>) -> bool {
        let deadline = std::time::Instant::now() + rotation::POLL_INTERVAL * 5;
        while std::time::Instant::now() < deadline {
            let now = self
                .namespace(namespace)
                .ok()
                .map(|ns| ns.keys().writer().sealer().version());
            if now != before {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    async fn tokenize_audited(
        &self,
        mut records: Vec<Record>,
        caller: &Caller,
        namespace: &str,
        items: &[TokenizeItem],
        limit: Option<usize>,
    ) -> Result<Vec<Tokenized>, VaultError> {
        caller.role.check(Operation::Tokenize, namespace)?;
        let too_long = |index: usize, token: &str| match limit {
            Some(limit) if token.len() > limit => Err(VaultError::TokenTooLong { index, limit }),
            _ => Ok(()),
        };
        let ns = self.namespace(namespace)?;
        // Held until the rows are committed (see `Namespace::keys`).
        let keyset = ns.keys();
        let keys = keyset.writer();
        let mut pending = Vec::with_capacity(items.len());
        // A row's items share its subject: its keyed hash is computed once
        // for a run of items with the same subject.
        let mut last_subject: Option<(&str, [u8; 32])> = None;
        for (index, item) in items.iter().enumerate() {
            let item_error = |problem: ItemProblem| VaultError::Item { index, problem };
            let (class_name, class) = ns
                .spec
                .classes
                .get_key_value(&item.class)
                .ok_or(item_error(ItemProblem::UnknownClass))?;
            if !caller.role.classes.allows(class_name) {
                return Err(Denied::Class(index).into());
            }
            if item.value.expose().chars().count() > MAX_VALUE_CHARS {
                return Err(VaultError::ValueTooLarge { index });
            }
            let normalized = if item.number {
                normalize::normalize_number(class.normalize, item.value.expose())
            } else {
                normalize::normalize(class.normalize, item.value.expose())
            }
            .map_err(|e| item_error(e.into()))?;
            pending.push(Pending {
                class_name,
                class,
                blind_index: class
                    .deterministic
                    .then(|| keys.blind_index(class_name, normalized.expose())),
                subject_hash: item.subject.as_ref().map(|subject| {
                    let subject = subject.expose();
                    match last_subject {
                        Some((last, hash)) if last == subject => hash,
                        _ => {
                            let hash = ns.subject.hash(subject);
                            last_subject = Some((subject, hash));
                            hash
                        }
                    }
                }),
                normalized,
                // Minted only for values the store does not know yet.
                candidate: String::new(),
            });
        }

        let mut results: Vec<Option<Tokenized>> = vec![None; pending.len()];
        // Known values are answered from a read connection, without the
        // writer; during a rotation, under each version's index.
        let lookups: Vec<Lookup<'_>> = pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                Some(Lookup {
                    position: i,
                    class: p.class_name,
                    value: p.normalized.expose(),
                    write_index: Some(p.blind_index?),
                })
            })
            .collect();
        let today = self.clock.today();
        let mut used = Vec::new();
        if !lookups.is_empty() {
            let found = self.find_known(namespace, &keyset, lookups).await?;
            for (i, found) in found {
                results[i] = found.map(|found| {
                    if found.used_day < today {
                        used.push(found.token.clone());
                    }
                    Tokenized {
                        token: found.token,
                        created: false,
                    }
                });
            }
        }

        for (index, known) in results.iter().enumerate() {
            if let Some(known) = known {
                too_long(index, &known.token)?;
            }
        }
        let mut open: Vec<usize> = (0..pending.len())
            .filter(|i| results[*i].is_none())
            .collect();
        // The records list every token of the request; the writer adds the
        // tokens of the round that completes the request.
        let known: Vec<String> = results.iter().flatten().map(|t| t.token.clone()).collect();
        for record in &mut records {
            record.tokens.extend(known.iter().cloned());
        }
        // A known value tokenized for a subject is linked to it too: a value
        // belongs to every subject it was sent for, not to the first.
        let links: Vec<(String, SubjectHash)> = results
            .iter()
            .zip(&pending)
            .filter_map(|(result, p)| Some((result.as_ref()?.token.clone(), p.subject_hash?)))
            .collect();
        let link = |links| SubjectWrite::Link {
            namespace: namespace.to_owned(),
            links,
        };
        let links = self.unlinked(namespace, links).await?;
        if !links.is_empty() {
            // Committed before the request's records, which go with the
            // audit append or the round of inserts that completes it.
            self.store.subjects(link(links), Vec::new()).await?;
        }
        // Known values used today are marked so, for retention, with the
        // records (or on their own when inserts follow).
        let touch = (!used.is_empty()).then(|| Touch {
            namespace: namespace.to_owned(),
            tokens: used,
            day: today,
        });
        if open.is_empty() {
            match touch {
                Some(touch) => self.store.append_audit_touching(records, touch).await?,
                // A file run's batch has no record of its own.
                None if records.is_empty() => {}
                None => self.store.append_audit(records).await?,
            }
            return Ok(results.into_iter().flatten().collect());
        }
        if let Some(touch) = touch {
            self.store.append_audit_touching(Vec::new(), touch).await?;
        }
        // A class drawing from number blocks has a small token space: a
        // request can take a good part of it, so its taken tokens are
        // re-minted as often as its stored-number collisions are.
        let attempts = if open
            .iter()
            .any(|&i| !pending[i].class.token_prefixes.is_empty())
        {
            PHONE_MINT_ATTEMPTS
        } else {
            MINT_ATTEMPTS
        };
        for _attempt in 0..attempts {
            if open.is_empty() {
                break;
            }
            for &i in &open {
                let p = &mut pending[i];
                p.candidate = mint(p.class, &p.normalized, &ns.spec.token_domain).map_err(|e| {
                    VaultError::Item {
                        index: i,
                        problem: e.into(),
                    }
                })?;
            }
            self.avoid_stored_numbers(namespace, &keyset, &mut pending, &open)
                .await?;
            for &i in &open {
                too_long(i, &pending[i].candidate)?;
            }
            let rows = open
                .iter()
                .map(|&i| {
                    let p = &pending[i];
                    let binding = Binding {
                        namespace,
                        class: p.class_name,
                        token: &p.candidate,
                    };
                    Ok(NewRow {
                        token: p.candidate.clone(),
                        class: p.class_name.to_owned(),
                        key_version: keys.sealer().version(),
                        sealed: keys
                            .sealer()
                            .seal(binding, p.normalized.expose().as_bytes()),
                        blind_index: p.blind_index,
                        subject_hash: p.subject_hash,
                        used_day: today,
                    })
                })
                .collect::<Result<Vec<_>, VaultError>>()?;
            let outcomes = self.store.insert(namespace, rows, records.clone()).await?;
            let mut taken = Vec::new();
            let mut round_tokens = Vec::new();
            for (&i, outcome) in open.iter().zip(outcomes) {
                let resolved = match outcome {
                    InsertOutcome::Inserted => Tokenized {
                        token: pending[i].candidate.clone(),
                        created: true,
                    },
                    InsertOutcome::Existing(token) => Tokenized {
                        token,
                        created: false,
                    },
                    InsertOutcome::TokenTaken => {
                        taken.push(i);
                        continue;
                    }
                };
                round_tokens.push(resolved.token.clone());
                results[i] = Some(resolved);
            }
            if !taken.is_empty() {
                // The writer skipped the record this round; carry the tokens
                // resolved so far into the next round's record.
                for record in &mut records {
                    record.tokens.extend(round_tokens.iter().cloned());
                }
            }
            open = taken;
        }
        if !open.is_empty() {
            return Err(VaultError::Exhausted);
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// The token stored for each value, looked up under every version the
    /// key set consults: from the cache of known values when it holds a
    /// current answer, else in one read. Answers `(position, found)` in the
    /// order asked.
    async fn find_known(
        &self,
        namespace: &str,
        keyset: &keyset::KeySet,
        values: Vec<Lookup<'_>>,
    ) -> Result<Vec<(usize, Option<Found>)>, VaultError> {
        // Read before the store is: see `cache`.
        let generation = self
            .store
            .erasure_generation()
            .filter(|_| self.cache.enabled());
        // Only classes with retention need the day of last use; they are
        // not cached (a cached day would skip the marking of a use).
        let dated = self.namespace(namespace)?.dated.clone();
        // One answer per value, in the order asked.
        let mut answers: Vec<(usize, Option<Found>)> = Vec::with_capacity(values.len());
        let mut lookups = Vec::with_capacity(values.len());
        let mut per_value = Vec::with_capacity(values.len());
        for Lookup {
            position,
            class,
            value,
            write_index,
        } in values
        {
            let indexes = keyset.lookup_indexes(class, value, write_index);
            let cacheable = generation.filter(|_| !dated.contains(class));
            let hit = cacheable.and_then(|generation| {
                indexes
                    .iter()
                    .find_map(|index| self.cache.get(index, generation))
            });
            if hit.is_none() {
                per_value.push((answers.len(), indexes.len(), cacheable));
                lookups.extend(indexes.into_iter().map(|index| (class.to_owned(), index)));
            }
            answers.push((position, hit));
        }
        if lookups.is_empty() {
            return Ok(answers);
        }
        let indexes: Vec<[u8; 32]> = lookups.iter().map(|(_, index)| *index).collect();
        let mut found = self
            .find_by_blind_index(
                namespace,
                lookups,
                per_value.iter().map(|(_, count, _)| *count),
                dated,
            )
            .await?
            .into_iter()
            .zip(indexes);
        for (slot, count, cacheable) in per_value {
            // Every answer of this value is taken, the first found wins.
            let mut first = None;
            for (stored, index) in found.by_ref().take(count) {
                if first.is_none() {
                    first = stored.map(|stored| (stored, index));
                }
            }
            if let (Some(generation), Some((stored, index))) = (cacheable, &first) {
                self.cache.put(*index, stored, generation);
            }
            answers[slot].1 = first.map(|(stored, _)| stored);
        }
        Ok(answers)
    }

    /// Re-mints every phone-format candidate among `open` that equals a
    /// number stored in its class, or one being stored by this request: a
    /// message sent to a token by mistake must not reach a real person whose
    /// number the vault holds. Deterministic classes only (a random class
    /// keeps no index to look a number up by).
    async fn avoid_stored_numbers(
        &self,
        namespace: &str,
        keyset: &keyset::KeySet,
        pending: &mut [Pending<'_>],
        open: &[usize],
    ) -> Result<(), VaultError> {
        let keys = keyset.writer();
        let in_request: std::collections::HashSet<[u8; 32]> =
            pending.iter().filter_map(|p| p.blind_index).collect();
        let mut check: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| {
                pending[i].class.format == tokens::TokenFormat::Phone
                    && pending[i].class.deterministic
            })
            .collect();
        for _attempt in 0..PHONE_MINT_ATTEMPTS {
            if check.is_empty() {
                return Ok(());
            }
            let indexes: Vec<[u8; 32]> = check
                .iter()
                .map(|&i| keys.blind_index(pending[i].class_name, &pending[i].candidate))
                .collect();
            let lookups = check
                .iter()
                .zip(&indexes)
                .map(|(&i, index)| {
                    let p = &pending[i];
                    Lookup {
                        position: i,
                        class: p.class_name,
                        value: p.candidate.as_str(),
                        write_index: Some(*index),
                    }
                })
                .collect();
            let found = self.find_known(namespace, keyset, lookups).await?;
            let mut again = Vec::new();
            for ((&i, index), (_, stored)) in check.iter().zip(&indexes).zip(found) {
                if stored.is_some() || in_request.contains(index) {
                    crate::metrics::phone_token_collision();
                    let p = &mut pending[i];
                    p.candidate = mint(
                        p.class,
                        &p.normalized,
                        &self.namespace(namespace)?.spec.token_domain,
                    )
                    .map_err(|e| VaultError::Item {
                        index: i,
                        problem: e.into(),
                    })?;
                    again.push(i);
                }
            }
            check = again;
        }
        Err(VaultError::Exhausted)
    }

    /// Reveals the values of `tokens` for `purpose`, in order, as the caller's
    /// role allows (plain or masked). Tokens of classes the role may not see
    /// answer exactly like tokens that do not exist.
    ///
    /// Nothing is revealed until the audit record of the request is durable.
    pub async fn detokenize(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        purpose: &str,
        tokens: Vec<String>,
    ) -> Result<Vec<Detokenized>, VaultError> {
        let record = self
            .start_record(context, Action::Detokenize, namespace)
            .items(tokens.len());
        let record = self.with_purpose(record, purpose);
        let asked = tokens.clone();
        let Revealed {
            answers,
            exists,
            used,
            spending,
        } = match self
            .detokenize_unaudited(caller, namespace, purpose, tokens)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                let exists = self.existing(namespace, &asked).await;
                self.record_failure(self.with_tokens(record, &asked, &exists), &error)
                    .await;
                return Err(error);
            }
        };
        let mut record = self.with_tokens(record, &asked, &exists);
        if answers
            .iter()
            .any(|answer| matches!(answer, Detokenized::Integrity))
        {
            record = record.reason("integrity_error");
        } else if answers
            .iter()
            .any(|answer| matches!(answer, Detokenized::ConsentWithdrawn))
        {
            record = record.reason("consent_withdrawn");
        }
        // Fail closed: if this append fails, the answers are dropped (and
        // zeroized) unrevealed. Revealed tokens are marked used today, and
        // the client's budget spending is saved, in the same commit.
        let touch = (!used.is_empty()).then(|| Touch {
            namespace: namespace.to_owned(),
            tokens: used,
            day: self.clock.today(),
        });
        self.store
            .append_audit_with(vec![record], touch, spending)
            .await?;
        Ok(answers)
    }

    async fn detokenize_unaudited(
        &self,
        caller: &Caller,
        namespace: &str,
        purpose: &str,
        tokens: Vec<String>,
    ) -> Result<Revealed, VaultError> {
        caller.role.check(Operation::Detokenize, namespace)?;
        if !caller.role.purposes.allows(purpose) {
            return Err(Denied::Purpose.into());
        }
        let ns = self.namespace(namespace)?;
        let spending = self
            .budgets
            .spend(&caller.client, tokens.len() as u64)
            .map_err(|_| VaultError::BudgetExceeded)?
            .map(|spending| (caller.client.clone(), spending));
        let store = self.store.clone();
        let owned_namespace = namespace.to_owned();
        let owned_purpose = purpose.to_owned();
        let (tokens, stored, withdrawn) = tokio::task::spawn_blocking(move || {
            let stored = store.fetch(&owned_namespace, &tokens)?;
            let names: Vec<&str> = tokens.iter().map(String::as_str).collect();
            let withdrawn = store.consent_withdrawn(&owned_namespace, &owned_purpose, &names)?;
            Ok::<_, StoreError>((tokens, stored, withdrawn))
        })
        .await
        .map_err(|_| StoreError::ReadTask)??;
        let reveal = caller.role.reveal_for(purpose);
        let exists = stored.iter().map(Option::is_some).collect();
        let today = self.clock.today();
        let stale: Vec<bool> = stored
            .iter()
            .map(|s| {
                s.as_ref().is_some_and(|s| {
                    s.used_day < today
                        && ns
                            .spec
                            .classes
                            .get(&s.class)
                            .is_some_and(|class| class.retain_days.is_some())
                })
            })
            .collect();
        let answers: Vec<Detokenized> = tokens
            .iter()
            .zip(stored)
            .zip(withdrawn)
            .map(|((token, stored), withdrawn)| {
                let Some(stored) = stored else {
                    return Detokenized::NotFound;
                };
                let Some(class) = ns.spec.classes.get(&stored.class) else {
                    return Detokenized::NotFound;
                };
                if !caller.role.classes.allows(&stored.class) {
                    return Detokenized::NotFound;
                }
                if withdrawn {
                    return Detokenized::ConsentWithdrawn;
                }
                let Some(plain) = ns.unseal(namespace, token, &stored) else {
                    return Detokenized::Integrity;
                };
                let value = match reveal {
                    Reveal::Plain => Pii::new(plain),
                    Reveal::Masked => {
                        let plain = Pii::new(plain);
                        Pii::new(mask(plain.expose(), class.normalize))
                    }
                };
                Detokenized::Value {
                    class: stored.class,
                    value,
                }
            })
            .collect();
        let used = tokens
            .iter()
            .zip(&answers)
            .zip(stale)
            .filter(|((_, answer), stale)| *stale && matches!(answer, Detokenized::Value { .. }))
            .map(|((token, _), _)| token.clone())
            .collect();
        Ok(Revealed {
            answers,
            exists,
            used,
            spending,
        })
    }

    /// Records that `purpose` (or `*`) is withdrawn or restored for a token
    /// or a subject. Needs the `consent` operation on the namespace.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_consent(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        subject: ConsentSubject,
        purpose: &str,
        withdrawn: bool,
        source: &str,
    ) -> Result<(), VaultError> {
        let record = self
            .start_record(context, Action::Consent, namespace)
            .reason(if withdrawn { "withdrawn" } else { "restored" })
            .items(1);
        // `*` (every purpose) is a configuration word, not caller text.
        let mut record = if purpose == "*" {
            record.purpose(purpose)
        } else {
            self.with_purpose(record, purpose)
        };
        let mut token_exists = true;
        if let ConsentSubject::Token(token) = &subject {
            let token = std::slice::from_ref(token);
            let exists = self.existing(namespace, token).await;
            token_exists = exists.iter().all(|e| *e);
            record = self.with_tokens(record, token, &exists);
        }
        let result = async {
            caller.role.check(Operation::Consent, namespace)?;
            let ns = self.namespace(namespace)?;
            // Consent events are kept in vault.db in the clear (they are
            // names and keyed hashes): caller text that names nothing the
            // vault knows is refused rather than stored.
            if purpose != "*" && !self.purposes.contains(purpose) {
                return Err(VaultError::UnknownPurpose);
            }
            if !token_exists {
                return Err(VaultError::UnknownToken);
            }
            let target = match subject {
                ConsentSubject::Token(token) => ConsentTarget::Token(token),
                ConsentSubject::Subject(subject) => {
                    ConsentTarget::Subject(ns.subject.hash(subject.expose()))
                }
            };
            let event = ConsentEvent {
                namespace: namespace.to_owned(),
                target,
                purpose: purpose.to_owned(),
                withdrawn,
                changed_at: audit::now_us(),
                source: format!("{}: {source}", caller.client),
            };
            self.store
                .activation(ActivationWrite::Consent(event), vec![record.clone()])
                .await?;
            Ok(())
        }
        .await;
        if let Err(error) = &result {
            self.record_failure(record, error).await;
        }
        result
    }

    /// Accepts a callback's message id, durably, with `audit`; false when it
    /// was accepted before (a replay).
    pub async fn claim_message(
        &self,
        callback: &str,
        message_id: &str,
        expires_at: i64,
        audit: Vec<Record>,
    ) -> Result<bool, VaultError> {
        let write = ActivationWrite::Claim {
            callback: callback.to_owned(),
            message_id: message_id.to_owned(),
            expires_at,
        };
        Ok(self.store.activation(write, audit).await?)
    }

    /// Forgets a claimed message id, so that a retry of an undelivered
    /// callback is accepted.
    pub async fn release_message(
        &self,
        callback: &str,
        message_id: &str,
        audit: Vec<Record>,
    ) -> Result<(), VaultError> {
        let write = ActivationWrite::Release {
            callback: callback.to_owned(),
            message_id: message_id.to_owned(),
        };
        self.store.activation(write, audit).await?;
        Ok(())
    }

    /// Forgets one token: its row and sealed value are deleted. Answers
    /// whether it existed (false also for a class the caller may not see).
    pub async fn forget(
        &self,
        context: &Context,
        caller: &Caller,
        namespace: &str,
        token: &str,
    ) -> Result<bool, VaultError> {
        let record = self
            .start_record(context, Action::Forget, namespace)
            .items(1);
        let asked = [token.to_owned()];
        let record = self.with_tokens(record, &asked, &self.existing(namespace, &asked).await);
        match self
            .forget_audited(record.clone(), caller, namespace, token)
            .await
        {
            Ok(existed) => Ok(existed),
            Err(error) => {
                self.record_failure(record, &error).await;
                Err(error)
            }
        }
    }

    async fn forget_audited(
        &self,
        record: Record,
        caller: &Caller,
        namespace: &str,
        token: &str,
    ) -> Result<bool, VaultError> {
        caller.role.check(Operation::Forget, namespace)?;
        let ns = self.namespace(namespace)?;
        if let crate::policy::Scope::Only(_) = caller.role.classes {
            let store = self.store.clone();
            let (owned_namespace, owned_token) = (namespace.to_owned(), vec![token.to_owned()]);
            let stored =
                tokio::task::spawn_blocking(move || store.fetch(&owned_namespace, &owned_token))
                    .await
                    .map_err(|_| StoreError::ReadTask)??;
            let visible = stored.first().and_then(Option::as_ref).is_some_and(|s| {
                caller.role.classes.allows(&s.class) && ns.spec.classes.contains_key(&s.class)
            });
            if !visible {
                self.store
                    .append_audit(vec![record.outcome(Outcome::Error).reason("not_found")])
                    .await?;
                return Ok(false);
            }
        }
        Ok(self.store.delete(namespace, token, record).await?)
    }
}

/// A fresh token that differs from the value (a length-preserving format can,
/// by chance, reproduce its input).
fn mint(class: &ClassSpec, normalized: &Pii, token_domain: &str) -> Result<String, FormatError> {
    loop {
        let token = tokens::mint_in_blocks(
            class.format,
            normalized.expose(),
            token_domain,
            &class.token_prefixes,
        )?;
        if token != normalized.expose() {
            return Ok(token);
        }
    }
}
