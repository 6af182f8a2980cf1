//! Package metadata, the transactional outbox and the consent ledger on PostgreSQL (the
//! `local` profile and every cloud build) and SQLite (the embedded default).
//!
//! Both engines run the same SQL wherever the dialects agree: `store` has one file per
//! port, each query written once; `engine` holds everything that differs.

mod engine;
mod store;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use udim_ports::ledger::ConsentLedger;
use udim_ports::metadata::{Outbox, PackageStore, UploadStore};
use udim_ports::{PortError, Result};

use engine::Pool;
use store::SqlStore;

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
    pool: Pool,
}

/// The two SQL engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl Engine {
    /// The engine a URL names, or `None` for an unsupported scheme.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

fn unavailable(e: sqlx::Error) -> PortError {
    PortError::unavailable("database", e)
}

/// Connects to the database the URL names. Does not run migrations.
pub async fn connect(options: &DbOptions) -> Result<Database> {
    let pool = match Engine::of(&options.url) {
        Some(Engine::Postgres) => {
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect(&options.url)
                .await
                .map_err(unavailable)?;
            Pool::Postgres(pool)
        }
        Some(Engine::Sqlite) => {
            let connect = SqliteConnectOptions::from_str(&options.url)
                .map_err(|e| PortError::generic("database", e))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit that returned survives a power cut, as the outbox and the
                // ledger promise.
                .synchronous(SqliteSynchronous::Full)
                // Deleted content is overwritten, not left in free space: an erased package's
                // wrapped key must not survive in the file (see `engine::after_erasure`).
                .pragma("secure_delete", "ON")
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .map_err(unavailable)?;
            Pool::Sqlite(pool)
        }
        None => {
            return Err(PortError::Unsupported(
                "database url must start with postgres://, postgresql:// or sqlite:".into(),
            ));
        }
    };
    let store = Arc::new(SqlStore { pool: pool.clone() });
    Ok(Database {
        packages: store.clone(),
        outbox: store.clone(),
        ledger: store.clone(),
        uploads: store,
        pool,
    })
}

/// Creates the cluster-wide `udim_service` role the migrations grant to, if it is missing.
///
/// Roles belong to the cluster, not to a database, and sqlx's migration lock is per
/// database: two databases migrated at once (replicas of two deployments, parallel tests on
/// a fresh cluster) would both find the role missing and one would fail on the role's unique
/// index. Creating it here first, tolerating a concurrent creation, makes the migration's own
/// `IF NOT EXISTS` always see it.
async fn create_service_role(pool: &sqlx::PgPool) -> Result<()> {
    sqlx::query(
        "DO $$ BEGIN \
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'udim_service') THEN \
                 CREATE ROLE udim_service NOLOGIN; \
             END IF; \
         EXCEPTION \
             WHEN duplicate_object OR unique_violation THEN NULL; \
             WHEN insufficient_privilege THEN \
                 RAISE NOTICE 'udim: no privilege to create role udim_service; create it by hand'; \
         END $$",
    )
    .execute(pool)
    .await
    .map_err(|e| PortError::generic("database migrations", e))?;
    Ok(())
}

impl Database {
    /// Applies the embedded migrations for this engine.
    pub async fn migrate(&self) -> Result<()> {
        let outcome = match &self.pool {
            Pool::Postgres(pool) => {
                create_service_role(pool).await?;
                sqlx::migrate!("../../migrations/postgres").run(pool).await
            }
            Pool::Sqlite(pool) => sqlx::migrate!("../../migrations/sqlite").run(pool).await,
        };
        outcome.map_err(|e| PortError::generic("database migrations", e))
    }

    pub fn engine(&self) -> Engine {
        match self.pool {
            Pool::Postgres(_) => Engine::Postgres,
            Pool::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        engine::on_pool!(&self.pool, |pool| pool.close().await)
    }
}
