//! The resumable-upload suite ([`UploadStore`]).

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{now, user};
use crate::PortError;
use crate::metadata::{NewUpload, UploadChunk, UploadRecord, UploadStore};

/// Upload store: user scoping, leases, chunks, completion, expiry and deletion.
///
/// Checks, on fresh users and uploads:
/// - a created upload reads back unchanged, at offset 0;
/// - another user's upload looks missing to `get_upload`, cannot be locked and is not among
///   their `open_uploads`;
/// - `lock_upload` is exclusive while the lease is live (another token gets `None`), also
///   after `unlock_upload` with the wrong token; `unlock_upload` frees it; once `until` has
///   passed another token takes it;
/// - `append_chunk` only with the token holding the lease and only from the expected offset
///   (else `Conflict`, nothing recorded); it advances the offset by the chunk's length, sets
///   the new expiry and releases the lease;
/// - `renew_lease` extends a lease for its holder only;
/// - `upload_chunks` lists the chunks in offset order;
/// - `complete_upload` records the package once, removes and names the chunks; a completed
///   upload is no longer open; `unfinished_complete` finds complete uploads without a package;
/// - `expired_uploads` lists unfinished uploads past their expiry, skipping those under a live
///   lease and completed ones;
/// - `open_uploads` lists the user's unfinished uploads only;
/// - `delete_upload` removes the upload and its chunks, and names the chunks' objects.
///
/// Waits about a second, for one lease to run out in real time.
pub async fn upload_store(uploads: &dyn UploadStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    let upload = new_upload(&alice, 100, now() + Duration::hours(1));
    uploads.create_upload(&upload).await.expect("create_upload");
    let got = get(uploads, &alice, upload.id).await;
    assert_eq!(
        (
            got.id,
            got.user_id.as_str(),
            got.data_category.as_str(),
            got.filename.as_str(),
            got.content_type.as_str(),
            &got.metadata,
            got.length,
            got.offset,
            got.key_id.as_str(),
            &got.wrapped_key,
            got.expires_at,
            got.package_id,
        ),
        (
            upload.id,
            alice.as_str(),
            upload.data_category.as_str(),
            upload.filename.as_str(),
            upload.content_type.as_str(),
            &upload.metadata,
            100,
            0,
            upload.key_id.as_str(),
            &upload.wrapped_key,
            upload.expires_at,
            None,
        ),
        "a created upload reads back unchanged, at offset 0"
    );

    // Users are apart.
    assert!(
        uploads.get_upload(&bob, upload.id).await.unwrap().is_none(),
        "get_upload: another user's upload looks missing"
    );
    assert!(
        lock(uploads, &bob, upload.id, Uuid::new_v4(), minute()).await.is_none(),
        "lock_upload: another user's upload cannot be locked"
    );
    assert!(
        !open(uploads, &bob).await.contains(&upload.id),
        "open_uploads lists only the user's uploads"
    );

    // Leases.
    let (t1, t2, t3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let locked = lock(uploads, &alice, upload.id, t1, minute()).await;
    assert_eq!(
        locked.map(|u| (u.id, u.offset)),
        Some((upload.id, 0)),
        "lock_upload takes a free upload and returns it"
    );
    assert!(
        lock(uploads, &alice, upload.id, t2, minute()).await.is_none(),
        "lock_upload: a live lease is exclusive"
    );
    uploads.unlock_upload(upload.id, t2).await.expect("unlock_upload");
    assert!(
        lock(uploads, &alice, upload.id, t3, minute()).await.is_none(),
        "unlock_upload with another token leaves the lease alone"
    );
    uploads.unlock_upload(upload.id, t1).await.expect("unlock_upload");
    assert!(
        lock(uploads, &alice, upload.id, t2, minute()).await.is_some(),
        "an unlocked upload can be taken"
    );

    // Chunks.
    let first = chunk(0, 40);
    let refused = uploads
        .append_chunk(upload.id, t1, &first, now() + Duration::hours(2))
        .await;
    assert!(
        matches!(refused, Err(PortError::Conflict(_))),
        "append_chunk with a token that holds no lease is Conflict: {refused:?}"
    );
    assert_eq!(
        offset(uploads, &alice, upload.id).await,
        0,
        "a refused chunk moves nothing"
    );
    let extended = now() + Duration::hours(2);
    uploads
        .append_chunk(upload.id, t2, &first, extended)
        .await
        .expect("append_chunk at the expected offset, holding the lease");
    let after = get(uploads, &alice, upload.id).await;
    assert_eq!(
        (after.offset, after.expires_at),
        (40, extended),
        "append_chunk advances the offset by the chunk's length and sets the new expiry"
    );
    assert!(
        lock(uploads, &alice, upload.id, t3, minute()).await.is_some(),
        "append_chunk releases the lease"
    );
    for stale in [chunk(0, 10), chunk(20, 20), chunk(50, 10)] {
        let refused = uploads.append_chunk(upload.id, t3, &stale, extended).await;
        assert!(
            matches!(refused, Err(PortError::Conflict(_))),
            "append_chunk at offset {} of an upload at 40 is Conflict: {refused:?}",
            stale.offset
        );
    }
    assert_eq!(
        offset(uploads, &alice, upload.id).await,
        40,
        "a refused chunk moves nothing"
    );
    assert_eq!(
        uploads.upload_chunks(upload.id).await.unwrap(),
        std::slice::from_ref(&first),
        "a refused chunk is not recorded"
    );
    // Heartbeats: the holder extends its lease, nobody else can.
    let later = now() + Duration::minutes(5);
    assert!(
        uploads.renew_lease(upload.id, t3, later).await.expect("renew_lease"),
        "renew_lease extends the holder's lease"
    );
    assert!(
        !uploads.renew_lease(upload.id, Uuid::new_v4(), later).await.unwrap(),
        "renew_lease refuses a token that does not hold the lease"
    );
    uploads.unlock_upload(upload.id, t3).await.unwrap();
    assert!(
        !uploads.renew_lease(upload.id, t3, later).await.unwrap(),
        "a released lease cannot be renewed"
    );
    let t4 = Uuid::new_v4();
    assert!(lock(uploads, &alice, upload.id, t4, minute()).await.is_some());
    let second = chunk(40, 60);
    uploads
        .append_chunk(upload.id, t4, &second, extended)
        .await
        .expect("append_chunk");
    assert_eq!(offset(uploads, &alice, upload.id).await, 100);
    assert_eq!(
        uploads.upload_chunks(upload.id).await.expect("upload_chunks"),
        [first, second],
        "upload_chunks lists the chunks in offset order"
    );

    // Completion: a complete upload without its package is found for recovery, until
    // completed; completing removes the chunk rows and names their objects.
    let waiting = ids(uploads.unfinished_complete(now()).await.expect("unfinished_complete"));
    assert!(
        waiting.contains(&upload.id),
        "unfinished_complete lists an upload whose every byte arrived"
    );
    let t5 = Uuid::new_v4();
    assert!(lock(uploads, &alice, upload.id, t5, minute()).await.is_some());
    assert!(
        !ids(uploads.unfinished_complete(now()).await.unwrap()).contains(&upload.id),
        "unfinished_complete skips an upload under a live lease"
    );
    let mut written: Vec<String> = uploads
        .upload_chunks(upload.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.object_key)
        .collect();
    let package_id = Uuid::new_v4();
    let mut removed = uploads
        .complete_upload(upload.id, package_id)
        .await
        .expect("complete_upload");
    removed.sort();
    written.sort();
    assert_eq!(removed, written, "complete_upload names the chunks it removed");
    assert!(uploads.upload_chunks(upload.id).await.unwrap().is_empty());
    assert!(
        matches!(
            uploads.complete_upload(upload.id, Uuid::new_v4()).await,
            Err(crate::PortError::Conflict(_))
        ),
        "an upload completes into one package only"
    );
    assert!(
        !ids(uploads.unfinished_complete(now()).await.unwrap()).contains(&upload.id),
        "a completed upload is not waiting"
    );
    assert_eq!(
        get(uploads, &alice, upload.id).await.package_id,
        Some(package_id),
        "complete_upload records the package"
    );
    assert!(
        !open(uploads, &alice).await.contains(&upload.id),
        "a completed upload is no longer open"
    );

    // Expiry.
    let past = now() - Duration::minutes(1);
    let expired = create(uploads, &alice, past).await;
    let leased = create(uploads, &alice, past).await;
    assert!(lock(uploads, &alice, leased, Uuid::new_v4(), minute()).await.is_some());
    let completed = create(uploads, &alice, past).await;
    uploads.complete_upload(completed, Uuid::new_v4()).await.unwrap();
    let live = create(uploads, &alice, now() + Duration::hours(1)).await;
    let bobs = create(uploads, &bob, now() + Duration::hours(1)).await;

    let due = ids(uploads.expired_uploads(now()).await.expect("expired_uploads"));
    assert!(
        due.contains(&expired),
        "expired_uploads lists an unfinished upload past its expiry"
    );
    assert!(
        !due.contains(&leased),
        "expired_uploads skips an upload under a live lease"
    );
    assert!(!due.contains(&completed), "expired_uploads skips a completed upload");
    assert!(
        !due.contains(&live),
        "expired_uploads skips an upload before its expiry"
    );
    let later = ids(uploads.expired_uploads(now() + Duration::minutes(2)).await.unwrap());
    assert!(
        later.contains(&expired) && later.contains(&leased),
        "expired_uploads lists an expired upload once its lease has run out"
    );
    assert!(!later.contains(&completed) && !later.contains(&live));

    let open_alice = open(uploads, &alice).await;
    assert!(
        [expired, leased, live].iter().all(|id| open_alice.contains(id)),
        "open_uploads lists the user's unfinished uploads"
    );
    assert!(
        !open_alice.contains(&completed) && !open_alice.contains(&bobs),
        "open_uploads lists neither completed uploads nor another user's"
    );
    assert_eq!(
        open(uploads, &bob).await,
        [bobs],
        "open_uploads lists only the user's uploads"
    );

    // A lease runs out in real time.
    let (t5, t6) = (Uuid::new_v4(), Uuid::new_v4());
    let until = Utc::now() + Duration::milliseconds(500);
    assert!(lock(uploads, &alice, live, t5, until).await.is_some());
    assert!(
        lock(uploads, &alice, live, t6, minute()).await.is_none(),
        "lock_upload: a live lease is exclusive"
    );
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        lock(uploads, &alice, live, t6, minute()).await.is_some(),
        "lock_upload takes an upload whose lease has run out"
    );
    uploads
        .append_chunk(live, t6, &chunk(0, 10), now() + Duration::hours(1))
        .await
        .expect("append_chunk");

    // Deletion.
    for id in [upload.id, live] {
        let mut expected: Vec<String> = uploads
            .upload_chunks(id)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.object_key)
            .collect();
        let mut removed = uploads.delete_upload(id).await.expect("delete_upload");
        expected.sort();
        removed.sort();
        assert_eq!(
            removed, expected,
            "delete_upload returns the removed chunks' object keys"
        );
        assert!(
            uploads.get_upload(&alice, id).await.unwrap().is_none(),
            "a deleted upload is gone"
        );
        assert!(
            uploads.upload_chunks(id).await.unwrap().is_empty(),
            "a deleted upload's chunks are gone"
        );
    }
    assert!(!open(uploads, &alice).await.contains(&live));
}

