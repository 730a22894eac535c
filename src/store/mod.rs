//! The token store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the write connection and commits the work of many
//! concurrent callers in one transaction (group commit); each caller gets its
//! answer only after that transaction is durably committed. Reads go through
//! a small pool of read-only connections. This is the only module with SQL.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

/// Largest number of queued jobs committed in one transaction.
const GROUP_COMMIT_MAX_JOBS: usize = 512;
/// Read connections in the pool.
const READ_CONNECTIONS: usize = 4;
/// Page cache per connection, in KiB.
const CACHE_KIB: i64 = 64 * 1024;
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
    /// The writer thread is gone (shutting down or crashed).
    #[error("the store writer has stopped")]
    WriterGone,
    /// SQLite would not switch the database to WAL mode.
    #[error("the database could not be put in WAL mode")]
    NotWal,
    /// A blocking read task was cancelled.
    #[error("read task failed")]
    ReadTask,
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
    /// Keyed hash of the subject, when one was given.
    pub subject_hash: Option<[u8; 32]>,
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
}

/// Where the writer sends a job's committed result, or the reason its
/// transaction failed.
type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Job {
    Insert {
        namespace: String,
        rows: Vec<NewRow>,
        reply: Reply<Vec<InsertOutcome>>,
    },
    Delete {
        namespace: String,
        token: String,
        reply: Reply<bool>,
    },
}

