//! The ingestion path end to end on real components: the same suite on SQLite and on
//! PostgreSQL, each publishing through real RabbitMQ.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Db, Options, TestApp};
use serde_json::Value;

common::on_both_databases!(
    consent_then_upload_stores_the_package_and_announces_it_on_rabbitmq,
    upload_without_consent_is_403_and_leaves_nothing,
    a_withdrawn_consent_blocks_the_next_upload,
    an_updated_consent_changes_what_is_admitted,
    another_users_token_gets_404_on_the_package,
    a_failing_object_write_leaves_no_stored_row,
    an_oversized_upload_is_413_and_leaves_nothing,
    listing_is_paginated_filtered_and_scoped_to_the_caller,
    bad_tokens_and_missing_scopes_are_refused,
    the_ledger_assigns_gap_free_indices_with_rfc_9162_leaf_hashes,
);

fn rabbit() -> Options {
    Options {
        rabbitmq: true,
        ..Options::default()
    }
}

async fn consent_then_upload_stores_the_package_and_announces_it_on_rabbitmq(db: Db) {
    let app = TestApp::spawn_with(db, rabbit()).await;
    let alice = app.uploader("alice");
    let consent = app.grant(&alice, &["audio", "documents"]).await;
    assert_eq!(consent["event"], "given");
    let body = common::distinctive_bytes(300_000);
    let response = app
        .http
        .post(format!(
            "{}/v1/packages?data_category=audio&filename=../../voice%0A.m4a&metadata={}",
            app.base, "%7B%22device%22%3A%22phone%22%2C%22take%22%3A3%7D"
        ))
        .bearer_auth(&alice)
        .header("content-type", "audio/mp4")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    let sha = hex_sha256(&body);
    assert_eq!(package["status"], "stored");
    assert_eq!(package["size_bytes"], body.len() as u64);
    assert_eq!(package["sha256"], sha);
    assert_eq!(package["original_name"], "voice.m4a");
    assert_eq!(package["content_type"], "audio/mp4");
    assert_eq!(package["metadata"]["device"], "phone");
    assert_eq!(package["consent_entry_id"], consent["id"]);

    let id = package["id"].as_str().unwrap();
    let (status, fetched) = app.get_json(&alice, &format!("/v1/packages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["sha256"], sha);

    let queue = app.queue.as_ref().unwrap();
    let (properties, event) = queue
        .next_event(Duration::from_secs(15))
        .await
        .expect("the event reaches RabbitMQ");
    assert_eq!(event["event_type"], "package.stored");
    assert_eq!(event["schema_version"], 1);
    assert_eq!(event["package_id"], id);
    assert_eq!(event["user_id"], "alice");
    assert_eq!(event["data_category"], "audio");
    assert_eq!(event["content_type"], "audio/mp4");
    assert_eq!(event["size_bytes"], body.len() as u64);
    assert_eq!(event["sha256"], sha);
    assert_eq!(event["storage_uri"], package["storage_uri"]);
    assert_eq!(event["encryption_key_id"], package["encryption_key_id"]);
    assert_eq!(event["consent_entry_id"], consent["id"]);
    assert_eq!(
        properties.message_id().as_ref().map(|m| m.to_string()),
        event["event_id"].as_str().map(str::to_owned),
        "the AMQP message id is the event id"
    );
    assert_eq!(properties.delivery_mode(), &Some(2), "events are persistent");

    // The relay marks the event sent once the broker confirmed it.
    common::eventually("the outbox row is marked sent", || async {
        let outbox = app.outbox().await;
        outbox.len() == 1 && !outbox[0]["sent_at"].is_null()
    })
    .await;
    app.stop().await;
}

async fn upload_without_consent_is_403_and_leaves_nothing(db: Db) {
    let app = TestApp::spawn_with(db, rabbit()).await;
    let bob = app.uploader("bob");
    app.grant(&bob, &["documents"]).await;
    let response = app.upload(&bob, "audio", vec![1u8; 10_000]).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "errors are RFC 9457 problems"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:consent-required");
    assert_eq!(problem["status"], 403);
    assert!(app.object_files().is_empty(), "no object: {:?}", app.object_files());
    assert!(app.packages(&bob).await.is_empty(), "no package row");
    assert!(app.outbox().await.is_empty(), "no event");
    app.stop().await;
}

async fn a_withdrawn_consent_blocks_the_next_upload(db: Db) {
    let app = TestApp::spawn_with(db, rabbit()).await;
    let carol = app.uploader("carol");
    let consent = app.grant(&carol, &["text"]).await;
    assert_eq!(app.upload(&carol, "text", "first").await.status(), 201);
    let withdrawn = app.withdraw(&carol, consent["consent_id"].as_str().unwrap()).await;
    assert_eq!(withdrawn.status(), 201);
    let withdrawn: Value = withdrawn.json().await.unwrap();
    assert_eq!(withdrawn["event"], "withdrawn");
    assert_eq!(withdrawn["consent_id"], consent["consent_id"]);

    let response = app.upload(&carol, "text", "second").await;
    assert_eq!(response.status(), 403);
    assert_eq!(app.packages(&carol).await.len(), 1, "only the first upload exists");
    assert_eq!(app.outbox().await.len(), 1, "only the first upload was announced");

    let again = app.withdraw(&carol, consent["consent_id"].as_str().unwrap()).await;
    assert_eq!(again.status(), 409, "withdrawing twice is a conflict");
    let (_, overview) = app.get_json(&carol, "/v1/consents").await;
    assert_eq!(overview["active"].as_array().unwrap().len(), 0);
    assert_eq!(overview["history"].as_array().unwrap().len(), 2);
    app.stop().await;
}

async fn an_updated_consent_changes_what_is_admitted(db: Db) {
    let app = TestApp::spawn(db).await;
    let dora = app.uploader("dora");
    let consent = app.grant(&dora, &["audio"]).await;
    let id = consent["consent_id"].as_str().unwrap();
    let response = app
        .http
        .put(format!("{}/v1/consents/{id}", app.base))
        .bearer_auth(&dora)
        .json(&serde_json::json!({
            "purposes": ["model-training"],
            "data_categories": ["images"],
            "policy_version": "2026-02",
            "jurisdiction": "EU",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["event"], "updated");
    assert_eq!(updated["consent_id"], consent["consent_id"]);
    assert_eq!(updated["index"], 1);
    assert!(updated["record_proof"]["checkpoint"].is_string());
    assert_eq!(app.upload(&dora, "audio", "no longer covered").await.status(), 403);
    assert_eq!(app.upload(&dora, "images", "now covered").await.status(), 201);
    let mallory = app.uploader("mallory");
    let response = app
        .http
        .put(format!("{}/v1/consents/{id}", app.base))
        .bearer_auth(&mallory)
        .json(&serde_json::json!({
            "purposes": ["x"], "data_categories": ["audio"], "policy_version": "1", "jurisdiction": "EU",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "another user cannot update dora's consent");
    app.stop().await;
}

async fn another_users_token_gets_404_on_the_package(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    let mallory = app.uploader("mallory");
    app.grant(&alice, &["documents"]).await;
    let package: Value = app.upload(&alice, "documents", "private").await.json().await.unwrap();
    let id = package["id"].as_str().unwrap();
    let (status, problem) = app.get_json(&mallory, &format!("/v1/packages/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(problem["type"], "urn:udim:problem:not-found");
    assert!(app.packages(&mallory).await.is_empty(), "mallory lists nothing");
    let withdrawn = app
        .withdraw(&mallory, package["consent_entry_id"].as_str().unwrap())
        .await;
    assert_eq!(withdrawn.status(), 404, "nor can mallory withdraw alice's consent");
    let (status, _) = app.get_json(&alice, &format!("/v1/packages/{id}")).await;
    assert_eq!(status, 200);
    app.stop().await;
}

async fn a_failing_object_write_leaves_no_stored_row(db: Db) {
    // Fault injection around the real filesystem store: the write fails after 100 KB.
    let dir = tempfile::tempdir().unwrap();
    let faults = common::faults::Faults::new();
    faults.fail_writes_after(100_000);
    let failing = common::faults::FaultyStore::on(&dir.path().join("objects"), &faults);
    let app = TestApp::spawn_with(
        db,
        Options {
            rabbitmq: true,
            storage: Some(failing),
            ..Options::default()
        },
    )
    .await;
    let dave = app.uploader("dave");
    app.grant(&dave, &["video"]).await;
    let response = app.upload(&dave, "video", vec![7u8; 1_000_000]).await;
    assert!(response.status().is_server_error(), "got {}", response.status());
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 503, "a storage failure is worth retrying: {problem}");
    assert!(
        app.packages(&dave).await.is_empty(),
        "no package row, stored or otherwise"
    );
    assert!(app.outbox().await.is_empty(), "no event");
    let leftovers = common::files_under(&dir.path().join("objects"));
    assert!(leftovers.is_empty(), "no object or part left: {leftovers:?}");
    app.stop().await;
}

async fn an_oversized_upload_is_413_and_leaves_nothing(db: Db) {
    let app = TestApp::spawn_with(
        db,
        Options {
            max_bytes: Some(64 * 1024),
            ..Options::default()
        },
    )
    .await;
    let erin = app.uploader("erin");
    app.grant(&erin, &["images"]).await;
    // Declared too large: refused before reading.
    let response = app.upload(&erin, "images", vec![0u8; 64 * 1024 + 1]).await;
    assert_eq!(response.status(), 413);
    // Streamed without a length: refused once the stream passes the limit.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..20).map(|_| Ok(Bytes::from(vec![1u8; 8192]))).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = app.upload(&erin, "images", body).await;
    assert_eq!(response.status(), 413);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:payload-too-large");
    assert!(app.object_files().is_empty(), "{:?}", app.object_files());
    assert!(app.packages(&erin).await.is_empty());
    assert!(app.outbox().await.is_empty());
    app.stop().await;
}

async fn listing_is_paginated_filtered_and_scoped_to_the_caller(db: Db) {
    let app = TestApp::spawn(db).await;
    let frank = app.uploader("frank");
    let grace = app.uploader("grace");
    app.grant(&frank, &["text", "audio"]).await;
    app.grant(&grace, &["text"]).await;
    for i in 0..5 {
        assert_eq!(app.upload(&frank, "text", format!("t{i}")).await.status(), 201);
    }
    assert_eq!(app.upload(&frank, "audio", "a").await.status(), 201);
    assert_eq!(app.upload(&grace, "text", "g").await.status(), 201);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/packages?data_category=text&limit=2&cursor={c}"),
            None => "/v1/packages?data_category=text&limit=2".into(),
        };
        let (status, page) = app.get_json(&frank, &path).await;
        assert_eq!(status, 200);
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["data_category"], "text");
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "every text package exactly once");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);
    let (_, stored) = app.get_json(&frank, "/v1/packages?status=stored").await;
    assert_eq!(stored["items"].as_array().unwrap().len(), 6);
    let (status, _) = app.get_json(&frank, "/v1/packages?status=bogus").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json(&frank, "/v1/packages?cursor=%%%").await;
    assert_eq!(status, 400);
    assert_eq!(app.packages(&grace).await.len(), 1);
    app.stop().await;
}

async fn bad_tokens_and_missing_scopes_are_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let response = app.http.get(format!("{}/v1/packages", app.base)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, problem) = app.get_json("not.a.jwt", "/v1/packages").await;
    assert_eq!(status, 401);
    assert_eq!(problem["type"], "urn:udim:problem:unauthenticated");
    let reader = app.token("pipeline", &["udim:read"]);
    let (status, problem) = app.get_json(&reader, "/v1/packages").await;
    assert_eq!(status, 403);
    assert_eq!(problem["type"], "urn:udim:problem:insufficient-scope");
    let uploader = app.uploader("alice");
    let (status, _) = app.get_json(&uploader, "/v1/admin/outbox").await;
    assert_eq!(status, 403);
    app.stop().await;
}

async fn the_ledger_assigns_gap_free_indices_with_rfc_9162_leaf_hashes(db: Db) {
    let app = TestApp::spawn(db).await;
    let tokens: Vec<String> = (0..8).map(|i| app.uploader(&format!("user{i}"))).collect();
    let grants = futures::future::join_all(tokens.iter().map(|t| app.grant(t, &["text"]))).await;
    let mut indices: Vec<u64> = grants.iter().map(|g| g["index"].as_u64().unwrap()).collect();
    indices.sort();
    assert_eq!(
        indices,
        (0..8).collect::<Vec<u64>>(),
        "concurrent appends get 0..n with no gap"
    );
    // Each leaf is the RFC 9162 leaf hash of the entry's canonical encoding, recomputed here
    // from the answer's fields, its salt and the subject (docs/ledger.md).
    for (n, g) in grants.iter().enumerate() {
        use base64::Engine as _;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap()
        };
        let mut record = g.clone();
        record["record_id"] = g["id"].clone();
        record["subject"] = format!("user{n}").into();
        let record: udim_ledger::entry::ConsentRecord = serde_json::from_value(record).unwrap();
        let salt: [u8; 16] = b64(&g["salt"]).try_into().unwrap();
        assert_eq!(
            b64(&g["leaf_hash"]),
            record.leaf_hash(&salt).to_vec(),
            "the leaf is recomputed from the record"
        );
        let mut other = record.clone();
        other.subject = "someone-else".into();
        assert_ne!(b64(&g["leaf_hash"]), other.leaf_hash(&salt).to_vec());
    }
    app.stop().await;
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// A consent's `expires_at` ends what it admits: uploads under it work until then and are
/// refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_consent_admits_nothing() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let granted = app
        .http
        .post(format!("{}/v1/consents", app.base))
        .bearer_auth(&alice)
        .json(&serde_json::json!({
            "purposes": ["model-training"],
            "data_categories": ["text"],
            "policy_version": "2026-01",
            "jurisdiction": "EU",
            "expires_at": expires_at,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 201);
    assert_eq!(
        app.upload(&alice, "text", "before".as_bytes().to_vec()).await.status(),
        201
    );
    while chrono::Utc::now() <= expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = app.upload(&alice, "text", "after".as_bytes().to_vec()).await;
    assert_eq!(after.status(), 403, "the consent has expired");
    assert_eq!(app.packages(&alice).await.len(), 1);
    app.stop().await;
}

/// A withdrawal that lands while an upload is still streaming wins: the upload is refused at
/// its end and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_during_an_upload_means_nothing_is_stored() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    let consent = app.grant(&alice, &["audio"]).await;
    let (tx, body) = common::body_in_flight();
    let uploading = tokio::spawn(
        app.http
            .post(format!("{}/v1/packages?data_category=audio&filename=a.bin", app.base))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send(),
    );
    tx.send(Ok(common::distinctive_bytes(200_000))).await.unwrap();
    let mut receiving = false;
    for _ in 0..400 {
        if app.packages(&alice).await.iter().any(|p| p["status"] == "receiving") {
            receiving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(receiving, "the upload is streaming");
    assert_eq!(
        app.withdraw(&alice, consent["id"].as_str().unwrap()).await.status(),
        201
    );
    tx.send(Ok(common::distinctive_bytes(100_000))).await.unwrap();
    drop(tx);
    let answer = uploading.await.unwrap().unwrap();
    assert_eq!(answer.status(), 403, "refused: the consent was withdrawn meanwhile");
    let problem: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:consent-required");
    assert!(
        problem["detail"].as_str().unwrap_or_default().contains("withdrawn"),
        "{problem}"
    );
    assert!(
        app.packages(&alice).await.iter().all(|p| p["status"] != "stored"),
        "nothing is stored"
    );
    assert!(
        common::files_under(&app.objects_dir().join("packages")).is_empty(),
        "no object is left"
    );
    app.stop().await;
}

/// A package and its `package.stored` event are written in one transaction: a failure of the
/// event's insert (a real database error that passes, injected by a trigger) leaves neither
/// a stored package nor an event, nor an object; once it passes the same upload is stored
/// with exactly one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_and_its_event_commit_together_or_not_at_all() {
    let app = TestApp::spawn(Db::Postgres).await;
    let faults = common::faults::DatabaseFaults::install(app.settings.database_url().expose_secret()).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    faults.set("store_event", true).await;
    let failed = app.upload(&alice, "audio", common::distinctive_bytes(20_000)).await;
    assert_eq!(failed.status(), 503);
    assert!(
        app.packages(&alice).await.iter().all(|p| p["status"] != "stored"),
        "no package is stored without its event"
    );
    assert!(
        app.outbox().await.iter().all(|e| e["event_type"] != "package.stored"),
        "and no event without its package"
    );
    assert!(
        common::files_under(&app.objects_dir().join("packages")).is_empty(),
        "nor an object"
    );
    faults.set("store_event", false).await;
    let stored = app.upload(&alice, "audio", common::distinctive_bytes(20_000)).await;
    assert_eq!(stored.status(), 201);
    let events: Vec<Value> = app
        .outbox()
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "package.stored")
        .collect();
    assert_eq!(events.len(), 1);
    app.stop().await;
}
