//! Record proofs: what UDIM returns with every consent entry, verifiable offline with only
//! the log's verifier key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::merkle::{self, Hash};
use crate::note::VerifierKey;

/// An entry's position in the log and the evidence that the log committed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordProof {
    pub index: u64,
    /// The entry's leaf hash, base64.
    pub leaf_hash: String,
    /// RFC 9162 inclusion proof against the checkpoint's tree, base64 hashes bottom up.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint note the proof is against.
    pub checkpoint: String,
}

/// A consistency proof between two signed checkpoints of the same log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old_checkpoint: String,
    pub new_checkpoint: String,
    /// RFC 9162 consistency proof, base64 hashes.
    pub proof: Vec<String>,
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofError(pub String);

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProofError {}

/// Encodes hashes as base64 strings.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

fn decode_hash(text: &str) -> Result<Hash, ProofError> {
    B64.decode(text)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| ProofError(format!("`{text}` is not base64 of a 32-byte hash")))
}

fn decode_hashes(texts: &[String]) -> Result<Vec<Hash>, ProofError> {
    texts.iter().map(|t| decode_hash(t)).collect()
}

impl RecordProof {
    pub fn new(index: u64, leaf: &Hash, proof: &[Hash], checkpoint: String) -> Self {
        Self {
            index,
            leaf_hash: B64.encode(leaf),
            inclusion_proof: encode_hashes(proof),
            checkpoint,
        }
    }

    /// Checks the checkpoint's signature and the inclusion of the leaf in its tree. When
    /// `expected_leaf` is given (recomputed from the entry's body), the proof must be about it.
    pub fn verify(&self, key: &VerifierKey, expected_leaf: Option<&Hash>) -> Result<Checkpoint, ProofError> {
        let checkpoint = Checkpoint::open(&self.checkpoint, key).map_err(|e| ProofError(format!("checkpoint: {e}")))?;
        let leaf = decode_hash(&self.leaf_hash)?;
        if expected_leaf.is_some_and(|expected| *expected != leaf) {
            return Err(ProofError("the proof is for a different leaf than the entry's".into()));
        }
        let proof = decode_hashes(&self.inclusion_proof)?;
        merkle::verify_inclusion(self.index, checkpoint.size, &leaf, &proof, &checkpoint.root)
            .map_err(|e| ProofError(format!("inclusion: {e}")))?;
        Ok(checkpoint)
    }
}

impl ConsistencyProof {
    /// Checks both checkpoints' signatures and that the newer tree extends the older one.
    pub fn verify(&self, key: &VerifierKey) -> Result<(Checkpoint, Checkpoint), ProofError> {
        let old =
            Checkpoint::open(&self.old_checkpoint, key).map_err(|e| ProofError(format!("old checkpoint: {e}")))?;
        let new =
            Checkpoint::open(&self.new_checkpoint, key).map_err(|e| ProofError(format!("new checkpoint: {e}")))?;
        let proof = decode_hashes(&self.proof)?;
        merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
            .map_err(|e| ProofError(format!("consistency: {e}")))?;
        Ok((old, new))
    }
}
