//! A resumable upload is never lost at its last step. When finishing it fails for a reason
//! that passes — at any step: reading the chunks back, the scanner, the key service, the
//! database before the package commits or after — every chunk is kept, the client is told 503
//! with `Retry-After` and never sees the upload as complete (the stock clients tuspy and
//! tus-js-client report failure, never success), and the upload becomes its package once the
//! fault is gone: on the client's next HEAD (the stock clients resuming), on a retried last
//! PATCH, or by the service itself after a restart, with the SHA-256 of what was sent. The
//! same holds when the real binary is killed with SIGKILL between the last chunk and the
//! commit.

mod common;

use std::time::Duration;

use common::faults::{DatabaseFaults, Faults, FaultyStore, Link};
use common::process::Process;
use common::tus_clients::StockClient;
use common::{Db, Options, TestApp};
use serde_json::Value;
use udim_testkit::clamd::Clamd;

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

/// Finishing is an upload's heaviest step, so a HEAD that finishes a complete upload takes a
/// place in flight like the PATCH it completes: with the user's one place taken by an upload
/// still streaming, the HEAD gets 429 with `Retry-After` and finishes nothing; once the place
/// is free, it finishes the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_finishes_an_upload_takes_a_place_in_flight() {
    let objects = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            storage: Some(FaultyStore::on(objects.path(), &faults)),
            configure: Some(Box::new(|s| s.limits.uploads_in_flight_per_user = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let body = common::distinctive_bytes(LENGTH);
    faults.refuse_chunk_reads(true);
    let (url, last) = upload_in_two_patches(&app, &alice, &body).await;
    assert_unavailable_not_complete(&last, "the last PATCH while chunks cannot be read");
    faults.refuse_chunk_reads(false);

    let (streaming, in_flight) = common::body_in_flight();
    streaming.send(Ok(b"a first piece".to_vec())).await.unwrap();
    let holder = common::status_of(
        app.http
            .post(format!("{}/v1/packages?data_category=audio", app.base))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body(in_flight),
    );
    // Its package row, receiving, exists only once it was admitted.
    common::eventually("the streaming upload holds alice's place", || async {
        app.packages(&alice).await.iter().any(|p| p["status"] == "receiving")
    })
    .await;
    let refused = head(&app, &alice, &url).await;
    assert_eq!(refused.status(), 429, "the HEAD waits for a place");
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        app.packages(&alice).await.iter().all(|p| p["status"] != "stored"),
        "the refused HEAD finished nothing"
    );

    drop(streaming);
    let _ = holder.await;
    let done = head(&app, &alice, &url).await;
    assert_eq!(done.status(), 200);
    let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
    stored_package(&app, &alice, &id, &body).await;
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

/// A creation that carries the whole upload (tus creation-with-upload) and fails to finish
/// still names the upload it created, so the client resumes that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_with_upload_that_fails_to_finish_names_its_upload() {
    let (app, faults, _objects) = app_with_faults(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let body = common::distinctive_bytes(LENGTH);
    faults.refuse_chunk_reads(true);
    let created = tus(app.http.post(format!("{}/v1/uploads", app.base)), &alice)
        .header("upload-length", LENGTH.to_string())
        .header("upload-metadata", "data_category YXVkaW8=")
        .header("content-type", "application/offset+octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_unavailable_not_complete(&created, "creation-with-upload while chunks cannot be read");
    let url = format!(
        "{}{}",
        app.base,
        created
            .headers()
            .get("location")
            .expect("the failed answer names the upload")
            .to_str()
            .unwrap()
    );
    faults.refuse_chunk_reads(false);
    let done = head(&app, &alice, &url).await;
    assert_eq!(done.status(), 200);
    let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
    stored_package(&app, &alice, &id, &body).await;
    assert_eq!(
        app.database().await.uploads.open_uploads("alice").await.unwrap().len(),
        0
    );
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
    // The package shows while the sweeper is still finishing it (`receiving`, `scanning`):
    // wait for it to be stored.
    let mut stored: Vec<Value> = Vec::new();
    for _ in 0..200 {
        stored = app.packages(&alice).await;
        if stored.iter().any(|p| p["status"] == "stored") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored.len(), 1, "the sweeper finished the upload, once: {stored:?}");
    stored_package(&app, &alice, stored[0]["id"].as_str().unwrap(), &body).await;
    app.stop().await;
}

common::on_both_databases!(a_failed_finish_keeps_every_chunk_and_the_next_head_completes_it);

/// Where finalization fails.
#[derive(Debug, Clone, Copy)]
enum Step {
    ChunkRead,
    Scanner,
    KeyService,
    DatabaseBeforeCommit,
    DatabaseAfterCommit,
}

/// A service on PostgreSQL whose every finalization step can be made to fail: a faulty object
/// store and key service, a real clamd behind a link that can hang, database triggers.
struct Rig {
    app: TestApp,
    faults: Faults,
    link: Link,
    database: DatabaseFaults,
    _clamd: Clamd,
    _objects: tempfile::TempDir,
}

fn clamd_settings(address: &str, timeout_secs: u64) -> udim::config::ScannerSettings {
    udim::config::ScannerSettings::Clamd(udim::config::ClamdSettings {
        address: udim_local::clamd::ClamdAddress::Tcp(address.to_owned()),
        max_stream_bytes: 10 * 1024 * 1024,
        fail_open: false,
        admit_too_large: false,
        timeout_secs,
    })
}

impl Rig {
    async fn new() -> Self {
        let clamd = Clamd::start("10M").await;
        let link = Link::to(clamd.address()).await;
        let objects = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let scanner = clamd_settings(&link.address, 2);
        let app = TestApp::spawn_with(
            Db::Postgres,
            Options {
                storage: Some(FaultyStore::on(objects.path(), &faults)),
                kms_faults: Some(faults.clone()),
                configure: Some(Box::new(move |s| s.scanner = scanner)),
                ..Options::default()
            },
        )
        .await;
        let database = DatabaseFaults::install(app.settings.database_url().expose_secret()).await;
        Self {
            app,
            faults,
            link,
            database,
            _clamd: clamd,
            _objects: objects,
        }
    }

    async fn fail(&self, step: Step, on: bool) {
        match step {
            Step::ChunkRead => self.faults.refuse_chunk_reads(on),
            Step::Scanner => self.link.hang(on),
            Step::KeyService => self.faults.refuse_new_keys(on),
            Step::DatabaseBeforeCommit => self.database.set("mark_stored", on).await,
            Step::DatabaseAfterCommit => self.database.set("complete_upload", on).await,
        }
    }
}

/// The stored package a finished upload's HEAD names, checked against what was sent.
async fn package_of(app: &TestApp, token: &str, url: &str, body: &[u8]) -> String {
    let done = head(app, token, url).await;
    assert_eq!(done.status(), 200);
    assert_eq!(done.headers()["upload-offset"], body.len().to_string());
    let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
    stored_package(app, token, &id, body).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_never_report_success_when_any_finalization_step_fails_and_resume_to_the_package() {
    let rig = Rig::new().await;
    let app = &rig.app;
    let endpoint = format!("{}/v1/uploads", app.base);
    for step in [
        Step::ChunkRead,
        Step::Scanner,
        Step::KeyService,
        Step::DatabaseBeforeCommit,
        Step::DatabaseAfterCommit,
    ] {
        for client in StockClient::both() {
            let what = format!("{} with a failing {step:?}", client.name);
            let user = format!("{}-{step:?}", client.name);
            let token = app.uploader(&user);
            app.grant(&token, &[client.category]).await;
            let body = client.sample(600_000);
            let file = app.data_dir().join(format!("{user}.bin"));
            std::fs::write(&file, &body).unwrap();

            // The first chunk goes through; the fault strikes once the rest has arrived.
            let started = client.run(&endpoint, &token, &file, client.chunk_size, None);
            let url = started["url"].as_str().unwrap().to_owned();
            rig.fail(step, true).await;
            let failed = client
                .try_run(&endpoint, &token, &file, body.len() as u64, Some(&url))
                .expect_err(&format!("{what}: the client must not report success"));
            assert!(failed["error"].is_string(), "{what}: {failed}");
            assert_unavailable_not_complete(&head(app, &token, &url).await, &format!("{what}: HEAD"));
            if !matches!(step, Step::DatabaseAfterCommit) {
                assert!(
                    app.packages(&token).await.iter().all(|p| p["status"] != "stored"),
                    "{what}: no package is stored yet"
                );
            }

            rig.fail(step, false).await;
            let resumed = client.run(&endpoint, &token, &file, body.len() as u64, Some(&url));
            assert_eq!(resumed["offset"], body.len(), "{what}: the client finishes");
            package_of(app, &token, &url, &body).await;
            let packages = app.packages(&token).await;
            assert_eq!(packages.len(), 1, "{what}: one package, however many tries");
        }
    }
}

const SECRET: &str = "finalization-kill-test-hs256-secret-32+bytes";

/// The real binary on the embedded default (SQLite, filesystem, local keys) in `dir`, scanning
/// through `scanner`.
async fn start_binary(dir: &std::path::Path, scanner: &str) -> Process {
    Process::serve(|| {
        let mut command = common::process::udim();
        command
            .env("UDIM_CONFIG_DIR", dir.join("no-config"))
            .env("UDIM_DATA_DIR", dir)
            .env("UDIM_AUTH__HS256_SECRET", SECRET)
            .env("UDIM_SCANNER__TYPE", "clamd")
            .env("UDIM_SCANNER__ADDRESS", format!("tcp://{scanner}"))
            .env("UDIM_SCANNER__TIMEOUT_SECS", "60");
        command
    })
    .await
}

/// SIGKILL of the real binary while it finishes an upload (every chunk recorded, the scan
/// running, nothing committed): the stock client reports failure, and after a restart it
/// resumes to the package without sending its bytes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_killed_between_the_last_chunk_and_the_commit_loses_no_upload() {
    let clamd = Clamd::start("10M").await;
    let link = Link::to(clamd.address()).await;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    for client in StockClient::both() {
        let user = format!("killed-{}", client.name);
        let token = common::uploader_token(SECRET, &user);
        let body = client.sample(700_000);
        let file = dir.path().join(format!("{user}.bin"));
        std::fs::write(&file, &body).unwrap();

        link.hang(false);
        let binary = start_binary(dir.path(), &link.address).await;
        common::grant_on(&http, &binary.base, &token, &[client.category]).await;

        // The scan of the finished upload hangs; the binary dies in the middle of it.
        link.hang(true);
        let stalled = link.stalled.load(std::sync::atomic::Ordering::SeqCst);
        let run = {
            let (endpoint, token, file) = (format!("{}/v1/uploads", binary.base), token.clone(), file.clone());
            let length = body.len() as u64;
            tokio::task::spawn_blocking(move || {
                let result = client.try_run(&endpoint, &token, &file, length, None);
                (client, result)
            })
        };
        for _ in 0..400 {
            if link.stalled.load(std::sync::atomic::Ordering::SeqCst) > stalled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            link.stalled.load(std::sync::atomic::Ordering::SeqCst) > stalled,
            "{user}: finalization reached the scanner"
        );
        binary.kill_9();
        let (client, result) = run.await.unwrap();
        let failed = result.expect_err("the client must not report success when the service died");
        let path = reqwest::Url::parse(failed["url"].as_str().unwrap())
            .unwrap()
            .path()
            .to_owned();

        // A new process on the same data; the scanner answers again.
        link.hang(false);
        let binary = start_binary(dir.path(), &link.address).await;
        let url = format!("{}{path}", binary.base);
        // The dead process's lease on the upload runs out within seconds (or the sweeper
        // finishes the upload first); until then the upload answers 423, as tus says.
        let restarted = std::time::Instant::now();
        let head = loop {
            let head = tus(http.head(&url), &token).send().await.unwrap();
            if head.status() != 423 {
                break head;
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(30),
                "{user}: the dead process's lease outlived it"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(head.status(), 200, "{user}");
        assert_eq!(
            head.headers()["upload-offset"],
            body.len().to_string(),
            "{user}: every byte was kept; the client has nothing to send again"
        );
        let resumed = client.run(
            &format!("{}/v1/uploads", binary.base),
            &token,
            &file,
            body.len() as u64,
            Some(&url),
        );
        assert_eq!(resumed["offset"], body.len(), "{}: resumed to the end", client.name);
        let done = tus(http.head(&url), &token).send().await.unwrap();
        assert_eq!(done.status(), 200);
        let id = done.headers()["udim-package-id"].to_str().unwrap().to_owned();
        let package: Value = http
            .get(format!("{}/v1/packages/{id}", binary.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(package["status"], "stored", "{}", client.name);
        assert_eq!(package["sha256"], sha256_hex(&body), "{}", client.name);
        drop(binary);
    }
}
