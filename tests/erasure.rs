//! Erasure and export on both databases: one package (crypto-shredded, object gone,
//! `package.deleted` announced, no longer readable), everything of one user (packages and
//! ledger bodies, the log still verifying, nobody else touched), each erasure recorded in the
//! consent ledger with a receipt that proves it and no personal data in the log, a failed
//! object deletion or recording finished later by the sweeper, and the export of what the
//! service holds.

mod common;

use std::sync::Arc;

use common::{Db, Options, TestApp};
use serde_json::Value;

async fn delete(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http
        .delete(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn read_status(app: &TestApp, id: &str) -> u16 {
    let pipeline = app.token("pipeline", &["udim:read"]);
    app.http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(&pipeline)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn upload(app: &TestApp, token: &str, bytes: Vec<u8>) -> String {
    let response = app.upload(token, "audio", bytes).await;
    assert_eq!(response.status(), 201);
    let package: Value = response.json().await.unwrap();
    package["id"].as_str().unwrap().to_owned()
}

/// With `relayed`, events go to RabbitMQ before the erasure (and are scrubbed from the
/// outbox); without, they are still unsent (and are dropped).
async fn erasure(db: Db, relayed: bool) {
    let app = TestApp::spawn_with(
        db,
        Options {
            rabbitmq: relayed,
            ..Options::default()
        },
    )
    .await;
    let (alice, bob) = (app.uploader("alice"), app.uploader("bob"));
    let alices_consent = app.grant(&alice, &["audio"]).await;
    app.grant(&bob, &["audio"]).await;
    let first_bytes = common::distinctive_bytes(100_000);
    let first = upload(&app, &alice, first_bytes.clone()).await;
    let second = upload(&app, &alice, common::distinctive_bytes(50_000)).await;
    let bobs = upload(&app, &bob, common::distinctive_bytes(70_000)).await;
    let objects = app.objects_dir().join("packages");

    let (status, export) = app.get_json(&alice, "/v1/me/export").await;
    assert_eq!(status, 200);
    assert_eq!(export["subject"], "alice");
    let consents = export["consents"].as_array().unwrap();
    assert_eq!(consents.len(), 1);
    for field in [
        "id",
        "consent_id",
        "index",
        "event",
        "purposes",
        "data_categories",
        "leaf_hash",
        "salt",
    ] {
        assert_eq!(
            consents[0][field], alices_consent[field],
            "the export's consent {field}"
        );
    }
    let packages = export["packages"].as_array().unwrap();
    let ids: std::collections::BTreeSet<&str> = packages.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        std::collections::BTreeSet::from([first.as_str(), second.as_str()]),
        "alice's two, not bob's"
    );
    let exported = packages.iter().find(|p| p["id"] == first.as_str()).unwrap();
    assert_eq!(exported["status"], "stored");
    assert_eq!(exported["size_bytes"], first_bytes.len());
    assert_eq!(
        exported["sha256"],
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &first_bytes).as_ref())
    );
    assert_eq!(exported["data_category"], "audio");

    if relayed {
        for _ in 0..300 {
            if app.outbox().await.iter().all(|e| !e["sent_at"].is_null()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    // One package.
    assert_eq!(
        delete(&app, &bob, &format!("/v1/packages/{first}")).await.status(),
        404,
        "not bob's to delete"
    );
    let key = ledger_key(&app).await;
    let receipt: Value = {
        let erased = delete(&app, &alice, &format!("/v1/packages/{first}")).await;
        assert_eq!(erased.status(), 200);
        erased.json().await.unwrap()
    };
    assert_receipt(&receipt, &key, "alice", &[first.as_str()]);
    assert_eq!(
        delete(&app, &alice, &format!("/v1/packages/{first}")).await.status(),
        204,
        "repeatable, and recorded once"
    );
    let (status, tombstone) = app.get_json(&alice, &format!("/v1/packages/{first}")).await;
    assert_eq!(status, 200);
    assert_eq!(tombstone["status"], "deleted");
    for cleared in ["sha256", "encryption_key_id", "storage_uri", "sniffed_content_type"] {
        assert!(tombstone[cleared].is_null(), "{cleared} is cleared: {tombstone}");
    }
    assert_eq!(tombstone["original_name"], "");
    assert!(!objects.join(&first).exists(), "the object is gone");
    assert_eq!(read_status(&app, &first).await, 404, "an erased package cannot be read");
    assert_eq!(read_status(&app, &second).await, 200);
    let outbox = app.outbox().await;
    let deleted: Vec<&Value> = outbox.iter().filter(|e| e["event_type"] == "package.deleted").collect();
    assert_eq!(deleted.len(), 1, "one event, even for two requests");
    assert_eq!(deleted[0]["payload"]["package_id"], first.as_str());
    assert_eq!(deleted[0]["payload"]["reason"], "user_request");
    let earlier: Vec<&Value> = outbox
        .iter()
        .filter(|e| e["aggregate_id"] == first.as_str() && e["event_type"] == "package.stored")
        .collect();
    if relayed {
        assert_eq!(earlier.len(), 1, "the sent package.stored stays, as an id");
        assert_eq!(earlier[0]["payload"], serde_json::json!({"erased": true}));
    } else {
        assert!(earlier.is_empty(), "an unsent package.stored is dropped: {earlier:?}");
    }

    // An unfinished resumable upload of alice's.
    let upload_url = app
        .create_upload(&alice, 1000, "filename YS5iaW4=,data_category YXVkaW8=")
        .await;

    // Everything of alice's.
    let response = delete(&app, &alice, "/v1/me").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        report["packages_deleted"], 1,
        "the second package; the first was gone already"
    );
    assert_eq!(report["ledger_entries_redacted"], 1);
    assert_eq!(report["uploads_terminated"], 1);
    assert_eq!(report["receipts"].as_array().unwrap().len(), 1);
    assert_receipt(&report["receipts"][0], &key, "alice", &[second.as_str()]);
    assert!(!objects.join(&second).exists());
    let head = app
        .http
        .head(&upload_url)
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404, "the unfinished upload is gone too");
    let (_, consents) = app.get_json(&alice, "/v1/consents").await;
    assert_eq!(
        consents["history"].as_array().unwrap().len(),
        0,
        "no consent record is left readable"
    );
    assert_eq!(
        app.upload(&alice, "audio", vec![1u8; 10]).await.status(),
        403,
        "and none is in force"
    );
    let again: Value = delete(&app, &alice, "/v1/me").await.json().await.unwrap();
    assert_eq!(
        (
            again["packages_deleted"].as_u64(),
            again["ledger_entries_redacted"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        again["receipts"],
        serde_json::json!([]),
        "a request that found nothing to erase is not recorded"
    );

    // Bob is untouched, and the log still verifies with alice's entry redacted.
    assert_eq!(read_status(&app, &bobs).await, 200);
    assert!(objects.join(&bobs).exists());
    let (_, bobs_consents) = app.get_json(&bob, "/v1/consents").await;
    assert_eq!(bobs_consents["history"].as_array().unwrap().len(), 1);
    let audit = udim::consent::audit::audit(app_ledger(&app).await, &ledger_key(&app).await)
        .await
        .expect("the log verifies after erasure");
    assert_eq!(
        (audit.entries, audit.redacted),
        (4, 1),
        "two grants, two erasure records"
    );
    let rows = app_ledger(&app).await.audit_rows(0, 100).await.unwrap();
    let bodies: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.body.as_ref().map(|(b, _)| b.as_str()))
        .collect();
    assert_eq!(bodies.len(), 3, "bob's grant and the two erasure records");
    assert!(
        bodies.iter().all(|b| !b.contains("alice")),
        "nothing in the log names alice any more: {bodies:?}"
    );
    app.stop().await;
}

/// Checks an erasure receipt as its holder would, offline: the record recomputes the proven
/// leaf, the proof holds against a checkpoint signed by the ledger's key, the commitment
/// opens to `subject` with the receipt's nonce, and the record names exactly `packages`.
fn assert_receipt(receipt: &Value, key: &udim_ledger::note::VerifierKey, subject: &str, packages: &[&str]) {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let record: udim_ledger::entry::ErasureRecord = serde_json::from_value(receipt["record"].clone()).unwrap();
    let salt: [u8; 16] = b64(&receipt["salt"]).try_into().unwrap();
    let nonce: [u8; 16] = b64(&receipt["subject_nonce"]).try_into().unwrap();
    let proof: udim_ledger::proof::RecordProof = serde_json::from_value(receipt["proof"].clone()).unwrap();
    proof
        .verify(key, Some(&record.leaf_hash(&salt)))
        .expect("the receipt proves its record is in the log");
    assert!(record.is_about(&nonce, subject), "the commitment opens to {subject}");
    assert!(!record.is_about(&nonce, "someone-else"));
    let named: Vec<String> = record.packages.iter().map(|p| p.to_string()).collect();
    assert_eq!(named, packages, "the record names the erased packages");
    assert!(
        !receipt["record"].to_string().contains(subject),
        "the record holds no direct identifier: {}",
        receipt["record"]
    );
}

/// The erasure records in the service's ledger, in ledger order.
async fn erasure_records(app: &TestApp) -> Vec<udim_ledger::entry::ErasureRecord> {
    app_ledger(app)
        .await
        .audit_rows(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.body)
        .filter_map(|(body, _)| serde_json::from_str(&body).ok())
        .collect()
}

async fn app_ledger(app: &TestApp) -> Arc<dyn udim_ports::ledger::ConsentLedger> {
    let db = udim_sql::connect(&udim_sql::DbOptions {
        url: app.settings.database_url().expose_secret().to_owned(),
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(10),
    })
    .await
    .unwrap();
    db.ledger.clone()
}

async fn ledger_key(app: &TestApp) -> udim_ledger::note::VerifierKey {
    let key = reqwest::get(format!("{}/v1/ledger/key", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    udim_ledger::note::VerifierKey::parse(key.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_and_scrubs_events_still_in_the_outbox_on_sqlite() {
    erasure(Db::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_and_scrubs_events_already_relayed_on_postgres() {
    erasure(Db::Postgres, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_could_not_be_deleted_is_removed_by_the_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let faults = common::faults::Faults::new();
    faults.refuse_deletes(true);
    let store = common::faults::FaultyStore::on(&dir.path().join("objects"), &faults);
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            storage: Some(store),
            configure: Some(Box::new(|s| s.upload.sweep_interval_secs = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let id = upload(&app, &alice, common::distinctive_bytes(10_000)).await;
    let object = dir.path().join("objects/packages").join(&id);
    assert_eq!(delete(&app, &alice, &format!("/v1/packages/{id}")).await.status(), 200);
    assert!(object.exists(), "the store refused the deletion");
    assert_eq!(read_status(&app, &id).await, 404, "but the package is erased already");
    faults.refuse_deletes(false);
    for _ in 0..300 {
        if !object.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!object.exists(), "the sweeper finished the deletion");
    app.stop().await;
}

/// An erasure that committed but whose recorder died before recording it is recorded by the
/// sweeper once the recorder's claim has run out, and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_left_unrecorded_is_recorded_by_the_sweeper() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| s.upload.sweep_interval_secs = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let id = upload(&app, &alice, common::distinctive_bytes(10_000)).await;
    let id = uuid::Uuid::parse_str(&id).unwrap();

    // The erasure's own transaction, without the recording that should follow it, and with
    // the claim its recorder took run out.
    let database = app.database().await;
    let event = udim::pipeline::events::outbox_message(
        id,
        chrono::Utc::now(),
        udim::pipeline::events::PackageDeleted {
            user_id: "alice",
            reason: udim::pipeline::events::DeletionReason::UserRequest,
        },
    )
    .unwrap();
    database.packages.mark_deleted("alice", id, &event).await.unwrap();
    use sqlx::Connection as _;
    let mut db = sqlx::SqliteConnection::connect(app.settings.database_url().expose_secret())
        .await
        .unwrap();
    sqlx::query("UPDATE packages SET erasure_claimed_until = $1 WHERE id = $2")
        .bind(chrono::Utc::now() - chrono::Duration::minutes(1))
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();

    for _ in 0..300 {
        if !erasure_records(&app).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let records = erasure_records(&app).await;
    assert_eq!(records.len(), 1, "the sweeper recorded the erasure: {records:?}");
    assert_eq!(records[0].packages, [id]);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(erasure_records(&app).await.len(), 1, "and only once");
    database.close().await;
    app.stop().await;
}

async fn packages_past_their_categorys_retention_limit_are_erased_by_the_sweeper(db: Db) {
    let app = TestApp::spawn_with(
        db,
        Options {
            configure: Some(Box::new(|s| {
                s.upload.sweep_interval_secs = 1;
                s.upload.categories.insert(
                    "audio".into(),
                    udim::formats::content::CategoryPolicy {
                        allowed_types: vec!["*/*".into()],
                        max_bytes: None,
                        retention_days: Some(30),
                    },
                );
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio", "text"]).await;
    let old = upload(&app, &alice, common::distinctive_bytes(10_000)).await;
    let young = upload(&app, &alice, common::distinctive_bytes(10_000)).await;
    let text = app
        .http
        .post(format!("{}/v1/packages?data_category=text&filename=a.txt", app.base))
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body("hello, kept forever")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 201);
    let text: Value = text.json().await.unwrap();

    // Age two packages past 30 days, as if uploaded a month ago.
    let month_ago = chrono::Utc::now() - chrono::Duration::days(31);
    for id in [old.as_str(), text["id"].as_str().unwrap()] {
        set_created_at(&app, uuid::Uuid::parse_str(id).unwrap(), month_ago).await;
    }
    let status = async |id: &str| app.get_json(&alice, &format!("/v1/packages/{id}")).await.1["status"].clone();
    // The sweep erases (the tombstone), then deletes the object and records the erasure:
    // wait for all three.
    let object = app.objects_dir().join("packages").join(&old);
    for _ in 0..200 {
        if status(&old).await == "deleted" && !object.exists() && !erasure_records(&app).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status(&old).await, "deleted", "audio keeps 30 days");
    assert!(!object.exists(), "its object is gone");
    assert_eq!(status(&young).await, "stored", "a young package stays");
    assert_eq!(
        status(text["id"].as_str().unwrap()).await,
        "stored",
        "text has no limit"
    );
    let outbox = app.outbox().await;
    let event = outbox
        .iter()
        .find(|e| e["event_type"] == "package.deleted")
        .expect("a package.deleted event");
    assert_eq!(event["payload"]["reason"], "retention_expired");
    assert_eq!(event["payload"]["package_id"], old.as_str());
    let erasures = erasure_records(&app).await;
    assert_eq!(erasures.len(), 1, "the retention erasure is recorded in the ledger");
    assert_eq!(erasures[0].packages, [uuid::Uuid::parse_str(&old).unwrap()]);
    app.stop().await;
}

/// Erasing everything while a PATCH is still sending: the upload ends at once, the chunk the
/// PATCH was writing is refused and removed, nothing of the upload is left, and later
/// PATCHes find no upload.
async fn erasing_everything_ends_an_upload_whose_patch_is_in_flight(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let url = app
        .create_upload(&alice, 1_000_000, "data_category YXVkaW8=,filename c2VjcmV0Lndhdg==")
        .await;
    let id = url.rsplit('/').next().unwrap().to_owned();

    let (tx, body) = common::body_in_flight();
    let patch = {
        let request = app
            .http
            .patch(&url)
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(body);
        tokio::spawn(request.send())
    };
    tx.send(Ok(common::distinctive_bytes(300_000))).await.unwrap();
    let chunk_dir = app.objects_dir().join("uploads").join(&id);
    for _ in 0..200 {
        if common::files_under(&chunk_dir)
            .iter()
            .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        !common::files_under(&chunk_dir).is_empty(),
        "the PATCH is writing its chunk"
    );

    let response = delete(&app, &alice, "/v1/me").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["uploads_terminated"], 1, "{report}");

    tx.send(Ok(common::distinctive_bytes(100_000))).await.unwrap();
    drop(tx);
    let answer = patch.await.unwrap().unwrap();
    assert!(
        answer.status().is_client_error(),
        "the PATCH cannot complete an erased upload: {}",
        answer.status()
    );
    assert!(
        common::files_under(&chunk_dir).is_empty(),
        "no chunk of the erased upload is left: {:?}",
        common::files_under(&chunk_dir)
    );
    let again = app
        .http
        .patch(&url)
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    assert!(
        app.database()
            .await
            .uploads
            .get_upload("alice", id.parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    app.stop().await;
}

common::on_both_databases!(
    erasing_everything_ends_an_upload_whose_patch_is_in_flight,
    packages_past_their_categorys_retention_limit_are_erased_by_the_sweeper,
);

/// Moves a package's creation time, on whichever engine the app runs.
async fn set_created_at(app: &TestApp, id: uuid::Uuid, at: chrono::DateTime<chrono::Utc>) {
    use sqlx::Connection as _;
    let url = app.settings.database_url().expose_secret().to_owned();
    let sql = "UPDATE packages SET created_at = $1 WHERE id = $2";
    match app.db {
        Db::Sqlite => {
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sql).bind(at).bind(id).execute(&mut db).await.unwrap();
        }
        Db::Postgres => {
            let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(sql).bind(at).bind(id).execute(&mut db).await.unwrap();
        }
    }
}

/// A ledger that fails to take an erasure's record (a real database error that passes,
/// injected by a trigger) fails the request with 503; the erasure itself stands, and
/// repeating the request records it and hands over the receipt, for one package and for
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_recording_answers_503_and_repeating_the_request_records_the_erasure() {
    let app = TestApp::spawn(Db::Postgres).await;
    let faults = common::faults::DatabaseFaults::install(app.settings.database_url().expose_secret()).await;
    let key = ledger_key(&app).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let one = upload(&app, &alice, common::distinctive_bytes(10_000)).await;
    let two = upload(&app, &alice, common::distinctive_bytes(10_000)).await;

    faults.set("record_erasure", true).await;
    let failed = delete(&app, &alice, &format!("/v1/packages/{one}")).await;
    assert_eq!(failed.status(), 503);
    assert_eq!(failed.headers()["retry-after"], "5");
    assert_eq!(read_status(&app, &one).await, 404, "the erasure itself stands");
    faults.set("record_erasure", false).await;
    let repeated = delete(&app, &alice, &format!("/v1/packages/{one}")).await;
    assert_eq!(repeated.status(), 200, "the repetition records it");
    assert_receipt(&repeated.json().await.unwrap(), &key, "alice", &[one.as_str()]);
    assert_eq!(
        delete(&app, &alice, &format!("/v1/packages/{one}")).await.status(),
        204,
        "and only once"
    );

    faults.set("record_erasure", true).await;
    assert_eq!(delete(&app, &alice, "/v1/me").await.status(), 503);
    assert_eq!(read_status(&app, &two).await, 404);
    faults.set("record_erasure", false).await;
    let repeated = delete(&app, &alice, "/v1/me").await;
    assert_eq!(repeated.status(), 200);
    let report: Value = repeated.json().await.unwrap();
    assert_eq!(report["packages_deleted"], 0, "erased by the first request");
    assert_eq!(report["receipts"].as_array().unwrap().len(), 1, "{report}");
    assert_receipt(&report["receipts"][0], &key, "alice", &[two.as_str()]);
    let records = erasure_records(&app).await;
    assert_eq!(records.len(), 2, "each erasure recorded once: {records:?}");
    app.stop().await;
}

/// Erasing everything while an upload is committing its package — its consent was checked
/// just before the erasure began, and a trigger holds its commit back two seconds — the
/// package never appears: the erasure's fence refuses it, and nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_committing_while_everything_is_erased_never_lands() {
    let app = TestApp::spawn(Db::Postgres).await;
    let faults = common::faults::DatabaseFaults::install(app.settings.database_url().expose_secret()).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    faults.set("slow_mark_stored", true).await;
    let uploading = {
        let request = app
            .http
            .post(format!(
                "{}/v1/packages?data_category=audio&filename=late.bin",
                app.base
            ))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body(common::distinctive_bytes(20_000));
        tokio::spawn(request.send())
    };
    // The commit is under way (past the upload's last consent check) once the trigger sleeps.
    assert!(trigger_sleeping(&app).await, "the upload is committing its package");
    let erased = delete(&app, &alice, "/v1/me").await;
    assert_eq!(erased.status(), 200);
    let answer = uploading.await.unwrap().unwrap();
    assert_eq!(answer.status(), 409, "the upload does not land after the erasure");
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("erased while it was being stored"),
        "refused by the erasure's fence: {problem}"
    );
    faults.set("slow_mark_stored", false).await;
    let left: Vec<Value> = app
        .packages(&alice)
        .await
        .into_iter()
        .filter(|p| p["status"] != "deleted")
        .collect();
    assert!(left.is_empty(), "nothing of it is left: {left:?}");
    assert!(
        common::files_under(&app.objects_dir().join("packages")).is_empty(),
        "no object either"
    );
    app.stop().await;
}

/// Whether a statement of the test database is in a trigger's `pg_sleep` (waits up to 4 s).
async fn trigger_sleeping(app: &TestApp) -> bool {
    use sqlx::Connection as _;
    let mut watch = sqlx::PgConnection::connect(app.settings.database_url().expose_secret())
        .await
        .unwrap();
    for _ in 0..400 {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if sleeping > 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// A resumable upload being created while everything is erased — its consent checked just
/// before, its row held back two seconds by a trigger — does not survive the erasure: the
/// creation checks consent again once the row exists, and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_created_while_everything_is_erased_does_not_survive_it() {
    let app = TestApp::spawn(Db::Postgres).await;
    let faults = common::faults::DatabaseFaults::install(app.settings.database_url().expose_secret()).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    faults.set("slow_create_upload", true).await;
    let creating = {
        let request = app
            .http
            .post(format!("{}/v1/uploads", app.base))
            .bearer_auth(&alice)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "1000")
            .header("upload-metadata", "data_category YXVkaW8=,filename c2VjcmV0Lndhdg==");
        tokio::spawn(request.send())
    };
    assert!(trigger_sleeping(&app).await, "the upload's row is being written");
    let erased = delete(&app, &alice, "/v1/me").await;
    assert_eq!(erased.status(), 200);
    let answer = creating.await.unwrap().unwrap();
    assert!(
        !answer.status().is_success(),
        "the creation fails after the erasure: {}",
        answer.status()
    );
    faults.set("slow_create_upload", false).await;
    let left = app.database().await.uploads.open_uploads("alice").await.unwrap();
    assert!(
        left.is_empty(),
        "no upload, name or metadata of alice's is left: {left:?}"
    );
    app.stop().await;
}
