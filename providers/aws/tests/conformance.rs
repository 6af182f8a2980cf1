//! The AWS providers against moto in server mode (a real local stand-in for S3, KMS and SQS
//! that the test starts): the same conformance suites the local providers pass.
//!
//! Needs moto: `scripts/test` installs it into `.venv` (override with `UDIM_TEST_MOTO`).

#[path = "../../../tests/support/moto.rs"]
mod moto;

use std::time::Duration;

use udim_ports::conformance;

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
    let config = udim_aws::sdk_config(Some("us-east-1"), Some(&moto.endpoint)).await;
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
    let config = udim_aws::sdk_config(Some("us-east-1"), Some(&moto.endpoint)).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dlq = sqs
        .create_queue()
        .queue_name("udim-dead")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
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
    let queue = sqs
        .create_queue()
        .queue_name("udim-events")
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "0")
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
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
