//! The consent ledger's verifiable core, with no database or network dependency: bytes in,
//! verdicts out. Third parties use it to check UDIM's proofs offline.

pub mod merkle;
