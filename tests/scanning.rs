//! Malware scanning against a real clamd that the test starts, with the custom EICAR
//! signatures (no signature download is possible here): detections are quarantined and never
//! stored, clean files are stored, a stopped clamd makes uploads fail closed, and erasure
//! takes the quarantine records too.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::faults::Link;
use common::{Db, Options, TestApp};
use serde_json::Value;
use udim::config::{ClamdSettings, ScannerSettings};
use udim_testkit::clamd::Clamd;

/// The standard 68-byte EICAR test string.
const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The service's settings for the test's clamd.
trait ClamdScannerSettings {
    fn settings(&self, max_stream_bytes: u64, admit_too_large: bool) -> ScannerSettings;
}

impl ClamdScannerSettings for Clamd {
    fn settings(&self, max_stream_bytes: u64, admit_too_large: bool) -> ScannerSettings {
        ScannerSettings::Clamd(ClamdSettings {
            address: udim_local::clamd::ClamdAddress::Tcp(self.address()),
            max_stream_bytes,
            fail_open: false,
            admit_too_large,
            timeout_secs: 30,
        })
    }
}

async fn app_with(db: Db, scanner: ScannerSettings) -> TestApp {
    TestApp::spawn_with(
        db,
        Options {
            configure: Some(Box::new(move |s| s.scanner = scanner)),
            ..Options::default()
        },
    )
    .await
}

