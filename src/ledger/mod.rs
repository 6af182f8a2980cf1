//! The consent ledger's pure core: the canonical encoding of entries and RFC 9162 leaf
//! hashing. Storage and sequencing live behind the `ConsentLedger` port.

pub mod entry;

pub use entry::{ConsentEvent, ConsentRecord, leaf_hash};
