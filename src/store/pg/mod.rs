//! The PostgreSQL store, for several vault nodes sharing one database.
//!
//! The engine's second backend, behind the same `Store`: connections over
//! rustls with a small pool; the schema in versioned steps kept in step
//! with SQLite's and applied once however many nodes start together; the
//! insert-or-read by which two nodes storing the same new value at the
//! same moment return the same token; one audit chain serialized by its
//! head row (`trail`); group commit (`writer`); the reads; and the key
//! changes and the write-version check of a rotation across nodes (`keys`).
//!
//! The driver is the blocking `postgres` crate, which runs its own small
//! runtime per connection: call it from a blocking thread (the writer, a
//! `spawn_blocking` task or the CLI), never from an async task.

mod activation;
mod changes;
mod connect;
pub mod keys;
mod pool;
mod reads;
pub mod schema;
mod trail;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use self::pool::Borrowed;
use self::pool::Pool;
use self::schema::{Component, VERSIONS_TABLE};
use super::activation::{ActivationWrite, ConsentRecord};
use super::batch::Job;
use super::budgets::Spending;
use super::retention::Day;
use super::rotation::{KeyState, StaleRow};
use super::subjects::SubjectHash;
use super::{Found, StoredValue};
use super::{InsertOutcome, NewRow, StoreError};
use crate::audit::{Broken, Filter, Head, Record, Stored, Verified};
use crate::config::{PostgresSettings, SchemaName};
use crate::crypto::keys::AuditKey;
use crate::crypto::wrapping::KeyringDocument;

/// What the PostgreSQL store reports.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server could not be reached, refused the login, or failed TLS.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL (it never holds a password).
        url: String,
        /// What the driver said.
        reason: String,
    },
    /// The password file or variable could not be read.
    #[error("storage password: {0}")]
    Password(String),
    /// The CA file is unusable.
    #[error("storage.ca_file {0}")]
    Tls(String),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(String),
    /// The schema in the database cannot be used by this build.
    #[error("schema: {0}")]
    Schema(String),
    /// The audit trail does not end at the recorded head (records cut off,
    /// added behind the vault's back, or edited): nothing is appended, and
    /// nothing the batch wrote commits.
    #[error("audit trail does not end at the recorded head: {0}")]
    AuditMismatch(String),
    /// Every connection stayed busy.
    #[error("no database connection became free within {0:?}")]
    PoolTimeout(Duration),
}

/// A driver error as text: the server's message and SQLSTATE, never the
/// `DETAIL` line, which can quote a row's key.
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let said = cause.to_string();
                if !text.contains(&said) {
                    text.push_str(": ");
                    text.push_str(&said);
                }
                source = cause.source();
            }
            text
        }
    }
}

impl From<postgres::Error> for PgError {
    fn from(error: postgres::Error) -> Self {
        Self::Query(describe(&error))
    }
}

/// The PostgreSQL store: a pool of connections to one schema. The node's
/// writer runs under the engine's `Store` (`Store::open_postgres`).
pub struct PgStore {
    pool: Arc<Pool>,
    schema: SchemaName,
    batches: Arc<AtomicU64>,
}

/// What `storage check` reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// The server's version string.
    pub server_version: String,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Each component's schema version after migrating.
    pub versions: BTreeMap<String, usize>,
}

impl PgStore {
    /// Prepares the pool and opens one connection, so that a wrong host,
    /// password or CA is reported now.
    pub fn connect(settings: &PostgresSettings) -> Result<Self, PgError> {
        Ok(Self {
            pool: Arc::new(Pool::open(settings)?),
            schema: settings.schema.clone(),
            batches: Arc::default(),
        })
    }

    /// How many connections the pool opens at most.
    pub fn pool_size(&self) -> usize {
        self.pool.size()
    }

