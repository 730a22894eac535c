//! The token store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the write connection and commits the work of many
//! concurrent callers in one transaction (group commit); each caller gets its
//! answer only after that transaction is durably committed. Reads go through
//! a small pool of read-only connections.
//!
//! The writer also owns the append connection of `audit.db`: every batch
//! appends its audit records in the same rhythm, commits `audit.db` first and
//! `vault.db` (token rows plus the audit head) second, and answers only after
//! both. If the audit append fails, the token rows roll back too.
//!
//! Before every append (the writer's and the CLI's alike) the trail's tail is
//! checked against the head recorded in `vault.db`: if records were cut off
//! or the file replaced, nothing is appended (so the cut is never papered
//! over) and the store reports the audit trail as broken until an operator
//! runs `audit acknowledge-gap`. This is the only module with SQL.

mod batch;
mod key_order;
mod schema;
pub mod trail;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

pub mod activation;
pub mod backup;
pub mod budgets;
pub mod migrate;
pub mod pg;
pub mod retention;
pub mod rotation;
pub mod subjects;
pub mod tombstones;

use self::batch::records_for_insert;
use self::batch::{Done, Job, Reply};
use self::key_order::{in_input_order, key_order};
use crate::audit::{Filter, Gap, Head, Record, Stored};
use crate::crypto::keys::AuditKey;
pub use activation::{ActivationWrite, ConsentEvent, ConsentRecord, ConsentTarget};
pub use budgets::Spending;
pub use retention::{Day, Sweep, Touch};
pub use rotation::{KeyState, Move, Rekey, RekeyOutcome, StaleRow};
pub use subjects::{
    Correction, CorrectionRefused, Erasure, SubjectHash, SubjectOutcome, SubjectWrite,
};

/// Largest number of queued jobs committed in one transaction.
const GROUP_COMMIT_MAX_JOBS: usize = 512;
/// How long `vault.db`'s audit head may go without an fsync of its own
/// when batches only append records (see `Writer::commit_batch`).
const HEAD_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Read connections in the pool.
const READ_CONNECTIONS: usize = 4;
/// Page cache of a connection the CLI opens for one command, in MiB.
const COMMAND_CACHE_MIB: u32 = 16;
/// Jobs that may wait for the writer before callers are held back.
const WRITE_QUEUE: usize = 1024;

/// A store failure. The detail is for the log; callers answer 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("schema migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The writer's transaction failed and was rolled back (disk full,
    /// read-only file, I/O error); nothing of it was committed.
    #[error("write transaction failed: {0}")]
    Write(String),
    /// The audit records could not be written (or the trail's tail no
    /// longer matches the recorded head); nothing of the batch was
    /// committed, and nothing may be revealed.
    #[error("audit trail write failed: {0}")]
    Audit(String),
    /// The writer thread is gone (shutting down or crashed).
    #[error("the store writer has stopped")]
    WriterGone,
    /// New rows were sealed with a master key version their namespace no
    /// longer writes with; the vault adopts the new keys and tries again.
    #[error("master key version changed: {0}")]
    KeyVersionChanged(String),
    /// SQLite would not switch the database to WAL mode.
    #[error("the database could not be put in WAL mode")]
    NotWal,
    /// A blocking read task was cancelled.
    #[error("read task failed")]
    ReadTask,
    /// The PostgreSQL store failed (unreachable, refused, timed out).
    #[error("{0}")]
    Postgres(#[from] pg::PgError),
}

/// A new token row, sealed by the engine.
#[derive(Debug)]
pub struct NewRow {
    /// The minted token.
    pub token: String,
    /// Data class name.
    pub class: String,
    /// Master key version the value is sealed under.
    pub key_version: u32,
    /// `nonce || ciphertext || tag`.
    pub sealed: Vec<u8>,
    /// Blind index for deterministic classes.
    pub blind_index: Option<[u8; 32]>,
    /// Keyed hash of the subject, when one was given: the stored token
    /// (this row's, or the existing one for its value) is linked to it.
    pub subject_hash: Option<[u8; 32]>,
    /// The day it is stored (its first use).
    pub used_day: Day,
}

/// What became of one [`NewRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Inserted and committed.
    Inserted,
    /// A row with the same blind index already exists: use its token.
    Existing(String),
    /// The token is already taken in this namespace: mint another.
    TokenTaken,
}

/// A stored, still sealed value.
#[derive(Debug, Clone)]
pub struct StoredValue {
    /// Data class name.
    pub class: String,
    /// Master key version it is sealed under.
    pub key_version: u32,
    /// `nonce || ciphertext || tag`.
    pub sealed: Vec<u8>,
    /// The day it was last used.
    pub used_day: Day,
}

/// A token found by its value's blind index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The token.
    pub token: String,
    /// The day it was last used (`Day::MAX` when not read: a class without
    /// retention).
    pub used_day: Day,
}

/// Why a writer batch failed.
#[derive(Debug, Clone)]
enum Failure {
    Write(String),
    Audit(String),
    /// The job's new rows are sealed with another master key version than
    /// their namespace writes with now (PostgreSQL: this node has not yet
    /// adopted a `keys rotate` made elsewhere). Only that job fails.
    Stale(String),
    /// The trail's tail does not match the recorded head.
    Mismatch(String),
}

/// The audit trail's state, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditState {
    /// The last append succeeded.
    Ok,
    /// The last append failed (locked, unwritable, disk full); the next
    /// batch tries again.
    Failing,
    /// The trail does not end at the head recorded in `vault.db`; nothing
    /// is appended until an operator runs `audit acknowledge-gap`.
    Broken,
}

impl AuditState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Ok,
            1 => Self::Failing,
            _ => Self::Broken,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failing => 1,
            Self::Broken => 2,
        }
    }
}

/// Handle to the store; cheap to share behind an `Arc`.
pub struct Store {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_alive: Arc<AtomicBool>,
    audit_state: Arc<AtomicU8>,
    audit_key: Arc<AuditKey>,
    reads: Reads,
    /// Counts committed batches that deleted or re-keyed rows (SQLite):
    /// what a cache of lookups compares against (see
    /// [`Store::erasure_generation`]).
    erasures: Arc<AtomicU64>,
}

