//! Erasure: shredding, scrubbing the outbox, tombstones.

use super::*;

pub(super) async fn erasure(store: &dyn PackageStore, outbox: &dyn Outbox, alice: &str, bob: &str) {
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

    // Recording erasures in the consent ledger. The erasure's own transaction claims the
    // recording for its caller, so nobody else takes it while the claim lasts.
    let taken = |list: &[(String, Uuid)], id: Uuid| list.iter().any(|(user, p)| *p == id && user == alice);
    let claim = async |user: Option<&str>, at: DateTime<Utc>| {
        store
            .claim_unrecorded_erasures(user, None, at, WINDOW)
            .await
            .expect("claim_unrecorded_erasures")
    };
    assert!(
        !taken(&claim(None, now()).await, sent.id),
        "an erasure's recording is its eraser's while the claim lasts"
    );
    let expired = now() + Duration::from_std(crate::metadata::ERASURE_RECORDING_CLAIM).unwrap() + Duration::minutes(1);
    assert!(
        claim(Some(bob), expired).await.is_empty(),
        "claim_unrecorded_erasures with an owner takes only theirs"
    );
    let first = claim(None, expired).await;
    assert!(
        taken(&first, sent.id) && taken(&first, unsent.id) && taken(&first, quarantined.id),
        "once the eraser's claim has run out, every unrecorded erasure is claimed, with its owner"
    );
    assert!(
        !taken(&first, kept.id) && !taken(&first, receiving.id),
        "only erased packages are claimed"
    );
    assert!(
        !taken(&claim(None, expired).await, sent.id),
        "a claimed erasure is not claimed again while the claim lasts"
    );
    store
        .release_erasure_claims(&[unsent.id, quarantined.id])
        .await
        .expect("release_erasure_claims");
    let only = store
        .claim_unrecorded_erasures(Some(alice), Some(quarantined.id), expired, WINDOW)
        .await
        .expect("claim_unrecorded_erasures of one package");
    assert_eq!(
        only,
        [(alice.to_owned(), quarantined.id)],
        "a claim of one package takes that package only"
    );
    assert!(
        taken(&claim(Some(alice), expired).await, unsent.id),
        "a released claim is taken at once"
    );
    let entry = Uuid::now_v7();
    store
        .erasure_recorded(&[sent.id, quarantined.id, kept.id], entry)
        .await
        .expect("erasure_recorded");
    let much_later = expired + Duration::from_std(crate::metadata::ERASURE_RECORDING_CLAIM).unwrap() * 2;
    let pending = claim(None, much_later).await;
    assert!(
        !taken(&pending, sent.id) && !taken(&pending, quarantined.id) && taken(&pending, unsent.id),
        "a recorded erasure is never claimed again; an unrecorded one is, once its claim runs out"
    );
    store.release_erasure_claims(&[sent.id]).await.unwrap();
    assert!(
        !taken(&claim(None, much_later).await, sent.id),
        "releasing a recorded erasure does not make it unrecorded"
    );
    store
        .mark_deleted(alice, kept.id, &event("package.deleted", kept.id))
        .await
        .expect("mark_deleted");
    let after_kept = claim(None, much_later + Duration::hours(1)).await;
    assert!(
        taken(&after_kept, kept.id),
        "recording a package's erasure before it is erased does not count"
    );
}

/// The fence an erasure of everything raises: packages created before it can no longer be
/// stored or quarantined, later ones can.
pub(super) async fn erasure_fence(store: &dyn PackageStore, outbox: &dyn Outbox) {
    let carol = user("carol");
    store.ensure_user(&carol).await.expect("ensure_user");
    // Times play no part: a package created "later" by a clock ahead is fenced all the same.
    let before = create(store, &carol, "documents", now() + Duration::hours(1)).await;
    let infected = create(store, &carol, "documents", now() + Duration::hours(1)).await;
    store.fence_erasure(&carol).await.expect("fence_erasure");
    let stored = event("package.stored", before.id);
    let refused = store
        .mark_stored(&carol, before.id, &stored_object(before.id, now()), &stored)
        .await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "mark_stored of a package created before its owner's erasure is Conflict: {refused:?}"
    );
    assert_no_event(outbox, &stored, "mark_stored behind an erasure fence").await;
    assert_eq!(status(store, &carol, before.id).await, PackageStatus::Receiving);
    let quarantined = event("package.quarantined", infected.id);
    let refused = store
        .mark_quarantined(&carol, infected.id, "Conformance.Test-Signature", &quarantined)
        .await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "mark_quarantined behind an erasure fence is Conflict: {refused:?}"
    );
    assert_no_event(outbox, &quarantined, "mark_quarantined behind an erasure fence").await;
    let (after, _, _) = create_stored(store, &carol, "documents", now() - Duration::hours(1)).await;
    assert_eq!(
        status(store, &carol, after.id).await,
        PackageStatus::Stored,
        "a package created after the erasure is stored as usual"
    );
}
