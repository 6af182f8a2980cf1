//! Downstream reads: a `udim:read` service reads stored plaintext, whole or by range, only
//! while the owner's consent covers the stated purpose; every read is recorded; a tampered
//! object stops the stream instead of releasing unauthenticated bytes.

mod common;

use common::{Db, TestApp};
use serde_json::Value;

async fn read(app: &TestApp, token: &str, id: &str, purpose: &str, range: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose={purpose}", app.base))
        .bearer_auth(token);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.unwrap()
}

async fn downstream_reads_decrypt_check_consent_and_are_recorded(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    let consent = app.grant(&alice, &["audio"]).await;
    // Several segments and a short last one.
    let plaintext = common::distinctive_bytes(300_001);
    let package: Value = app
        .upload(&alice, "audio", plaintext.clone())
        .await
        .json()
        .await
        .unwrap();
    let id = package["id"].as_str().unwrap();
    let pipeline = app.token("pipeline", &["udim:read"]);

    let full = read(&app, &pipeline, id, "model-training", None).await;
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["content-type"], "application/octet-stream");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.bytes().await.unwrap().as_ref(), plaintext.as_slice());

    for (range, expected) in [
        ("bytes=0-0", 0..1),
        ("bytes=65530-65545", 65530..65546),
        ("bytes=131072-", 131072..300_001),
        ("bytes=-17", 299_984..300_001),
        ("bytes=299999-999999", 299_999..300_001),
        // A last position past the end, however large, is clamped (RFC 9110 §14.1.1).
        ("bytes=0-18446744073709551615", 0..300_001),
        ("bytes=100-99999999999999999999999", 100..300_001),
    ] {
        let partial = read(&app, &pipeline, id, "model-training", Some(range)).await;
        assert_eq!(partial.status(), 206, "{range}");
        let content_range = partial.headers()["content-range"].to_str().unwrap().to_owned();
        assert_eq!(
            content_range,
            format!("bytes {}-{}/300001", expected.start, expected.end - 1)
        );
        assert_eq!(partial.bytes().await.unwrap().as_ref(), &plaintext[expected], "{range}");
    }
    for unsatisfiable in ["bytes=300001-", "bytes=18446744073709551615-", "bytes=-0"] {
        let refused = read(&app, &pipeline, id, "model-training", Some(unsatisfiable)).await;
        assert_eq!(refused.status(), 416, "{unsatisfiable}");
        assert_eq!(refused.headers()["content-range"], "bytes */300001", "{unsatisfiable}");
    }

    let other_purpose = read(&app, &pipeline, id, "advertising", None).await;
    assert_eq!(other_purpose.status(), 403, "the consent does not name this purpose");
    assert_eq!(
        read(&app, &alice, id, "model-training", None).await.status(),
        403,
        "upload scope cannot read"
    );
    let missing = read(
        &app,
        &pipeline,
        "00000000-0000-0000-0000-000000000000",
        "model-training",
        None,
    )
    .await;
    assert_eq!(missing.status(), 404);

    app.withdraw(&alice, consent["consent_id"].as_str().unwrap()).await;
    let after = read(&app, &pipeline, id, "model-training", None).await;
    assert_eq!(after.status(), 403, "withdrawal takes effect for reads at once");

    // 1 full read and 7 ranges were served and recorded; refused reads were not.
    let url = app.settings.database_url().expose_secret().to_owned();
    let reads: i64 = match db {
        Db::Sqlite => {
            use sqlx::Connection as _;
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(
                "SELECT count(*) FROM package_reads WHERE reader = 'pipeline' AND purpose = 'model-training'",
            )
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
        Db::Postgres => {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(
                "SELECT count(*) FROM package_reads WHERE reader = 'pipeline' AND purpose = 'model-training'",
            )
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
    };
    assert_eq!(reads, 8);
    app.stop().await;
}

/// An empty package has no byte a first position could name: such ranges are unsatisfiable
/// (416 with `bytes */0`); a suffix range is satisfiable but names no byte a 206 could carry,
/// so it gets the whole, empty body (200), as a read without a range does (RFC 9110 §14.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_package_answers_ranges_as_rfc_9110_says() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let response = app.upload(&alice, "audio", Vec::new()).await;
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    let id = package["id"].as_str().unwrap();
    let pipeline = app.token("pipeline", &["udim:read"]);
    for range in ["bytes=0-", "bytes=0-0", "bytes=0-18446744073709551615"] {
        let refused = read(&app, &pipeline, id, "model-training", Some(range)).await;
        assert_eq!(refused.status(), 416, "{range}");
        assert_eq!(refused.headers()["content-range"], "bytes */0", "{range}");
    }
    for range in [None, Some("bytes=-1"), Some("bytes=-99999999999999999999999")] {
        let whole = read(&app, &pipeline, id, "model-training", range).await;
        assert_eq!(whole.status(), 200, "{range:?}");
        assert!(whole.headers().get("content-range").is_none());
        assert!(whole.bytes().await.unwrap().is_empty());
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_object_never_releases_the_tampered_segment() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let plaintext = common::distinctive_bytes(200_000);
    let package: Value = app
        .upload(&alice, "audio", plaintext.clone())
        .await
        .json()
        .await
        .unwrap();
    let id = package["id"].as_str().unwrap();
    let path = app.objects_dir().join("packages").join(id);
    let mut raw = std::fs::read(&path).unwrap();
    let at = raw.len() - 70_000; // inside the second segment
    raw[at] ^= 1;
    std::fs::write(&path, raw).unwrap();

    let pipeline = app.token("pipeline", &["udim:read"]);
    let sent = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(&pipeline)
        .send()
        .await;
    // The tampered segment is found while the first one is still in the server's write
    // buffer, sometimes before even the headers leave: the connection is then cut with no
    // response at all, which releases nothing either. Whatever arrived before the cut is
    // what is checked.
    let mut received = Vec::new();
    if let Ok(response) = sent {
        assert_eq!(response.status(), 200, "headers go out before the body streams");
        let mut body = response.bytes_stream();
        while let Some(Ok(bytes)) = futures::StreamExt::next(&mut body).await {
            received.extend_from_slice(&bytes);
        }
    }
    assert!(
        received.len() <= 64 * 1024,
        "nothing from the tampered second segment on: {} bytes arrived",
        received.len()
    );
    assert!(
        plaintext.starts_with(&received),
        "only authenticated plaintext was released"
    );
    assert_eq!(received.len() % (64 * 1024), 0, "whole authenticated segments only");
    app.stop().await;
}

common::on_both_databases!(downstream_reads_decrypt_check_consent_and_are_recorded);

/// A consent that names recipients admits reads by those principals only; one that names
/// none admits any principal with the read scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_naming_recipients_is_read_only_by_them() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    let response = app
        .http
        .post(format!("{}/v1/consents", app.base))
        .bearer_auth(&alice)
        .json(&serde_json::json!({
            "purposes": ["model-training"],
            "data_categories": ["audio"],
            "recipients": ["pipeline-a"],
            "policy_version": "2026-01",
            "jurisdiction": "EU",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let package: Value = app
        .upload(&alice, "audio", b"only for a".to_vec())
        .await
        .json()
        .await
        .unwrap();
    let id = package["id"].as_str().unwrap();

    let named = app.token("pipeline-a", &["udim:read"]);
    let response = read(&app, &named, id, "model-training", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"only for a");

    let other = app.token("pipeline-b", &["udim:read"]);
    let response = read(&app, &other, id, "model-training", None).await;
    assert_eq!(response.status(), 403);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:consent-required");
    app.stop().await;
}

/// Tampering with an object's header — format, nonce material, key id, any byte of it — is
/// detected too: the read releases no plaintext at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_object_header_releases_nothing() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let plaintext = common::distinctive_bytes(100_000);
    let package: Value = app
        .upload(&alice, "audio", plaintext.clone())
        .await
        .json()
        .await
        .unwrap();
    let id = package["id"].as_str().unwrap();
    let path = app.objects_dir().join("packages").join(id);
    let original = std::fs::read(&path).unwrap();
    let (_, header_len) = udim::formats::envelope::Header::decode(&original)
        .unwrap()
        .expect("a whole header");
    let pipeline = app.token("pipeline", &["udim:read"]);
    for at in 0..header_len {
        let mut raw = original.clone();
        raw[at] ^= 0x01;
        std::fs::write(&path, raw).unwrap();
        let mut received = Vec::new();
        if let Ok(response) = app
            .http
            .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
            .bearer_auth(&pipeline)
            .send()
            .await
            && response.status() == 200
        {
            let mut body = response.bytes_stream();
            while let Some(Ok(bytes)) = futures::StreamExt::next(&mut body).await {
                received.extend_from_slice(&bytes);
            }
        }
        assert!(
            received.is_empty(),
            "header byte {at} changed: {} bytes of plaintext came out",
            received.len()
        );
    }
    std::fs::write(&path, &original).unwrap();
    let intact = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(
        intact.bytes().await.unwrap(),
        plaintext,
        "the untouched object still reads"
    );
    app.stop().await;
}
