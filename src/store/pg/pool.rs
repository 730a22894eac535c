//! A small blocking pool of PostgreSQL connections: idle ones are reused,
//! new ones opened while there is room, closed ones dropped, and a caller
//! waits a bounded time for one to come back.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;

use super::connect::Connector;
use super::PgError;
use crate::config::PostgresSettings;

/// How long a caller waits for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// The pool.
pub(super) struct Pool {
    connector: Connector,
    size: usize,
    idle: Mutex<Idle>,
    freed: Condvar,
}

struct Idle {
    clients: Vec<Client>,
    open: usize,
}

/// A connection borrowed from the pool; it goes back when dropped, unless
/// the server closed it.
pub struct Borrowed<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl std::ops::Deref for Borrowed<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Borrowed<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if client.is_closed() {
            idle.open -= 1;
        } else {
            idle.clients.push(client);
        }
        drop(idle);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    /// Prepares the pool and opens one connection, so that a wrong host,
    /// password or CA is reported now.
    pub(super) fn open(settings: &PostgresSettings) -> Result<Self, PgError> {
        let connector = Connector::new(settings)?;
        let first = connector.connect()?;
        Ok(Self {
            connector,
            size: usize::try_from(settings.pool_size).unwrap_or(1).max(1),
            idle: Mutex::new(Idle {
                clients: vec![first],
                open: 1,
            }),
            freed: Condvar::new(),
        })
    }

    /// A connection: an idle one, a new one while the pool has room, or
    /// the first one freed within [`POOL_WAIT`].
    pub(super) fn borrow(&self) -> Result<Borrowed<'_>, PgError> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(client) = idle.clients.pop() {
                if client.is_closed() {
                    idle.open -= 1;
                    continue;
                }
                return Ok(Borrowed {
                    pool: self,
                    client: Some(client),
                });
            }
            if idle.open < self.size {
                idle.open += 1;
                drop(idle);
                return match self.connector.connect() {
                    Ok(client) => Ok(Borrowed {
                        pool: self,
                        client: Some(client),
                    }),
                    Err(error) => {
                        self.idle.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
                        Err(error)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PgError::PoolTimeout(POOL_WAIT));
            }
            idle = self
                .freed
                .wait_timeout(idle, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many connections it opens at most.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Whether connections are TLS.
    pub(super) fn uses_tls(&self) -> bool {
        self.connector.uses_tls()
    }
}
