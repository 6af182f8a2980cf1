//! Creation, idempotency, scoping, the status changes up to `stored` or `quarantined`.

use super::*;

pub(super) async fn creation_and_idempotency(store: &dyn PackageStore, alice: &str, bob: &str) {
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

pub(super) async fn users_are_apart(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str, bob: &str) {
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

pub(super) async fn scanning_and_storing(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str) {
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

pub(super) async fn discarding(store: &dyn PackageStore, alice: &str) {
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

pub(super) async fn quarantine(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str) {
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
