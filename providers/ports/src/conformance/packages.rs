//! The package-store suite ([`PackageStore`]), with the outbox its changes write events to.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

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

async fn creation_and_idempotency(store: &dyn PackageStore, alice: &str, bob: &str) {
    let key = format!("idempotency-{}", Uuid::new_v4());
    let mut package = new_package(alice, "documents", now());
    package.idempotency_key = Some(key.clone());
    store.create_package(&package).await.expect("create_package");

    let got = get(store, alice, package.id).await;
    assert_eq!(
        (
            got.id,
            got.user_id.as_str(),
            got.consent_entry_id,
            got.data_category.as_str(),
            got.original_name.as_str(),
            got.declared_content_type.as_str(),
            got.staging_key.as_str(),
            &got.metadata,
            got.created_at,
        ),
        (
            package.id,
            alice,
            package.consent_entry_id,
            package.data_category.as_str(),
            package.original_name.as_str(),
            package.declared_content_type.as_str(),
            package.staging_key.as_str(),
            &package.metadata,
            package.created_at,
        ),
        "a created package reads back unchanged"
    );
    assert_eq!(got.status, PackageStatus::Receiving, "a new package is receiving");
    assert!(
        got.object_key.is_none() && got.sha256.is_none() && got.wrapped_key.is_none() && got.scan_status.is_none(),
        "a new package has no object yet: {got:?}"
    );

    assert!(
        store.find_by_idempotency_key(bob, &key).await.unwrap().is_none(),
        "find_by_idempotency_key: another user's key finds nothing"
    );
    let found = store.find_by_idempotency_key(alice, &key).await.unwrap();
    assert_eq!(found.map(|p| p.id), Some(package.id), "find_by_idempotency_key");
    assert!(
        store
            .find_by_idempotency_key(alice, "no-such-key")
            .await
            .unwrap()
            .is_none()
    );

    let mut duplicate = new_package(alice, "documents", now());
    duplicate.idempotency_key = Some(key.clone());
    let refused = store.create_package(&duplicate).await;
    assert!(
        matches!(refused, Err(PortError::AlreadyExists(_))),
        "a second package with the user's idempotency key is AlreadyExists: {refused:?}"
    );
    assert!(
        store.get_package(alice, duplicate.id).await.unwrap().is_none(),
        "the refused duplicate is not recorded"
    );

    let mut bobs = new_package(bob, "documents", now());
    bobs.idempotency_key = Some(key.clone());
    store
        .create_package(&bobs)
        .await
        .expect("idempotency keys are per user: another user may reuse one");
    let found = store.find_by_idempotency_key(bob, &key).await.unwrap();
    assert_eq!(
        found.map(|p| p.id),
        Some(bobs.id),
        "each user finds their own package by the key"
    );
    let found = store.find_by_idempotency_key(alice, &key).await.unwrap();
    assert_eq!(
        found.map(|p| p.id),
        Some(package.id),
        "each user finds their own package by the key"
    );
}