/// Where the store reads from.
enum Reads {
    /// Read-only connections to `vault.db` and `audit.db`.
    Sqlite {
        /// `audit.db`, for its size.
        audit_path: PathBuf,
        audit_reader: Mutex<trail::Reader>,
        readers: Vec<Mutex<Connection>>,
        next_reader: AtomicUsize,
    },
    /// The pool of the shared database.
    Postgres(Arc<pg::PgStore>),
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    open_connection_cached(path, flags, COMMAND_CACHE_MIB)
}

/// Opens `path` for the running store (its connections and the audit
/// trail's) without SQLite's own lock on the connection
/// (`SQLITE_OPEN_NO_MUTEX`, rusqlite's default, which explicit flags
/// replace): a `Connection` is not `Sync`, so one thread at a time uses
/// it, and the readers sit behind a `Mutex`. The lock taken on every
/// SQLite call was 3% of a file run's CPU (docs/performance.md).
fn open_unlocked(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
}

/// Opens a connection whose page cache holds at most `cache_mib` MiB (the
/// `limits.sqlite_cache_mib` setting for the server's connections).
fn open_connection_cached(
    path: &Path,
    flags: OpenFlags,
    cache_mib: u32,
) -> Result<Connection, StoreError> {
    let connection = open_unlocked(path, flags)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // FULL: a token handed to a caller survives power loss, not only a crash.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // A deleted row's bytes are overwritten with zeros, not left in free
    // space: an erased value (sealed, but erasure means gone) must not be
    // recoverable from the file. Only connections that write delete
    // anything; on the read connections the setting measurably slowed
    // reads (docs/performance.md), so they keep SQLite's default.
    if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
        connection.pragma_update(None, "secure_delete", "ON")?;
    }
    // Tokens and blind indexes are random keys, so inserts touch pages all
    // over both B-trees: keep more of them cached than the 2 MiB default,
    // but a bounded amount (a negative cache_size is in KiB).
    connection.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))?;
    Ok(connection)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and the audit trail
    /// at `audit_path`, runs migrations and starts the writer thread, which
    /// chains audit records under `audit_key`. Each of its connections to
    /// `path` caches at most `cache_mib` MiB of pages.
    pub fn open(
        path: &Path,
        audit_path: &Path,
        audit_key: AuditKey,
        cache_mib: u32,
    ) -> Result<Self, StoreError> {
        let audit_key = Arc::new(audit_key);
        let mut writer = open_connection_cached(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            cache_mib,
        )?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal);
        }
        schema::migrations().to_latest(&mut writer)?;
        let audit_connection = trail::open_for_append(audit_path).map_err(StoreError::Audit)?;
        let audit_reader = Mutex::new(trail::Reader::open(audit_path)?);
        let mut readers = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            let reader = open_connection_cached(path, OpenFlags::SQLITE_OPEN_READ_ONLY, cache_mib)?;
            reader.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(reader));
        }
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        // Checked at start, before anything is appended: a trail cut while
        // the vault was stopped (or deleted, and recreated empty above) is
        // reported at once, not at the first request.
        let state =
            match trail::check_tail(&audit_connection, &audit_key, read_audit_head(&writer)?)? {
                Ok(()) => AuditState::Ok,
                Err(mismatch) => {
                    log_mismatch(&mismatch.reason);
                    AuditState::Broken
                }
            };
        let audit_state = Arc::new(AtomicU8::new(state.as_u8()));
        let erasures = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            db: writer,
            audit: audit_connection,
            audit_key: audit_key.clone(),
            audit_state: audit_state.clone(),
            erasures: erasures.clone(),
            head_synced: std::time::Instant::now(),
            relaxed: false,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                writer.run(receiver);
                thread_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|_| StoreError::WriterGone)?;
        Ok(Self {
            path: path.to_owned(),
            jobs: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            writer_alive: alive,
            audit_state,
            audit_key,
            reads: Reads::Sqlite {
                audit_path: audit_path.to_owned(),
                audit_reader,
                readers,
                next_reader: AtomicUsize::new(0),
            },
            erasures,
        })
    }

    /// The store on PostgreSQL: `pg` (migrated) for reads, and this node's
    /// writer on it, chaining audit records under `audit_key`.
    pub fn open_postgres(pg: Arc<pg::PgStore>, audit_key: AuditKey) -> Result<Self, StoreError> {
        let audit_key = Arc::new(audit_key);
        // Checked at start, as for SQLite: a trail cut while no node ran is
        // reported at once.
        let state = if pg.tail_is_consistent(&audit_key)? {
            AuditState::Ok
        } else {
            AuditState::Broken
        };
        let audit_state = Arc::new(AtomicU8::new(state.as_u8()));
        let (sender, thread) = pg.spawn_writer(audit_key.clone(), audit_state.clone())?;
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let watcher = std::thread::Builder::new()
            .name("pg-writer-watch".to_owned())
            .spawn(move || {
                let _ = thread.join();
                thread_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|_| StoreError::WriterGone)?;
        Ok(Self {
            path: PathBuf::new(),
            jobs: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(watcher)),
            writer_alive: alive,
            audit_state,
            audit_key,
            reads: Reads::Postgres(pg),
            erasures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many committed batches have deleted or re-keyed rows, or `None`
    /// when rows can change where this process does not see it (PostgreSQL:
    /// another node's erasure). A lookup read with generation `g` may be
    /// reused while the generation is still `g`: the counter moves after
    /// such a batch commits and before any of its jobs is answered.
    pub fn erasure_generation(&self) -> Option<u64> {
        match self.reads {
            Reads::Sqlite { .. } => Some(self.erasures.load(Ordering::SeqCst)),
            Reads::Postgres(_) => None,
        }
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the writer thread runs and a read connection answers.
    pub fn is_ready(&self) -> bool {
        if !self.writer_alive.load(Ordering::SeqCst) {
            return false;
        }
        match &self.reads {
            Reads::Postgres(pg) => pg.answers(),
            Reads::Sqlite { .. } => self
                .with_reader(|db| db.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)))
                .is_ok(),
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, StoreError> {
        self.jobs
            .lock()
            .map_err(|_| StoreError::WriterGone)?
            .clone()
            .ok_or(StoreError::WriterGone)
    }

    /// The audit trail's state. While it is [`AuditState::Broken`], each
    /// call checks the tail again (read-only), so that `/readyz` turns ready
    /// as soon as an operator has acknowledged the gap, without waiting for
    /// traffic that a load balancer would not send to an unready node.
    pub fn audit_state(&self) -> AuditState {
        let state = AuditState::from_u8(self.audit_state.load(Ordering::SeqCst));
        if state != AuditState::Broken {
            return state;
        }
        let consistent = match &self.reads {
            Reads::Postgres(pg) => pg.tail_is_consistent(&self.audit_key).unwrap_or(false),
            Reads::Sqlite { audit_reader, .. } => {
                self.recorded_audit_head().ok().and_then(|recorded| {
                    let reader = audit_reader
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    reader.check_tail(&self.audit_key, recorded).ok()
                }) == Some(Ok(()))
            }
        };
        if consistent {
            // Only from Broken: a concurrent batch may have set another state.
            let _ = self.audit_state.compare_exchange(
                AuditState::Broken.as_u8(),
                AuditState::Ok.as_u8(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            tracing::info!("audit trail matches its recorded head again");
            return AuditState::Ok;
        }
        AuditState::Broken
    }

    /// Inserts rows in one namespace; answers once they are durably committed.
    ///
    /// When every row was resolved (no [`InsertOutcome::TokenTaken`]), the
    /// `audit` records are appended in the same batch with the resulting
    /// tokens added to their `tokens`; otherwise they are dropped and the
    /// caller retries.
    pub async fn insert(
        &self,
        namespace: &str,
        rows: Vec<NewRow>,
        audit: Vec<Record>,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let namespace = namespace.to_owned();
        self.submit(|reply| Job::Insert {
            namespace,
            rows,
            audit,
            reply,
        })
        .await
    }

    /// Deletes one token and appends `audit` (with its outcome set from
    /// whether the token existed); answers once both are durably committed.
    pub async fn delete(
        &self,
        namespace: &str,
        token: &str,
        audit: Record,
    ) -> Result<bool, StoreError> {
        let (namespace, token) = (namespace.to_owned(), token.to_owned());
        self.submit(|reply| Job::Delete {
            namespace,
            token,
            audit: Box::new(audit),
            reply,
        })
        .await
    }

    /// Applies a per-subject write (links, or a subject's erasure) with its
    /// audit records in one commit; answers what was erased once durable.
    pub async fn subjects(
        &self,
        write: SubjectWrite,
        audit: Vec<Record>,
    ) -> Result<SubjectOutcome, StoreError> {
        self.submit(|reply| Job::Subjects {
            write,
            audit,
            reply,
        })
        .await
    }

    /// Applies an activation write (consent event, callback message claim or
    /// release) with its audit records in one commit; answers the write's
    /// result once durable (for a claim: false when the id was seen before,
    /// and then the records are appended all the same).
    pub async fn activation(
        &self,
        write: ActivationWrite,
        audit: Vec<Record>,
    ) -> Result<bool, StoreError> {
        self.submit(|reply| Job::Activation {
            write,
            audit,
            reply,
        })
        .await
    }

    /// For each token, whether `purpose` is withdrawn for the token or for
    /// any subject linked to it. Blocking.
    pub fn consent_withdrawn(
        &self,
        namespace: &str,
        purpose: &str,
        tokens: &[&str],
    ) -> Result<Vec<bool>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.consent_withdrawn_all(namespace, purpose, tokens)?);
        }
        self.with_reader(|db| {
            // Most namespaces have no consent events at all: one query then
            // answers for every token.
            let scopes = activation::scopes_with_events(db, namespace)?;
            if !scopes.token && !scopes.subject {
                return Ok(vec![false; tokens.len()]);
            }
            tokens
                .iter()
                .map(|token| activation::withdrawn(db, namespace, token, purpose, scopes))
                .collect()
        })
    }

    /// The tokens linked to a subject, and the consent changes recorded
    /// for it, oldest first. Blocking.
    pub fn subject_holdings(
        &self,
        namespace: &str,
        subject: &SubjectHash,
    ) -> Result<(Vec<String>, Vec<ConsentRecord>), StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.subject_holdings(namespace, subject)?);
        }
        self.with_reader(|db| {
            Ok((
                subjects::tokens_of(db, namespace, subject)?,
                activation::history(db, namespace, &ConsentTarget::Subject(*subject))?,
            ))
        })
    }

    /// Appends audit records; answers once they are durably committed.
    pub async fn append_audit(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.submit(|reply| Job::Audit {
            records,
            touch: None,
            spending: None,
            reply,
        })
        .await
    }

    /// Appends audit records and marks tokens used, in one commit.
    pub async fn append_audit_touching(
        &self,
        records: Vec<Record>,
        touch: Touch,
    ) -> Result<(), StoreError> {
        self.append_audit_with(records, Some(touch), None).await
    }

    /// Appends audit records with what goes with them: tokens marked used,
    /// and a client's budget spending, in one commit.
    pub async fn append_audit_with(
        &self,
        records: Vec<Record>,
        touch: Option<Touch>,
        spending: Option<(String, Spending)>,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Job::Audit {
            records,
            touch,
            spending,
            reply,
        })
        .await
    }

    /// Every budgeted client's saved spending. Blocking.
    pub fn budget_spending(&self) -> Result<Vec<(String, Spending)>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.budget_spending()?);
        }
        self.with_reader(budgets::load)
    }

    /// Deletes one batch of a retention sweep with its audit records (whose
    /// count the writer fills in); answers the tokens deleted.
    pub async fn sweep(&self, sweep: Sweep, audit: Vec<Record>) -> Result<Vec<String>, StoreError> {
        self.submit(|reply| Job::Sweep {
            sweep,
            audit,
            reply,
        })
        .await
    }

    /// The bytes the token store and the audit trail take: the SQLite
    /// files with their write-ahead logs, or the tables in PostgreSQL.
    /// Blocking.
    pub fn sizes(&self) -> Result<(u64, u64), StoreError> {
        match &self.reads {
            Reads::Postgres(pg) => Ok(pg.sizes()?),
            Reads::Sqlite { audit_path, .. } => {
                let size = |path: &Path| {
                    let mut wal = path.as_os_str().to_owned();
                    wal.push("-wal");
                    [path.to_owned(), PathBuf::from(wal)]
                        .iter()
                        .filter_map(|p| std::fs::metadata(p).ok())
                        .map(|m| m.len())
                        .sum::<u64>()
                };
                Ok((size(&self.path), size(audit_path)))
            }
        }
    }

    /// Every rotated namespace's key state. Blocking.
    pub fn key_states(&self) -> Result<Vec<KeyState>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.key_states()?);
        }
        self.with_reader(rotation::load)
    }

    /// Up to `limit` rows of `namespace` not sealed under `version`, after
    /// the cursor `after`. Blocking.
    pub fn stale_rows(
        &self,
        namespace: &str,
        version: u32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StaleRow>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.stale_rows(namespace, version, after, limit)?);
        }
        self.with_reader(|db| rotation::stale(db, namespace, version, after, limit))
    }

    /// Moves rows to a new key version, or ends a rotation; the audit
    /// records of a `Finish` are written only if it ended the rotation.
    pub async fn rekey(
        &self,
        rekey: Rekey,
        audit: Vec<Record>,
    ) -> Result<RekeyOutcome, StoreError> {
        self.submit(|reply| Job::Rekey {
            rekey,
            audit,
            reply,
        })
        .await
    }

    /// Audit records matching `filter` after sequence number `after`, at most
    /// `limit`. Blocking.
    pub fn query_audit(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        match &self.reads {
            Reads::Postgres(pg) => Ok(pg.query_audit(filter, after, limit)?),
            Reads::Sqlite { audit_reader, .. } => {
                let reader = audit_reader
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Ok(reader.query(filter, after, limit)?)
            }
        }
    }

    /// The audit head recorded in `vault.db`. Blocking.
    pub fn recorded_audit_head(&self) -> Result<Option<Head>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.recorded_audit_head()?);
        }
        self.with_reader(read_audit_head)
    }

    /// How many reads can run at once: the read connections to SQLite, or
    /// the PostgreSQL pool's size.
    pub fn read_connections(&self) -> usize {
        match &self.reads {
            Reads::Postgres(pg) => pg.pool_size(),
            Reads::Sqlite { readers, .. } => readers.len(),
        }
    }

    /// Queues a job for the writer and waits for its committed answer.
    async fn submit<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(job(reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer
            .await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::from)
    }

    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let Reads::Sqlite {
            readers,
            next_reader,
            ..
        } = &self.reads
        else {
            return Err(StoreError::Write(
                "a SQLite read on the PostgreSQL store".to_owned(),
            ));
        };
        let index = next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        // A poisoned lock only means another reader panicked mid-query; the
        // connection itself holds no half-done state for a read.
        let connection = readers[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(read(&connection)?)
    }

    /// Looks up existing tokens by blind index. The day of last use is
    /// read only for the classes in `dated` (those with retention): the
    /// others are answered from the blind index alone. Blocking: call from a
    /// blocking context.
    pub fn find_by_blind_index(
        &self,
        namespace: &str,
        lookups: &[(&str, [u8; 32])],
        dated: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Option<Found>>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.find_by_blind_index(namespace, lookups, dated)?);
        }
        self.with_reader(|db| {
            // One snapshot for every lookup: during a rotation a value is
            // looked up under two versions' indexes while its row moves
            // from one to the other, and must be seen under one of them.
            let snapshot = db.unchecked_transaction()?;
            // The blind index holds the token (the table's key): a covering
            // lookup, one B-tree search.
            let mut token_only = snapshot.prepare_cached(
                "SELECT token FROM tokens WHERE namespace = ?1 AND class = ?2 AND blind_index = ?3",
            )?;
            let mut with_day = snapshot.prepare_cached(
                "SELECT token, used_day FROM tokens WHERE namespace = ?1 AND class = ?2 AND blind_index = ?3",
            )?;
            let order = key_order(lookups, |a, b| a.cmp(b));
            let found = order
                .iter()
                .map(|&at| {
                    let (class, index) = &lookups[at];
                    let key = params![namespace, class, &index[..]];
                    if dated(class) {
                        with_day
                            .query_row(key, |row| {
                                Ok(Found {
                                    token: row.get(0)?,
                                    used_day: row.get(1)?,
                                })
                            })
                            .optional()
                    } else {
                        token_only
                            .query_row(key, |row| {
                                Ok(Found {
                                    token: row.get(0)?,
                                    used_day: Day::MAX,
                                })
                            })
                            .optional()
                    }
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(|found| in_input_order(&order, found));
            drop((token_only, with_day));
            snapshot.commit()?;
            found
        })
    }

    /// Up to `limit` tokens of `class` idle since before `before`, after the
    /// cursor `after`. Blocking.
    pub fn idle_tokens(
        &self,
        namespace: &str,
        class: &str,
        before: Day,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.idle_tokens(namespace, class, before, after, limit)?);
        }
        self.with_reader(|db| retention::idle(db, namespace, class, before, after, limit))
    }

    /// Whether each (token, subject) pair is linked already, so that a
    /// known value sent again for its subject needs no write. Searched in
    /// key order (see `key_order`). Blocking.
    pub fn linked(
        &self,
        namespace: &str,
        links: &[(String, SubjectHash)],
    ) -> Result<Vec<bool>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.linked(namespace, links)?);
        }
        self.with_reader(|db| {
            let mut statement = db.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM subject_links
                 WHERE namespace = ?1 AND subject_hash = ?2 AND token = ?3)",
            )?;
            // The table's key is (namespace, subject, token).
            let order = key_order(links, |(token_a, subject_a), (token_b, subject_b)| {
                (subject_a, token_a).cmp(&(subject_b, token_b))
            });
            let linked = order
                .iter()
                .map(|&at| {
                    let (token, subject) = &links[at];
                    statement.query_row(params![namespace, &subject[..], token], |row| row.get(0))
                })
                .collect::<rusqlite::Result<Vec<bool>>>()?;
            Ok(in_input_order(&order, linked))
        })
    }

    /// Whether each token exists in `namespace`. Blocking.
    pub fn existing(&self, namespace: &str, tokens: &[String]) -> Result<Vec<bool>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.existing(namespace, tokens)?);
        }
        self.with_reader(|db| {
            let mut statement = db.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tokens WHERE namespace = ?1 AND token = ?2)",
            )?;
            tokens
                .iter()
                .map(|token| statement.query_row(params![namespace, token], |row| row.get(0)))
                .collect()
        })
    }

    /// Fetches sealed values by token, searched in key order (see
    /// `key_order`). Blocking: call from a blocking context.
    pub fn fetch(
        &self,
        namespace: &str,
        tokens: &[String],
    ) -> Result<Vec<Option<StoredValue>>, StoreError> {
        if let Reads::Postgres(pg) = &self.reads {
            return Ok(pg.fetch(namespace, tokens)?);
        }
        self.with_reader(|db| {
            let mut statement = db.prepare_cached(
                "SELECT class, key_version, sealed, used_day FROM tokens WHERE namespace = ?1 AND token = ?2",
            )?;
            let order = key_order(tokens, |a, b| a.cmp(b));
            let values = order
                .iter()
                .map(|&at| {
                    statement
                        .query_row(params![namespace, &tokens[at]], |row| {
                            Ok(StoredValue {
                                class: row.get(0)?,
                                key_version: row.get(1)?,
                                sealed: row.get(2)?,
                                used_day: row.get(3)?,
                            })
                        })
                        .optional()
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(in_input_order(&order, values))
        })
    }

    /// Stops the writer after it has committed every queued job.
    pub fn shutdown(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut writer| writer.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The audit head recorded in `vault.db`, read with any connection to it.
pub fn read_audit_head(db: &Connection) -> rusqlite::Result<Option<Head>> {
    trail::head_row(db, "SELECT seq, mac FROM audit_head WHERE id = 1")
}

fn write_audit_head(db: &Connection, head: &Head) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO audit_head (id, seq, mac) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, mac = excluded.mac",
    )?
    .execute(params![head.seq as i64, &head.mac[..]])?;
    Ok(())
}

/// Appends audit records outside the server (CLI commands): `audit.db` and
/// the head in `vault.db`, in the same order the writer uses. Waits for a
/// running server's writer through SQLite's locks.
pub fn append_audit_offline(
    database: &Path,
    audit_path: &Path,
    key: &AuditKey,
    records: &[Record],
) -> Result<Head, StoreError> {
    change_offline(database, audit_path, key, records, |_| Ok(())).map(|(head, ())| head)
}

/// Makes a change to `vault.db` outside the server with its audit records,
/// in the writer's order (records committed first); the change rolls back
/// if they cannot be written. Waits for a running server's writer through
/// SQLite's locks.
fn change_offline<T>(
    database: &Path,
    audit_path: &Path,
    key: &AuditKey,
    records: &[Record],
    change: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<(Head, T), StoreError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations().to_latest(&mut db)?;
    let mut audit_db = trail::open_for_append(audit_path).map_err(StoreError::Audit)?;
    let audit_tx = audit_db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let vault_tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let changed = change(&vault_tx)?;
    let head = append_checked(&audit_tx, &vault_tx, key, records)?
        .ok_or(StoreError::Audit("nothing to append".into()))?;
    audit_tx.commit()?;
    vault_tx.commit()?;
    Ok((head, changed))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Gives each namespace without a key state one that keeps `version`
/// (before `keys rotate` adds a version, so that none follows it unasked).
pub fn pin_key_versions_offline(database: &Path, keep: &[(String, u32)]) -> Result<(), StoreError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations().to_latest(&mut db)?;
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    rotation::start(&tx, &[], keep, 0, 0, unix_now())?;
    tx.commit()?;
    Ok(())
}

/// Starts a key rotation (`keys rotate`): the namespaces in `rotate` seal
/// with `version` from now on and move their rows there. Recorded with
/// `records`.
pub fn start_rotation_offline(
    paths: (&Path, &Path),
    key: &AuditKey,
    records: &[Record],
    rotate: &[String],
    version: u32,
    rate: u32,
) -> Result<(), StoreError> {
    change_offline(paths.0, paths.1, key, records, |db| {
        rotation::start(db, rotate, &[], version, rate, unix_now())
    })
    .map(|_| ())
}

/// Every namespace the `vault.db` at `database` holds anything for.
pub fn namespaces_offline(database: &Path) -> Result<Vec<String>, StoreError> {
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let names = db
        .prepare(
            "SELECT DISTINCT namespace FROM tokens
             UNION SELECT namespace FROM subject_links
             UNION SELECT namespace FROM consent_events",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

/// Pauses or resumes running rotations (`keys pause|resume`); answers how
/// many changed.
pub fn pause_rotation_offline(
    paths: (&Path, &Path),
    key: &AuditKey,
    records: &[Record],
    namespace: Option<&str>,
    paused: bool,
) -> Result<usize, StoreError> {
    change_offline(paths.0, paths.1, key, records, |db| {
        rotation::set_paused(db, namespace, paused)
    })
    .map(|(_, changed)| changed)
}

/// The key states recorded in the `vault.db` at `database`.
pub fn key_states_offline(database: &Path) -> Result<Vec<KeyState>, StoreError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations().to_latest(&mut db)?;
    Ok(rotation::load(&db)?)
}

/// Why master key `version` may not be retired yet, if it may not.
pub fn key_version_in_use_offline(
    database: &Path,
    version: u32,
) -> Result<Option<String>, StoreError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations().to_latest(&mut db)?;
    Ok(rotation::version_in_use(&db, version)?)
}

/// Rows per `(namespace, master key version)` in the `vault.db` at
/// `database`, for `tokenvault keys status`.
pub fn rows_per_key_version_offline(
    database: &Path,
) -> Result<Vec<(String, u32, u64)>, StoreError> {
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let rows = db
        .prepare(
            "SELECT namespace, key_version, count(*) FROM tokens
             GROUP BY namespace, key_version ORDER BY key_version, namespace",
        )?
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Name of the lock file a serving vault holds in its data directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the data directory's exclusive lock (held for as long as the
/// returned file is open): one vault per directory, and no restore into a
/// directory a vault serves. The commands that work beside a running vault
/// (consent, subject, audit) do not take it; SQLite orders their writes.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|error| StoreError::Write(format!("cannot open {}: {error}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, for `client revoke` to signal a reload.
            use std::io::Write as _;
            let mut holder = &file;
            let _ = file.set_len(0);
            let _ = writeln!(holder, "{}", std::process::id());
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Write(format!(
            "{} is in use by a running vault",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => Err(StoreError::Write(format!(
            "cannot lock {}: {error}",
            path.display()
        ))),
    }
}

/// The pid of the vault serving `dir`, if one does (it holds the lock).
pub fn serving_pid(dir: &Path) -> Option<u32> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new().read(true).open(&path).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: no vault serves the directory.
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            std::fs::read_to_string(&path).ok()?.trim().parse().ok()
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// What `audit acknowledge-gap` appended.
#[derive(Debug, Clone, Copy)]
pub struct GapAcknowledged {
    /// The records acknowledged as lost.
    pub gap: Gap,
    /// The gap record, now the head.
    pub head: Head,
}

/// Why `audit acknowledge-gap` appended nothing.
#[derive(Debug, thiserror::Error)]
pub enum AcknowledgeError {
    /// The trail ends at the recorded head.
    #[error(
        "the audit trail ends at the head recorded in vault.db: there is no gap to acknowledge"
    )]
    NoGap,
    /// Records are edited, reordered or missing inside the chain, not at its
    /// end: that is evidence of tampering, not a lost tail.
    #[error("the audit chain is broken at record {seq}: {reason}")]
    ChainBroken {
        /// First bad record.
        seq: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The trail does not end in a run of missing records (it was replaced
    /// by another chain, or vault.db records no head at all).
    #[error("{0}; acknowledge-gap only bridges records missing from the end")]
    NotATail(String),
    /// The files could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AcknowledgeError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<pg::PgError> for AcknowledgeError {
    fn from(error: pg::PgError) -> Self {
        Self::Store(error.into())
    }
}

/// Appends a gap record for the records missing from the end of `audit.db`
/// (those between its last record and the head `vault.db` records), so that
/// the vault may append again. Nothing is deleted or rewritten: the gap
/// record names the missing range, chains to the last record present and
/// takes the sequence number after the recorded head, so `audit verify`
/// keeps showing the hole, and who acknowledged it and why. Waits for a
/// running server's writer through SQLite's locks.
pub fn acknowledge_audit_gap(
    database: &Path,
    audit_path: &Path,
    key: &AuditKey,
    mut record: Record,
) -> Result<GapAcknowledged, AcknowledgeError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations()
        .to_latest(&mut db)
        .map_err(StoreError::from)?;
    let mut audit_db = trail::open_for_append(audit_path).map_err(StoreError::Audit)?;
    let audit_tx = audit_db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let vault_tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let recorded = read_audit_head(&vault_tx)?;
    let mismatch = match trail::check_tail(&audit_tx, key, recorded)? {
        Ok(()) => return Err(AcknowledgeError::NoGap),
        Err(mismatch) => mismatch,
    };
    let chain = trail::walk(&audit_tx, key).map_err(|broken| AcknowledgeError::ChainBroken {
        seq: broken.seq,
        reason: broken.reason,
    })?;
    let last = chain.head().map_or(0, |head| head.seq);
    let recorded = match recorded {
        Some(recorded) if recorded.seq > last => recorded,
        _ => return Err(AcknowledgeError::NotATail(mismatch.reason)),
    };
    let gap = Gap {
        first: last + 1,
        last: recorded.seq,
    };
    record.gap = Some(gap);
    record.item_count = gap.last - gap.first + 1;
    let head = trail::append(&audit_tx, key, std::slice::from_ref(&record))?
        .ok_or(StoreError::Audit("nothing to append".into()))?;
    write_audit_head(&vault_tx, &head)?;
    audit_tx.commit()?;
    vault_tx.commit()?;
    Ok(GapAcknowledged { gap, head })
}

/// Whether `token` exists in `namespace` of the `vault.db` at `database`
/// (for commands that take a token from the operator).
pub fn token_exists_offline(
    database: &Path,
    namespace: &str,
    token: &str,
) -> Result<bool, StoreError> {
    let db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(db.query_row(
        "SELECT EXISTS (SELECT 1 FROM tokens WHERE namespace = ?1 AND token = ?2)",
        params![namespace, token],
        |row| row.get(0),
    )?)
}

/// Records a consent change outside the server (`tokenvault consent set`):
/// the event and its audit record, committed like the writer does.
pub fn record_consent_offline(
    database: &Path,
    audit_path: &Path,
    key: &AuditKey,
    event: &ConsentEvent,
    record: &Record,
) -> Result<(), StoreError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations().to_latest(&mut db)?;
    let mut audit_db = trail::open_for_append(audit_path).map_err(StoreError::Audit)?;
    let audit_tx = audit_db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let vault_tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    activation::apply(&vault_tx, &ActivationWrite::Consent(event.clone()), 0)?;
    append_checked(&audit_tx, &vault_tx, key, std::slice::from_ref(record))?
        .ok_or(StoreError::Audit("nothing to append".into()))?;
    audit_tx.commit()?;
    vault_tx.commit()?;
    Ok(())
}

