//! Conformance suites: the behaviour every provider of a port must show, written once and
//! called from each provider's tests (local filesystem, S3, GCS, SQLite, PostgreSQL, clamd,
//! ...). Each suite is a plain `async fn` that panics with a message naming the broken rule.
//!
//! | port | suite |
//! |---|---|
//! | [`crate::storage::BlobStore`] | [`blob_store`] |
//! | [`crate::kms::KeyService`] | [`key_service`] |
//! | [`crate::queue::Notifier`] | [`notifier`], [`notifier_batch`] |
//! | [`crate::ledger::ConsentLedger`] | [`consent_ledger`] |
//! | [`crate::metadata::PackageStore`] | [`package_store`] |
//! | [`crate::metadata::Outbox`] | [`outbox`] |
//! | [`crate::metadata::UploadStore`] | [`upload_store`] |
//! | [`crate::scanner::MalwareScanner`] | [`malware_scanner`] |
//!
//! The suites make their own users, packages, uploads and aggregates with fresh random ids,
//! so several of them can run on one database, one after the other or at once. Two
//! exceptions, documented on each: [`consent_ledger`] needs an empty ledger, and [`outbox`]
//! claims every due message of the store.

mod kms;
mod ledger;
mod notifier;
mod outbox;
mod packages;
mod scanner;
mod storage;
mod uploads;

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;

use crate::metadata::{NewPackage, OutboxMessage, ScanStatus, StoredObject};

pub use kms::key_service;
pub use ledger::consent_ledger;
pub use notifier::{notifier, notifier_batch};
pub use outbox::outbox;
pub use packages::package_store;
pub use scanner::{EICAR, malware_scanner};
pub use storage::blob_store;
pub use uploads::upload_store;

/// A `package.stored` message about a new package, carrying `payload`.
pub fn message(payload: serde_json::Value) -> OutboxMessage {
    OutboxMessage {
        id: Uuid::new_v4(),
        event_type: "package.stored".into(),
        schema_version: 1,
        aggregate_id: Uuid::new_v4(),
        payload,
        created_at: chrono::Utc::now(),
    }
}

/// Now, to the microsecond: what PostgreSQL keeps, so times read back unchanged everywhere.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A user id no other run of any suite uses.
fn user(name: &str) -> String {
    format!("conformance-{name}-{}", Uuid::new_v4().simple())
}

/// An event of `event_type` about `aggregate_id`.
fn event(event_type: &str, aggregate_id: Uuid) -> OutboxMessage {
    OutboxMessage {
        id: Uuid::new_v4(),
        event_type: event_type.into(),
        schema_version: 1,
        aggregate_id,
        payload: serde_json::json!({"event": event_type, "package": aggregate_id, "nonce": Uuid::new_v4()}),
        created_at: now(),
    }
}

/// A new package of `user` in `category`, created at `created_at`.
fn new_package(user: &str, category: &str, created_at: DateTime<Utc>) -> NewPackage {
    let id = Uuid::new_v4();
    NewPackage {
        id,
        user_id: user.to_owned(),
        consent_entry_id: Uuid::new_v4(),
        data_category: category.to_owned(),
        original_name: format!("report-{id}.pdf"),
        declared_content_type: "application/pdf".into(),
        idempotency_key: None,
        staging_key: format!("staging/{id}"),
        metadata: serde_json::json!({"source": "conformance", "tags": ["a", "b"]}),
        created_at,
    }
}

/// The object a package with `id` was written to.
fn stored_object(id: Uuid, stored_at: DateTime<Utc>) -> StoredObject {
    let mut sha256 = [0u8; 32];
    sha256[..16].copy_from_slice(id.as_bytes());
    sha256[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    StoredObject {
        object_key: format!("objects/{id}"),
        storage_uri: format!("conformance://objects/{id}"),
        size_bytes: 4242,
        sha256,
        encryption_key_id: "conformance-key-1".into(),
        wrapped_key: Uuid::new_v4().as_bytes().to_vec(),
        sniffed_content_type: Some("application/pdf".into()),
        scan_status: ScanStatus::Clean,
        scan_detail: None,
        stored_at,
    }
}

/// Whether two results are the same outcome: both `Ok`, or errors of the same kind.
fn same_outcome<T, U>(a: &crate::Result<T>, b: &crate::Result<U>) -> bool {
    match (a, b) {
        (Ok(_), Ok(_)) => true,
        (Err(a), Err(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
        _ => false,
    }
}
