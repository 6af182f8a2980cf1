//! The consent ledger's verifiable core, with no database or network dependency: bytes in,
//! verdicts out. UDIM builds its log with it, and third parties use it to check UDIM's proofs
//! offline.
//!
//! - [`merkle`]: RFC 9162 tree hashing, inclusion and consistency proofs.
//! - [`note`], [`checkpoint`]: C2SP signed notes (Ed25519) and tlog checkpoints.
//! - [`entry`]: consent and erasure records and their canonical encodings (the leaf data).
//! - [`proof`]: the record proof UDIM returns for every entry, and its verification.
//! - [`audit`]: the whole-log audit that names the first bad index.

pub mod audit;
pub mod checkpoint;
pub mod entry;
pub mod merkle;
pub mod note;
pub mod proof;
