//! The test kit itself: databases are migrated copies and go away even after a panic, the
//! launchers start what they promise and stop it on drop.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use sqlx::Connection as _;
use udim_testkit::postgres::{TestDatabase, admin_url};

async fn exists(name: &str) -> bool {
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let (exists,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_databases_are_separate_migrated_copies_and_dropped_with_their_guard() {
    let (a, b) = tokio::join!(TestDatabase::create(), TestDatabase::create());
    assert_ne!(a.url(), b.url());
    for db in [&a, &b] {
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let (tables,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('packages', 'outbox', 'tus_uploads')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, 3, "{} is migrated", db.name());
        sqlx::query("INSERT INTO users (id, created_at) VALUES ('only-here', now())")
            .execute(&mut conn)
            .await
            .unwrap();
        // An open connection does not keep the database from being dropped.
        std::mem::forget(conn);
    }
    let name = a.name().to_owned();
    drop(a);
    assert!(!exists(&name).await, "the guard drops its database");
    assert!(exists(b.name()).await);
}

#[test]
fn a_test_database_is_dropped_when_its_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let db = TestDatabase::create().await;
            tx.send(db.name().to_owned()).unwrap();
            panic!("the test fails");
        })
    });
    assert!(test.join().is_err(), "the test panicked");
    let name = rx.recv().unwrap();
    let gone = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { !exists(&name).await });
    assert!(gone, "{name} outlived its panicking test");
}

#[test]
fn a_free_listener_is_bound_and_accepts() {
    let listener = udim_testkit::free_listener();
    let address = listener.local_addr().unwrap();
    assert!(address.ip().is_loopback() && address.port() != 0);
    let mut client = std::net::TcpStream::connect(address).unwrap();
    client.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    listener.accept().unwrap().0.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
}

#[test]
fn log_init_can_be_called_from_every_test() {
    udim_testkit::log::init();
    udim_testkit::log::init();
    tracing_subscriber::fmt::try_init().ok();
}

#[tokio::test]
async fn clamd_answers_until_it_is_dropped() {
    let clamd = udim_testkit::clamd::Clamd::start("1M").await;
    let address = clamd.address();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(b"zVERSION\0").await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert!(reply.starts_with(b"ClamAV"), "{}", String::from_utf8_lossy(&reply));
    drop(clamd);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "clamd stops with its guard"
    );
}

#[tokio::test]
async fn moto_answers_on_its_endpoint() {
    let moto = udim_testkit::moto::start().await;
    let response = reqwest::get(format!("{}/moto-api/", moto.endpoint)).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}
