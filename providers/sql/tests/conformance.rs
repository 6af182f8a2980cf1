//! The SQL providers against the ports' conformance suites, on both engines: a fresh SQLite
//! file and a fresh PostgreSQL database (a copy of the migrated template) per test.
//!
//! Each check below runs as `sqlite::<check>` and `postgres::<check>`. PostgreSQL must be
//! running (`UDIM_TEST_POSTGRES_URL`); `TEST_LOG=1` shows the providers' logs.

use std::time::Duration;

use udim_ports::conformance;
use udim_sql::{Database, DbOptions};
use udim_testkit::postgres::TestDatabase;

/// A migrated database on one engine; removed when dropped, also when the test panics.
struct Engine {
    db: Database,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<TestDatabase>,
}

impl Engine {
    async fn sqlite() -> Self {
        udim_testkit::log::init();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = migrated(&format!("sqlite://{}", dir.path().join("udim.db").display())).await;
        Self {
            db,
            _sqlite: Some(dir),
            _postgres: None,
        }
    }

    async fn postgres() -> Self {
        udim_testkit::log::init();
        let database = TestDatabase::create().await;
        let db = migrated(database.url()).await;
        Self {
            db,
            _sqlite: None,
            _postgres: Some(database),
        }
    }
}

/// Connects and migrates: on PostgreSQL the copy of the template is already migrated, and
/// this checks that it is at the embedded migrations.
async fn migrated(url: &str) -> Database {
    let db = udim_sql::connect(&DbOptions {
        url: url.into(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    })
    .await
    .expect("connect");
    db.migrate().await.expect("migrate");
    db
}

/// One test per check and engine: `sqlite::<check>` and `postgres::<check>`, each on a
/// database of its own.
macro_rules! on_both_engines {
    ($($check:ident),+ $(,)?) => {
        on_both_engines!(@engine sqlite, $($check),+);
        on_both_engines!(@engine postgres, $($check),+);
    };
    (@engine $engine:ident, $($check:ident),+) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let engine = super::Engine::$engine().await;
                    super::$check(&engine.db).await;
                }
            )+
        }
    };
}

on_both_engines!(
    the_package_store_keeps_users_apart_and_writes_every_change_with_its_event,
    the_outbox_leases_in_order_per_package_retries_and_prunes_only_sent_messages,
    the_upload_store_leases_uploads_and_appends_only_at_the_expected_offset,
    the_ledger_is_gap_free_provable_and_signs_only_over_its_own_checkpoints,
    the_metadata_suites_pass_side_by_side_on_one_database,
);

async fn the_package_store_keeps_users_apart_and_writes_every_change_with_its_event(db: &Database) {
    conformance::package_store(db.packages.as_ref(), db.outbox.as_ref()).await;
}

async fn the_outbox_leases_in_order_per_package_retries_and_prunes_only_sent_messages(db: &Database) {
    conformance::outbox(db.packages.as_ref(), db.outbox.as_ref()).await;
}

async fn the_upload_store_leases_uploads_and_appends_only_at_the_expected_offset(db: &Database) {
    conformance::upload_store(db.uploads.as_ref()).await;
}

/// The suite the QLDB legacy provider also passes; it needs an empty ledger.
async fn the_ledger_is_gap_free_provable_and_signs_only_over_its_own_checkpoints(db: &Database) {
    conformance::consent_ledger(db.ledger.clone(), 300).await;
}

/// The suites keep to their own rows: run at once on one database, they all still pass. Not
/// the outbox suite: as a relay does, its claims lease every due message, the other suites'
/// too.
async fn the_metadata_suites_pass_side_by_side_on_one_database(db: &Database) {
    tokio::join!(
        conformance::package_store(db.packages.as_ref(), db.outbox.as_ref()),
        conformance::upload_store(db.uploads.as_ref()),
    );
}
