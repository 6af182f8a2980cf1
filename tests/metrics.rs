//! `GET /metrics`: Prometheus text with request, upload, ledger, outbox and read-integrity
//! metrics that move with what the service did, labelled by route templates only.

mod common;

use common::{Db, Options, TestApp};

/// The value of the sample `name{labels}` (labels exactly as rendered), or 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let response = reqwest::get(format!("{}/metrics", app.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_requests_uploads_the_ledger_the_outbox_and_tampering() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            rabbitmq: true,
            ..Options::default()
        },
    )
    .await;
    let before = scrape(&app).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let plaintext = common::distinctive_bytes(200_000);
    let stored: serde_json::Value = app.upload(&alice, "audio", plaintext).await.json().await.unwrap();
    let refused = app.upload(&alice, "video", vec![1u8; 10]).await;
    assert_eq!(refused.status(), 403, "no consent for video");
    let id = stored["id"].as_str().unwrap();
    // Wait until the relay has published the event.
    common::eventually("the relay publishes the event", || async {
        sample(&scrape(&app).await, "udim_events_published_total") > sample(&before, "udim_events_published_total")
    })
    .await;

    // Tamper with the stored object: the read is cut and counted.
    let path = app.objects_dir().join("packages").join(id);
    let mut raw = std::fs::read(&path).unwrap();
    let at = raw.len() - 70_000;
    raw[at] ^= 1;
    std::fs::write(&path, raw).unwrap();
    let pipeline = app.token("pipeline", &["udim:read"]);
    if let Ok(response) = app
        .http
        .get(format!("{}/v1/packages/{id}/content?purpose=model-training", app.base))
        .bearer_auth(&pipeline)
        .send()
        .await
    {
        let _ = response.bytes().await;
    }

    let after = scrape(&app).await;
    let grew = |series: &str, by: f64| {
        let delta = sample(&after, series) - sample(&before, series);
        assert!(
            delta >= by,
            "{series} grew by {delta}, expected at least {by}:\n{after}"
        );
    };
    grew(
        r#"udim_http_requests_total{method="POST",route="/v1/consents",status="201"}"#,
        1.0,
    );
    grew(
        r#"udim_http_requests_total{method="POST",route="/v1/packages",status="201"}"#,
        1.0,
    );
    grew(
        r#"udim_http_requests_total{method="POST",route="/v1/packages",status="403"}"#,
        1.0,
    );
    grew(r#"udim_uploads_total{outcome="stored"}"#, 1.0);
    grew("udim_upload_bytes_total", 200_000.0);
    grew("udim_ledger_entries_appended_total", 1.0);
    grew("udim_events_published_total", 1.0);
    grew("udim_read_integrity_failures_total", 1.0);
    assert!(sample(&after, "udim_ledger_size") >= 1.0);
    assert!(after.contains("udim_http_request_duration_seconds_bucket{"), "{after}");
    assert!(after.contains("udim_ledger_append_duration_seconds_bucket{"), "{after}");
    assert!(
        !after.contains(id) && !after.contains("alice"),
        "no package or user ids in labels"
    );
    assert!(
        after.contains(r#"route="/v1/packages/{id}/content""#),
        "routes are templates, not paths"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| s.server.metrics = false)),
            ..Options::default()
        },
    )
    .await;
    let response = reqwest::get(format!("{}/metrics", app.base)).await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}
