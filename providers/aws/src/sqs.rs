//! Notifications on Amazon SQS: the versioned event JSON as the body, with the event type,
//! schema version, package id and event id as message attributes. FIFO queues get the
//! package as message group and the event id as deduplication id.
//!
//! Events go out with `SendMessageBatch`, up to ten per call, which the relay's batches fill
//! whenever events pile up (after an outage, under load). A single event is a batch of one,
//! so there is one code path; IAM authorizes both calls with `sqs:SendMessage`.

use std::collections::HashSet;
use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::types::builders::SendMessageBatchRequestEntryBuilder;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use tokio::sync::OnceCell;
use udim_ports::metadata::OutboxMessage;
use udim_ports::queue::Notifier;
use udim_ports::{PortError, Result};
use uuid::Uuid;

const PROVIDER: &str = "sqs";
/// Entries per `SendMessageBatch` call: SQS's fixed limit.
const MAX_BATCH_ENTRIES: usize = 10;
/// The total payload of one `SendMessageBatch` call: SQS's limit (1 MiB since 2025-08), which
/// is also the largest `MaximumMessageSize` a queue can have.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// [`Notifier`] on SQS.
#[derive(Debug, Clone)]
pub struct SqsNotifier {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
    /// The queue's `MaximumMessageSize`, read once: an operator can lower it below the
    /// service limit, and a message over it would fail the whole batch it is in.
    max_message: OnceCell<usize>,
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

/// Splits consecutive messages of the given sizes into `SendMessageBatch` calls of at most
/// `max_entries` entries and `max_bytes` in total, never two messages with the same key (the
/// package) in one call: SQS may accept the second of them and fail the first, which would
/// reorder that package's events. Every size must be at most `max_bytes`.
pub(crate) fn plan_batches<K: PartialEq>(
    sizes: &[usize],
    keys: &[K],
    max_entries: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        let repeats = keys[start..i].contains(&keys[i]);
        if i > start && (i - start == max_entries || bytes + size > max_bytes || repeats) {
            batches.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// One result per entry of a batch call whose entries were given the ids `"0"`, `"1"`, ...
/// An entry SQS blames on the sender would fail the same way again; any other failure, or
/// an entry SQS did not report on, is retried later.
fn entry_results(entries: usize, output: &SendMessageBatchOutput) -> Vec<Result<()>> {
    let mut results: Vec<Option<Result<()>>> = (0..entries).map(|_| None).collect();
    let slot = |id: &str| id.parse::<usize>().ok().filter(|&i| i < entries);
    for ok in output.successful() {
        if let Some(i) = slot(ok.id()) {
            results[i] = Some(Ok(()));
        }
    }
    for failed in output.failed() {
        if let Some(i) = slot(failed.id()) {
            let why = format!("{}: {}", failed.code(), failed.message().unwrap_or("no message"));
            results[i] = Some(Err(if failed.sender_fault() {
                PortError::generic(PROVIDER, why)
            } else {
                PortError::unavailable(PROVIDER, why)
            }));
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(PortError::unavailable(
                    PROVIDER,
                    "SendMessageBatch did not report on the entry",
                ))
            })
        })
        .collect()
}

impl SqsNotifier {
    pub fn new(config: &aws_config::SdkConfig, queue_url: &str) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.to_owned(),
            fifo: queue_url.ends_with(".fifo"),
            max_message: OnceCell::new(),
        }
    }

    async fn max_message(&self) -> Result<usize> {
        self.max_message
            .get_or_try_init(|| async {
                let attributes = self
                    .client
                    .get_queue_attributes()
                    .queue_url(&self.queue_url)
                    .attribute_names(QueueAttributeName::MaximumMessageSize)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                let size = attributes
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(MAX_BATCH_BYTES);
                Ok(size.min(MAX_BATCH_BYTES))
            })
            .await
            .copied()
    }

    /// The batch entry for `message`, still without its id, and its size as SQS counts it
    /// (the body plus each attribute's name, type and value).
    fn entry(&self, message: &OutboxMessage) -> Result<(SendMessageBatchRequestEntryBuilder, usize)> {
        let body = serde_json::to_string(&message.payload).map_err(|e| PortError::generic(PROVIDER, e))?;
        let mut size = body.len();
        let mut entry = SendMessageBatchRequestEntry::builder().message_body(body);
        for (name, value) in message.attributes() {
            size += name.len() + "String".len() + value.len();
            entry = entry.message_attributes(name, attribute(value)?);
        }
        if self.fifo {
            entry = entry
                .message_group_id(message.aggregate_id.to_string())
                .message_deduplication_id(message.id.to_string());
        }
        Ok((entry, size))
    }

    /// Sends `run` in as few batch calls as the limits allow, appending one result per
    /// message to `results`, and empties it. An event of a package whose earlier event failed
    /// in this call (listed in `failed`) is held back, so a package's events never overtake
    /// each other. Returns false after a call failed as a whole: that call's messages failed,
    /// and the rest of `run` was not attempted.
    async fn send_run(
        &self,
        run: &mut Vec<Pending>,
        failed: &mut HashSet<Uuid>,
        results: &mut Vec<Result<()>>,
    ) -> bool {
        let sizes: Vec<usize> = run.iter().map(|p| p.size).collect();
        let keys: Vec<Uuid> = run.iter().map(|p| p.package).collect();
        let mut pending = std::mem::take(run).into_iter();
        for batch in plan_batches(&sizes, &keys, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES) {
            let mut outcome: Vec<Option<Result<()>>> = Vec::with_capacity(batch.len());
            let mut sendable = Vec::with_capacity(batch.len());
            let mut packages = Vec::with_capacity(batch.len());
            for p in pending.by_ref().take(batch.len()) {
                if failed.contains(&p.package) {
                    outcome.push(Some(Err(PortError::unavailable(
                        PROVIDER,
                        format!("held back: an earlier event of package {} failed", p.package),
                    ))));
                    continue;
                }
                let id = sendable.len();
                match p.entry.id(id.to_string()).build() {
                    Ok(entry) => {
                        sendable.push(entry);
                        packages.push(p.package);
                        outcome.push(None);
                    }
                    Err(e) => {
                        failed.insert(p.package);
                        outcome.push(Some(Err(PortError::generic(PROVIDER, e))));
                    }
                }
            }
            let sent = if sendable.is_empty() {
                Vec::new()
            } else {
                match self
                    .client
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(sendable))
                    .send()
                    .await
                    .map_err(sdk_error)
                {
                    Ok(output) => entry_results(packages.len(), &output),
                    Err(e) => {
                        let why = e.to_string();
                        let transient = e.is_transient();
                        let mut errors = Some(e);
                        for slot in outcome.iter_mut().filter(|slot| slot.is_none()) {
                            *slot = Some(Err(errors.take().unwrap_or_else(|| {
                                if transient {
                                    PortError::unavailable(PROVIDER, why.clone())
                                } else {
                                    PortError::generic(PROVIDER, why.clone())
                                }
                            })));
                        }
                        results.extend(outcome.into_iter().flatten());
                        return false;
                    }
                }
            };
            let mut sent = sent.into_iter().zip(packages);
            for slot in &mut outcome {
                if slot.is_none() {
                    let (result, package) = sent.next().expect("one result per sent entry");
                    if result.is_err() {
                        failed.insert(package);
                    }
                    *slot = Some(result);
                }
            }
            results.extend(outcome.into_iter().flatten());
        }
        true
    }
}