/// Consent events about `target` (or, for a token, about its subject too)
/// in the `vault.db` at `database`, for `tokenvault consent show`.
pub fn consent_history_offline(
    database: &Path,
    namespace: &str,
    target: &ConsentTarget,
) -> Result<Vec<ConsentRecord>, StoreError> {
    let mut db = open_connection(database, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    schema::migrations().to_latest(&mut db)?;
    let mut events = activation::history(&db, namespace, target)?;
    if let ConsentTarget::Token(token) = target {
        for subject in activation::subjects_of(&db, namespace, token)? {
            if let Ok(hash) = <[u8; 32]>::try_from(subject.as_slice()) {
                events.extend(activation::history(
                    &db,
                    namespace,
                    &ConsentTarget::Subject(hash),
                )?);
            }
        }
        events.sort_by_key(|event| event.changed_at);
    }
    Ok(events)
}

/// The audit head recorded in the `vault.db` at `database`, opened read-only
/// (a stopped vault, or a copy of its data directory).
pub fn recorded_audit_head_offline(database: &Path) -> Result<Option<Head>, StoreError> {
    let db = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_table: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_head')",
        [],
        |row| row.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    Ok(read_audit_head(&db)?)
}

struct Writer {
    db: Connection,
    audit: Connection,
    audit_key: Arc<AuditKey>,
    audit_state: Arc<AtomicU8>,
    erasures: Arc<AtomicU64>,
    /// When `vault.db` last committed with an fsync.
    head_synced: std::time::Instant,
    /// `vault.db` commits without an fsync (`synchronous=NORMAL`) now.
    relaxed: bool,
}

/// Logs a tail mismatch: sequence numbers only, never record content.
fn log_mismatch(detail: &str) {
    tracing::error!(
        detail,
        reason = "audit_chain_mismatch",
        "audit trail does not end at the head recorded in vault.db; refusing reveals and writes (run `tokenvault audit verify`, then `tokenvault audit acknowledge-gap`)"
    );
}

/// Appends `records` inside the two open transactions, after checking that
/// the trail still ends at the head `vault.db` records; writes the new head.
/// The one append path of the writer and of every CLI command.
fn append_checked(
    audit_tx: &Connection,
    vault_tx: &Connection,
    key: &AuditKey,
    records: &[Record],
) -> Result<Option<Head>, Failure> {
    let audit_failure = |error: rusqlite::Error| Failure::Audit(error.to_string());
    let recorded = read_audit_head(vault_tx).map_err(|e| Failure::Write(e.to_string()))?;
    if let Err(mismatch) = trail::check_tail(audit_tx, key, recorded).map_err(audit_failure)? {
        return Err(Failure::Mismatch(mismatch.reason));
    }
    if records.is_empty() {
        return Ok(recorded);
    }
    let head = trail::append(audit_tx, key, records).map_err(audit_failure)?;
    if let Some(head) = head {
        write_audit_head(vault_tx, &head).map_err(|e| Failure::Write(e.to_string()))?;
    }
    Ok(head)
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Write(detail) => StoreError::Write(detail),
            Failure::Stale(detail) => StoreError::KeyVersionChanged(detail),
            Failure::Audit(detail) | Failure::Mismatch(detail) => StoreError::Audit(detail),
        }
    }
}

