//! The batching sequencer: appends from every request of this process queue here and are
//! written as one transaction and one signed checkpoint per batch. Across processes the
//! database's head-row lock orders the batches.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use udim_ports::ledger::{ConsentLedger, Hash, LedgerEntry, NewLedgerEntry, StoredCheckpoint};
use udim_ports::{PortError, Result};

use super::signer::LedgerSigner;

/// One appended entry with its inclusion proof against the batch's checkpoint.
#[derive(Debug, Clone)]
pub struct Appended {
    pub entry: LedgerEntry,
    pub proof: Vec<Hash>,
    pub checkpoint: StoredCheckpoint,
}

struct Request {
    entry: NewLedgerEntry,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Handle to the sequencer task; cheap to clone. The task ends when every handle is gone.
#[derive(Debug, Clone)]
pub struct Sequencer {
    requests: mpsc::Sender<Request>,
}

/// Recreates an error for each waiter of a failed batch (port errors are not `Clone`).
fn share(error: &PortError) -> PortError {
    match error {
        PortError::Unavailable { provider, .. } => PortError::unavailable(provider, error.to_string()),
        PortError::Integrity(why) => PortError::Integrity(why.clone()),
        PortError::Conflict(why) => PortError::Conflict(why.clone()),
        other => PortError::generic("consent ledger", other.to_string()),
    }
}

impl Sequencer {
    /// Starts the task. `max_batch` bounds one transaction's size, and so does the ledger's
    /// own limit.
    pub fn start(ledger: Arc<dyn ConsentLedger>, signer: Arc<LedgerSigner>, max_batch: usize) -> Self {
        let max_batch = max_batch.min(ledger.max_batch()).max(1);
        let (requests, mut queue) = mpsc::channel::<Request>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while let Some(first) = queue.recv().await {
                batch.push(first);
                while batch.len() < max_batch {
                    match queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let entries: Vec<NewLedgerEntry> = batch.iter().map(|r| r.entry.clone()).collect();
                let started = std::time::Instant::now();
                let result = ledger.append_batch(&entries, signer.as_ref()).await;
                metrics::histogram!(crate::ops::metrics::LEDGER_APPEND_DURATION)
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(appended) => {
                        metrics::counter!(crate::ops::metrics::LEDGER_ENTRIES).increment(appended.entries.len() as u64);
                        metrics::histogram!(crate::ops::metrics::LEDGER_BATCH).record(appended.entries.len() as f64);
                        metrics::gauge!(crate::ops::metrics::LEDGER_SIZE).set(appended.checkpoint.size as f64);
                        let checkpoint = appended.checkpoint;
                        let mut appended_entries = appended.entries.into_iter().zip(appended.proofs);
                        for (position, request) in batch.drain(..).enumerate() {
                            let reply = if appended.refused.contains(&position) {
                                Err(PortError::Conflict("the consent changed meanwhile".into()))
                            } else {
                                match appended_entries.next() {
                                    Some((entry, proof)) => Ok(Appended {
                                        entry,
                                        proof,
                                        checkpoint: checkpoint.clone(),
                                    }),
                                    None => Err(PortError::Integrity("the ledger answered for fewer entries".into())),
                                }
                            };
                            let _ = request.reply.send(reply);
                        }
                    }
                    Err(error) => {
                        metrics::counter!(crate::ops::metrics::LEDGER_FAILURES).increment(1);
                        tracing::warn!(error = %error, entries = batch.len(), "appending a ledger batch failed");
                        for request in batch.drain(..) {
                            let _ = request.reply.send(Err(share(&error)));
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    /// Appends one entry; resolves when its batch is committed and signed. `Conflict` when the
    /// entry's `expects_latest` no longer held.
    pub async fn append(&self, entry: NewLedgerEntry) -> Result<Appended> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { entry, reply })
            .await
            .map_err(|_| PortError::unavailable("consent ledger", "the sequencer has stopped"))?;
        answer
            .await
            .map_err(|_| PortError::unavailable("consent ledger", "the sequencer has stopped"))?
    }
}
