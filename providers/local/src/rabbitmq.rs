//! Notifications on RabbitMQ (lapin): publisher confirms, persistent messages, a durable
//! queue and a dead-letter exchange, all declared by the service itself.
//!
//! Topology (names configurable):
//! ```text
//! exchange udim.events (topic, durable) --package.#--> queue udim.package-events (durable,
//!     x-dead-letter-exchange = udim.events.dead-letter)
//! exchange udim.events.dead-letter (fanout, durable) --> queue udim.package-events.dead-letter
//! ```
//! A consumer that rejects a message without requeue sends it to the dead-letter queue.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use udim_ports::metadata::OutboxMessage;
use udim_ports::queue::Notifier;
use udim_ports::{PortError, Result};

const PROVIDER: &str = "rabbitmq";
/// Bound on connecting and on waiting for a confirm, so a hung broker delays events
/// instead of hanging the relay.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to publish.
#[derive(Clone)]
pub struct RabbitMqConfig {
    /// `amqp://user:password@host:port/vhost`; never logged.
    pub url: String,
    pub exchange: String,
    pub queue: String,
    pub binding_key: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl std::fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &"<redacted>")
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .finish()
    }
}

struct Link {
    // Kept alive: dropping the connection closes it.
    _connection: Connection,
    channel: Channel,
}

/// [`Notifier`] on RabbitMQ. Connects lazily and reconnects after any failure.
pub struct RabbitMqNotifier {
    config: RabbitMqConfig,
    link: Mutex<Option<Link>>,
}

impl std::fmt::Debug for RabbitMqNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqNotifier")
            .field("config", &self.config)
            .finish()
    }
}

fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| PortError::generic(PROVIDER, format!("name too long: {s}")))
}

fn broker_err(e: lapin::Error) -> PortError {
    PortError::unavailable(PROVIDER, e)
}

async fn within<T>(what: &str, fut: impl Future<Output = lapin::Result<T>>) -> Result<T> {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(result) => result.map_err(broker_err),
        Err(_) => Err(PortError::unavailable(PROVIDER, format!("{what} timed out"))),
    }
}

impl RabbitMqNotifier {
    pub fn new(config: RabbitMqConfig) -> Self {
        Self {
            config,
            link: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<Link> {
        let c = &self.config;
        let connection = within(
            "connecting",
            Connection::connect(&c.url, ConnectionProperties::default()),
        )
        .await?;
        let channel = within("opening a channel", connection.create_channel()).await?;
        within(
            "enabling confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within(
            "declaring the exchange",
            channel.exchange_declare(short(&c.exchange)?, ExchangeKind::Topic, durable, FieldTable::default()),
        )
        .await?;
        within(
            "declaring the dead-letter exchange",
            channel.exchange_declare(
                short(&c.dead_letter_exchange)?,
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within(
            "declaring the dead-letter queue",
            channel.queue_declare(short(&c.dead_letter_queue)?, durable_queue, FieldTable::default()),
        )
        .await?;
        within(
            "binding the dead-letter queue",
            channel.queue_bind(
                short(&c.dead_letter_queue)?,
                short(&c.dead_letter_exchange)?,
                short("")?,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert(
            short("x-dead-letter-exchange")?,
            AMQPValue::LongString(c.dead_letter_exchange.as_str().into()),
        );
        within(
            "declaring the queue",
            channel.queue_declare(short(&c.queue)?, durable_queue, args),
        )
        .await?;
        within(
            "binding the queue",
            channel.queue_bind(
                short(&c.queue)?,
                short(&c.exchange)?,
                short(&c.binding_key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        tracing::info!(exchange = %c.exchange, queue = %c.queue, "connected to RabbitMQ");
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    async fn publish_on(&self, channel: &Channel, message: &OutboxMessage) -> Result<()> {
        let body = serde_json::to_vec(&message.payload).map_err(|e| PortError::generic(PROVIDER, e))?;
        let mut headers = FieldTable::default();
        for (name, value) in message.attributes() {
            headers.insert(short(name)?, AMQPValue::LongString(value.into()));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(short("application/json")?)
            .with_message_id(short(&message.id.to_string())?)
            .with_type(short(&message.event_type)?)
            .with_timestamp(message.created_at.timestamp().max(0) as u64)
            .with_headers(headers);
        let confirm = within(
            "publishing",
            channel.basic_publish(
                short(&self.config.exchange)?,
                short(&message.event_type)?,
                // Mandatory: an event no queue would receive comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties,
            ),
        )
        .await?;
        match within("waiting for the confirm", confirm).await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PortError::generic(
                PROVIDER,
                format!(
                    "event {} was unroutable (no queue bound for `{}`)",
                    message.id, message.event_type
                ),
            )),
            Confirmation::Nack(_) => Err(PortError::unavailable(
                PROVIDER,
                "the broker refused the message (nack)",
            )),
            Confirmation::NotRequested => Err(PortError::generic(PROVIDER, "publisher confirms are not enabled")),
        }
    }

    async fn with_channel<T>(&self, op: impl AsyncFnOnce(&Channel) -> Result<T>) -> Result<T> {
        let mut link = self.link.lock().await;
        if link.as_ref().is_none_or(|l| !l.channel.status().connected()) {
            *link = Some(self.connect().await?);
        }
        let channel = &link.as_ref().expect("connected just above").channel;
        let result = op(channel).await;
        if result.is_err() {
            // Start from a fresh connection next time rather than trust a half-broken one.
            *link = None;
        }
        result
    }
}

#[async_trait]
impl Notifier for RabbitMqNotifier {
    async fn publish(&self, message: &OutboxMessage) -> Result<()> {
        self.with_channel(async |channel| self.publish_on(channel, message).await)
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.with_channel(async |_| Ok(())).await
    }
}
