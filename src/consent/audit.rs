//! Runs the `udim-ledger` auditor over the stored log, page by page.

use std::sync::Arc;

use udim_ledger::audit::{AuditFailure, AuditReport, Auditor, StoredEntry, recompute_leaves};
use udim_ledger::note::VerifierKey;
use udim_ports::PortError;
use udim_ports::ledger::{AuditRow, ConsentLedger};

const PAGE: u32 = 10_000;

fn stored(row: AuditRow) -> StoredEntry {
    StoredEntry {
        index: row.index,
        leaf_hash: row.leaf_hash,
        tree_leaf: row.tree_leaf,
        body: row.body,
        redacted: row.redacted,
    }
}

/// Recomputes a page's leaves on every core.
fn recompute_parallel(entries: &[StoredEntry]) -> Vec<Option<Result<[u8; 32], String>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = entries
            .chunks(per_thread)
            .map(|part| scope.spawn(|| recompute_leaves(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("leaf recomputation panicked"))
            .collect()
    })
}

/// Why an audit stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the ledger is not sound: {0}")]
    Unsound(#[from] AuditFailure),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Audits the whole stored log: every leaf recomputed from its body, the tree rebuilt, every
/// stored checkpoint's signature and root checked, in order.
pub async fn audit(ledger: Arc<dyn ConsentLedger>, key: &VerifierKey) -> Result<AuditReport, AuditError> {
    let mut auditor = Auditor::new(key.clone());
    let mut checkpoints = ledger.checkpoints(1, PAGE).await?.into_iter().peekable();
    let mut next_checkpoint_from = 1;
    let mut rows = ledger.audit_rows(0, PAGE).await?;
    while let Some(last) = rows.last() {
        // Fetch the next page while this one is checked: the database and the hashing
        // overlap.
        let from = last.index + 1;
        let prefetch = {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.audit_rows(from, PAGE).await })
        };
        let entries: Vec<StoredEntry> = rows.into_iter().map(stored).collect();
        let leaves = tokio::task::block_in_place(|| recompute_parallel(&entries));
        for (entry, leaf) in entries.iter().zip(leaves) {
            auditor.entry_with(entry, leaf)?;
            loop {
                if checkpoints.peek().is_none() {
                    checkpoints = ledger
                        .checkpoints(next_checkpoint_from, PAGE)
                        .await?
                        .into_iter()
                        .peekable();
                }
                match checkpoints.peek() {
                    Some(cp) if cp.size == auditor.size() => {
                        auditor.checkpoint(&cp.note)?;
                        next_checkpoint_from = cp.size + 1;
                        checkpoints.next();
                    }
                    _ => break,
                }
            }
        }
        rows = prefetch.await.map_err(|e| PortError::generic("audit", e))??;
    }
    // Checkpoints past the last stored entry mean entries were removed from the end.
    if checkpoints.peek().is_none() {
        checkpoints = ledger
            .checkpoints(next_checkpoint_from, PAGE)
            .await?
            .into_iter()
            .peekable();
    }
    if let Some(cp) = checkpoints.next() {
        auditor.checkpoint(&cp.note)?;
    }
    Ok(auditor.finish()?)
}
