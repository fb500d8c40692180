//! Storage shared by the exchange, settlement and the web server: one connection type over SQLite
//! (embedded default, WAL mode) and PostgreSQL (production), a pool, and the migrations.
//!
//! Diesel calls block; async code reaches the database only through [`Database::run`] and
//! [`Database::write`], which move the work to tokio's blocking pool.

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// How long a SQLite writer waits for another writer before failing. Group commits take
/// milliseconds; ten seconds only trips when something is truly stuck.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;
/// How long to wait for a pooled connection.
const POOL_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to either backend. Queries written against it run on both; where the SQL must
/// differ, match on the variant.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl std::fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbConnection::Postgres(_) => "DbConnection::Postgres",
            DbConnection::Sqlite(_) => "DbConnection::Sqlite",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL (use postgres://… or sqlite://PATH): {0}")]
    UnsupportedUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("the database task was cancelled or panicked: {0}")]
    Task(String),
    #[error("{0}")]
    Invalid(String),
}

pub type DbPool = Pool<ConnectionManager<DbConnection>>;
pub type PooledDb = PooledConnection<ConnectionManager<DbConnection>>;

/// Where the data lives, parsed from a URL: `postgres://…`/`postgresql://…`, `sqlite://PATH`, or a
/// bare path (SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(Self::Sqlite(path.to_owned()))
        } else if url.contains("://") || url.is_empty() {
            Err(DbError::UnsupportedUrl(redact(url)))
        } else {
            Ok(Self::Sqlite(url.to_owned()))
        }
    }
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }
    fn connection_string(&self) -> &str {
        match self {
            Self::Postgres(url) | Self::Sqlite(url) => url,
        }
    }
}

/// A URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, connection: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        if let DbConnection::Sqlite(sqlite) = connection {
            // WAL lets readers run beside the single writer; synchronous=FULL makes a commit survive
            // power loss, which "durable before acknowledged" needs.
            sqlite
                .batch_execute(&format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                ))
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// The pool plus what callers need to know about it. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: DbPool,
    backend: Backend,
    /// SQLite allows one writer; taking this lock before a write transaction turns "database is
    /// locked" errors into an orderly queue. Unused on PostgreSQL.
    sqlite_write_lock: Arc<Mutex<()>>,
    url: DatabaseUrl,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (creating a SQLite file if needed), applies pending migrations, and builds the pool.
    pub fn open(url: &str, pool_size: u32) -> Result<Self, DbError> {
        let url = DatabaseUrl::parse(url)?;
        migrate(&url)?;
        let manager = ConnectionManager::<DbConnection>::new(url.connection_string());
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            .connection_timeout(POOL_CONNECTION_TIMEOUT)
            .connection_customizer(Box::new(SqlitePragmas))
            .build(manager)
            .map_err(|error| DbError::Invalid(format!("cannot build the connection pool: {error}")))?;
        Ok(Self { pool, backend: url.backend(), sqlite_write_lock: Arc::new(Mutex::new(())), url })
    }

    /// Makes `role` (e.g. "exchange") the only one of its kind writing this database, for as long
    /// as the returned lock lives. SQLite takes one writer process: a second instance is refused
    /// here, clearly, instead of failing later on "database is locked" or taking numbers another
    /// writer took. The lock is the operating system's on a file beside the database, so it ends
    /// with the process, also when the process is killed. PostgreSQL takes several instances
    /// (they coordinate through it): `None`.
    pub fn lock_single_writer(&self, role: &str) -> Result<Option<WriterLock>, DbError> {
        let DatabaseUrl::Sqlite(path) = &self.url else { return Ok(None) };
        if path.is_empty() || path.contains(":memory:") {
            return Ok(None);
        }
        let lock_path = format!("{path}.{role}.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| DbError::Invalid(format!("cannot open the writer lock {lock_path}: {error}")))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(WriterLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(DbError::Invalid(format!(
                "another {role} is already writing the SQLite database {path} (it holds {lock_path}); \
                 SQLite takes one {role}: stop the other one, or use PostgreSQL to run several"
            ))),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(DbError::Invalid(format!("cannot lock {lock_path}: {error}")))
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A pooled connection, for blocking code (never call from an async task directly).
    pub fn get(&self) -> Result<PooledDb, DbError> {
        Ok(self.pool.get()?)
    }

    /// Runs a blocking read on tokio's blocking pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = pool.get()?;
            work(&mut connection)
        })
        .await
        .map_err(|error| DbError::Task(error.to_string()))?
    }

    /// Runs `work` in one write transaction on tokio's blocking pool.
    pub async fn write<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_blocking(work))
            .await
            .map_err(|error| DbError::Task(error.to_string()))?
    }

    /// Runs `work` in one write transaction on the current thread (blocking code only).
    pub fn write_blocking<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError>,
    {
        let mut connection = self.pool.get()?;
        // A poisoned lock only means another writer panicked; its transaction was rolled back.
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.sqlite_write_lock.lock().unwrap_or_else(|poison| poison.into_inner())),
            Backend::Postgres => None,
        };
        let connection: &mut DbConnection = &mut connection;
        connection.transaction(work)
    }

    /// True when a trivial query succeeds (for readiness probes).
    pub fn ping(&self) -> bool {
        self.pool.get().map(|mut connection| connection.batch_execute("SELECT 1").is_ok()).unwrap_or(false)
    }
}

impl From<DbError> for diesel::result::Error {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Query(inner) => inner,
            other => diesel::result::Error::QueryBuilderError(Box::new(std::io::Error::other(other.to_string()))),
        }
    }
}

/// Held by the one writer of a SQLite database ([`Database::lock_single_writer`]); dropping it (or
/// the process ending) lets the next one in.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
}

/// Applies pending migrations for the URL's backend.
pub fn migrate(url: &DatabaseUrl) -> Result<(), DbError> {
    let migration_error = |error: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(error.to_string());
    match url {
        DatabaseUrl::Postgres(connection_string) => {
            let mut connection = PgConnection::establish(connection_string)?;
            connection.run_pending_migrations(POSTGRES_MIGRATIONS).map_err(migration_error)?;
        }
        DatabaseUrl::Sqlite(path) => {
            if let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|error| DbError::Invalid(format!("cannot create {}: {error}", parent.display())))?;
            }
            let mut connection = SqliteConnection::establish(path)?;
            connection
                .batch_execute(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL;"))
                .map_err(DbError::Query)?;
            connection.run_pending_migrations(SQLITE_MIGRATIONS).map_err(migration_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend_and_passwords_are_redacted() {
        assert_eq!(DatabaseUrl::parse("sqlite://data/x.db").expect("ok").backend(), Backend::Sqlite);
        assert_eq!(DatabaseUrl::parse("data/x.db").expect("ok").backend(), Backend::Sqlite);
        assert_eq!(DatabaseUrl::parse("postgres://u@h/db").expect("ok").backend(), Backend::Postgres);
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
