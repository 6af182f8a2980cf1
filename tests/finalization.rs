//! A resumable upload is never lost at its last step. When finishing it fails for a reason
//! that passes (here: its chunks cannot be read back from storage), every chunk is kept, the
//! client is told 503 with `Retry-After` and never sees the upload as complete, and the
//! upload becomes its package once the fault is gone: on the client's next HEAD, on a retried
//! last PATCH, or by the service itself after a restart, with the SHA-256 of what was sent.

mod common;

use common::faults::{Faults, FaultyStore};
use common::{Db, Options, TestApp};
use serde_json::Value;

const LENGTH: usize = 300_000;

async fn app_with_faults(db: Db) -> (TestApp, Faults, tempfile::TempDir) {
    let objects = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let app = TestApp::spawn_with(
        db,
        Options {
            storage: Some(FaultyStore::on(objects.path(), &faults)),
            ..Options::default()
        },
    )
    .await;
    (app, faults, objects)
}

fn tus(request: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    request.bearer_auth(token).header("tus-resumable", "1.0.0")
}

/// Creates an upload and sends all of it in two PATCHes; the second is the one that finishes.
async fn upload_in_two_patches(app: &TestApp, token: &str, body: &[u8]) -> (String, reqwest::Response) {
    let created = tus(app.http.post(format!("{}/v1/uploads", app.base)), token)
        .header("upload-length", body.len().to_string())
        .header("upload-metadata", "data_category YXVkaW8=")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.base, created.headers()["location"].to_str().unwrap());
    let half = body.len() / 2;
    let first = patch(app, token, &url, 0, &body[..half]).await;
    assert_eq!(first.status(), 204);
    let last = patch(app, token, &url, half, &body[half..]).await;
    (url, last)
}

async fn patch(app: &TestApp, token: &str, url: &str, offset: usize, bytes: &[u8]) -> reqwest::Response {
    tus(app.http.patch(url), token)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

async fn head(app: &TestApp, token: &str, url: &str) -> reqwest::Response {
    tus(app.http.head(url), token).send().await.unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// The answer says "try again later" and nothing says "complete".
fn assert_unavailable_not_complete(response: &reqwest::Response, what: &str) {
    assert_eq!(response.status(), 503, "{what}");
    assert_eq!(response.headers()["retry-after"], "5", "{what}");
    assert!(response.headers().get("udim-package-id").is_none(), "{what}");
}

async fn stored_package(app: &TestApp, token: &str, id: &str, body: &[u8]) {
    let (status, package) = app.get_json(token, &format!("/v1/packages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(package["status"], "stored");
    assert_eq!(package["size_bytes"], body.len());
    assert_eq!(package["sha256"], sha256_hex(body));
}

async fn a_failed_finish_keeps_every_chunk_and_the_next_head_completes_it(db: Db) {
    let (app, faults, objects) = app_with_faults(db).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let body = common::distinctive_bytes(LENGTH);
    faults.refuse_chunk_reads(true);
    let (url, last) = upload_in_two_patches(&app, &alice, &body).await;
    assert_unavailable_not_complete(&last, "the last PATCH while chunks cannot be read");
    assert_unavailable_not_complete(&head(&app, &alice, &url).await, "HEAD while chunks cannot be read");
    assert_eq!(
        common::files_under(&objects.path().join("uploads")).len(),
        2,
        "both chunks are kept"
    );
    assert!(app.packages(&alice).await.is_empty(), "no package yet");

    faults.refuse_chunk_reads(false);
    let done = head(&app, &alice, &url).await;
    assert_eq!(done.status(), 200);
    assert_eq!(done.headers()["upload-offset"], LENGTH.to_string());
    let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
    stored_package(&app, &alice, &id, &body).await;
    assert!(
        common::files_under(&objects.path().join("uploads")).is_empty(),
        "the chunks went"
    );
    assert_eq!(app.packages(&alice).await.len(), 1, "one package, however many tries");
    app.stop().await;
}

/// A store that reports its failure as unclassified (not `Unavailable`) must not cost the
/// upload either: only a refusal about the upload itself ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclassified_storage_failure_keeps_the_chunks_too() {
    let (app, faults, objects) = app_with_faults(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let body = common::distinctive_bytes(LENGTH);
    faults.unclassified_errors(true);
    faults.refuse_chunk_reads(true);
    let (url, last) = upload_in_two_patches(&app, &alice, &body).await;
    assert!(last.status().is_server_error(), "{}", last.status());
    assert!(last.headers().get("udim-package-id").is_none());
    assert_eq!(
        common::files_under(&objects.path().join("uploads")).len(),
        2,
        "both chunks are kept"
    );
    faults.refuse_chunk_reads(false);
    let done = head(&app, &alice, &url).await;
    assert_eq!(done.status(), 200);
    let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
    stored_package(&app, &alice, &id, &body).await;
    app.stop().await;
}

/// The client did not hear the last PATCH's answer and sends it again: the retry finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_last_patch_finishes_the_upload() {
    let (app, faults, _objects) = app_with_faults(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let body = common::distinctive_bytes(LENGTH);
    faults.refuse_chunk_reads(true);
    let (url, last) = upload_in_two_patches(&app, &alice, &body).await;
    assert_unavailable_not_complete(&last, "the last PATCH");
    faults.refuse_chunk_reads(false);
    let retried = patch(&app, &alice, &url, LENGTH, &[]).await;
    assert_eq!(retried.status(), 204);
    assert_eq!(retried.headers()["upload-offset"], LENGTH.to_string());
    let id = retried.headers()["udim-package-id"].to_str().unwrap().to_owned();
    stored_package(&app, &alice, &id, &body).await;
    app.stop().await;
}

/// The service stops (a deploy, a crash after the last chunk was recorded) with an upload
/// whose every byte arrived; after the restart it finishes it without the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_service_finishes_complete_uploads_by_itself() {
    let (app, faults, objects) = app_with_faults(Db::Postgres).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let body = common::distinctive_bytes(LENGTH);
    faults.refuse_chunk_reads(true);
    let (_url, last) = upload_in_two_patches(&app, &alice, &body).await;
    assert_unavailable_not_complete(&last, "the last PATCH");
    faults.refuse_chunk_reads(false);

    // The same data on a new process; the harness's restart keeps the filesystem store.
    let mut app = app;
    app.settings.storage = udim::config::StorageSettings::Filesystem(udim::config::FilesystemSettings {
        path: objects.path().to_path_buf(),
    });
    let app = app.restart().await;
    let mut stored: Vec<Value> = Vec::new();
    for _ in 0..100 {
        stored = app.packages(&alice).await;
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored.len(), 1, "the sweeper finished the upload");
    stored_package(&app, &alice, stored[0]["id"].as_str().unwrap(), &body).await;
    app.stop().await;
}

common::on_both_databases!(a_failed_finish_keeps_every_chunk_and_the_next_head_completes_it);