    /// A connection from the pool.
    pub fn borrow(&self) -> Result<Borrowed<'_>, PgError> {
        self.pool.borrow()
    }

    /// Whether connections are TLS.
    pub fn uses_tls(&self) -> bool {
        self.pool.uses_tls()
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Brings every component's tables up to date, in one transaction under
    /// an advisory lock: nodes that start together migrate once. Refuses a
    /// database migrated by a newer build, and a build whose steps are not
    /// in step with SQLite's.
    pub fn migrate(&self) -> Result<BTreeMap<String, usize>, PgError> {
        schema::check_in_step().map_err(PgError::Schema)?;
        let mut client = self.borrow()?;
        let mut transaction = client.transaction()?;
        // One lock per schema name, so that two vaults in two schemas of
        // one database do not wait for each other.
        transaction.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tokenvault migrate ' || $1::text))",
            &[&self.schema.as_str()],
        )?;
        transaction.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path = {schema}; {VERSIONS_TABLE};",
            schema = self.schema.as_str()
        ))?;
        let mut versions = BTreeMap::new();
        for component in Component::ALL {
            let steps = component.steps();
            let current: Option<i32> = transaction
                .query_opt(
                    "SELECT version FROM schema_versions WHERE component = $1",
                    &[&component.name()],
                )?
                .map(|row| row.get(0));
            let current = usize::try_from(current.unwrap_or(0)).unwrap_or(0);
            if current > steps.len() {
                return Err(PgError::Schema(format!(
                    "the {} tables are at version {current}, newer than this build's {}: \
                     upgrade this node before it joins",
                    component.name(),
                    steps.len()
                )));
            }
            for (name, sql) in &steps[current..] {
                transaction.batch_execute(sql).map_err(|error| {
                    PgError::Schema(format!(
                        "{} step {name} failed: {}",
                        component.name(),
                        describe(&error)
                    ))
                })?;
            }
            if current < steps.len() {
                let version = i32::try_from(steps.len()).unwrap_or(i32::MAX);
                let step = steps[steps.len() - 1].0;
                transaction.execute(
                    "INSERT INTO schema_versions (component, version, step, changed_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (component) DO UPDATE
                     SET version = excluded.version, step = excluded.step,
                         changed_at = excluded.changed_at",
                    &[&component.name(), &version, &step, &super::unix_now()],
                )?;
            }
            versions.insert(component.name().to_owned(), steps.len());
        }
        transaction.execute(trail::SEED_HEAD, &[])?;
        transaction.commit()?;
        Ok(versions)
    }

    /// Each component's recorded schema version (empty before the first
    /// migration).
    pub fn schema_versions(&self) -> Result<BTreeMap<String, usize>, PgError> {
        let mut client = self.borrow()?;
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{}.schema_versions", self.schema.as_str())],
            )?
            .get(0);
        if !exists {
            return Ok(BTreeMap::new());
        }
        Ok(client
            .query("SELECT component, version FROM schema_versions", &[])?
            .into_iter()
            .map(|row| {
                let version: i32 = row.get(1);
                (row.get(0), usize::try_from(version).unwrap_or(0))
            })
            .collect())
    }

    /// Connects, migrates and reports, for `storage check`.
    pub fn check(&self) -> Result<Report, PgError> {
        let versions = self.migrate()?;
        let server_version: String = self.borrow()?.query_one("SHOW server_version", &[])?.get(0);
        Ok(Report {
            server_version,
            tls: self.uses_tls(),
            versions,
        })
    }

    /// Stores `rows` and appends `audit` in one transaction, as the writer
    /// does for a batch: the records name the stored tokens (the existing
    /// one where the value was already stored), and a record exists exactly
    /// when the rows it describes do.
    ///
    /// A deterministic value that any node has already stored (committed,
    /// or committing at this moment) comes back as
    /// [`InsertOutcome::Existing`] with that node's token: the insert meets
    /// the unique blind index and does nothing, after waiting for a
    /// concurrent inserter's commit, and the read that follows sees the
    /// winner. Nothing here reads before it writes.
    pub fn store(
        &self,
        key: &AuditKey,
        namespace: &str,
        rows: &[NewRow],
        audit: Vec<Record>,
    ) -> Result<Vec<InsertOutcome>, PgError> {
        let mut client = self.borrow()?;
        let mut transaction = client.transaction()?;
        let locked = trail::lock(&mut transaction, key)?;
        let outcomes = insert_or_read(&mut transaction, namespace, rows)?;
        let records = super::records_for_insert(rows, &outcomes, audit);
        trail::append(&mut transaction, key, locked, &records)?;
        transaction.commit()?;
        Ok(outcomes)
    }

    /// Appends `records` alone (a reveal, a refusal, an admin action).
    pub fn append_audit(
        &self,
        key: &AuditKey,
        records: &[Record],
    ) -> Result<Option<Head>, PgError> {
        let mut client = self.borrow()?;
        let mut transaction = client.transaction()?;
        let locked = trail::lock(&mut transaction, key)?;
        let head = trail::append(&mut transaction, key, locked, records)?;
        transaction.commit()?;
        Ok(head)
    }

    /// Verifies the whole audit chain against the head, in one snapshot.
    pub fn verify_audit(&self, key: &AuditKey) -> Result<Verified, Broken> {
        let unreachable = |error: PgError| Broken {
            seq: 0,
            reason: format!("cannot read the audit trail: {error}"),
        };
        let mut client = self.borrow().map_err(unreachable)?;
        let mut transaction = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| unreachable(e.into()))?;
        trail::verify(&mut transaction, key)
    }

    /// Starts a writer (group commit) for this node, chaining records
    /// with `key` and keeping `audit_state`: its queue and its thread,
    /// which ends when every sender is gone.
    pub(super) fn spawn_writer(
        &self,
        key: Arc<AuditKey>,
        audit_state: Arc<AtomicU8>,
    ) -> Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>), StoreError> {
        let (jobs, receiver) = mpsc::channel(writer::MAX_JOBS * 4);
        let (pool, batches) = (self.pool.clone(), self.batches.clone());
        let thread = std::thread::Builder::new()
            .name("pg-writer".to_owned())
            .spawn(move || writer::run(&pool, &key, &batches, &audit_state, receiver))
            .map_err(|_| StoreError::WriterGone)?;
        Ok((jobs, thread))
    }

    /// Whether consent for `purpose` is withdrawn for `token`, by a token
    /// or a linked subject's event, as committed by any node.
    pub fn consent_withdrawn(
        &self,
        namespace: &str,
        token: &str,
        purpose: &str,
    ) -> Result<bool, PgError> {
        Ok(self.consent_withdrawn_all(namespace, purpose, &[token])?[0])
    }

    /// [`PgStore::consent_withdrawn`] for many tokens, in one statement.
    pub fn consent_withdrawn_all(
        &self,
        namespace: &str,
        purpose: &str,
        tokens: &[&str],
    ) -> Result<Vec<bool>, PgError> {
        activation::withdrawn(&mut *self.borrow()?, namespace, purpose, tokens)
    }

    /// Transactions the writer has committed so far.
    pub fn batches_committed(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Existing tokens by blind index, from one snapshot; the day of last
    /// use for the classes `dated` says have retention.
    pub fn find_by_blind_index(
        &self,
        namespace: &str,
        lookups: &[(&str, [u8; 32])],
        dated: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Option<Found>>, PgError> {
        reads::find_by_blind_index(&mut *self.borrow()?, namespace, lookups, dated)
    }

    /// Sealed values by token.
    pub fn fetch(
        &self,
        namespace: &str,
        tokens: &[String],
    ) -> Result<Vec<Option<StoredValue>>, PgError> {
        reads::fetch(&mut *self.borrow()?, namespace, tokens)
    }

    /// Whether each (token, subject) pair is linked already.
    pub fn linked(
        &self,
        namespace: &str,
        links: &[(String, SubjectHash)],
    ) -> Result<Vec<bool>, PgError> {
        reads::linked(&mut *self.borrow()?, namespace, links)
    }

    /// Whether each token exists.
    pub fn existing(&self, namespace: &str, tokens: &[String]) -> Result<Vec<bool>, PgError> {
        reads::existing(&mut *self.borrow()?, namespace, tokens)
    }

    /// Up to `limit` tokens of `class` idle since before `before`, after
    /// the cursor `after`.
    pub fn idle_tokens(
        &self,
        namespace: &str,
        class: &str,
        before: Day,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, PgError> {
        reads::idle_tokens(&mut *self.borrow()?, namespace, class, before, after, limit)
    }

    /// The tokens linked to a subject, and its consent history.
    pub fn subject_holdings(
        &self,
        namespace: &str,
        subject: &SubjectHash,
    ) -> Result<(Vec<String>, Vec<ConsentRecord>), PgError> {
        reads::subject_holdings(&mut *self.borrow()?, namespace, subject)
    }

    /// Every budgeted client's saved spending, as every node saved it.
    pub fn budget_spending(&self) -> Result<Vec<(String, Spending)>, PgError> {
        reads::budget_spending(&mut *self.borrow()?)
    }

    /// The bytes the vault's tables and the audit trail take.
    pub fn sizes(&self) -> Result<(u64, u64), PgError> {
        reads::sizes(&mut *self.borrow()?)
    }

    /// Every rotated namespace's key state.
    pub fn key_states(&self) -> Result<Vec<KeyState>, PgError> {
        reads::key_states(&mut *self.borrow()?)
    }

    /// Up to `limit` rows of `namespace` not sealed under `version`.
    pub fn stale_rows(
        &self,
        namespace: &str,
        version: u32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StaleRow>, PgError> {
        reads::stale_rows(&mut *self.borrow()?, namespace, version, after, limit)
    }

    /// Audit records matching `filter` after `after`, at most `limit`.
    pub fn query_audit(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, PgError> {
        reads::query_audit(&mut *self.borrow()?, filter, after, limit)
    }

    /// The audit head recorded in the database.
    pub fn recorded_audit_head(&self) -> Result<Option<Head>, PgError> {
        reads::recorded_audit_head(&mut *self.borrow()?)
    }

    /// Whether the database answers a trivial query now.
    pub fn answers(&self) -> bool {
        self.borrow()
            .and_then(|mut client| Ok(client.query_one("SELECT 1", &[])?))
            .is_ok()
    }

    /// Whether the audit trail ends at its recorded head (read-only, no
    /// lock), so that a node turns ready again once an operator has
    /// acknowledged a gap.
    pub fn tail_is_consistent(&self, key: &AuditKey) -> Result<bool, PgError> {
        let mut client = self.borrow()?;
        let mut transaction = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        trail::tail_is_consistent(&mut transaction, key)
    }

    /// Token rows per namespace and key version.
    pub fn rows_per_key_version(&self) -> Result<Vec<(String, u32, u64)>, PgError> {
        reads::rows_per_key_version(&mut *self.borrow()?)
    }

    /// The time (µs) of the newest successful record of `action`.
    pub fn last_of_action(&self, action: &str) -> Result<Option<i64>, PgError> {
        reads::last_of_action(&mut *self.borrow()?, action)
    }

    /// The time (µs) of each actor's newest successful record.
    pub fn last_use_by_actor(&self) -> Result<BTreeMap<String, i64>, PgError> {
        reads::last_use_by_actor(&mut *self.borrow()?)
    }

    /// Every consent event for `target`, oldest first.
    pub fn consent_history(
        &self,
        namespace: &str,
        target: &super::activation::ConsentTarget,
    ) -> Result<Vec<ConsentRecord>, PgError> {
        reads::consent_history(&mut *self.borrow()?, namespace, target)
    }

    /// An activation write (a consent change from the command line) with
    /// its records, in one transaction of its own: for commands that run
    /// beside the nodes, which see it from their next request.
    pub fn activation_now(
        &self,
        key: &AuditKey,
        write: &ActivationWrite,
        records: &[Record],
    ) -> Result<bool, PgError> {
        let mut client = self.borrow()?;
        let mut transaction = client.transaction()?;
        let locked = trail::lock(&mut transaction, key)?;
        let result = activation::apply(&mut transaction, write, super::unix_now())?;
        trail::append(&mut transaction, key, locked, records)?;
        transaction.commit()?;
        Ok(result)
    }

    /// The MAC the record `seq` chains to.
    pub fn previous_mac(&self, seq: u64) -> Result<Vec<u8>, PgError> {
        reads::previous_mac(&mut *self.borrow()?, seq)
    }

    /// Acknowledges records missing from the end of the trail (see
    /// `store::acknowledge_audit_gap`), so that the nodes may write again.
    pub fn acknowledge_audit_gap(
        &self,
        key: &AuditKey,
        record: Record,
    ) -> Result<super::GapAcknowledged, super::AcknowledgeError> {
        let mut client = self.borrow()?;
        let mut transaction = client.transaction().map_err(PgError::from)?;
        let (gap, head) = trail::acknowledge_gap(&mut transaction, key, record)?;
        transaction.commit().map_err(PgError::from)?;
        Ok(super::GapAcknowledged { gap, head })
    }

    /// The keyring every node unwraps, if one is stored. With PostgreSQL
    /// the keyring lives in the database, not in a node's data directory,
    /// so that nodes configured with the same key source hold the same
    /// master keys and see a rotation at once.
    pub fn keyring(&self) -> Result<Option<KeyringDocument>, PgError> {
        let row = self
            .borrow()?
            .query_opt("SELECT document FROM keyring WHERE id = 1", &[])?;
        Ok(row.map(|row| KeyringDocument::from_bytes(row.get(0))))
    }

    /// Stores the first keyring. False, with nothing changed, when one is
    /// already there (another node's `init` came first).
    pub fn create_keyring(&self, document: &KeyringDocument) -> Result<bool, PgError> {
        let stored = self.borrow()?.execute(
            "INSERT INTO keyring (id, document, changed_at) VALUES (1, $1, $2)
             ON CONFLICT (id) DO NOTHING",
            &[&document.as_bytes(), &super::unix_now()],
        )?;
        Ok(stored == 1)
    }

    /// Replaces the keyring `expected` by `next` (a rotation, a retirement,
    /// a rewrap). False, with nothing changed, when the stored keyring is
    /// no longer `expected`: another node changed it first, and the change
    /// must be made again on what it stored.
    pub fn replace_keyring(
        &self,
        expected: &KeyringDocument,
        next: &KeyringDocument,
    ) -> Result<bool, PgError> {
        let replaced = self.borrow()?.execute(
            "UPDATE keyring SET document = $2, changed_at = $3 WHERE id = 1 AND document = $1",
            &[&expected.as_bytes(), &next.as_bytes(), &super::unix_now()],
        )?;
        Ok(replaced == 1)
    }

    /// The sealed value and key version behind `token`, if stored.
    pub fn fetch_sealed(
        &self,
        namespace: &str,
        token: &str,
    ) -> Result<Option<(u32, Vec<u8>)>, PgError> {
        let row = self.borrow()?.query_opt(
            "SELECT key_version, sealed FROM tokens WHERE namespace = $1 AND token = $2",
            &[&namespace, &token],
        )?;
        Ok(row.map(|row| {
            let version: i32 = row.get(0);
            (u32::try_from(version).unwrap_or(0), row.get(1))
        }))
    }
}

/// Inserts `rows` of one namespace inside `transaction`.
fn insert_or_read(
    transaction: &mut postgres::Transaction<'_>,
    namespace: &str,
    rows: &[NewRow],
) -> Result<Vec<InsertOutcome>, PgError> {
    let items: Vec<(&str, &NewRow)> = rows.iter().map(|row| (namespace, row)).collect();
    insert_all(transaction, &items)
}

/// Inserts `items` (namespace and row) inside `transaction` in three
/// statements whatever their number, with the outcome of inserting them
/// one by one in order: each row is inserted, or answered the token already
/// stored for its value (by any node, or earlier in `items`), or reported
/// taken when its token is another value's. Links subjects to the stored
/// token.
fn insert_all(
    transaction: &mut postgres::Transaction<'_>,
    items: &[(&str, &NewRow)],
) -> Result<Vec<InsertOutcome>, PgError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let now = super::unix_now();
    let namespaces: Vec<&str> = items.iter().map(|(namespace, _)| *namespace).collect();
    let tokens: Vec<&str> = items.iter().map(|(_, row)| row.token.as_str()).collect();
    let classes: Vec<&str> = items.iter().map(|(_, row)| row.class.as_str()).collect();
    let versions = items
        .iter()
        .map(|(_, row)| i32::try_from(row.key_version))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| PgError::Query("key version out of range".to_owned()))?;
    let sealed: Vec<&[u8]> = items.iter().map(|(_, row)| row.sealed.as_slice()).collect();
    let indexes: Vec<Option<&[u8]>> = items
        .iter()
        .map(|(_, row)| row.blind_index.as_ref().map(|index| &index[..]))
        .collect();
    let days: Vec<i64> = items.iter().map(|(_, row)| row.used_day).collect();
    // In the order given, so that of two rows with one value the first is
    // stored and the second meets it.
    let inserted = transaction.query(
        "INSERT INTO tokens (namespace, token, class, key_version, sealed, blind_index, created_at, used_day)
         SELECT n, t, c, v, s, b, $7, u
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::bytea[], $6::bytea[], $8::int8[])
              WITH ORDINALITY AS item (n, t, c, v, s, b, u, ord)
         ORDER BY ord
         ON CONFLICT DO NOTHING
         RETURNING namespace, token",
        &[&namespaces, &tokens, &classes, &versions, &sealed, &indexes, &now, &days],
    )?;
    let mut fresh: std::collections::HashSet<(String, String)> = inserted
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // The stored token of every value that was not inserted here.
    let existing = transaction.query(
        "SELECT item.ord, found.token
         FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS item (n, c, b, ord)
         CROSS JOIN LATERAL (
             SELECT token FROM tokens
             WHERE namespace = item.n AND class = item.c AND blind_index = item.b
         ) AS found",
        &[&namespaces, &classes, &indexes],
    )?;
    let mut stored_token: BTreeMap<usize, String> = BTreeMap::new();
    for row in existing {
        let ord: i64 = row.get(0);
        stored_token.insert(usize::try_from(ord).unwrap_or(0), row.get(1));
    }
    let mut outcomes = Vec::with_capacity(items.len());
    let (mut link_ns, mut link_subject, mut link_token) = (Vec::new(), Vec::new(), Vec::new());
    for (position, (namespace, row)) in items.iter().enumerate() {
        let key = ((*namespace).to_owned(), row.token.clone());
        let outcome = if fresh.remove(&key) {
            InsertOutcome::Inserted
        } else {
            match stored_token.get(&(position + 1)) {
                Some(token) => InsertOutcome::Existing(token.clone()),
                None => InsertOutcome::TokenTaken,
            }
        };
        let stored = match &outcome {
            InsertOutcome::Inserted => Some(row.token.clone()),
            InsertOutcome::Existing(token) => Some(token.clone()),
            InsertOutcome::TokenTaken => None,
        };
        if let (Some(token), Some(subject)) = (stored, &row.subject_hash) {
            link_ns.push(*namespace);
            link_subject.push(&subject[..]);
            link_token.push(token);
        }
        outcomes.push(outcome);
    }
    if !link_ns.is_empty() {
        transaction.execute(
            "INSERT INTO subject_links (namespace, subject_hash, token, linked_at)
             SELECT n, s, t, $4 FROM unnest($1::text[], $2::bytea[], $3::text[]) AS link (n, s, t)
             ON CONFLICT DO NOTHING",
            &[&link_ns, &link_subject, &link_token, &now],
        )?;
    }
    Ok(outcomes)
}
