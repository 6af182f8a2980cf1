//! **Legacy.** A consent-ledger provider on Amazon QLDB, kept for deployments of the
//! original stack while they migrate. AWS ended support for QLDB on 2025-07-31 and no longer
//! releases its SDK crate: the supported ledger of every UDIM build is the PostgreSQL Merkle
//! log (on AWS, Aurora PostgreSQL, AWS's own recommended migration target). This crate is
//! compiled only with the root `qldb` feature, which nothing else enables.
//!
//! It stores the same RFC 9162 log as the SQL ledger, so proofs, checkpoints and the offline
//! verifier are the same; QLDB's own journal digests are not used.

pub mod digest;
mod ledger;
mod session;

// The clients and value types callers and tests need to talk to a ledger.
pub use ledger::{MAX_BATCH, QldbLedger};
pub use {aws_sdk_qldbsession, ion_rs};
