//! Crypto-shredding on the filesystem store: a copy of a package's object taken before its
//! erasure (a backup, an old version, a failed delete) cannot be decrypted afterwards, not by
//! the service and not by anyone calling the key service directly, because the only copy of
//! its wrapped data key was in the database row the erasure cleared.

mod common;

use common::{Db, TestApp};
use serde_json::Value;
use udim_local::keyfile::LocalKeyFile;
use udim_ports::kms::KeyContext;
use uuid::Uuid;

async fn a_copy_taken_before_erasure_cannot_be_decrypted_after_it(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let response = app.upload(&alice, "audio", common::distinctive_bytes(200_000)).await;
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    let id: Uuid = package["id"].as_str().unwrap().parse().unwrap();
    let key_id = package["encryption_key_id"].as_str().unwrap().to_owned();
    let path = app.objects_dir().join("packages").join(id.to_string());
    let copy = std::fs::read(&path).unwrap();
    let wrapped_key = app
        .wrapped_key("alice", id)
        .await
        .expect("a stored package's wrapped key");
    app.erase_package(&alice, id).await;
    assert_eq!(
        app.wrapped_key("alice", id).await,
        None,
        "the database's copy is destroyed"
    );

    // The service's own path: even with the object restored from the copy, nothing reads.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &copy).unwrap();
    let pipeline = app.token("pipeline", &["udim:read"]);
    let read = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404);

    // The key service, called directly with the package's own context, finds no key in it.
    let kms = LocalKeyFile::open_or_create(&app.data_dir().join("keys/kek.keys")).unwrap();
    let ctx = KeyContext {
        package_id: id,
        user_id: "alice".into(),
    };
    common::assert_no_key_in_object(&copy, &wrapped_key, &kms, &key_id, &ctx, 4096).await;
    app.stop().await;
}

common::on_both_databases!(a_copy_taken_before_erasure_cannot_be_decrypted_after_it);

/// On SQLite the destroyed keys (packages' and an unfinished upload's) must not linger in the
/// database files: not in the page they were cleared from (secure_delete) and not in the WAL
/// (checkpointed after the erasure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destroyed_key_does_not_linger_in_the_sqlite_files() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let response = app.upload(&alice, "audio", common::distinctive_bytes(10_000 + n)).await;
        let package: Value = response.json().await.unwrap();
        ids.push(package["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let mut keys = Vec::new();
    for id in &ids {
        keys.push(app.wrapped_key("alice", *id).await.expect("stored with its key"));
    }
    let files = || {
        ["udim.db", "udim.db-wal"]
            .iter()
            .filter_map(|name| std::fs::read(app.data_dir().join(name)).ok())
            .collect::<Vec<_>>()
    };
    assert!(
        keys.iter()
            .all(|key| files().iter().any(|f| memchr::memmem::find(f, key).is_some())),
        "before the erasure the keys are in the files (else this test proves nothing)"
    );
    let erased = app
        .http
        .delete(format!("{}/v1/me", app.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    for (n, key) in keys.iter().enumerate() {
        for file in files() {
            assert!(
                memchr::memmem::find(&file, key).is_none(),
                "package {n}'s key is still in a database file"
            );
        }
    }

    // Someone whose only trace is an unfinished resumable upload: its row holds a wrapped key
    // of its own, and nothing else of theirs is erased (so no other checkpoint covers it).
    let bob = app.uploader("bob");
    app.grant(&bob, &["audio"]).await;
    let upload: Uuid = app
        .create_upload(&bob, 1000, "data_category YXVkaW8=")
        .await
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let database = app.database().await;
    let upload_key = database
        .uploads
        .get_upload("bob", upload)
        .await
        .unwrap()
        .unwrap()
        .wrapped_key;
    database.close().await;
    assert!(files().iter().any(|f| memchr::memmem::find(f, &upload_key).is_some()));
    let erased = app
        .http
        .delete(format!("{}/v1/me", app.base))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    for file in files() {
        assert!(
            memchr::memmem::find(&file, &upload_key).is_none(),
            "the upload's key is still in a database file"
        );
    }
    app.stop().await;
}
