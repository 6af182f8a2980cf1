//! Faults delay notifications but lose none: with RabbitMQ unreachable the event waits in
//! the outbox, and is delivered once the broker is back. The outage is real: the service
//! talks to RabbitMQ through a TCP relay the test opens and closes. And a package's events
//! leave the outbox in order, also when one of them fails.

mod common;

use std::time::Duration;

use common::{Db, Options, TestApp};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards connections from `listener` to RabbitMQ until `stop`.
async fn forward(listener: TcpListener, upstream: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                let upstream = upstream.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rabbit_host() -> String {
    let url = common::amqp_url();
    let after_at = url.rsplit_once('@').map(|(_, h)| h).unwrap_or(&url);
    after_at.split('/').next().unwrap().to_owned()
}

async fn the_event_waits_in_the_outbox_while_rabbitmq_is_down_and_is_delivered_after(db: Db) {
    let port = free_port();
    let app = TestApp::spawn_with(
        db,
        Options {
            rabbitmq: true,
            amqp_url: Some(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    assert_eq!(
        app.upload(&alice, "documents", "survives an outage").await.status(),
        201
    );

    // Nothing listens on the port: publishing fails and the relay records the attempts.
    let mut failed_attempts = 0;
    for _ in 0..100 {
        let outbox = app.outbox().await;
        assert_eq!(outbox.len(), 1);
        assert!(outbox[0]["sent_at"].is_null(), "nothing can have been sent");
        failed_attempts = outbox[0]["attempts"].as_u64().unwrap();
        if failed_attempts >= 2 && !outbox[0]["last_error"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed_attempts >= 2, "the relay keeps retrying with back-off");

    // The broker comes back.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(forward(listener, rabbit_host(), stop.clone()));

    let queue = app.queue.as_ref().unwrap();
    let (_, event) = queue
        .next_event(Duration::from_secs(20))
        .await
        .expect("the event is delivered once RabbitMQ is reachable");
    assert_eq!(event["event_type"], "package.stored");
    let mut sent = false;
    for _ in 0..50 {
        if !app.outbox().await[0]["sent_at"].is_null() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "the outbox row is marked sent");
    assert!(
        queue.next_event(Duration::from_millis(500)).await.is_none(),
        "and delivered once"
    );
    app.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_on_sqlite() {
    the_event_waits_in_the_outbox_while_rabbitmq_is_down_and_is_delivered_after(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_on_postgres() {
    the_event_waits_in_the_outbox_while_rabbitmq_is_down_and_is_delivered_after(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_keeps_events_in_the_outbox_for_operators() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let package: serde_json::Value = app.upload(&alice, "documents", "x").await.json().await.unwrap();
    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0]["aggregate_id"], package["id"]);
    assert_eq!(outbox[0]["payload"]["package_id"], package["id"]);
    assert!(outbox[0]["sent_at"].is_null(), "no queue: the event stays pending");
    app.stop().await;
}

/// The outbox hands out a package's events in order: while an earlier event of a package
/// waits for its retry, the package's later events wait too; other packages' do not. Sent
/// events are pruned after their time; unsent ones never are.
async fn a_packages_events_are_claimed_in_order_and_sent_ones_pruned(url: &str) {
    use std::time::Duration;

    use chrono::Utc;
    let db = udim_sql::connect(&udim_sql::DbOptions {
        url: url.into(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    db.migrate().await.unwrap();
    let (package, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let mut ids = Vec::new();
    for (n, aggregate) in [package, package, other].into_iter().enumerate() {
        let id = uuid::Uuid::new_v4();
        ids.push(id);
        let now = Utc::now();
        let insert = "INSERT INTO outbox (id, event_type, aggregate_id, payload, created_at, next_attempt_at) \
                      VALUES ($1, 'package.stored', $2, $3, $4, $4)";
        let payload = sqlx::types::Json(serde_json::json!({ "n": n }));
        if url.starts_with("sqlite") {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(insert)
                .bind(id)
                .bind(aggregate)
                .bind(payload)
                .bind(now)
                .execute(&pool)
                .await
                .unwrap();
        } else {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(insert)
                .bind(id)
                .bind(aggregate)
                .bind(payload)
                .bind(now)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    let lease = Duration::from_secs(60);
    let claimed: Vec<_> = db
        .outbox
        .claim_due(Utc::now(), lease, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message.id)
        .collect();
    assert_eq!(
        claimed,
        [ids[0], ids[2]],
        "the package's second event waits behind its first"
    );
    // The first fails and is scheduled for later: the second still may not overtake it.
    db.outbox
        .mark_failed(ids[0], "broker down", Utc::now() + chrono::Duration::minutes(5))
        .await
        .unwrap();
    db.outbox.mark_sent(ids[2], Utc::now()).await.unwrap();
    let later = Utc::now() + chrono::Duration::minutes(2);
    assert!(db.outbox.claim_due(later, lease, 10).await.unwrap().is_empty());
    // Once the first is sent, the second goes.
    let due = Utc::now() + chrono::Duration::minutes(6);
    let retried: Vec<_> = db.outbox.claim_due(due, lease, 10).await.unwrap();
    assert_eq!(retried.iter().map(|e| e.message.id).collect::<Vec<_>>(), [ids[0]]);
    db.outbox.mark_sent(ids[0], due).await.unwrap();
    let last: Vec<_> = db.outbox.claim_due(due, lease, 10).await.unwrap();
    assert_eq!(last.iter().map(|e| e.message.id).collect::<Vec<_>>(), [ids[1]]);

    // Pruning takes sent events older than the cut-off, never unsent ones.
    assert_eq!(
        db.outbox.prune_sent(due - chrono::Duration::seconds(1)).await.unwrap(),
        1,
        "ids[2] only"
    );
    assert_eq!(
        db.outbox.prune_sent(due + chrono::Duration::seconds(1)).await.unwrap(),
        1,
        "then ids[0]"
    );
    let left: Vec<_> = db.outbox.list(false, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.message.id).collect::<Vec<_>>(),
        [ids[1]],
        "the unsent one stays"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_claimed_in_order_per_package_and_pruned_once_sent_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_packages_events_are_claimed_in_order_and_sent_ones_pruned(&format!(
        "sqlite://{}",
        dir.path().join("outbox.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_claimed_in_order_per_package_and_pruned_once_sent_on_postgres() {
    let (name, url) = common::create_postgres_database().await;
    a_packages_events_are_claimed_in_order_and_sent_ones_pruned(&url).await;
    common::drop_postgres_database(&name).await;
}
