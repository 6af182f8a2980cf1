//! Assembling proofs from stored nodes: plan with `udim-ledger`, fetch in one read.

use udim_ledger::merkle::{self, NodeId};
use udim_ports::ledger::{ConsentLedger, Hash};
use udim_ports::{PortError, Result};

fn plan_error(e: merkle::Error) -> PortError {
    PortError::Conflict(format!("no such proof: {e}"))
}

async fn run_plans(ledger: &dyn ConsentLedger, plans: &[Vec<Vec<NodeId>>]) -> Result<Vec<Vec<Hash>>> {
    let mut wanted: Vec<NodeId> = plans.iter().flatten().flatten().copied().collect();
    wanted.sort();
    wanted.dedup();
    let ids: Vec<(u8, u64)> = wanted.iter().map(|n| (n.level, n.index)).collect();
    let found = ledger.nodes(&ids).await?;
    let lookup: std::collections::HashMap<NodeId, Hash> = wanted
        .iter()
        .zip(found)
        .filter_map(|(id, hash)| Some((*id, hash?)))
        .collect();
    plans
        .iter()
        .map(|plan| {
            merkle::assemble(plan, |id| lookup.get(&id).copied())
                .map_err(|e| PortError::Integrity(format!("stored tree is incomplete: {e}")))
        })
        .collect()
}

/// Inclusion proofs of `indices` in the tree of `size`, with one read of the node store.
pub async fn inclusion(ledger: &dyn ConsentLedger, indices: &[u64], size: u64) -> Result<Vec<Vec<Hash>>> {
    let plans = indices
        .iter()
        .map(|&i| merkle::inclusion_proof_plan(i, size).map_err(plan_error))
        .collect::<Result<Vec<_>>>()?;
    run_plans(ledger, &plans).await
}

/// The consistency proof from the tree of `old_size` to the tree of `new_size`.
pub async fn consistency(ledger: &dyn ConsentLedger, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
    let plan = merkle::consistency_proof_plan(old_size, new_size).map_err(plan_error)?;
    Ok(run_plans(ledger, &[plan]).await?.remove(0))
}