async fn users_are_apart(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str, bob: &str) {
    let missing = Uuid::new_v4();
    let receiving = create(store, alice, "documents", now()).await;
    let (stored, object, _) = create_stored(store, alice, "documents", now()).await;

    for id in [receiving.id, stored.id] {
        assert!(
            store.get_package(bob, id).await.unwrap().is_none(),
            "get_package: another user's package looks missing"
        );
    }
    let listed = store
        .list_packages(
            bob,
            &PackageQuery {
                limit: 1000,
                ..PackageQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(
        listed.iter().all(|p| p.user_id == bob),
        "list_packages lists only the user's packages"
    );

    let theirs = store.mark_scanning(bob, receiving.id).await;
    let none = store.mark_scanning(bob, missing).await;
    assert!(
        theirs.is_err() && same_outcome(&theirs, &none),
        "mark_scanning of another user's package fails as for a missing one: {theirs:?} vs {none:?}"
    );

    let stored_event = event("package.stored", receiving.id);
    let theirs = store
        .mark_stored(bob, receiving.id, &stored_object(receiving.id, now()), &stored_event)
        .await;
    let none = store
        .mark_stored(
            bob,
            missing,
            &stored_object(missing, now()),
            &event("package.stored", missing),
        )
        .await;
    assert!(
        theirs.is_err() && same_outcome(&theirs, &none),
        "mark_stored of another user's package fails as for a missing one: {theirs:?} vs {none:?}"
    );
    assert_no_event(outbox, &stored_event, "a refused mark_stored").await;

    let quarantined_event = event("package.quarantined", receiving.id);
    let theirs = store
        .mark_quarantined(bob, receiving.id, "Conformance.Test-Signature", &quarantined_event)
        .await;
    let none = store
        .mark_quarantined(
            bob,
            missing,
            "Conformance.Test-Signature",
            &event("package.quarantined", missing),
        )
        .await;
    assert!(
        theirs.is_err() && same_outcome(&theirs, &none),
        "mark_quarantined of another user's package fails as for a missing one: {theirs:?} vs {none:?}"
    );
    assert_no_event(outbox, &quarantined_event, "a refused mark_quarantined").await;

    for id in [receiving.id, stored.id] {
        let theirs = store.discard(bob, id).await;
        let none = store.discard(bob, missing).await;
        assert!(
            same_outcome(&theirs, &none),
            "discard of another user's package behaves as for a missing one: {theirs:?} vs {none:?}"
        );
    }

    let deleted_event = event("package.deleted", stored.id);
    let theirs = store.mark_deleted(bob, stored.id, &deleted_event).await;
    assert!(
        matches!(theirs, Err(PortError::NotFound(_))),
        "mark_deleted of another user's package is NotFound: {theirs:?}"
    );
    assert_no_event(outbox, &deleted_event, "a refused mark_deleted").await;

    assert_eq!(
        status(store, alice, receiving.id).await,
        PackageStatus::Receiving,
        "another user's calls left the package alone"
    );
    assert_holds(
        &get(store, alice, stored.id).await,
        &object,
        "another user's calls left the package alone",
    );
}

async fn scanning_and_storing(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str) {
    // receiving → scanning → stored
    let scanned = create(store, alice, "documents", now()).await;
    store
        .mark_scanning(alice, scanned.id)
        .await
        .expect("mark_scanning of a receiving package");
    assert_eq!(status(store, alice, scanned.id).await, PackageStatus::Scanning);
    let again = store.mark_scanning(alice, scanned.id).await;
    assert!(
        matches!(again, Err(PortError::Conflict(_))),
        "mark_scanning of a package not being received is Conflict: {again:?}"
    );
    let object = stored_object(scanned.id, now());
    let stored_event = event("package.stored", scanned.id);
    let record = store
        .mark_stored(alice, scanned.id, &object, &stored_event)
        .await
        .expect("mark_stored of a scanning package");
    assert_holds(&record, &object, "mark_stored returns the stored package");
    assert_holds(
        &get(store, alice, scanned.id).await,
        &object,
        "the stored package reads back",
    );
    assert_event(outbox, &stored_event, "mark_stored").await;

    // receiving → stored, admitted unscanned
    let unscanned = create(store, alice, "documents", now()).await;
    let object = StoredObject {
        scan_status: ScanStatus::NotScanned,
        scan_detail: Some("scanning disabled by configuration".into()),
        sniffed_content_type: None,
        ..stored_object(unscanned.id, now())
    };
    let unscanned_event = event("package.stored", unscanned.id);
    let record = store
        .mark_stored(alice, unscanned.id, &object, &unscanned_event)
        .await
        .expect("mark_stored of a receiving package");
    assert_holds(&record, &object, "mark_stored from receiving");
    assert_event(outbox, &unscanned_event, "mark_stored").await;

    // stored → stored is refused, without an event.
    let twice = event("package.stored", scanned.id);
    let refused = store
        .mark_stored(alice, scanned.id, &stored_object(scanned.id, now()), &twice)
        .await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "mark_stored of a stored package is Conflict: {refused:?}"
    );
    assert_no_event(outbox, &twice, "mark_stored of a stored package").await;
    assert_eq!(
        get(store, alice, scanned.id).await.object_key,
        Some(format!("objects/{}", scanned.id)),
        "a refused mark_stored leaves the object alone"
    );

    // The event cannot be written (its id is taken): the package stays as it was.
    let pending = create(store, alice, "documents", now()).await;
    let clash = OutboxMessage {
        id: stored_event.id,
        ..event("package.stored", pending.id)
    };
    let failed = store
        .mark_stored(alice, pending.id, &stored_object(pending.id, now()), &clash)
        .await;
    assert!(
        failed.is_err(),
        "mark_stored with an event id already in the outbox must fail, or an event is lost"
    );
    let after = get(store, alice, pending.id).await;
    assert!(
        after.status == PackageStatus::Receiving && after.object_key.is_none(),
        "mark_stored stored the package without its event: not one transaction ({after:?})"
    );

    // get_stored: only stored packages, by id alone.
    let found = store.get_stored(scanned.id).await.unwrap();
    assert_eq!(
        found.map(|p| (p.id, p.user_id)),
        Some((scanned.id, alice.to_owned())),
        "get_stored finds a stored package"
    );
    assert!(
        store.get_stored(pending.id).await.unwrap().is_none(),
        "get_stored: a receiving package is not stored"
    );
    assert!(store.get_stored(Uuid::new_v4()).await.unwrap().is_none());
}

async fn discarding(store: &dyn PackageStore, alice: &str) {
    let receiving = create(store, alice, "documents", now()).await;
    store
        .discard(alice, receiving.id)
        .await
        .expect("discard of a receiving package");
    assert!(
        store.get_package(alice, receiving.id).await.unwrap().is_none(),
        "a discarded package is gone"
    );

    let scanning = create(store, alice, "documents", now()).await;
    store.mark_scanning(alice, scanning.id).await.unwrap();
    store
        .discard(alice, scanning.id)
        .await
        .expect("discard of a scanning package");
    assert!(
        store.get_package(alice, scanning.id).await.unwrap().is_none(),
        "a discarded package is gone"
    );

    let (stored, object, _) = create_stored(store, alice, "documents", now()).await;
    let refused = store.discard(alice, stored.id).await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "discard of a stored package is Conflict: {refused:?}"
    );
    assert_holds(&get(store, alice, stored.id).await, &object, "a refused discard");
}