/// A message ready for a batch call, still without its id.
struct Pending {
    entry: SendMessageBatchRequestEntryBuilder,
    size: usize,
    package: Uuid,
}

#[async_trait]
impl Notifier for SqsNotifier {
    async fn publish(&self, message: &OutboxMessage) -> Result<()> {
        let mut results = Vec::with_capacity(1);
        self.publish_batch(&[message], &mut results).await;
        results
            .pop()
            .unwrap_or_else(|| Err(PortError::unavailable(PROVIDER, "the event was not sent")))
    }

    async fn publish_batch(&self, messages: &[&OutboxMessage], results: &mut Vec<Result<()>>) {
        let max_message = match self.max_message().await {
            Ok(max) => max,
            Err(e) => {
                results.push(Err(e));
                return;
            }
        };
        // Runs of sendable messages, each cut into batch calls; a message that can never be
        // sent fails alone and holds up only its own package's later events.
        let mut run = Vec::new();
        let mut failed = HashSet::new();
        for message in messages {
            let built = self.entry(message).and_then(|(entry, size)| {
                if size > max_message {
                    Err(PortError::generic(
                        PROVIDER,
                        format!(
                            "event {} is {size} bytes, over the queue's {max_message}-byte limit",
                            message.id
                        ),
                    ))
                } else {
                    Ok((entry, size))
                }
            });
            match built {
                Ok((entry, size)) => run.push(Pending {
                    entry,
                    size,
                    package: message.aggregate_id,
                }),
                Err(e) => {
                    if !self.send_run(&mut run, &mut failed, results).await {
                        return;
                    }
                    failed.insert(message.aggregate_id);
                    results.push(Err(e));
                }
            }
        }
        self.send_run(&mut run, &mut failed, results).await;
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};

