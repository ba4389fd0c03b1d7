//! The SQLite store (`<data>/bkg.db`): one connection on a dedicated thread, fed closures.
//!
//! Architecture Invariant: this is the only module that knows rusqlite or SQL, and no query ever
//! runs on an async worker thread. WAL mode, `busy_timeout`, foreign keys on.

mod audit;
mod llm_history;
mod migrate;
mod registry;
mod settings;

use std::path::Path;
use std::sync::mpsc as std_mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

pub use audit::{AuditEvent, AuditQuery};
pub use llm_history::{LlmEntry, LlmHistoryBounds, LlmHistoryQuery};
pub use registry::{ConfigVersion, CurrentConfig};
pub use settings::StoredGroup;

/// Store failures, as callers need to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store thread has stopped")]
    Closed,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A cheap-clone handle to the store thread.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        migrate::migrate(&mut conn)?;
        Ok(Self::spawn(conn))
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, Error> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        migrate::migrate(&mut conn)?;
        Ok(Self::spawn(conn))
    }

    fn spawn(mut conn: Connection) -> Self {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        // The thread ends when every handle is dropped; the connection closes with it.
        let spawned = std::thread::Builder::new().name("bkg-store".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                job(&mut conn);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the store thread");
        }
        Self { jobs }
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.jobs.send(job).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// A trivial query: is the database usable?
    pub async fn ping(&self) -> bool {
        self.run(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).await.is_ok()
    }
}

fn configure(conn: &Connection) -> Result<(), Error> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Current time as stored in the database.
fn now() -> String {
    crate::logs::now_rfc3339()
}