async fn quarantine(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str) {
    let scanning = create(store, alice, "documents", now()).await;
    store.mark_scanning(alice, scanning.id).await.unwrap();
    let quarantined = event("package.quarantined", scanning.id);
    store
        .mark_quarantined(alice, scanning.id, "Eicar-Test-Signature", &quarantined)
        .await
        .expect("mark_quarantined of a scanning package");
    let record = get(store, alice, scanning.id).await;
    assert_eq!(
        (record.status, record.scan_status, record.scan_detail.as_deref()),
        (
            PackageStatus::Quarantined,
            Some(ScanStatus::Infected),
            Some("Eicar-Test-Signature")
        ),
        "a quarantined package is infected, with the signature"
    );
    assert_event(outbox, &quarantined, "mark_quarantined").await;
    assert!(
        store.get_stored(scanning.id).await.unwrap().is_none(),
        "get_stored: a quarantined package is not stored"
    );

    let (receiving, from_receiving) = create_quarantined(store, alice, "documents", now()).await;
    assert_eq!(status(store, alice, receiving.id).await, PackageStatus::Quarantined);
    assert_event(outbox, &from_receiving, "mark_quarantined of a receiving package").await;

    let stored_event = event("package.stored", scanning.id);
    let refused = store
        .mark_stored(alice, scanning.id, &stored_object(scanning.id, now()), &stored_event)
        .await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "mark_stored of a quarantined package is Conflict: {refused:?}"
    );
    assert_no_event(outbox, &stored_event, "mark_stored of a quarantined package").await;

    let (stored, object, _) = create_stored(store, alice, "documents", now()).await;
    let late = event("package.quarantined", stored.id);
    let refused = store.mark_quarantined(alice, stored.id, "Late-Signature", &late).await;
    assert!(refused.is_err(), "mark_quarantined of a stored package is refused");
    assert_no_event(outbox, &late, "mark_quarantined of a stored package").await;
    assert_holds(
        &get(store, alice, stored.id).await,
        &object,
        "a refused mark_quarantined",
    );

    let pending = create(store, alice, "documents", now()).await;
    let clash = OutboxMessage {
        id: quarantined.id,
        ..event("package.quarantined", pending.id)
    };
    let failed = store.mark_quarantined(alice, pending.id, "Signature", &clash).await;
    assert!(
        failed.is_err(),
        "mark_quarantined with an event id already in the outbox must fail, or an event is lost"
    );
    assert_eq!(
        status(store, alice, pending.id).await,
        PackageStatus::Receiving,
        "mark_quarantined quarantined the package without its event: not one transaction"
    );
}

