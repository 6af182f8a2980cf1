//! Offline verification commands: no database, no network, no settings — files and a key.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use udim_ledger::note::VerifierKey;
use udim_ledger::proof::{ConsistencyProof, RecordProof};

fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A verifier key given inline or as a file holding it.
fn key(arg: &str) -> anyhow::Result<VerifierKey> {
    let text = if Path::new(arg).is_file() {
        read(Path::new(arg))?
    } else {
        arg.to_owned()
    };
    VerifierKey::parse(&text).map_err(|e| anyhow::anyhow!("verifier key: {e}"))
}

pub fn verify_proof(key_arg: &str, path: &Path) -> anyhow::Result<()> {
    let proof: RecordProof = serde_json::from_str(&read(path)?).context("the proof is not record-proof JSON")?;
    let checkpoint = proof
        .verify(&key(key_arg)?, None)
        .map_err(|e| anyhow::anyhow!("proof does not verify: {e}"))?;
    println!(
        "entry {} is in {} at tree size {}",
        proof.index, checkpoint.origin, checkpoint.size
    );
    Ok(())
}

pub fn verify_consistency(key_arg: &str, path: &Path) -> anyhow::Result<()> {
    let proof: ConsistencyProof =
        serde_json::from_str(&read(path)?).context("the proof is not consistency-proof JSON")?;
    let (old, new) = proof
        .verify(&key(key_arg)?)
        .map_err(|e| anyhow::anyhow!("proof does not verify: {e}"))?;
    println!(
        "tree size {} extends tree size {} of {}",
        new.size, old.size, old.origin
    );
    Ok(())
}
