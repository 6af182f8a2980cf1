//! The outbox relay: publishes outbox rows to the queue, marks them sent, and retries
//! failures with exponential back-off. A queue outage delays events; it loses none.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use udim_ports::metadata::{Outbox, OutboxEntry, OutboxMessage};
use udim_ports::queue::Notifier;

use crate::config::OutboxSettings;

/// Lease on claimed rows: long enough for a slow publish, short enough that a crashed
/// relay's rows are retried soon.
const LEASE: Duration = Duration::from_secs(60);
/// The longest pause (before jitter) between two tries of a broker that is down, so that
/// events flow again within seconds of its return however long it was away.
const BROKER_PROBE_MAX: Duration = Duration::from_secs(5);
/// A ping after a failed publish gets this long.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
// A batch's publish, and the ping after it, must end well inside its lease: one that outlived
// it could land after another relay had re-claimed and sent the same events and the package's
// later ones, breaking per-package order.
const _: () = assert!(
    crate::config::MAX_BATCH_TIMEOUT_SECS + PING_TIMEOUT.as_secs() + 10 <= LEASE.as_secs(),
    "outbox.batch_timeout_secs may outlive the relay's lease"
);

#[derive(Debug, Clone)]
pub struct Relay {
    pub outbox: Arc<dyn Outbox>,
    pub notifier: Arc<dyn Notifier>,
    pub settings: OutboxSettings,
    /// Woken after a commit that wrote an event, so delivery does not wait for a poll.
    pub wake: Arc<Notify>,
}

/// Delay before attempt `attempts + 1`: `initial · 2^(attempts-1)`, capped, with up to 20 %
/// random jitter so that many failed rows do not retry in lockstep.
pub fn backoff(settings: &OutboxSettings, attempts: u32) -> Duration {
    jittered(doubling(settings.initial_backoff_ms, attempts, settings.max_backoff_ms))
}

/// The relay's pause after `failures` passes in a row that found the broker down:
/// doubling from `initial_backoff_ms` up to [`BROKER_PROBE_MAX`] (or `max_backoff_ms`, if
/// lower), with the same jitter.
pub fn broker_pause(settings: &OutboxSettings, failures: u32) -> Duration {
    let cap = settings.max_backoff_ms.min(BROKER_PROBE_MAX.as_millis() as u64);
    jittered(doubling(settings.initial_backoff_ms, failures, cap))
}

fn doubling(initial_ms: u64, attempts: u32, cap_ms: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(30);
    initial_ms.saturating_mul(1u64 << exp).min(cap_ms)
}

fn jittered(base: u64) -> Duration {
    let mut r = [0u8; 2];
    let jitter = match aws_lc_rs::rand::fill(&mut r) {
        Ok(()) => base * u64::from(u16::from_be_bytes(r) % 200) / 1000,
        Err(_) => 0,
    };
    Duration::from_millis(base + jitter)
}