fn page(limit: u32) -> PackageQuery {
    PackageQuery {
        limit,
        ..PackageQuery::default()
    }
}

fn ids(records: &[PackageRecord]) -> Vec<Uuid> {
    records.iter().map(|p| p.id).collect()
}

async fn listing(store: &dyn PackageStore, bob: &str) {
    let carol = user("carol");
    store.ensure_user(&carol).await.unwrap();
    let base = now() - Duration::minutes(10);
    let at = |s: i64| base + Duration::seconds(s);
    // (created at, category, status); two share one instant, to page across a tie.
    let mut made: Vec<(DateTime<Utc>, Uuid, &str, PackageStatus)> = Vec::new();
    for (s, category, status) in [
        (0, "x", PackageStatus::Stored),
        (1, "y", PackageStatus::Receiving),
        (2, "x", PackageStatus::Receiving),
        (3, "y", PackageStatus::Stored),
        (3, "x", PackageStatus::Receiving),
        (4, "x", PackageStatus::Quarantined),
    ] {
        let id = match status {
            PackageStatus::Stored => create_stored(store, &carol, category, at(s)).await.0.id,
            PackageStatus::Quarantined => create_quarantined(store, &carol, category, at(s)).await.0.id,
            _ => create(store, &carol, category, at(s)).await.id,
        };
        made.push((at(s), id, category, status));
    }
    made.sort_by_key(|(created_at, id, _, _)| std::cmp::Reverse((*created_at, *id)));
    let expect = |keep: &dyn Fn(&str, PackageStatus) -> bool| -> Vec<Uuid> {
        made.iter()
            .filter(|(_, _, category, status)| keep(category, *status))
            .map(|(_, id, _, _)| *id)
            .collect()
    };
    let list = async |query: PackageQuery| store.list_packages(&carol, &query).await.expect("list_packages");

    let all = list(page(100)).await;
    assert_eq!(
        ids(&all),
        expect(&|_, _| true),
        "list_packages: the user's packages, newest first, ties by id"
    );
    assert!(all.iter().all(|p| p.user_id == carol));
    let stored = list(PackageQuery {
        status: Some(PackageStatus::Stored),
        ..page(100)
    })
    .await;
    assert_eq!(
        ids(&stored),
        expect(&|_, s| s == PackageStatus::Stored),
        "list_packages filters by status"
    );
    let x = list(PackageQuery {
        data_category: Some("x".into()),
        ..page(100)
    })
    .await;
    assert_eq!(ids(&x), expect(&|c, _| c == "x"), "list_packages filters by category");
    let both = list(PackageQuery {
        status: Some(PackageStatus::Receiving),
        data_category: Some("x".into()),
        ..page(100)
    })
    .await;
    assert_eq!(
        ids(&both),
        expect(&|c, s| c == "x" && s == PackageStatus::Receiving),
        "list_packages filters by status and category at once"
    );
    assert!(
        list(PackageQuery {
            status: Some(PackageStatus::Deleted),
            ..page(100)
        })
        .await
        .is_empty()
    );

    // Keyset pages of two, the second starting inside the tie.
    let everything = expect(&|_, _| true);
    let mut before = None;
    for (n, expected) in everything.chunks(2).chain([&[][..]]).enumerate() {
        let got = list(PackageQuery { before, ..page(2) }).await;
        assert_eq!(
            ids(&got),
            expected,
            "page {n} of list_packages (limit 2, before the previous page's last)"
        );
        before = got.last().map(|p| (p.created_at, p.id));
    }

    assert!(
        !ids(&store.list_packages(bob, &page(1000)).await.unwrap())
            .iter()
            .any(|id| everything.contains(id)),
        "list_packages never lists another user's packages"
    );
}

