//! Every query is scoped to its caller: each route of the served OpenAPI document that takes
//! an id, called by one person with another person's ids, answers 404 (403 for the one
//! route not for people at all), shows none of their data and changes none of it.

mod common;

use common::{Db, TestApp};
use serde_json::{Value, json};

/// What kind of id a path takes, by its prefix.
fn id_kind(path: &str) -> &'static str {
    if path.starts_with("/v1/packages/") {
        "package"
    } else if path.starts_with("/v1/consents/") {
        "consent"
    } else if path.starts_with("/v1/uploads/") {
        "upload"
    } else {
        panic!("{path} takes an id this test does not know: add it to the matrix")
    }
}

async fn cross_user_ids_reach_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    let mallory = app.uploader("mallory");
    app.grant(&mallory, &["documents"]).await;
    let consent = app.grant(&alice, &["documents"]).await;
    let consent_id = consent["id"].as_str().unwrap().to_owned();
    const SECRET: &str = "alice's private page, not for mallory";
    let stored = app.upload(&alice, "documents", SECRET).await;
    assert_eq!(stored.status(), 201);
    let package: Value = stored.json().await.unwrap();
    let package_id = package["id"].as_str().unwrap().to_owned();
    // An unfinished upload with a few bytes in it; its metadata names a file.
    let upload_url = app
        .create_upload(&alice, 64, "filename YWxpY2UtZGlhcnkudHh0,data_category ZG9jdW1lbnRz")
        .await;
    let patched = app
        .http
        .patch(&upload_url)
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body("sixteen bytes!!!")
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 204);
    let upload_id = upload_url.rsplit('/').next().unwrap().to_owned();
    let ledger_before = app.get_json(&alice, "/v1/ledger/entries").await.1;

    let (_, document) = app.get_json(&alice, "/openapi.json").await;
    let mut tried = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        if !path.contains("{id}") {
            continue;
        }
        let id = match id_kind(path) {
            "package" => &package_id,
            "consent" => &consent_id,
            _ => &upload_id,
        };
        let mut url = format!("{}{}", app.base, path.replace("{id}", id));
        if path.ends_with("/content") {
            url.push_str("?purpose=model-training");
        }
        for method in operations.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let mut request = app
                .http
                .request(method.clone(), &url)
                .bearer_auth(&mallory)
                .header("tus-resumable", "1.0.0");
            request = match (method.as_str(), id_kind(path)) {
                ("PATCH", "upload") => request
                    .header("upload-offset", "16")
                    .header("content-type", "application/offset+octet-stream")
                    .body("mallory's bytes!"),
                ("PUT" | "POST" | "PATCH", _) => request.json(&json!({
                    "purposes": ["model-training"],
                    "data_categories": ["documents"],
                    "policy_version": "2026-01",
                    "jurisdiction": "EU",
                })),
                _ => request,
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = format!("{:?}", response.headers());
            let body = response.text().await.unwrap();
            // The content route is for reading services (scope `udim:read`), not for people:
            // a person's token is refused before any id is looked up.
            let expected = if path.ends_with("/content") { 403 } else { 404 };
            assert_eq!(status, expected, "{method} {path} with alice's id: {body}");
            for private in [SECRET, "alice", "alice-diary", package["sha256"].as_str().unwrap()] {
                assert!(
                    !body.contains(private) && !headers.contains(private),
                    "{method} {path} shows {private:?}: {headers} {body}"
                );
            }
            tried += 1;
        }
    }
    assert!(tried >= 9, "the matrix covers every route with an id ({tried} tried)");

    // Nothing of alice's changed.
    let (status, still) = app.get_json(&alice, &format!("/v1/packages/{package_id}")).await;
    assert_eq!((status, &still["status"]), (200, &json!("stored")));
    let (_, consents) = app.get_json(&alice, "/v1/consents").await;
    assert!(consents.to_string().contains(&consent_id) && !consents.to_string().contains("withdrawn"));
    let head = app
        .http
        .head(&upload_url)
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["upload-offset"], "16", "mallory appended nothing");
    let ledger_after = app.get_json(&alice, "/v1/ledger/entries").await.1;
    assert_eq!(ledger_before, ledger_after, "mallory's attempts recorded nothing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_user_ids_reach_nothing_sqlite() {
    cross_user_ids_reach_nothing(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_user_ids_reach_nothing_postgres() {
    cross_user_ids_reach_nothing(Db::Postgres).await;
}
