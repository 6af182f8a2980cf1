//! The consent ledger in the service: the checkpoint signer, the batching sequencer in
//! front of the `ConsentLedger` port, and proof assembly. The pure parts (tree math, notes,
//! entry encoding, audit) live in the `udim-ledger` crate, which verifiers use on their own.

pub mod audit;
pub mod cli;
pub mod proofs;
pub mod sequencer;
pub mod signer;

pub use udim_ledger::entry::{ConsentEvent, ConsentRecord};