impl Writer {
    fn run(&mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMIT_MAX_JOBS {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    /// Applies a batch in one transaction per file: `audit.db` commits first,
    /// then `vault.db` (token rows and the audit head); replies only after
    /// both. Any failure rolls back everything not yet committed and every
    /// job gets the error.
    fn commit_batch(&mut self, batch: Vec<Job>) {
        // `audit.db` always commits with an fsync, before anyone is
        // answered: no record, no forward. A batch that only appends
        // records changes nothing in `vault.db` but the audit head; that
        // commit skips its own fsync (the head is still written, and an
        // application crash keeps it) unless a second has passed since the
        // last one. Every batch that changes rows fsyncs `vault.db`, which
        // also makes the heads written before it durable. So only an OS
        // crash or power loss can leave the recorded head up to a second of
        // records behind the trail (docs/audit.md).
        let relax =
            batch.iter().all(Job::appends_only) && self.head_synced.elapsed() < HEAD_SYNC_INTERVAL;
        let mut refused = None;
        if relax != self.relaxed {
            let mode = if relax { "NORMAL" } else { "FULL" };
            match self.db.pragma_update(None, "synchronous", mode) {
                Ok(()) => self.relaxed = relax,
                // Still relaxed: a batch that needs its fsync fails instead.
                Err(error) if !relax => refused = Some(write_failure(error)),
                Err(_) => {}
            }
        }
        let synced = !self.relaxed;
        let mut done = Vec::with_capacity(batch.len());
        let result = match refused {
            Some(failure) => Self::apply_refused(batch, &mut done, failure),
            None => Self::apply(
                &mut self.db,
                &mut self.audit,
                &self.audit_key,
                batch,
                &mut done,
            ),
        };
        if result.is_ok() && done.iter().any(Done::erased) {
            // Deleted values must not linger: secure_delete zeroed them in
            // the database's pages; the WAL still holds the frames that
            // wrote them until it is checkpointed and truncated. Done before
            // answering, so that an erasure acknowledged is an erasure on
            // disk.
            if let Err(error) = self
                .db
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                tracing::warn!(%error, "could not truncate the WAL after an erasure");
            }
        }
        if result.is_ok() && synced {
            self.head_synced = std::time::Instant::now();
        }
        if result.is_ok() && done.iter().any(Done::changes_lookups) {
            // Before any job is answered: a lookup cached from before this
            // batch is never used after its erasure is acknowledged.
            self.erasures.fetch_add(1, Ordering::SeqCst);
        }
        batch::settle(result, done, &self.audit_state);
    }

    /// Answers every job of `batch` with `failure`, applying nothing.
    fn apply_refused(
        batch: Vec<Job>,
        done: &mut Vec<Done>,
        failure: Failure,
    ) -> Result<(), Failure> {
        batch::apply(|| Err::<SqliteBatch<'_>, _>(failure), batch, done)
    }

    fn apply(
        db: &mut Connection,
        audit_db: &mut Connection,
        key: &AuditKey,
        batch: Vec<Job>,
        done: &mut Vec<Done>,
    ) -> Result<(), Failure> {
        batch::apply(
            || {
                Ok(SqliteBatch {
                    audit_tx: audit_db
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(audit_failure)?,
                    vault_tx: db
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(write_failure)?,
                    key,
                })
            },
            batch,
            done,
        )?;
        Ok(())
    }
}

fn audit_failure(error: rusqlite::Error) -> Failure {
    Failure::Audit(error.to_string())
}

fn write_failure(error: rusqlite::Error) -> Failure {
    Failure::Write(error.to_string())
}

/// A writer batch on SQLite: `audit.db` and `vault.db` each in an
/// immediate transaction; `audit.db` commits first, then `vault.db` (rows
/// and the audit head).
struct SqliteBatch<'a> {
    audit_tx: rusqlite::Transaction<'a>,
    vault_tx: rusqlite::Transaction<'a>,
    key: &'a AuditKey,
}

impl batch::Batch for SqliteBatch<'_> {
    fn insert(
        &mut self,
        items: &[(&str, &NewRow)],
        now: i64,
    ) -> Result<Vec<InsertOutcome>, Failure> {
        insert_rows(&self.vault_tx, items, now).map_err(write_failure)
    }

