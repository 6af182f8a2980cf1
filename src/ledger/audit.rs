//! Runs the `udim-ledger` auditor over the stored log, page by page.

use udim_ledger::audit::{AuditFailure, AuditReport, Auditor, StoredEntry};
use udim_ledger::note::VerifierKey;
use udim_ports::PortError;
use udim_ports::ledger::ConsentLedger;

const PAGE: u32 = 10_000;

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
pub async fn audit(ledger: &dyn ConsentLedger, key: &VerifierKey) -> Result<AuditReport, AuditError> {
    let mut auditor = Auditor::new(key.clone());
    let mut checkpoints = ledger.checkpoints(1, PAGE).await?.into_iter().peekable();
    let mut next_checkpoint_from = 1;
    let mut from = 0;
    loop {
        let rows = ledger.audit_rows(from, PAGE).await?;
        let Some(last) = rows.last() else { break };
        from = last.index + 1;
        for row in rows {
            auditor.entry(&StoredEntry {
                index: row.index,
                leaf_hash: row.leaf_hash,
                tree_leaf: row.tree_leaf,
                body: row.body,
                redacted: row.redacted,
            })?;
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
