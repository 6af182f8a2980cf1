//! The ports of UDIM: one small trait per external system the service depends on.
//!
//! Each trait documents its contract in a `# Contract` section; every provider (embedded,
//! `local`, `aws`, `gcp`, `azure`) implements it and proves it with the shared conformance
//! suites in [`conformance`] (feature `conformance`).
//!
//! | port | trait |
//! |---|---|
//! | object storage | [`storage::BlobStore`] |
//! | key management | [`kms::KeyService`] |
//! | notification queue | [`queue::Notifier`] |
//! | malware scanning | [`scanner::MalwareScanner`] |
//! | package metadata + outbox | [`metadata::PackageStore`], [`metadata::Outbox`] |
//! | consent ledger | [`ledger::ConsentLedger`] |

pub mod error;
pub mod kms;
pub mod ledger;
pub mod metadata;
pub mod queue;
pub mod scanner;
pub mod storage;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{BoxError, PortError, Result};