async fn erasure(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str, bob: &str) {
    // One package whose event was sent, one whose event still waits.
    let (sent, sent_object, sent_event) = create_stored(store, alice, "documents", now()).await;
    outbox.mark_sent(sent_event.id, now()).await.expect("mark_sent");
    let (unsent, unsent_object, unsent_event) = create_stored(store, alice, "documents", now()).await;

    // The deletion event cannot be written (its id is taken): nothing changes.
    let clash = OutboxMessage {
        id: unsent_event.id,
        ..event("package.deleted", sent.id)
    };
    let failed = store.mark_deleted(alice, sent.id, &clash).await;
    assert!(
        failed.is_err(),
        "mark_deleted with an event id already in the outbox must fail, or an event is lost"
    );
    assert_holds(
        &get(store, alice, sent.id).await,
        &sent_object,
        "mark_deleted erased the package without its event: not one transaction",
    );
    assert_eq!(
        entry(outbox, sent_event.id).await.map(|e| e.message.payload),
        Some(sent_event.payload.clone()),
        "mark_deleted scrubbed the events without its own: not one transaction"
    );

    let theirs = store
        .mark_deleted(bob, sent.id, &event("package.deleted", sent.id))
        .await;
    assert!(
        matches!(theirs, Err(PortError::NotFound(_))),
        "mark_deleted of another user's package is NotFound: {theirs:?}"
    );

    let deleted_event = event("package.deleted", sent.id);
    let erased = store
        .mark_deleted(alice, sent.id, &deleted_event)
        .await
        .expect("mark_deleted of a stored package");
    assert_eq!(
        erased,
        Erasure::Erased {
            object_key: Some(sent_object.object_key.clone())
        },
        "mark_deleted names the object still to delete"
    );
    let tombstone = get(store, alice, sent.id).await;
    assert_eq!(tombstone.status, PackageStatus::Deleted);
    assert!(
        tombstone.wrapped_key.is_none() && tombstone.sha256.is_none(),
        "an erased package keeps neither its wrapped key nor its hash: {tombstone:?}"
    );
    assert!(
        tombstone.original_name.is_empty()
            && tombstone.declared_content_type.is_empty()
            && tombstone.sniffed_content_type.is_none(),
        "an erased package keeps neither its name nor its types: {tombstone:?}"
    );
    assert!(
        tombstone.metadata.as_object().is_none_or(|m| m.is_empty()),
        "an erased package keeps no metadata: {}",
        tombstone.metadata
    );
    assert_eq!(
        tombstone.object_key,
        Some(sent_object.object_key.clone()),
        "the tombstone keeps the object key until the object is gone"
    );
    let scrubbed = entry(outbox, sent_event.id)
        .await
        .expect("a sent event of an erased package keeps its id");
    assert_eq!(
        scrubbed.message.payload,
        serde_json::json!({"erased": true}),
        "a sent event of an erased package is scrubbed"
    );
    assert!(scrubbed.sent_at.is_some());
    assert_event(outbox, &deleted_event, "mark_deleted").await;
    assert!(
        store.get_stored(sent.id).await.unwrap().is_none(),
        "get_stored: an erased package is not stored"
    );

    let repeated = event("package.deleted", sent.id);
    assert_eq!(
        store
            .mark_deleted(alice, sent.id, &repeated)
            .await
            .expect("a second erasure"),
        Erasure::AlreadyDeleted,
        "a second erasure finds it done"
    );
    assert_no_event(outbox, &repeated, "a second erasure").await;

    let deleted_unsent = event("package.deleted", unsent.id);
    assert_eq!(
        store.mark_deleted(alice, unsent.id, &deleted_unsent).await.unwrap(),
        Erasure::Erased {
            object_key: Some(unsent_object.object_key.clone())
        }
    );
    assert!(
        entry(outbox, unsent_event.id).await.is_none(),
        "an unsent event of an erased package is dropped"
    );
    assert_event(outbox, &deleted_unsent, "mark_deleted").await;

    let (quarantined, quarantined_event) = create_quarantined(store, alice, "documents", now()).await;
    assert_eq!(
        store
            .mark_deleted(alice, quarantined.id, &event("package.deleted", quarantined.id))
            .await
            .expect("mark_deleted of a quarantined package"),
        Erasure::Erased { object_key: None },
        "a quarantined package has no object to delete"
    );
    assert!(entry(outbox, quarantined_event.id).await.is_none());
    let record = get(store, alice, quarantined.id).await;
    assert!(
        record.status == PackageStatus::Deleted && record.scan_detail.is_none() && record.original_name.is_empty(),
        "an erased quarantined package keeps neither its name nor its signature: {record:?}"
    );

    let receiving = create(store, alice, "documents", now()).await;
    let early = event("package.deleted", receiving.id);
    let refused = store.mark_deleted(alice, receiving.id, &early).await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "mark_deleted of a package being received is Conflict: {refused:?}"
    );
    assert_no_event(outbox, &early, "mark_deleted of a receiving package").await;
    assert_eq!(status(store, alice, receiving.id).await, PackageStatus::Receiving);

    // Nothing brings an erased package back.
    let revived = event("package.stored", sent.id);
    let refused = store
        .mark_stored(alice, sent.id, &stored_object(sent.id, now()), &revived)
        .await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "mark_stored of an erased package is Conflict: {refused:?}"
    );
    assert_no_event(outbox, &revived, "mark_stored of an erased package").await;
    assert!(
        store.discard(alice, sent.id).await.is_err(),
        "discard refuses an erased package"
    );
    assert_eq!(
        get(store, alice, sent.id).await.object_key,
        Some(sent_object.object_key.clone()),
        "the tombstone stays until its object is gone"
    );

    // The cleanup path.
    let pending = store.deleted_objects(WINDOW).await.expect("deleted_objects");
    let position = |id: Uuid| pending.iter().position(|(p, _)| *p == id);
    assert!(
        pending.contains(&(sent.id, sent_object.object_key.clone()))
            && pending.contains(&(unsent.id, unsent_object.object_key.clone())),
        "deleted_objects lists erased packages with their object keys"
    );
    assert!(
        position(sent.id) < position(unsent.id),
        "deleted_objects lists the oldest erasure first"
    );
    assert!(
        position(quarantined.id).is_none(),
        "deleted_objects: a package without an object has nothing to delete"
    );
    store.object_removed(sent.id).await.expect("object_removed");
    assert!(
        !store
            .deleted_objects(WINDOW)
            .await
            .unwrap()
            .iter()
            .any(|(id, _)| *id == sent.id),
        "deleted_objects forgets a package once its object is removed"
    );
    let tombstone = get(store, alice, sent.id).await;
    assert!(tombstone.status == PackageStatus::Deleted && tombstone.object_key.is_none());

    let (kept, kept_object, _) = create_stored(store, alice, "documents", now()).await;
    store.object_removed(kept.id).await.expect("object_removed");
    assert_holds(
        &get(store, alice, kept.id).await,
        &kept_object,
        "object_removed of a package that is not deleted",
    );
}