impl Relay {
    /// Publishes everything due once. Returns how many were sent, and whether the broker
    /// was down (then the caller pauses before the next pass).
    ///
    /// A broker that cannot be reached is no fault of the event that found it down: that
    /// event, and the rest of the batch, stay due, and the relay's own pause spaces the tries
    /// out. Charging the outage to each event instead would leave the events that happened to
    /// be tried during it waiting up to `max_backoff_ms` after the broker was back. An error
    /// of the event's own (unroutable, too large, or a transient error while the broker still
    /// answers a ping: a nack, a channel closed over that message) backs that event off, and
    /// the others go on.
    pub async fn drain_once(&self) -> (usize, bool) {
        let batch = match self.outbox.claim_due(Utc::now(), LEASE, self.settings.batch_size).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "claiming outbox rows failed");
                return (0, true);
            }
        };
        let messages: Vec<&OutboxMessage> = batch.iter().map(|entry| &entry.message).collect();
        let mut results = Vec::with_capacity(messages.len());
        let timeout = Duration::from_secs(self.settings.batch_timeout_secs);
        // On time-out the events confirmed so far are kept as sent; only the rest is retried,
        // so a slow broker still makes progress instead of being sent the same batch again.
        if tokio::time::timeout(timeout, self.notifier.publish_batch(&messages, &mut results))
            .await
            .is_err()
        {
            tracing::warn!(
                events = messages.len(),
                confirmed = results.len(),
                "publishing a batch outlasted outbox.batch_timeout_secs; the rest is retried"
            );
        }
        let mut results = results.into_iter();
        let mut sent = 0;
        // Whether the broker answers a ping, asked once per pass and only after a transient
        // error.
        let mut broker_answers = None;
        let mut broker_down = false;
        for entry in &batch {
            let message = &entry.message;
            let Some(result) = results.next() else {
                // The batch stopped part-way; give the rest back untried. The relay pauses
                // unless the broker answered a ping: then the stop was one event's own fault.
                broker_down |= broker_answers != Some(true);
                self.give_back(entry, "not attempted: the broker failed earlier in its batch")
                    .await;
                continue;
            };
            match result {
                Ok(()) => {
                    sent += 1;
                    metrics::counter!(crate::ops::metrics::EVENTS_PUBLISHED).increment(1);
                    if let Err(e) = self.outbox.mark_sent(message.id, Utc::now()).await {
                        // The lease runs out and the event is sent again: at least once.
                        tracing::warn!(event_id = %message.id, error = %e, "marking an event sent failed");
                    }
                }
                Err(e) => {
                    metrics::counter!(crate::ops::metrics::EVENT_FAILURES).increment(1);
                    let brokers_fault = e.is_transient()
                        && !match broker_answers {
                            Some(answers) => answers,
                            None => *broker_answers.insert(self.broker_answers_ping().await),
                        };
                    broker_down |= brokers_fault;
                    if brokers_fault {
                        tracing::warn!(event_id = %message.id, error = %e, "publishing an event failed: the broker is down");
                        self.give_back(entry, &e.to_string()).await;
                        continue;
                    }
                    let delay = backoff(&self.settings, entry.attempts);
                    tracing::warn!(event_id = %message.id, attempts = entry.attempts, retry_in = ?delay, error = %e, "publishing an event failed");
                    let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    if let Err(e) = self.outbox.mark_failed(entry, &e.to_string(), retry_at).await {
                        tracing::warn!(event_id = %message.id, error = %e, "recording a failed publish failed");
                    }
                }
            }
        }
        (sent, broker_down)
    }

    /// Whether the broker answers a ping within [`PING_TIMEOUT`]; one that does not is down.
    async fn broker_answers_ping(&self) -> bool {
        matches!(
            tokio::time::timeout(PING_TIMEOUT, self.notifier.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Gives an event back untried, not counting the claim: only its own failures grow its
    /// back-off, so an event held up by an outage starts from `initial_backoff_ms` if it then
    /// fails for a reason of its own. If this fails, the lease runs out and it is retried.
    async fn give_back(&self, entry: &OutboxEntry, reason: &str) {
        if let Err(e) = self.outbox.give_back(entry, reason).await {
            tracing::warn!(event_id = %entry.message.id, error = %e, "giving an event back failed");
        }
    }

    /// At shutdown: publishes what the last requests committed, so that a replica leaving
    /// does not leave its events to wait for another's poll. Stops at the first sign of a
    /// broker outage: what is left stays in the outbox for whoever runs next.
    async fn flush(&self) {
        loop {
            let (sent, broker_down) = self.drain_once().await;
            if broker_down || (sent as u32) < self.settings.batch_size {
                return;
            }
        }
    }

    /// Runs until `stop` is cancelled, then flushes.
    pub async fn run(self, stop: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut failures = 0;
        loop {
            let (sent, broker_down) = self.drain_once().await;
            if !broker_down && sent as u32 == self.settings.batch_size {
                failures = 0;
                continue;
            }
            let pause = if broker_down {
                failures += 1;
                broker_pause(&self.settings, failures)
            } else {
                failures = 0;
                poll
            };
            tokio::select! {
                () = stop.cancelled() => {
                    // A broker found down a moment ago is not tried again on the way out.
                    if !broker_down {
                        self.flush().await;
                    }
                    return;
                }
                () = self.wake.notified(), if !broker_down => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_with_bounded_jitter() {
        let s = OutboxSettings {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..OutboxSettings::default()
        };
        for (attempts, base) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (60, 1000)] {
            let d = backoff(&s, attempts).as_millis() as u64;
            assert!(d >= base && d < base + base / 5 + 1, "attempt {attempts}: {d}");
        }
    }

    #[test]
    fn the_pause_for_a_down_broker_doubles_up_to_five_seconds_and_jitter_however_long_it_is_away() {
        let s = OutboxSettings {
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            ..OutboxSettings::default()
        };
        for (failures, base) in [(1, 500), (2, 1000), (4, 4000), (5, 5000), (1000, 5000)] {
            let d = broker_pause(&s, failures).as_millis() as u64;
            assert!(d >= base && d < base + base / 5 + 1, "failure {failures}: {d}");
        }
        let low = OutboxSettings {
            max_backoff_ms: 2000,
            ..s
        };
        assert!(
            broker_pause(&low, 1000).as_millis() < 2401,
            "a lower max_backoff_ms wins"
        );
    }
}
