//! Notifications on Amazon SQS: the versioned event JSON as the body, with the event type,
//! schema version, package id and event id as message attributes. FIFO queues get the
//! package as message group and the event id as deduplication id.

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageAttributeValue;
use udim_ports::metadata::OutboxMessage;
use udim_ports::queue::Notifier;
use udim_ports::{PortError, Result};

const PROVIDER: &str = "sqs";
/// SQS refuses bodies over 256 KiB; UDIM's events are a few hundred bytes.
const MAX_BODY: usize = 256 * 1024;

/// [`Notifier`] on SQS.
#[derive(Debug, Clone)]
pub struct SqsNotifier {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
}

fn sdk_error<E>(e: aws_sdk_sqs::error::SdkError<E>) -> PortError
where
    E: std::error::Error + Send + Sync + 'static,
{
    // Every SQS failure delays the event; the relay retries with back-off, so treat them all
    // as transient except malformed requests, which would fail again.
    match &e {
        aws_sdk_sqs::error::SdkError::ConstructionFailure(_) => PortError::generic(PROVIDER, e),
        _ => PortError::unavailable(PROVIDER, e),
    }
}

fn attribute(value: impl Into<String>) -> Result<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| PortError::generic(PROVIDER, e))
}

impl SqsNotifier {
    pub fn new(config: &aws_config::SdkConfig, queue_url: &str) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.to_owned(),
            fifo: queue_url.ends_with(".fifo"),
        }
    }
}

#[async_trait]
impl Notifier for SqsNotifier {
    async fn publish(&self, message: &OutboxMessage) -> Result<()> {
        let body = serde_json::to_string(&message.payload).map_err(|e| PortError::generic(PROVIDER, e))?;
        if body.len() > MAX_BODY {
            return Err(PortError::generic(
                PROVIDER,
                format!("event {} is over the SQS size limit", message.id),
            ));
        }
        let schema_version = message
            .payload
            .get("schema_version")
            .map_or_else(|| "1".into(), |v| v.to_string());
        let mut send = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_attributes("event_id", attribute(message.id.to_string())?)
            .message_attributes("event_type", attribute(&message.event_type)?)
            .message_attributes("schema_version", attribute(schema_version)?)
            .message_attributes("package_id", attribute(message.aggregate_id.to_string())?);
        if self.fifo {
            send = send
                .message_group_id(message.aggregate_id.to_string())
                .message_deduplication_id(message.id.to_string());
        }
        send.send().await.map_err(sdk_error)?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}