    use super::*;

    #[test]
    fn batches_hold_at_most_ten_entries_and_the_byte_limit() {
        let distinct: Vec<usize> = (0..100).collect();
        let plan = |sizes: &[usize]| plan_batches(sizes, &distinct[..sizes.len()], 10, 100);
        assert_eq!(plan(&[]), Vec::<Range<usize>>::new());
        assert_eq!(plan(&[1; 23]), vec![0..10, 10..20, 20..23]);
        assert_eq!(plan(&[40, 40, 40, 100, 1]), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(plan(&[50, 50, 1]), vec![0..2, 2..3]);
        let sizes = [7, 90, 3, 3, 99, 100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 60, 41];
        let batches = plan(&sizes);
        let covered: Vec<usize> = batches.iter().flat_map(Clone::clone).collect();
        assert_eq!(
            covered,
            (0..sizes.len()).collect::<Vec<_>>(),
            "every message once, in order"
        );
        for batch in &batches {
            assert!(
                batch.len() <= 10 && sizes[batch.clone()].iter().sum::<usize>() <= 100,
                "{batch:?}"
            );
        }
    }

    #[test]
    fn two_events_of_one_package_never_share_a_batch() {
        assert_eq!(
            plan_batches(&[1; 6], &['a', 'b', 'a', 'c', 'b', 'c'], 10, 100),
            vec![0..2, 2..5, 5..6]
        );
    }

    #[test]
    fn each_entry_gets_its_own_result() {
        let output = SendMessageBatchOutput::builder()
            .successful(
                SendMessageBatchResultEntry::builder()
                    .id("2")
                    .message_id("m2")
                    .md5_of_message_body("x")
                    .build()
                    .unwrap(),
            )
            .successful(
                SendMessageBatchResultEntry::builder()
                    .id("0")
                    .message_id("m0")
                    .md5_of_message_body("x")
                    .build()
                    .unwrap(),
            )
            .failed(
                BatchResultErrorEntry::builder()
                    .id("1")
                    .sender_fault(true)
                    .code("InvalidMessageContents")
                    .build()
                    .unwrap(),
            )
            .failed(
                BatchResultErrorEntry::builder()
                    .id("3")
                    .sender_fault(false)
                    .code("InternalError")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let results = entry_results(5, &output);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(
            matches!(&results[1], Err(e) if !e.is_transient()),
            "a sender fault is permanent"
        );
        assert!(
            matches!(&results[3], Err(e) if e.is_transient()),
            "a server fault is retried"
        );
        assert!(
            matches!(&results[4], Err(e) if e.is_transient()),
            "an unreported entry is retried"
        );
    }
}