fn minute() -> DateTime<Utc> {
    now() + Duration::minutes(1)
}

fn new_upload(user: &str, length: u64, expires_at: DateTime<Utc>) -> NewUpload {
    let id = Uuid::new_v4();
    NewUpload {
        id,
        user_id: user.to_owned(),
        data_category: "documents".into(),
        filename: format!("upload-{id}.bin"),
        content_type: "application/octet-stream".into(),
        metadata: serde_json::json!({"source": "conformance"}),
        length,
        key_id: "conformance-key-1".into(),
        wrapped_key: Uuid::new_v4().as_bytes().to_vec(),
        created_at: now(),
        expires_at,
    }
}

async fn create(uploads: &dyn UploadStore, user: &str, expires_at: DateTime<Utc>) -> Uuid {
    let upload = new_upload(user, 100, expires_at);
    uploads.create_upload(&upload).await.expect("create_upload");
    upload.id
}

fn chunk(offset: u64, length: u64) -> UploadChunk {
    UploadChunk {
        offset,
        length,
        object_key: format!("chunks/{}", Uuid::new_v4()),
    }
}

async fn get(uploads: &dyn UploadStore, user: &str, id: Uuid) -> UploadRecord {
    uploads
        .get_upload(user, id)
        .await
        .expect("get_upload")
        .unwrap_or_else(|| panic!("upload {id} of {user} is missing"))
}

async fn offset(uploads: &dyn UploadStore, user: &str, id: Uuid) -> u64 {
    get(uploads, user, id).await.offset
}

async fn lock(
    uploads: &dyn UploadStore,
    user: &str,
    id: Uuid,
    token: Uuid,
    until: DateTime<Utc>,
) -> Option<UploadRecord> {
    uploads.lock_upload(user, id, token, until).await.expect("lock_upload")
}

fn ids(records: Vec<UploadRecord>) -> Vec<Uuid> {
    records.into_iter().map(|u| u.id).collect()
}

async fn open(uploads: &dyn UploadStore, user: &str) -> Vec<Uuid> {
    ids(uploads.open_uploads(user).await.expect("open_uploads"))
}
