//! The AWS providers against moto in server mode (a real local stand-in for S3, KMS and SQS
//! that the test starts): the same conformance suites the local providers pass.
//!
//! Needs moto: `scripts/test` installs it into `.venv` (override with `UDIM_TEST_MOTO`).

use std::time::Duration;

use udim_ports::conformance;
use udim_testkit::moto;

/// moto's credentials, passed to every client (never through the environment).
fn credentials() -> udim_aws::SharedCredentialsProvider {
    udim_aws::static_credentials(moto::ACCESS_KEY_ID, moto::SECRET_ACCESS_KEY)
}

#[tokio::test]
async fn s3_storage_conforms_with_a_multipart_object() {
    let moto = moto::start().await;
    let bucket = format!("udim-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{}/{bucket}", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "creating the bucket: {}",
        created.status()
    );
    let bucket_name = bucket.clone();
    let store = udim_aws::s3_storage(&udim_aws::S3Config {
        bucket,
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint.clone()),
        allow_http: true,
        sse_kms_key_id: None,
        credentials: Some(credentials()),
    })
    .unwrap();
    // Larger than one 16 MiB part: a real multipart upload.
    conformance::blob_store(&store, 17 * 1024 * 1024 + 5).await;
    // The aborted write left no multipart upload (and so no parts) behind.
    let listing = reqwest::Client::new()
        .get(format!("{}/{bucket_name}?uploads", moto.endpoint))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("ListMultipartUploadsResult"), "{listing}");
    assert!(!listing.contains("<Upload>"), "an aborted upload left parts: {listing}");
}

#[tokio::test]
async fn aws_kms_conforms_and_binds_the_encryption_context() {
    let moto = moto::start().await;
    let config = udim_aws::sdk_config(Some(moto::REGION), Some(&moto.endpoint), Some(&credentials())).await;
    let key = aws_sdk_kms_create_key(&config).await;
    let kms = udim_aws::AwsKms::new(&config, &key).await.unwrap();
    assert!(udim_ports::kms::KeyService::current_key_id(&kms).starts_with("arn:aws:kms:"));
    conformance::key_service(&kms).await;
}

async fn aws_sdk_kms_create_key(config: &aws_config::SdkConfig) -> String {
    let client = aws_sdk_kms::Client::new(config);
    let key = client.create_key().send().await.unwrap();
    key.key_metadata().unwrap().key_id().to_owned()
}