    fn delete(&mut self, namespace: &str, token: &str) -> Result<bool, Failure> {
        let count = self
            .vault_tx
            .prepare_cached("DELETE FROM tokens WHERE namespace = ?1 AND token = ?2")
            .and_then(|mut statement| statement.execute(params![namespace, token]))
            .map_err(write_failure)?;
        subjects::unlink_token(&self.vault_tx, namespace, token).map_err(write_failure)?;
        Ok(count > 0)
    }

    fn touch(&mut self, touch: &Touch) -> Result<(), Failure> {
        retention::touch(&self.vault_tx, touch).map_err(write_failure)
    }

    fn save_budget(&mut self, client: &str, spending: &Spending) -> Result<(), Failure> {
        budgets::save(&self.vault_tx, client, spending).map_err(write_failure)
    }

    fn sweep(&mut self, sweep: &Sweep) -> Result<Vec<String>, Failure> {
        retention::sweep(&self.vault_tx, sweep).map_err(write_failure)
    }

    fn activation(&mut self, write: &ActivationWrite, now: i64) -> Result<bool, Failure> {
        activation::apply(&self.vault_tx, write, now).map_err(write_failure)
    }

    fn subjects(&mut self, write: &SubjectWrite, now: i64) -> Result<SubjectOutcome, Failure> {
        subjects::apply(&self.vault_tx, write, now).map_err(write_failure)
    }

