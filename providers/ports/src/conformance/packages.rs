//! The package-store suite ([`PackageStore`]), with the outbox its changes write events to.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

mod erasure;
mod lifecycle;
mod listing;

use erasure::{erasure, erasure_fence};
use lifecycle::{creation_and_idempotency, discarding, quarantine, scanning_and_storing, users_are_apart};
use listing::{listing, reads, retention, stale_uploads};

use super::{event, new_package, now, same_outcome, stored_object, user};
use crate::PortError;
use crate::metadata::{
    Erasure, NewPackage, Outbox, OutboxEntry, OutboxMessage, PackageQuery, PackageRead, PackageRecord, PackageStatus,
    PackageStore, ScanStatus, StoredObject,
};

/// How many outbox rows (newest first) and deleted objects are read back to find the
/// suite's own: far more than one run writes, so other suites on the same database fit too.
const WINDOW: u32 = 10_000;

/// Package store: users kept apart, every status change guarded, and each change written
/// together with its event into `outbox`, in one transaction.
///
/// Checks, on fresh users and packages:
/// - creation: a created package reads back unchanged, `receiving`; a second package with the
///   same idempotency key is `AlreadyExists` and not recorded; keys are per user;
/// - users are apart: for every call that takes a `user_id`, another user's package gives the
///   same outcome as a missing one and is left untouched (`mark_deleted` is `NotFound`);
/// - `mark_scanning`: `receiving → scanning`, `Conflict` from any other status;
/// - `mark_stored`: `receiving | scanning → stored` with every field of the object, AND its
///   event in the outbox; from any other status `Conflict` and no event; when the event cannot
///   be written (its id is taken) the package stays as it was: one transaction;
/// - `discard` removes a `receiving` or `scanning` package and refuses (`Conflict`) a
///   `stored` one; it never removes an erased package's tombstone;
/// - `mark_quarantined`: `receiving | scanning → quarantined` (infected, with the signature)
///   AND its event; refused from `stored`, without an event; one transaction;
/// - `get_stored` returns only `stored` packages, whoever owns them;
/// - `list_packages`: only the user's, newest first (ties by id), filtered by status and
///   category, `limit`, and keyset pages through `before`, also across equal times;
/// - `mark_deleted`: clears the wrapped key, hash, names, types and metadata, keeps the object
///   key as a tombstone, scrubs the package's sent events to `{"erased": true}` and drops its
///   unsent ones, writes its event, returns `Erased { object_key }`; then `AlreadyDeleted`
///   without an event; `NotFound` for another user's package, `Conflict` while receiving; a
///   quarantined package erases with no object; one transaction;
/// - `deleted_objects` lists erased packages' objects, oldest first, until `object_removed`;
///   `object_removed` leaves a package that is not deleted alone;
/// - `expired_packages`: stored and quarantined packages of the category created before the
///   cutoff, oldest first, at most `limit`;
/// - `stale_uploads`: `receiving` and `scanning` packages last updated before the cutoff;
/// - `record_read` and `ping` succeed.
pub async fn package_store(store: &dyn PackageStore, outbox: &dyn Outbox) {
    store.ping().await.expect("ping: the database answers");
    let (alice, bob) = (user("alice"), user("bob"));
    for user in [&alice, &bob] {
        store.ensure_user(user).await.expect("ensure_user");
        store.ensure_user(user).await.expect("ensure_user again is a no-op");
    }
    creation_and_idempotency(store, &alice, &bob).await;
    users_are_apart(store, outbox, &alice, &bob).await;
    scanning_and_storing(store, outbox, &alice).await;
    discarding(store, &alice).await;
    quarantine(store, outbox, &alice).await;
    listing(store, &bob).await;
    erasure(store, outbox, &alice, &bob).await;
    erasure_fence(store, outbox).await;
    retention(store, &alice).await;
    stale_uploads(store, &alice).await;
    reads(store, &alice).await;
}

async fn create(store: &dyn PackageStore, user: &str, category: &str, created_at: DateTime<Utc>) -> NewPackage {
    let package = new_package(user, category, created_at);
    store.create_package(&package).await.expect("create_package");
    package
}