async fn retention(store: &dyn PackageStore, alice: &str) {
    let category = format!("retention-{}", Uuid::new_v4().simple());
    let other = format!("retention-{}", Uuid::new_v4().simple());
    let old = now() - Duration::days(40);
    let hours = |h: i64| old + Duration::hours(h);
    let (stored, _, _) = create_stored(store, alice, &category, hours(0)).await;
    let (quarantined, _) = create_quarantined(store, alice, &category, hours(1)).await;
    create(store, alice, &category, hours(2)).await;
    let (deleted, _, _) = create_stored(store, alice, &category, hours(3)).await;
    store
        .mark_deleted(alice, deleted.id, &event("package.deleted", deleted.id))
        .await
        .unwrap();
    create_stored(store, alice, &category, now()).await;
    create_stored(store, alice, &other, hours(0)).await;

    let cutoff = now() - Duration::days(30);
    let expired = store
        .expired_packages(&category, cutoff, 100)
        .await
        .expect("expired_packages");
    assert_eq!(
        expired,
        [(alice.to_owned(), stored.id), (alice.to_owned(), quarantined.id)],
        "expired_packages: the category's stored and quarantined packages created before the cutoff, oldest first"
    );
    assert_eq!(
        store.expired_packages(&category, cutoff, 1).await.unwrap(),
        [(alice.to_owned(), stored.id)],
        "expired_packages returns at most `limit`"
    );
}

