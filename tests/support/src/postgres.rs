//! A fresh, migrated PostgreSQL database per test, dropped when the test ends, even when it
//! panics.
//!
//! Migrating takes far longer than copying, so the migrations run once into a template
//! database named after a hash of `migrations/postgres`, and every test database is a copy of
//! it (`CREATE DATABASE … TEMPLATE`). Changed migrations give a new template; templates of
//! older migrations stay behind (drop `udim_template_*` by hand to reclaim them).
//!
//! PostgreSQL must be running: `UDIM_TEST_POSTGRES_URL` (an administrative connection, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) says where.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use sqlx::Connection as _;
use tokio::sync::OnceCell;

/// The administrative connection's URL.
pub fn admin_url() -> String {
    std::env::var("UDIM_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The URL of database `name` on the administrative connection's server.
fn url_of(name: &str) -> String {
    let admin = admin_url();
    let (server, rest) = admin
        .rsplit_once('/')
        .expect("UDIM_TEST_POSTGRES_URL must name a database: postgres://…/postgres");
    // Keep connection parameters (`?sslmode=…`), drop the administrative database's name.
    let query = rest.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
    format!("{server}/{name}{query}")
}

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("PostgreSQL must be running for the tests (UDIM_TEST_POSTGRES_URL)")
}

/// A database of its own for one test, migrated; dropped (`WITH (FORCE)`, so open pools do
/// not hold it up) when this guard is dropped, also while the test unwinds from a panic.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// A new database, a copy of the migrated template (made first if this is the first use
    /// of these migrations on this server).
    pub async fn create() -> Self {
        let template = template().await;
        let name = format!("udim_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin().await)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name} from {template}: {e}"));
        let url = url_of(&name);
        Self { name, url }
    }

    /// A new database with no schema at all, for tests of the migrations themselves.
    pub async fn empty() -> Self {
        let name = format!("udim_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin().await)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let url = url_of(&name);
        Self { name, url }
    }

    /// The database's connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        crate::clean_up_aside(&format!("test database {name}"), async move {
            let mut admin = sqlx::PgConnection::connect(&admin_url())
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        });
    }
}

/// The migrations' directory, in the source tree the tests were built from.
fn migrations_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/postgres"))
}

/// SHA-256 over every migration's file name and content, in name order.
fn migrations_hash() -> [u8; 32] {
    let dir = migrations_dir();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        let name = file.file_name().expect("a file name").to_string_lossy().into_owned();
        let content = std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        // Lengths first, so no two different sets of files hash alike.
        hash.update((name.len() as u64).to_be_bytes());
        hash.update(name.as_bytes());
        hash.update((content.len() as u64).to_be_bytes());
        hash.update(&content);
    }
    hash.finalize().into()
}

/// The migrated template's name; made once per process, and once per server for these
/// migrations.
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE.get_or_init(make_template).await
}

/// Makes the template unless it exists. Under an advisory lock on the administrative
/// connection, so concurrent test processes make it once; built under a temporary name and
/// renamed when complete, so a crash halfway leaves no half-migrated template to copy.
async fn make_template() -> String {
    let hash = migrations_hash();
    let name = format!("udim_template_{}", &hex::encode(hash)[..16]);
    let lock = i64::from_be_bytes(hash[..8].try_into().expect("eight bytes"));
    let mut admin = admin().await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut admin)
        .await
        .expect("take the template lock");
    let (exists,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("look for the template");
    if !exists {
        let building = format!("{name}_building");
        for statement in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building}"),
        ] {
            sqlx::query(&statement)
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        let db = udim_sql::connect(&udim_sql::DbOptions {
            url: url_of(&building),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(30),
        })
        .await
        .expect("connect to the template being built");
        db.migrate().await.expect("migrate the template");
        db.close().await;
        // A database with a session still attached cannot be renamed, and the migration's
        // pool has been seen to leave one behind after `close` (its last statement sqlx's own
        // advisory unlock): end any such session first. Nothing else connects to a template
        // being built.
        let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
        let mut attempts = 0;
        loop {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&building)
            .execute(&mut admin)
            .await
            .expect("end the template's leftover sessions");
            match sqlx::query(&rename).execute(&mut admin).await {
                Ok(_) => break,
                Err(e) => {
                    attempts += 1;
                    assert!(attempts < 10, "{rename}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock)
        .execute(&mut admin)
        .await
        .expect("release the template lock");
    name
}
