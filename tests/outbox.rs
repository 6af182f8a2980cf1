//! Faults delay notifications but lose none: with RabbitMQ unreachable the event waits in
//! the outbox, and is delivered once the broker is back; the service talks to RabbitMQ
//! through a TCP relay the test opens late. (Per-package order in the outbox is the outbox
//! conformance suite's, in providers/sql/tests.)

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

fn rabbit_host() -> String {
    let url = common::amqp_url();
    let after_at = url.rsplit_once('@').map(|(_, h)| h).unwrap_or(&url);
    after_at.split('/').next().unwrap().to_owned()
}

async fn the_event_waits_in_the_outbox_while_rabbitmq_is_down_and_is_delivered_after(db: Db) {
    let port = udim_testkit::port_for_child();
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

common::on_both_databases!(the_event_waits_in_the_outbox_while_rabbitmq_is_down_and_is_delivered_after);