#[tokio::test]
async fn sqs_notifier_conforms_with_attributes_and_poison_messages_reach_the_dead_letter_queue() {
    let moto = moto::start().await;
    let config = udim_aws::sdk_config(Some(moto::REGION), Some(&moto.endpoint), Some(&credentials())).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dlq = create_queue(&sqs, "udim-dead", &[]).await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let queue = create_queue(
        &sqs,
        "udim-events",
        &[
            (aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "0".into()),
            (
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#),
            ),
        ],
    )
    .await;
    let notifier = udim_aws::SqsNotifier::new(&config, &queue);
    conformance::notifier(&notifier, async || {
        let received = sqs
            .receive_message()
            .queue_url(&queue)
            .message_attribute_names("All")
            .wait_time_seconds(5)
            .send()
            .await
            .ok()?;
        let message = received.messages().first()?.clone();
        let attrs = message.message_attributes()?;
        assert_eq!(attrs["event_type"].string_value(), Some("package.stored"));
        assert!(attrs.contains_key("schema_version") && attrs.contains_key("package_id"));
        let event_id = attrs["event_id"].string_value()?.to_owned();
        // A consumer that keeps failing never deletes the message: after maxReceiveCount
        // receives it moves to the dead-letter queue.
        Some((event_id, serde_json::from_str(message.body()?).ok()?))
    })
    .await;
    let mut dead = None;
    for _ in 0..10 {
        let _ = sqs.receive_message().queue_url(&queue).send().await.unwrap();
        let got = sqs.receive_message().queue_url(&dlq).send().await.unwrap();
        if let Some(m) = got.messages().first() {
            dead = Some(m.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dead.is_some(), "the poison message ends in the dead-letter queue");
}

/// Creates queue `name` with `attributes`; returns its URL.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(aws_sdk_sqs::types::QueueAttributeName, String)],
) -> String {
    let mut create = sqs.create_queue().queue_name(name);
    for (attribute, value) in attributes {
        create = create.attributes(attribute.clone(), value);
    }
    create.send().await.unwrap().queue_url().unwrap().to_owned()
}

async fn queue_with_max_message_size(sqs: &aws_sdk_sqs::Client, name: &str, max: usize) -> String {
    create_queue(
        sqs,
        name,
        &[(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            max.to_string(),
        )],
    )
    .await
}

/// Receives one message, deletes it, and returns its event id attribute and body.
async fn take_one(sqs: &aws_sdk_sqs::Client, queue: &str) -> Option<(String, serde_json::Value)> {
    let received = sqs
        .receive_message()
        .queue_url(queue)
        .message_attribute_names("All")
        .wait_time_seconds(1)
        .send()
        .await
        .ok()?;
    let message = received.messages().first()?.clone();
    sqs.delete_message()
        .queue_url(queue)
        .receipt_handle(message.receipt_handle()?)
        .send()
        .await
        .unwrap();
    let event_id = message.message_attributes()?["event_id"].string_value()?.to_owned();
    Some((event_id, serde_json::from_str(message.body()?).ok()?))
}

#[tokio::test]
async fn sqs_notifier_sends_batches_within_the_batch_size_limit() {
    let moto = moto::start().await;
    let config = udim_aws::sdk_config(Some(moto::REGION), Some(&moto.endpoint), Some(&credentials())).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = create_queue(&sqs, "udim-batched", &[]).await;
    let notifier = udim_aws::SqsNotifier::new(&config, &queue);
    conformance::notifier_batch(&notifier, async || take_one(&sqs, &queue).await).await;

    // Twelve 200 KiB events: ten of them would be 2 MiB, and SQS (and moto) refuse a batch
    // call over 1 MiB in total, so this passes only if batches are cut by size as well.
    let events: Vec<_> = (0..12)
        .map(|n| udim_ports::conformance::message(serde_json::json!({"n": n, "pad": "x".repeat(200 * 1024)})))
        .collect();
    let refs: Vec<_> = events.iter().collect();
    let mut results = Vec::new();
    udim_ports::queue::Notifier::publish_batch(&notifier, &refs, &mut results).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut arrived = 0;
    while take_one(&sqs, &queue).await.is_some() {
        arrived += 1;
    }
    assert_eq!(arrived, events.len());
}

#[tokio::test]
async fn an_event_over_the_queue_limit_holds_back_only_its_package_and_the_rest_is_sent() {
    let moto = moto::start().await;
    let config = udim_aws::sdk_config(Some(moto::REGION), Some(&moto.endpoint), Some(&credentials())).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = queue_with_max_message_size(&sqs, "udim-small", 1024).await;
    let notifier = udim_aws::SqsNotifier::new(&config, &queue);
    let small = udim_ports::conformance::message(serde_json::json!({"n": 1}));
    let huge = udim_ports::conformance::message(serde_json::json!({"pad": "x".repeat(2000)}));
    let after = udim_ports::conformance::message(serde_json::json!({"n": 3}));
    // The same package's next event must not overtake the one that failed.
    let mut same_package = udim_ports::conformance::message(serde_json::json!({"n": 4}));
    same_package.aggregate_id = huge.aggregate_id;
    let mut results = Vec::new();
    udim_ports::queue::Notifier::publish_batch(&notifier, &[&small, &huge, &after, &same_package], &mut results).await;
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(e) if !e.is_transient()),
        "the oversized event fails permanently: {:?}",
        results[1]
    );
    assert!(
        matches!(&results[3], Err(e) if e.is_transient()),
        "its package's next event is held back, to be retried: {:?}",
        results[3]
    );
    let mut arrived = Vec::new();
    while let Some((id, _)) = take_one(&sqs, &queue).await {
        arrived.push(id);
    }
    arrived.sort();
    let mut sent = vec![small.id.to_string(), after.id.to_string()];
    sent.sort();
    assert_eq!(
        arrived, sent,
        "the other packages' events arrive; the failed package's do not"
    );
}

/// KMS and SQS behind a server that takes every connection and never answers: each call
/// fails as unavailable, once `udim_aws::CALL_TIMEOUT` has passed, instead of holding its
/// caller (an upload waiting for its data key, the relay waiting on a publish) for ever.
#[tokio::test]
async fn kms_and_sqs_calls_to_a_server_that_never_answers_end_within_the_call_bound() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            connections.push(socket);
        }
    });
    let config = udim_aws::sdk_config(Some(moto::REGION), Some(&endpoint), Some(&credentials())).await;
    let bound = udim_aws::CALL_TIMEOUT + Duration::from_secs(5);
    let started = std::time::Instant::now();
    let notifier = udim_aws::SqsNotifier::new(&config, &format!("{endpoint}/000000000000/never"));
    let (kms, sqs) = tokio::join!(
        tokio::time::timeout(bound, udim_aws::AwsKms::new(&config, "alias/never")),
        tokio::time::timeout(bound, udim_ports::queue::Notifier::ping(&notifier)),
    );
    let kms = kms.expect("the KMS call ends within its bound");
    assert!(
        matches!(&kms, Err(e) if e.is_transient()),
        "a KMS that never answers is unavailable: {kms:?}"
    );
    let sqs = sqs.expect("the SQS call ends within its bound");
    assert!(
        matches!(&sqs, Err(e) if e.is_transient()),
        "an SQS that never answers is unavailable: {sqs:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5), "it did wait for an answer");
    held.abort();
}
