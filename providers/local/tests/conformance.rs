//! The local providers against the shared conformance suites.

use udim_local::keyfile::LocalKeyFile;
use udim_ports::conformance;

#[tokio::test]
async fn filesystem_storage_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = udim_local::fs::build(&dir.path().join("objects")).unwrap();
    // Larger than the 8 MiB local part size, so the write is truly multipart.
    conformance::blob_store(&store, 9 * 1024 * 1024 + 13).await;
}

#[tokio::test]
async fn local_key_file_conforms_and_keeps_old_keys_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/kek.keys");
    let kms = LocalKeyFile::open_or_create(&path).unwrap();
    conformance::key_service(&kms).await;

    use udim_ports::kms::{KeyContext, KeyService};
    let ctx = KeyContext {
        package_id: uuid::Uuid::new_v4(),
        user_id: "alice".into(),
    };
    let before = kms.generate_data_key(&ctx).await.unwrap();
    let new_id = LocalKeyFile::rotate(&path).unwrap();
    let rotated = LocalKeyFile::open_or_create(&path).unwrap();
    assert_eq!(rotated.current_key_id(), new_id);
    assert_ne!(new_id, before.key_id);
    let unwrapped = rotated
        .unwrap_data_key(&before.key_id, &before.wrapped, &ctx)
        .await
        .unwrap();
    assert_eq!(unwrapped.as_bytes(), before.plaintext.as_bytes());
    conformance::key_service(&rotated).await;
}

#[tokio::test]
async fn clamd_finds_eicar_alone_and_split_inside_a_larger_stream_and_passes_clean_bytes() {
    let clamd = udim_testkit::clamd::Clamd::start("10M").await;
    let scanner = udim_local::clamd::Clamd::new(
        udim_local::clamd::ClamdAddress::Tcp(clamd.address()),
        10 * 1024 * 1024,
        std::time::Duration::from_secs(30),
    );
    conformance::malware_scanner(&scanner, true).await;
}

#[tokio::test]
async fn disabled_scanning_reports_every_stream_as_not_scanned() {
    conformance::malware_scanner(&udim_ports::scanner::ScanningDisabled, false).await;
}

#[test]
fn the_key_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.keys");
    LocalKeyFile::open_or_create(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use std::time::Duration;

    use lapin::options::{
        BasicAckOptions, BasicGetOptions, BasicRejectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
    };
    use lapin::{Connection, ConnectionProperties};
    use udim_local::rabbitmq::{RabbitMqConfig, RabbitMqNotifier};
    use udim_ports::conformance;

    fn amqp_url() -> String {
        std::env::var("UDIM_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    fn config() -> RabbitMqConfig {
        let id = uuid::Uuid::new_v4().simple().to_string();
        RabbitMqConfig {
            url: amqp_url(),
            exchange: format!("udim.conformance.{id}.events"),
            queue: format!("udim.conformance.{id}.packages"),
            binding_key: "package.#".into(),
            dead_letter_exchange: format!("udim.conformance.{id}.dlx"),
            dead_letter_queue: format!("udim.conformance.{id}.dead"),
        }
    }

    async fn get(channel: &lapin::Channel, queue: &str) -> Option<lapin::message::Delivery> {
        for _ in 0..50 {
            if let Some(m) = channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                return Some(m.delivery);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn clean_up(channel: &lapin::Channel, c: &RabbitMqConfig) {
        for q in [&c.queue, &c.dead_letter_queue] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [&c.exchange, &c.dead_letter_exchange] {
            let _ = channel
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    #[tokio::test]
    async fn rabbitmq_notifier_conforms_and_rejected_messages_reach_the_dead_letter_queue() {
        let c = config();
        let notifier = RabbitMqNotifier::new(c.clone());
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running (UDIM_TEST_AMQP_URL)");
        let channel = conn.create_channel().await.unwrap();
        conformance::notifier(&notifier, async || {
            let d = get(&channel, &c.queue).await?;
            let props = d.properties.clone();
            assert_eq!(props.delivery_mode(), &Some(2), "messages are persistent");
            d.reject(BasicRejectOptions { requeue: false }).await.unwrap();
            Some((
                props.message_id().as_ref()?.to_string(),
                serde_json::from_slice(&d.data).ok()?,
            ))
        })
        .await;
        let dead = get(&channel, &c.dead_letter_queue).await;
        assert!(
            dead.is_some(),
            "a message rejected without requeue ends in the dead-letter queue"
        );
        clean_up(&channel, &c).await;
    }

    #[tokio::test]
    async fn rabbitmq_notifier_publishes_a_batch_through_the_default_method() {
        let c = config();
        let notifier = RabbitMqNotifier::new(c.clone());
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running (UDIM_TEST_AMQP_URL)");
        let channel = conn.create_channel().await.unwrap();
        conformance::notifier_batch(&notifier, async || {
            let d = get(&channel, &c.queue).await?;
            d.ack(BasicAckOptions::default()).await.unwrap();
            Some((
                d.properties.message_id().as_ref()?.to_string(),
                serde_json::from_slice(&d.data).ok()?,
            ))
        })
        .await;
        clean_up(&channel, &c).await;
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_unavailable_not_lost() {
        let mut c = config();
        c.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
        let notifier = RabbitMqNotifier::new(c);
        let message = udim_ports::conformance::message(serde_json::json!({}));
        let err = udim_ports::queue::Notifier::publish(&notifier, &message)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}
