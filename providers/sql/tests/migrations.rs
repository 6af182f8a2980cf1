//! Upgrading a database that holds data: the SQLite schema as migrations 0001–0004 left it,
//! with a consent entry and an erased package, takes the current migrations (0005 rebuilds
//! `consent_records` to admit erasure records) and keeps the rows, the indexes and the
//! triggers that guard the ledger; old tombstones are marked as erased before erasures were
//! recorded.

use std::time::Duration;

use sqlx::Connection as _;
use uuid::Uuid;

const SQLITE_MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/sqlite");

#[tokio::test]
async fn a_populated_sqlite_database_upgrades_with_its_rows_indexes_and_triggers() {
    let dir = tempfile::tempdir().unwrap();
    // The migrations as the previous release shipped them: 0001–0004.
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for entry in std::fs::read_dir(SQLITE_MIGRATIONS).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, old.join(&name)).unwrap();
        }
    }
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("udim.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&mut db)
        .await
        .unwrap();

    let (entry, package) = (Uuid::now_v7(), Uuid::now_v7());
    let now = chrono::Utc::now();
    for (sql, binds) in [
        ("INSERT INTO users (id, created_at) VALUES ('alice', $1)", 1),
        (
            "INSERT INTO consent_ledger (idx, id, leaf_hash, recorded_at) VALUES (0, $2, zeroblob(32), $1)",
            2,
        ),
        (
            "INSERT INTO consent_records (id, idx, user_id, consent_id, event_type, record, salt) \
             VALUES ($2, 0, 'alice', $2, 'given', '{\"kept\": true}', zeroblob(16))",
            2,
        ),
        (
            "INSERT INTO packages (id, user_id, consent_entry_id, data_category, original_name, \
             declared_content_type, status, staging_key, created_at, updated_at) \
             VALUES ($3, 'alice', $2, 'audio', '', '', 'deleted', 'k', $1, $1)",
            3,
        ),
    ] {
        let mut query = sqlx::query(sql).bind(now);
        if binds >= 2 {
            query = query.bind(entry);
        }
        if binds >= 3 {
            query = query.bind(package);
        }
        query.execute(&mut db).await.unwrap();
    }
    db.close().await.unwrap();

    let database = udim_sql::connect(&udim_sql::DbOptions {
        url: url.clone(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    database.migrate().await.expect("the upgrade applies");
    database.close().await;

    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (record, event): (String, String) =
        sqlx::query_as("SELECT record, event_type FROM consent_records WHERE id = $1")
            .bind(entry)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        (record.as_str(), event.as_str()),
        ("{\"kept\": true}", "given"),
        "the row is kept"
    );
    let indexes: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'consent_records' ORDER BY name",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let indexes: Vec<&str> = indexes.iter().map(|(n,)| n.as_str()).collect();
    assert!(
        indexes.contains(&"consent_records_by_user") && indexes.contains(&"consent_records_by_consent"),
        "{indexes:?}"
    );
    let update = sqlx::query("UPDATE consent_records SET event_type = 'withdrawn'")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(
        update.to_string().contains("udim:"),
        "UPDATE is still refused: {update}"
    );
    let delete = sqlx::query("DELETE FROM consent_records")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(
        delete.to_string().contains("redacted"),
        "an unredacted DELETE is still refused: {delete}"
    );
    let bogus = sqlx::query(
        "INSERT INTO consent_records (id, idx, user_id, consent_id, event_type, record, salt) \
         VALUES ($1, 1, '', $1, 'bogus', '{}', zeroblob(16))",
    )
    .bind(Uuid::now_v7())
    .execute(&mut db)
    .await;
    assert!(bogus.is_err(), "the event type is still checked");
    sqlx::query(
        "INSERT INTO consent_records (id, idx, user_id, consent_id, event_type, record, salt) \
         VALUES ($1, 1, '', $1, 'erased', '{}', zeroblob(16))",
    )
    .bind(Uuid::now_v7())
    .execute(&mut db)
    .await
    .expect("an erasure record is admitted");
    let (marked,): (Vec<u8>,) = sqlx::query_as("SELECT erasure_entry FROM packages WHERE id = $1")
        .bind(package)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        marked,
        vec![0u8; 16],
        "an old tombstone is marked, never recorded under today's date"
    );
}
