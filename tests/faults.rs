//! Real faults under load: PostgreSQL connections killed while uploads run. Requests fail
//! fast with 503 and `Retry-After` (never 500, never a hang), and the service recovers by
//! itself, without a restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Db, TestApp};
use tokio_util::sync::CancellationToken;

/// Terminates every connection to the app's database but the one asking.
async fn kill_connections(app: &TestApp) -> i64 {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(app.settings.database_url().expose_secret())
        .await
        .unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    killed.into_iter().filter(|k| *k).count() as i64
}

/// Alice's stored packages, and those in any other status.
async fn stored_and_unfinished(app: &TestApp) -> (i64, i64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(app.settings.database_url().expose_secret())
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'stored'), count(*) FILTER (WHERE status <> 'stored') \
         FROM packages WHERE user_id = 'alice'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_fail_fast_and_the_service_recovers() {
    let app = TestApp::spawn(Db::Postgres).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;

    let answers = Arc::new(Mutex::new(Vec::new()));
    let done = CancellationToken::new();
    let load = (0..4)
        .map(|worker| {
            let (http, base, token) = (app.http.clone(), app.base.clone(), alice.clone());
            let (answers, done) = (answers.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !done.is_cancelled() {
                    let sent = http
                        .post(format!("{base}/v1/packages?data_category=documents&filename=f.txt"))
                        .bearer_auth(&token)
                        .header("content-type", "application/octet-stream")
                        .body(format!("worker {worker} upload {n}"))
                        .send();
                    let answer = match tokio::time::timeout(Duration::from_secs(30), sent).await {
                        Err(_) => "hung".to_owned(),
                        Ok(Err(e)) => format!("transport error: {e}"),
                        Ok(Ok(response)) => {
                            let status = response.status().as_u16();
                            if status == 503 {
                                assert!(response.headers().contains_key("retry-after"), "503 says when to retry");
                            }
                            status.to_string()
                        }
                    };
                    answers.lock().unwrap().push(answer);
                    n += 1;
                }
            })
        })
        .collect::<Vec<_>>();

    let mut killed = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        killed += kill_connections(&app).await;
    }
    done.cancel();
    for worker in load {
        worker.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert!(killed > 0, "connections were killed");
    let unexpected: Vec<&String> = answers
        .iter()
        .filter(|a| !matches!(a.as_str(), "201" | "503"))
        .collect();
    assert!(unexpected.is_empty(), "every answer is 201 or 503: {unexpected:?}");
    let failed = answers.iter().filter(|a| *a == "503").count();
    eprintln!(
        "{} uploads, {failed} answered 503, {killed} connections killed",
        answers.len()
    );

    // No restart: the pool reconnects and uploads are stored again.
    common::eventually("uploads are stored again", || async {
        app.upload(&alice, "documents", "after the kills").await.status() == 201
    })
    .await;
    // Every package the service acknowledged is stored, and nothing is left half-made for
    // longer than the upload it belonged to.
    let acknowledged = answers.iter().filter(|a| *a == "201").count() as i64 + 1;
    let (stored, unfinished) = stored_and_unfinished(&app).await;
    assert_eq!(
        stored, acknowledged,
        "every acknowledged upload, and only those, is stored"
    );
    assert_eq!(unfinished, 0, "a refused upload leaves no package behind");
    app.stop().await;
}