    fn rekey(&mut self, rekey: &Rekey, now: i64) -> Result<RekeyOutcome, Failure> {
        rotation::apply(&self.vault_tx, rekey, now).map_err(write_failure)
    }

    fn commit(self, records: &[Record]) -> Result<(Option<Head>, Option<Duration>), Failure> {
        let started = std::time::Instant::now();
        let head = append_checked(&self.audit_tx, &self.vault_tx, self.key, records)?;
        self.audit_tx.commit().map_err(audit_failure)?;
        let audit_write = (!records.is_empty()).then(|| started.elapsed());
        self.vault_tx.commit().map_err(write_failure)?;
        Ok((head, audit_write))
    }
}

/// Stores `items` (namespace and row) in order.
fn insert_rows(
    transaction: &rusqlite::Transaction<'_>,
    items: &[(&str, &NewRow)],
    now: i64,
) -> rusqlite::Result<Vec<InsertOutcome>> {
    let mut find = transaction.prepare_cached(
        "SELECT token FROM tokens WHERE namespace = ?1 AND class = ?2 AND blind_index = ?3",
    )?;
    let mut insert = transaction.prepare_cached(
        "INSERT INTO tokens (namespace, token, class, key_version, sealed, blind_index, created_at, used_day)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut outcomes = Vec::with_capacity(items.len());
    for &(namespace, row) in items {
        let inserted = insert.execute(params![
            namespace,
            row.token,
            row.class,
            row.key_version,
            row.sealed,
            row.blind_index.as_ref().map(|i| &i[..]),
            now,
            row.used_day,
        ]);
        let outcome = match (inserted, &row.blind_index) {
            (Ok(_), _) => InsertOutcome::Inserted,
            // Another request stored the same value since the engine's
            // read-side lookup: the first writer's token wins. (SQLite
            // checks every constraint before it writes anything.)
            (Err(rusqlite::Error::SqliteFailure(error, _)), Some(index))
                if error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                InsertOutcome::Existing(
                    find.query_row(params![namespace, row.class, &index[..]], |r| r.get(0))?,
                )
            }
            (Err(rusqlite::Error::SqliteFailure(error, _)), _)
                if error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                InsertOutcome::TokenTaken
            }
            (Err(error), _) => return Err(error),
        };
        let stored = match &outcome {
            InsertOutcome::Inserted => Some(&row.token),
            InsertOutcome::Existing(token) => Some(token),
            InsertOutcome::TokenTaken => None,
        };
        if let (Some(subject), Some(token)) = (&row.subject_hash, stored) {
            subjects::link(transaction, namespace, subject, token, now)?;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        crate::audit::Context::cli("test")
            .record(crate::audit::Action::Tokenize, crate::audit::Outcome::Ok)
    }

    fn row(token: &str, index: Option<u8>) -> NewRow {
        NewRow {
            token: token.to_owned(),
            class: "email".to_owned(),
            key_version: 1,
            sealed: vec![1, 2, 3],
            blind_index: index.map(|b| [b; 32]),
            subject_hash: None,
            used_day: 0,
        }
    }

    #[tokio::test]
    async fn insert_dedupes_by_blind_index_and_reports_taken_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::crypto::keys::MasterKey::generate(1);
        let store = Store::open(
            &dir.path().join("vault.db"),
            &dir.path().join("audit.db"),
            key.audit_key(),
            8,
        )
        .unwrap();
        let first = store
            .insert(
                "ns",
                vec![row("T1", Some(1)), row("T2", None)],
                vec![record()],
            )
            .await
            .unwrap();
        assert_eq!(
            first,
            vec![InsertOutcome::Inserted, InsertOutcome::Inserted]
        );
        let second = store
            .insert(
                "ns",
                vec![row("T3", Some(1)), row("T1", None)],
                vec![record()],
            )
            .await
            .unwrap();
        assert_eq!(
            second,
            vec![
                InsertOutcome::Existing("T1".to_owned()),
                InsertOutcome::TokenTaken
            ]
        );
        // Same token in another namespace is a different row.
        assert_eq!(
            store
                .insert("other", vec![row("T1", Some(1))], Vec::new())
                .await
                .unwrap(),
            vec![InsertOutcome::Inserted]
        );
        let found = store
            .find_by_blind_index("ns", &[("email", [1; 32]), ("email", [9; 32])], &|_| false)
            .unwrap();
        let found: Vec<Option<String>> = found.into_iter().map(|f| f.map(|f| f.token)).collect();
        assert_eq!(found, vec![Some("T1".to_owned()), None]);
        // Links: read back per (token, subject) pair, in the order asked,
        // and per namespace.
        store
            .subjects(
                SubjectWrite::Link {
                    namespace: "ns".to_owned(),
                    links: vec![("T1".to_owned(), [7; 32])],
                },
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .linked(
                    "ns",
                    &[
                        ("T1".to_owned(), [8; 32]),
                        ("T1".to_owned(), [7; 32]),
                        ("T2".to_owned(), [7; 32])
                    ]
                )
                .unwrap(),
            vec![false, true, false]
        );
        assert_eq!(
            store
                .linked("other", &[("T1".to_owned(), [7; 32])])
                .unwrap(),
            vec![false]
        );
        let fetched = store
            .fetch("ns", &["T2".to_owned(), "nope".to_owned()])
            .unwrap();
        assert_eq!(fetched[0].as_ref().unwrap().sealed, vec![1, 2, 3]);
        assert!(fetched[1].is_none());
        assert!(store.delete("ns", "T2", record()).await.unwrap());
        assert!(!store.delete("ns", "T2", record()).await.unwrap());
        assert!(store.is_ready() && store.audit_state() == AuditState::Ok);
        // Audited: the first insert (its tokens filled in), both deletes; the
        // second insert had a taken token, so its record waits for the retry.
        let recorded = store.recorded_audit_head().unwrap();
        let audit_db = trail::Reader::open(&dir.path().join("audit.db")).unwrap();
        let verified = audit_db.verify(&key.audit_key(), recorded).unwrap();
        assert_eq!(verified.count, 3);
        let all = audit_db.query(&Default::default(), 0, 10).unwrap();
        assert_eq!(all[0].record.tokens, vec!["T1", "T2"]);
        assert_eq!(all[1].record.outcome, crate::audit::Outcome::Ok);
        assert_eq!(all[2].record.reason.as_deref(), Some("not_found"));
        store.shutdown();
        assert!(!store.is_ready());
    }
}
