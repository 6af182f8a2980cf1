//! Faults delay notifications but lose none. The service talks to the real RabbitMQ through
//! a TCP link the test controls: down from the start and up later; and an established
//! connection cut, hung until the confirm times out, its queue unbound (a returned message)
//! and a queue refusing messages bound beside it (a nack), all while events are in flight.
//! (Per-package order in the outbox is the outbox conformance suite's, in providers/sql/tests.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::faults::{Link, WatchedNotifier};
use common::{Db, Options, TestApp};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn rabbit_host() -> String {
    let url = common::amqp_url();
    let after_at = url.rsplit_once('@').map(|(_, h)| h).unwrap_or(&url);
    after_at.split('/').next().unwrap().to_owned()
}

async fn the_event_waits_in_the_outbox_while_rabbitmq_is_down_and_is_delivered_after(db: Db) {
    let link = Link::to(rabbit_host()).await;
    link.refuse(true);
    let app = TestApp::spawn_with(
        db,
        Options {
            rabbitmq: true,
            amqp_url: Some(format!("amqp://guest:guest@{}/%2f", link.address)),
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

    // The broker is down: the relay keeps trying it and records why the event waits, but
    // charges the outage to no event, so one that later fails on its own backs off from the
    // start rather than from the back-off the outage would have run up.
    common::eventually("the relay tries the broker again and again", || async {
        link.refused.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    common::eventually("the outage is recorded on the event, not charged to it", || async {
        let outbox = app.outbox().await;
        assert_eq!(outbox.len(), 1);
        assert!(outbox[0]["sent_at"].is_null(), "nothing can have been sent");
        !outbox[0]["last_error"].is_null() && outbox[0]["attempts"] == 0
    })
    .await;

    // The broker comes back.
    link.refuse(false);

    let queue = app.queue.as_ref().unwrap();
    let (_, event) = queue
        .next_event(Duration::from_secs(20))
        .await
        .expect("the event is delivered once RabbitMQ is reachable");
    assert_eq!(event["event_type"], "package.stored");
    common::eventually("the outbox row is marked sent", || async {
        !app.outbox().await[0]["sent_at"].is_null()
    })
    .await;
    assert!(
        queue.next_event(Duration::from_millis(500)).await.is_none(),
        "and delivered once"
    );
    app.stop().await;
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

type OutcomeLog = Mutex<Vec<Result<(), String>>>;

/// How many times the notifier has published so far, or tried to.
fn tried(outcomes: &OutcomeLog) -> usize {
    outcomes.lock().unwrap().len()
}

/// Waits until one of the notifier's outcomes after the first `before` is what `wanted` says.
async fn until_outcome(outcomes: &OutcomeLog, before: usize, what: &str, wanted: impl Fn(&Result<(), String>) -> bool) {
    for _ in 0..1200 {
        if outcomes.lock().unwrap()[before..].iter().any(&wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = outcomes.lock().unwrap();
    let recent = &outcomes[outcomes.len().saturating_sub(20)..];
    panic!(
        "the notifier never {what}; its last outcomes of {}: {recent:?}",
        outcomes.len()
    );
}

/// Waits until the notifier fails, after the first `before` outcomes, with an error that
/// `matches` describes.
async fn until_failed(outcomes: &OutcomeLog, before: usize, what: &str, matches: impl Fn(&str) -> bool) {
    until_outcome(outcomes, before, &format!("failed with {what}"), |outcome| {
        outcome.as_ref().is_err_and(|e| matches(e))
    })
    .await
}

/// Waits until the notifier publishes again (so it is connected to the broker).
async fn until_published(outcomes: &OutcomeLog) {
    until_outcome(outcomes, tried(outcomes), "published again", Result::is_ok).await
}

/// Waits until `more` packages have been uploaded from now on.
async fn until_more_uploaded(uploaded: &Mutex<Vec<String>>, more: usize) {
    let wanted = uploaded.lock().unwrap().len() + more;
    for _ in 0..1200 {
        if uploaded.lock().unwrap().len() >= wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {} packages uploaded", uploaded.lock().unwrap().len());
}

/// Every way an established broker connection goes wrong, while uploads keep coming and the
/// relay keeps publishing: the connection cut (and new ones refused for a while), hung until
/// the confirm times out, the queue unbound so messages come back (`mandatory`), and a
/// queue that refuses messages bound beside it so the broker nacks. Every package's event
/// arrives at least once, and the relay saw each failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_through_a_cut_a_hang_a_return_and_a_nack() {
    let link = Link::to(rabbit_host()).await;
    let (notifier, outcomes) = WatchedNotifier::wrap();
    let app = TestApp::spawn_with(
        Db::Postgres,
        Options {
            rabbitmq: true,
            amqp_url: Some(format!("amqp://guest:guest@{}/%2f", link.address)),
            notifier: Some(notifier),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let queue = app.queue.as_ref().unwrap();
    let names = queue.settings.clone();

    // Uploads go on in the background, four at a time, through every phase.
    let uploaded = Arc::new(Mutex::new(Vec::new()));
    let done = CancellationToken::new();
    let uploader = {
        let (http, base, token) = (app.http.clone(), app.base.clone(), alice.clone());
        let (uploaded, done) = (uploaded.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !done.is_cancelled() {
                let batch = (0..4).map(|i| {
                    let (http, url, token) = (
                        http.clone(),
                        format!("{base}/v1/packages?data_category=documents&filename=e.txt"),
                        token.clone(),
                    );
                    let body = format!("event in flight {}", n + i);
                    async move {
                        let response = http
                            .post(url)
                            .bearer_auth(token)
                            .header("content-type", "application/octet-stream")
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        let status = response.status();
                        let package: Value = response.json().await.unwrap();
                        assert_eq!(status, 201, "an upload never waits on the broker: {package}");
                        package["id"].as_str().unwrap().to_owned()
                    }
                });
                let ids = futures::future::join_all(batch).await;
                uploaded.lock().unwrap().extend(ids);
                n += 4;
            }
        })
    };
    let broker = Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = broker.create_channel().await.unwrap();

    // The established connection is cut, and the broker stays away for a while.
    until_more_uploaded(&uploaded, 20).await;
    let before = tried(&outcomes);
    link.refuse(true);
    link.cut();
    until_failed(&outcomes, before, "a lost connection", |_| true).await;
    assert!(
        link.cut_connections.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "an established connection was cut"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    link.refuse(false);

    // The connection hangs: no confirm comes back.
    until_more_uploaded(&uploaded, 20).await;
    until_published(&outcomes).await;
    let before = tried(&outcomes);
    link.hang(true);
    until_failed(&outcomes, before, "a confirm that never came", |f| {
        f.contains("confirm timed out")
    })
    .await;
    link.hang(false);

    // The queue is unbound: messages are returned as unroutable until the relay reconnects,
    // which binds it again.
    until_more_uploaded(&uploaded, 20).await;
    until_published(&outcomes).await;
    let before = tried(&outcomes);
    channel
        .queue_unbind(
            names.queue.as_str().into(),
            names.exchange.as_str().into(),
            names.binding_key.as_str().into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    until_failed(&outcomes, before, "a returned message", |f| f.contains("unroutable")).await;

    // A queue that refuses every message is bound beside it: the broker nacks.
    until_more_uploaded(&uploaded, 20).await;
    until_published(&outcomes).await;
    let before = tried(&outcomes);
    let full = queue.extra_queue("full");
    let mut refusing = FieldTable::default();
    refusing.insert("x-max-length".into(), AMQPValue::LongInt(0));
    refusing.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    channel
        .queue_declare(full.as_str().into(), QueueDeclareOptions::default(), refusing)
        .await
        .unwrap();
    channel
        .queue_bind(
            full.as_str().into(),
            names.exchange.as_str().into(),
            names.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    until_failed(&outcomes, before, "a nack", |f| f.contains("nack")).await;
    channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    until_more_uploaded(&uploaded, 20).await;
    done.cancel();
    uploader.await.unwrap();
    let uploaded: BTreeSet<String> = uploaded.lock().unwrap().iter().cloned().collect();

    let events = queue
        .take_until(Duration::from_secs(120), |taken| {
            let arrived: BTreeSet<&str> = taken.iter().filter_map(|e| e["package_id"].as_str()).collect();
            uploaded.iter().all(|id| arrived.contains(id.as_str()))
        })
        .await;
    let mut arrivals: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &events {
        assert_eq!(event["event_type"], "package.stored");
        *arrivals.entry(event["package_id"].as_str().unwrap()).or_default() += 1;
    }
    let missing: Vec<&String> = uploaded
        .iter()
        .filter(|id| !arrivals.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived: {missing:?}",
        missing.len(),
        uploaded.len()
    );
    assert!(
        arrivals.keys().all(|id| uploaded.contains(*id)),
        "only the uploaded packages' events"
    );
    let repeated = arrivals.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} events for {} packages ({repeated} delivered more than once); the notifier failed {} times",
        events.len(),
        uploaded.len(),
        outcomes.lock().unwrap().iter().filter(|o| o.is_err()).count()
    );
    common::eventually("every outbox row is marked sent", || async {
        app.outbox().await.iter().all(|row| !row["sent_at"].is_null())
    })
    .await;
    app.stop().await;
}

/// The ids of `n` documents uploaded one after another, each body `prefix` and its number.
async fn upload_many(app: &TestApp, token: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let package: Value = app
            .upload(token, "documents", format!("{prefix} {i}"))
            .await
            .json()
            .await
            .unwrap();
        ids.push(package["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Events the broker refuses for good (here `package.deleted`, which no queue is bound to
/// receive) back off alone: every other event, older or newer, is still delivered. Before,
/// a batch stopped at its first refused event and the relay paused, so sixteen refused
/// events kept the head of every batch and nothing behind them went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_backs_off_alone_while_the_others_go_on() {
    let app = TestApp::spawn_with(
        Db::Postgres,
        Options {
            rabbitmq: true,
            configure: Some(Box::new(|settings| {
                if let udim::config::QueueSettings::Rabbitmq(rabbitmq) = &mut settings.queue {
                    rabbitmq.binding_key = "package.stored".into();
                }
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let queue = app.queue.as_ref().unwrap();
    let first = upload_many(&app, &alice, "erased", 16).await;
    let delivered = queue
        .take_until(common::PATIENCE, |taken| taken.len() >= first.len())
        .await;
    assert_eq!(delivered.len(), first.len(), "the first packages' events arrive");
    for id in &first {
        app.erase_package(&alice, id.parse().unwrap()).await;
    }

    let later: BTreeSet<String> = upload_many(&app, &alice, "later", 10).await.into_iter().collect();
    let events = queue
        .take_until(common::PATIENCE, |taken| {
            let arrived: BTreeSet<&str> = taken.iter().filter_map(|e| e["package_id"].as_str()).collect();
            later.iter().all(|id| arrived.contains(id.as_str()))
        })
        .await;
    let arrived: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["package_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        later.is_subset(&arrived),
        "the later packages' events arrive past the refused ones"
    );
    common::eventually("every erasure's event was refused, and waits", || async {
        let refused = app
            .outbox()
            .await
            .into_iter()
            .filter(|e| e["event_type"] == "package.deleted" && e["sent_at"].is_null() && !e["last_error"].is_null())
            .count();
        refused == first.len()
    })
    .await;
    app.stop().await;
}

/// The real RabbitMQ notifier, except that the first publish of `hang_on`'s event never
/// ends (a broker that took that message and never confirmed it).
#[derive(Debug)]
struct HangsOnce {
    inner: Arc<dyn udim_ports::queue::Notifier>,
    hang_on: Arc<Mutex<Option<uuid::Uuid>>>,
}

#[async_trait::async_trait]
impl udim_ports::queue::Notifier for HangsOnce {
    async fn publish(&self, message: &udim_ports::metadata::OutboxMessage) -> udim_ports::Result<()> {
        let hang = {
            let mut hang_on = self.hang_on.lock().unwrap();
            let hang = *hang_on == Some(message.aggregate_id);
            if hang {
                *hang_on = None;
            }
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        self.inner.publish(message).await
    }

    async fn ping(&self) -> udim_ports::Result<()> {
        self.inner.ping().await
    }
}

/// A batch whose publishing outlasts `outbox.batch_timeout_secs` keeps the events confirmed
/// before the time-out as sent, and only the rest is published again: every event arrives
/// once. Before, the time-out threw the confirmed results away, so those events went out
/// again with the rest (and a broker that slow had the same batch sent to it for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_times_out_keeps_what_was_confirmed() {
    const EVENTS: usize = 6;
    let link = Link::to(rabbit_host()).await;
    link.refuse(true);
    let hang_on = Arc::new(Mutex::new(None));
    let wrapped = hang_on.clone();
    let app = TestApp::spawn_with(
        Db::Postgres,
        Options {
            rabbitmq: true,
            amqp_url: Some(format!("amqp://guest:guest@{}/%2f", link.address)),
            notifier: Some(Box::new(move |inner| {
                Arc::new(HangsOnce {
                    inner,
                    hang_on: wrapped,
                }) as Arc<dyn udim_ports::queue::Notifier>
            })),
            configure: Some(Box::new(|settings| settings.outbox.batch_timeout_secs = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    // With the broker away, the events gather in the outbox, to go out in one batch.
    let ids = upload_many(&app, &alice, "batched", EVENTS).await;
    *hang_on.lock().unwrap() = Some(ids[3].parse().unwrap());
    link.refuse(false);

    let queue = app.queue.as_ref().unwrap();
    let events = queue.take_until(common::PATIENCE, |taken| taken.len() >= EVENTS).await;
    let mut arrived = BTreeMap::<String, usize>::new();
    for event in &events {
        *arrived
            .entry(event["package_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(hang_on.lock().unwrap().is_none(), "the fourth event's publish hung");
    let late = queue.take_until(Duration::from_secs(3), |_| false).await;
    for event in &late {
        *arrived
            .entry(event["package_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(arrived, expected, "every event arrives, once");
    app.stop().await;
}