/// Handle to the store; cheap to share behind an `Arc`.
pub struct Store {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_alive: Arc<AtomicBool>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    // FULL: a token handed to a caller survives power loss, not only a crash.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Tokens and blind indexes are random keys, so inserts touch pages all
    // over both B-trees: keep far more of them cached than the 2 MiB default.
    connection.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(connection)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, runs migrations and
    /// starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut writer = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal);
        }
        schema::migrations().to_latest(&mut writer)?;
        let mut readers = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            let reader = open_connection(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            reader.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(reader));
        }
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                writer_loop(writer, receiver);
                thread_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|_| StoreError::WriterGone)?;
        Ok(Self {
            path: path.to_owned(),
            jobs: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            writer_alive: alive,
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the writer thread runs and a read connection answers.
    pub fn is_ready(&self) -> bool {
        self.writer_alive.load(Ordering::SeqCst)
            && self
                .with_reader(|db| db.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)))
                .is_ok()
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, StoreError> {
        self.jobs
            .lock()
            .map_err(|_| StoreError::WriterGone)?
            .clone()
            .ok_or(StoreError::WriterGone)
    }

    /// Inserts rows in one namespace; answers once they are durably committed.
    pub async fn insert(
        &self,
        namespace: &str,
        rows: Vec<NewRow>,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let namespace = namespace.to_owned();
        self.submit(|reply| Job::Insert {
            namespace,
            rows,
            reply,
        })
        .await
    }

    /// Deletes one token; answers whether it existed, once durably committed.
    pub async fn delete(&self, namespace: &str, token: &str) -> Result<bool, StoreError> {
        let (namespace, token) = (namespace.to_owned(), token.to_owned());
        self.submit(|reply| Job::Delete {
            namespace,
            token,
            reply,
        })
        .await
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
            .map_err(StoreError::Write)
    }

    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        // A poisoned lock only means another reader panicked mid-query; the
        // connection itself holds no half-done state for a read.
        let connection = self.readers[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(read(&connection)?)
    }

    /// Looks up existing tokens by blind index. Blocking: call from a
    /// blocking context.
    pub fn find_by_blind_index(
        &self,
        namespace: &str,
        lookups: &[(&str, [u8; 32])],
    ) -> Result<Vec<Option<String>>, StoreError> {
        self.with_reader(|db| {
            let mut statement = db.prepare_cached(
                "SELECT token FROM tokens WHERE namespace = ?1 AND class = ?2 AND blind_index = ?3",
            )?;
            lookups
                .iter()
                .map(|(class, index)| {
                    statement
                        .query_row(params![namespace, class, &index[..]], |row| row.get(0))
                        .optional()
                })
                .collect()
        })
    }

    /// Fetches sealed values by token. Blocking: call from a blocking context.
    pub fn fetch(
        &self,
        namespace: &str,
        tokens: &[String],
    ) -> Result<Vec<Option<StoredValue>>, StoreError> {
        self.with_reader(|db| {
            let mut statement = db.prepare_cached(
                "SELECT class, key_version, sealed FROM tokens WHERE namespace = ?1 AND token = ?2",
            )?;
            tokens
                .iter()
                .map(|token| {
                    statement
                        .query_row(params![namespace, token], |row| {
                            Ok(StoredValue {
                                class: row.get(0)?,
                                key_version: row.get(1)?,
                                sealed: row.get(2)?,
                            })
                        })
                        .optional()
                })
                .collect()
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

fn writer_loop(mut db: Connection, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut db, batch);
    }
}

enum Done {
    Insert(Reply<Vec<InsertOutcome>>, Vec<InsertOutcome>),
    Delete(Reply<bool>, bool),
}

/// Applies a batch of jobs in one transaction; replies only after commit. On
/// any failure the whole transaction rolls back and every job gets the error.
fn commit_batch(db: &mut Connection, batch: Vec<Job>) {
    let mut done = Vec::with_capacity(batch.len());
    let mut failed = Vec::new();
    let result = (|| -> rusqlite::Result<()> {
        let transaction = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for job in batch {
            match job {
                Job::Insert {
                    namespace,
                    rows,
                    reply,
                } => match insert_rows(&transaction, &namespace, &rows, now) {
                    Ok(outcomes) => done.push(Done::Insert(reply, outcomes)),
                    Err(error) => {
                        failed.push(Done::Insert(reply, Vec::new()));
                        return Err(error);
                    }
                },
                Job::Delete {
                    namespace,
                    token,
                    reply,
                } => {
                    let deleted = transaction
                        .prepare_cached("DELETE FROM tokens WHERE namespace = ?1 AND token = ?2")?
                        .execute(params![namespace, token]);
                    match deleted {
                        Ok(count) => done.push(Done::Delete(reply, count > 0)),
                        Err(error) => {
                            failed.push(Done::Delete(reply, false));
                            return Err(error);
                        }
                    }
                }
            }
        }
        transaction.commit()
    })();
    match result {
        Ok(()) => {
            for item in done {
                match item {
                    Done::Insert(reply, outcomes) => drop(reply.send(Ok(outcomes))),
                    Done::Delete(reply, deleted) => drop(reply.send(Ok(deleted))),
                }
            }
        }
        Err(error) => {
            let detail = error.to_string();
            for item in done.into_iter().chain(failed) {
                match item {
                    Done::Insert(reply, _) => drop(reply.send(Err(detail.clone()))),
                    Done::Delete(reply, _) => drop(reply.send(Err(detail.clone()))),
                }
            }
        }
    }
}

fn insert_rows(
    transaction: &rusqlite::Transaction<'_>,
    namespace: &str,
    rows: &[NewRow],
    now: i64,
) -> rusqlite::Result<Vec<InsertOutcome>> {
    let mut find = transaction.prepare_cached(
        "SELECT token FROM tokens WHERE namespace = ?1 AND class = ?2 AND blind_index = ?3",
    )?;
    let mut insert = transaction.prepare_cached(
        "INSERT INTO tokens (namespace, token, class, key_version, sealed, blind_index, subject_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(index) = &row.blind_index {
            // Another request may have stored the same value since the
            // engine's read-side lookup: the first writer's token wins.
            let existing: Option<String> = find
                .query_row(params![namespace, row.class, &index[..]], |r| r.get(0))
                .optional()?;
            if let Some(token) = existing {
                outcomes.push(InsertOutcome::Existing(token));
                continue;
            }
        }
        let inserted = insert.execute(params![
            namespace,
            row.token,
            row.class,
            row.key_version,
            row.sealed,
            row.blind_index.as_ref().map(|i| &i[..]),
            row.subject_hash.as_ref().map(|h| &h[..]),
            now,
        ]);
        match inserted {
            Ok(_) => outcomes.push(InsertOutcome::Inserted),
            // The blind index was checked above inside this transaction, so a
            // constraint failure here is the primary key: the token is taken.
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                outcomes.push(InsertOutcome::TokenTaken)
            }
            Err(error) => return Err(error),
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(token: &str, index: Option<u8>) -> NewRow {
        NewRow {
            token: token.to_owned(),
            class: "email".to_owned(),
            key_version: 1,
            sealed: vec![1, 2, 3],
            blind_index: index.map(|b| [b; 32]),
            subject_hash: None,
        }
    }

    #[tokio::test]
    async fn insert_dedupes_by_blind_index_and_reports_taken_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("vault.db")).unwrap();
        let first = store
            .insert("ns", vec![row("T1", Some(1)), row("T2", None)])
            .await
            .unwrap();
        assert_eq!(
            first,
            vec![InsertOutcome::Inserted, InsertOutcome::Inserted]
        );
        let second = store
            .insert("ns", vec![row("T3", Some(1)), row("T1", None)])
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
                .insert("other", vec![row("T1", Some(1))])
                .await
                .unwrap(),
            vec![InsertOutcome::Inserted]
        );
        let found = store
            .find_by_blind_index("ns", &[("email", [1; 32]), ("email", [9; 32])])
            .unwrap();
        assert_eq!(found, vec![Some("T1".to_owned()), None]);
        let fetched = store
            .fetch("ns", &["T2".to_owned(), "nope".to_owned()])
            .unwrap();
        assert_eq!(fetched[0].as_ref().unwrap().sealed, vec![1, 2, 3]);
        assert!(fetched[1].is_none());
        assert!(store.delete("ns", "T2").await.unwrap());
        assert!(!store.delete("ns", "T2").await.unwrap());
        assert!(store.is_ready());
        store.shutdown();
        assert!(!store.is_ready());
    }
}