async fn stale_uploads(store: &dyn PackageStore, alice: &str) {
    let long_ago = now() - Duration::hours(2);
    let abandoned = create(store, alice, "documents", long_ago).await;
    let scanning = create(store, alice, "documents", long_ago).await;
    store.mark_scanning(alice, scanning.id).await.unwrap();
    let (stored, _, _) = create_stored(store, alice, "documents", long_ago).await;
    let fresh = create(store, alice, "documents", now()).await;

    let stale = |records: Vec<PackageRecord>| ids(&records);
    let before_an_hour_ago = stale(store.stale_uploads(now() - Duration::hours(1)).await.unwrap());
    assert!(
        before_an_hour_ago.contains(&abandoned.id),
        "stale_uploads lists a receiving package not updated since the cutoff"
    );
    assert!(
        !before_an_hour_ago.contains(&fresh.id) && !before_an_hour_ago.contains(&scanning.id),
        "stale_uploads: a package updated after the cutoff is not stale (mark_scanning is an update)"
    );
    let before_now = stale(store.stale_uploads(now() + Duration::minutes(1)).await.unwrap());
    assert!(
        [abandoned.id, scanning.id, fresh.id]
            .iter()
            .all(|id| before_now.contains(id)),
        "stale_uploads lists receiving and scanning packages"
    );
    assert!(
        !before_now.contains(&stored.id),
        "stale_uploads: a stored package is not an upload in flight"
    );
}

async fn reads(store: &dyn PackageStore, alice: &str) {
    let (stored, _, _) = create_stored(store, alice, "documents", now()).await;
    for range in [None, Some((0, 99))] {
        store
            .record_read(&PackageRead {
                package_id: stored.id,
                reader: "conformance-reader".into(),
                purpose: "model-training".into(),
                range,
                read_at: now(),
            })
            .await
            .expect("record_read");
    }
}
