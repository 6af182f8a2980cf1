//! The outbox relay: publishes outbox rows to the queue, marks them sent, and retries
//! failures with exponential back-off. A queue outage delays events; it loses none.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use udim_ports::metadata::{Outbox, OutboxMessage};
use udim_ports::queue::Notifier;

use crate::config::OutboxSettings;

/// Lease on claimed rows: long enough for a slow publish, short enough that a crashed
/// relay's rows are retried soon.
const LEASE: Duration = Duration::from_secs(60);
/// A batch's publish must end well inside its lease: one that outlived it could land after
/// another relay had re-claimed and sent the same events and the package's later ones,
/// breaking per-package order. Past this, the batch is given back to be retried.
const PUBLISH_BUDGET: Duration = Duration::from_secs(30);

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
    let exp = attempts.saturating_sub(1).min(30);
    let base = settings
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(settings.max_backoff_ms);
    let mut r = [0u8; 2];
    let jitter = match aws_lc_rs::rand::fill(&mut r) {
        Ok(()) => base * u64::from(u16::from_be_bytes(r) % 200) / 1000,
        Err(_) => 0,
    };
    Duration::from_millis(base + jitter)
}

impl Relay {
    /// Publishes everything due once. Returns how many were sent, and whether the broker
    /// failed (then the caller waits before the next pass).
    pub async fn drain_once(&self) -> (usize, bool) {
        let batch = match self.outbox.claim_due(Utc::now(), LEASE, self.settings.batch_size).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "claiming outbox rows failed");
                return (0, true);
            }
        };
        let messages: Vec<&OutboxMessage> = batch.iter().map(|entry| &entry.message).collect();
        let mut results = match tokio::time::timeout(PUBLISH_BUDGET, self.notifier.publish_batch(&messages)).await {
            Ok(results) => results.into_iter(),
            Err(_) => {
                tracing::warn!(
                    events = messages.len(),
                    "publishing a batch outlasted its budget; it is retried"
                );
                Vec::new().into_iter()
            }
        };
        let mut sent = 0;
        let mut failed = false;
        for entry in &batch {
            let message = &entry.message;
            let Some(result) = results.next() else {
                // The broker failed part-way; give the rest of the batch back untried.
                failed = true;
                let retry_at = Utc::now() + chrono::Duration::from_std(backoff(&self.settings, 1)).unwrap_or_default();
                let _ = self
                    .outbox
                    .mark_failed(message.id, "not attempted: broker failing", retry_at)
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
                    failed = true;
                    metrics::counter!(crate::ops::metrics::EVENT_FAILURES).increment(1);
                    let delay = backoff(&self.settings, entry.attempts);
                    tracing::warn!(event_id = %message.id, attempts = entry.attempts, retry_in = ?delay, error = %e, "publishing an event failed");
                    let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    if let Err(e) = self.outbox.mark_failed(message.id, &e.to_string(), retry_at).await {
                        tracing::warn!(event_id = %message.id, error = %e, "recording a failed publish failed");
                    }
                }
            }
        }
        (sent, failed)
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            let (sent, failed) = self.drain_once().await;
            if sent as u32 == self.settings.batch_size && !failed {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified(), if !failed => {}
                () = tokio::time::sleep(poll) => {}
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
}
