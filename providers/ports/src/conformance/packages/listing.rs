//! Listing and paging, retention, abandoned uploads, the reads log.

use super::*;

fn page(limit: u32) -> PackageQuery {
    PackageQuery {
        limit,
        ..PackageQuery::default()
    }
}

fn ids(records: &[PackageRecord]) -> Vec<Uuid> {
    records.iter().map(|p| p.id).collect()
}

pub(super) async fn listing(store: &dyn PackageStore, bob: &str) {
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

pub(super) async fn retention(store: &dyn PackageStore, alice: &str) {
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

pub(super) async fn stale_uploads(store: &dyn PackageStore, alice: &str) {
    let long_ago = now() - Duration::hours(2);
    let abandoned = create(store, alice, "documents", long_ago).await;
    let scanning = create(store, alice, "documents", long_ago).await;
    store.mark_scanning(alice, scanning.id).await.unwrap();
    let (stored, _, _) = create_stored(store, alice, "documents", long_ago).await;
    let fresh = create(store, alice, "documents", now()).await;
    let alive = create(store, alice, "documents", long_ago).await;
    store.still_receiving(alice, alive.id).await.expect("still_receiving");
    store
        .still_receiving("someone-else", abandoned.id)
        .await
        .expect("another user's heartbeat is a no-op");

    let stale = |records: Vec<PackageRecord>| ids(&records);
    let before_an_hour_ago = stale(store.stale_uploads(now() - Duration::hours(1)).await.unwrap());
    assert!(
        !before_an_hour_ago.contains(&alive.id),
        "stale_uploads: a package whose upload said it is still receiving is not stale"
    );
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
        [abandoned.id, scanning.id, fresh.id, alive.id]
            .iter()
            .all(|id| before_now.contains(id)),
        "stale_uploads lists receiving and scanning packages"
    );
    assert!(
        !before_now.contains(&stored.id),
        "stale_uploads: a stored package is not an upload in flight"
    );
}

pub(super) async fn reads(store: &dyn PackageStore, alice: &str) {
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
