//! Package metadata, the transactional outbox and the consent ledger on PostgreSQL (the
//! `local` profile and every cloud build) and SQLite (the embedded default).
//!
//! Both backends run the same SQL wherever the dialects agree; [`store`] holds it once and
//! instantiates it per backend.

mod store;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use udim_ports::ledger::ConsentLedger;
use udim_ports::metadata::{Outbox, PackageStore, UploadStore};
use udim_ports::{PortError, Result};

pub use store::{PgStore, SqliteStore};

/// Connection settings for [`connect`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// `postgres://…` or `sqlite://…` (`sqlite:` URLs create the file if it is missing).
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// A connected database: every port it provides, sharing one pool.
#[derive(Debug, Clone)]
pub struct Database {
    pub packages: Arc<dyn PackageStore>,
    pub outbox: Arc<dyn Outbox>,
    pub ledger: Arc<dyn ConsentLedger>,
    pub uploads: Arc<dyn UploadStore>,
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Which engine a URL names, or `None` for an unsupported scheme.
pub fn engine_of(url: &str) -> Option<&'static str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some("postgres")
    } else if url.starts_with("sqlite:") {
        Some("sqlite")
    } else {
        None
    }
}

fn unavailable(e: sqlx::Error) -> PortError {
    PortError::unavailable("database", e)
}

/// Connects to the database the URL names. Does not run migrations.
pub async fn connect(options: &DbOptions) -> Result<Database> {
    let backend = match engine_of(&options.url) {
        Some("postgres") => {
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect(&options.url)
                .await
                .map_err(unavailable)?;
            Backend::Postgres(PgStore::new(pool))
        }
        Some("sqlite") => {
            let connect = SqliteConnectOptions::from_str(&options.url)
                .map_err(|e| PortError::generic("database", e))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit that returned survives a power cut, as the outbox and the
                // ledger promise.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(unavailable)?;
            Backend::Sqlite(SqliteStore::new(pool))
        }
        _ => {
            return Err(PortError::Unsupported(
                "database url must start with postgres://, postgresql:// or sqlite:".into(),
            ));
        }
    };
    Ok(match backend {
        Backend::Postgres(ref s) => Database {
            packages: Arc::new(s.clone()),
            outbox: Arc::new(s.clone()),
            ledger: Arc::new(s.clone()),
            uploads: Arc::new(s.clone()),
            backend,
        },
        Backend::Sqlite(ref s) => Database {
            packages: Arc::new(s.clone()),
            outbox: Arc::new(s.clone()),
            ledger: Arc::new(s.clone()),
            uploads: Arc::new(s.clone()),
            backend,
        },
    })
}

impl Database {
    /// Applies the embedded migrations for this engine.
    pub async fn migrate(&self) -> Result<()> {
        let outcome = match &self.backend {
            Backend::Postgres(s) => sqlx::migrate!("../../migrations/postgres").run(s.pool()).await,
            Backend::Sqlite(s) => sqlx::migrate!("../../migrations/sqlite").run(s.pool()).await,
        };
        outcome.map_err(|e| PortError::generic("database migrations", e))
    }

    /// `postgres` or `sqlite`.
    pub fn engine(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(s) => s.pool().close().await,
            Backend::Sqlite(s) => s.pool().close().await,
        }
    }
}