async fn detections_are_quarantined_and_clean_files_stored(db: Db) {
    let clamd = Clamd::start("10M").await;
    let app = app_with(db, clamd.settings(10 * 1024 * 1024, false)).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;

    let clean = app
        .upload(&alice, "documents", common::distinctive_bytes(200_000))
        .await;
    assert_eq!(clean.status(), 201);
    let clean: Value = clean.json().await.unwrap();
    assert_eq!(clean["status"], "stored");
    assert_eq!(clean["scan_status"], "clean");

    let mut embedded = common::distinctive_bytes(300_000);
    embedded.splice(150_000..150_000, EICAR.iter().copied());
    for (name, body) in [("alone", EICAR.to_vec()), ("inside a larger file", embedded)] {
        let response = app.upload(&alice, "documents", body).await;
        assert_eq!(response.status(), 422, "EICAR {name}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:udim:problem:malware-detected", "EICAR {name}");
        assert!(problem["detail"].as_str().unwrap().contains("EICAR"), "{problem}");
    }

    let packages = app.packages(&alice).await;
    let quarantined: Vec<&Value> = packages.iter().filter(|p| p["status"] == "quarantined").collect();
    assert_eq!(quarantined.len(), 2);
    for p in &quarantined {
        assert_eq!(p["scan_status"], "infected");
        assert!(p["storage_uri"].is_null(), "a quarantined package has no object");
    }
    assert_eq!(
        app.object_files().len(),
        1,
        "only the clean object exists: {:?}",
        app.object_files()
    );
    let events: Vec<String> = app
        .outbox()
        .await
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.iter().filter(|e| *e == "package.quarantined").count(), 2);
    assert_eq!(events.iter().filter(|e| *e == "package.stored").count(), 1);

    // Erasing everything takes the quarantine records too: they name the file and the
    // signature, and there is no object to delete.
    let erased: Value = app
        .http
        .delete(format!("{}/v1/me", app.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(erased["packages_deleted"], 3, "one stored, two quarantined: {erased}");
    for p in app.packages(&alice).await {
        assert_eq!(p["status"], "deleted");
        assert!(p["scan_detail"].is_null() && p["sha256"].is_null(), "{p}");
    }
    assert!(app.object_files().is_empty());
    app.stop().await;
}

common::on_both_databases!(detections_are_quarantined_and_clean_files_stored);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_scanner_fails_closed_and_nothing_is_stored() {
    let clamd = Clamd::start("10M").await;
    let settings = clamd.settings(10 * 1024 * 1024, false);
    let app = app_with(Db::Sqlite, settings).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    drop(clamd);
    let response = app.upload(&alice, "documents", "harmless, but unscanned").await;
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:scanner-unavailable");
    assert!(app.packages(&alice).await.is_empty());
    assert!(app.object_files().is_empty());
    assert!(app.outbox().await.is_empty());
    app.stop().await;
}

/// clamd's connection lost while it is reading the upload: the upload fails closed with 503,
/// and neither a package, an object (not even a temporary one) nor an event is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_lost_in_the_middle_of_a_scan_fails_closed_and_leaves_nothing() {
    let clamd = Clamd::start("10M").await;
    let link = Link::to(clamd.address()).await;
    let scanner = ScannerSettings::Clamd(ClamdSettings {
        address: udim_local::clamd::ClamdAddress::Tcp(link.address.clone()),
        max_stream_bytes: 10 * 1024 * 1024,
        fail_open: false,
        admit_too_large: false,
        timeout_secs: 30,
    });
    let app = app_with(Db::Sqlite, scanner).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;

    let (body, request) = common::body_in_flight();
    let upload = common::status_of(
        app.http
            .post(format!(
                "{}/v1/packages?data_category=documents&filename=a.txt",
                app.base
            ))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body(request),
    );
    let piece = vec![b'a'; 256 * 1024];
    body.send(Ok(piece.clone())).await.unwrap();
    for _ in 0..400 {
        if link.forwarded.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(link.forwarded.load(Ordering::SeqCst), 1, "the scan has begun");
    body.send(Ok(piece.clone())).await.unwrap();
    link.refuse(true);
    link.cut();
    for _ in 0..8 {
        if body.send(Ok(piece.clone())).await.is_err() {
            break;
        }
    }
    drop(body);
    assert_eq!(upload.await.unwrap(), 503);
    assert!(app.packages(&alice).await.is_empty());
    assert!(app.object_files().is_empty(), "{:?}", app.object_files());
    assert!(app.outbox().await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_scanner_limit_follow_the_configured_policy() {
    let clamd = Clamd::start("1M").await;
    let big = common::distinctive_bytes(2 * 1024 * 1024);

    let app = app_with(Db::Sqlite, clamd.settings(1024 * 1024, false)).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["video"]).await;
    let response = app.upload(&alice, "video", big.clone()).await;
    assert_eq!(response.status(), 413, "rejected by default");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:too-large-to-scan");
    assert!(app.packages(&alice).await.is_empty() && app.object_files().is_empty());
    app.stop().await;

    let app = app_with(Db::Sqlite, clamd.settings(1024 * 1024, true)).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["video"]).await;
    let response = app.upload(&alice, "video", big).await;
    assert_eq!(response.status(), 201, "admitted under admit_too_large");
    let package: Value = response.json().await.unwrap();
    assert_eq!(package["scan_status"], "too_large_admitted");
    let event = &app.outbox().await[0];
    assert_eq!(event["payload"]["scan"]["status"], "too_large_admitted");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_split_across_two_tus_patches_is_quarantined() {
    let clamd = Clamd::start("10M").await;
    let app = app_with(Db::Sqlite, clamd.settings(10 * 1024 * 1024, false)).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let mut body = common::distinctive_bytes(100_000);
    body.extend_from_slice(EICAR);
    body.extend(common::distinctive_bytes(50_000));
    let split = 100_000 + EICAR.len() / 2;
    let created = app
        .http
        .post(format!("{}/v1/uploads", app.base))
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", body.len().to_string())
        .header("upload-metadata", "data_category ZG9jdW1lbnRz")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.base, created.headers()["location"].to_str().unwrap());
    let mut statuses = Vec::new();
    for (offset, part) in [(0, &body[..split]), (split, &body[split..])] {
        let response = app
            .http
            .patch(&url)
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [204, 422],
        "the second PATCH completes the upload and finds the split signature"
    );
    let packages = app.packages(&alice).await;
    assert_eq!(packages.len(), 1);
    assert_eq!(packages[0]["status"], "quarantined");
    assert!(
        app.object_files().is_empty(),
        "no object, no chunk: {:?}",
        app.object_files()
    );
    app.stop().await;
}