/// A package of `user` moved to `stored`, with its object and its (unsent) event.
async fn create_stored(
    store: &dyn PackageStore,
    user: &str,
    category: &str,
    created_at: DateTime<Utc>,
) -> (NewPackage, StoredObject, OutboxMessage) {
    let package = create(store, user, category, created_at).await;
    let object = stored_object(package.id, created_at);
    let stored = event("package.stored", package.id);
    store
        .mark_stored(user, package.id, &object, &stored)
        .await
        .expect("mark_stored");
    (package, object, stored)
}

/// A package of `user` moved to `quarantined`, with its (unsent) event.
async fn create_quarantined(
    store: &dyn PackageStore,
    user: &str,
    category: &str,
    created_at: DateTime<Utc>,
) -> (NewPackage, OutboxMessage) {
    let package = create(store, user, category, created_at).await;
    let quarantined = event("package.quarantined", package.id);
    store
        .mark_quarantined(user, package.id, "Conformance.Test-Signature", &quarantined)
        .await
        .expect("mark_quarantined");
    (package, quarantined)
}

async fn get(store: &dyn PackageStore, user: &str, id: Uuid) -> PackageRecord {
    store
        .get_package(user, id)
        .await
        .expect("get_package")
        .unwrap_or_else(|| panic!("package {id} of {user} is missing"))
}

async fn status(store: &dyn PackageStore, user: &str, id: Uuid) -> PackageStatus {
    get(store, user, id).await.status
}

async fn entry(outbox: &dyn Outbox, id: Uuid) -> Option<OutboxEntry> {
    outbox
        .list(false, WINDOW)
        .await
        .expect("list the outbox")
        .into_iter()
        .find(|entry| entry.message.id == id)
}

async fn assert_no_event(outbox: &dyn Outbox, event: &OutboxMessage, what: &str) {
    assert!(
        entry(outbox, event.id).await.is_none(),
        "{what} wrote its event to the outbox"
    );
}

/// The event is in the outbox, unsent and unchanged.
async fn assert_event(outbox: &dyn Outbox, event: &OutboxMessage, what: &str) {
    let Some(entry) = entry(outbox, event.id).await else {
        panic!("{what} did not write its event {} to the outbox", event.event_type);
    };
    let m = &entry.message;
    assert_eq!(
        (
            &m.event_type,
            m.schema_version,
            m.aggregate_id,
            &m.payload,
            m.created_at
        ),
        (
            &event.event_type,
            event.schema_version,
            event.aggregate_id,
            &event.payload,
            event.created_at
        ),
        "{what}: the event reads back from the outbox unchanged"
    );
    assert!(entry.sent_at.is_none(), "{what}: a new event is unsent");
}

fn assert_holds(record: &PackageRecord, object: &StoredObject, what: &str) {
    assert_eq!(record.status, PackageStatus::Stored, "{what}: the package is stored");
    assert_eq!(
        record.object_key.as_deref(),
        Some(object.object_key.as_str()),
        "{what}: object_key"
    );
    assert_eq!(
        record.storage_uri.as_deref(),
        Some(object.storage_uri.as_str()),
        "{what}: storage_uri"
    );
    assert_eq!(record.size_bytes, Some(object.size_bytes), "{what}: size_bytes");
    assert_eq!(record.sha256, Some(object.sha256), "{what}: sha256");
    assert_eq!(
        record.encryption_key_id.as_deref(),
        Some(object.encryption_key_id.as_str()),
        "{what}: encryption_key_id"
    );
    assert_eq!(
        record.wrapped_key.as_ref(),
        Some(&object.wrapped_key),
        "{what}: wrapped_key"
    );
    assert_eq!(
        record.sniffed_content_type, object.sniffed_content_type,
        "{what}: sniffed_content_type"
    );
    assert_eq!(record.scan_status, Some(object.scan_status), "{what}: scan_status");
    assert_eq!(record.scan_detail, object.scan_detail, "{what}: scan_detail");
}
