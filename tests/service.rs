//! Service-level behaviour: the OpenAPI document, health and readiness, problem responses
//! for unknown routes, and the append-only ledger storage on both databases.

mod common;

use common::{Db, TestApp};
use serde_json::Value;

async fn openapi(app: &TestApp) -> Value {
    reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_problem_code_the_service_sends() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let doc = openapi(&app).await;
    let listed: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("the ProblemCode schema lists its values")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let catalogue: Vec<&str> = udim::http::problem::ProblemCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(listed, catalogue);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_endpoint() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let doc = openapi(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/consents", "post"),
        ("/v1/consents", "get"),
        ("/v1/consents/{id}/withdraw", "post"),
        ("/v1/consents/{id}", "put"),
        ("/v1/consents/{id}/proof", "get"),
        ("/v1/ledger/checkpoint", "get"),
        ("/v1/ledger/key", "get"),
        ("/v1/ledger/consistency", "get"),
        ("/v1/ledger/entries", "get"),
        ("/v1/packages", "post"),
        ("/v1/packages", "get"),
        ("/v1/packages/{id}", "get"),
        ("/v1/admin/outbox", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is documented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    app.stop().await;
}

/// The Python with openapi-spec-validator (from PyPI; `scripts/test` installs it into .venv).
fn python() -> String {
    std::env::var("UDIM_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

/// `/openapi.json` is a valid OpenAPI 3.1 document (by openapi-spec-validator), and it is the
/// router's own map: on every documented path each method is served exactly when it is
/// documented (HEAD goes with GET, as HTTP has it), and the routes outside the document are
/// only the ones named here. A route served but undocumented, or documented but not served,
/// is caught by its method: the first answers where the document says 405, the second
/// answers the router's own "no route" or 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_openapi_3_1_and_is_exactly_what_is_served() {
    const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    const OUTSIDE_THE_DOCUMENT: [(&str, &str); 2] = [("/openapi.json", "GET"), ("/metrics", "GET")];
    let app = TestApp::spawn(Db::Sqlite).await;
    let text = reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let validated = std::process::Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("openapi-spec-validator (scripts/test installs it into .venv; UDIM_TEST_PYTHON)");
    assert!(
        validated.status.success(),
        "openapi-spec-validator:\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let routed = async |method: &str, path: &str| -> bool {
        let url = format!("{}{path}", app.base);
        let response = app.http.request(method.parse().unwrap(), url).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let unrouted = status == 405 || (status == 404 && body.contains("no route for"));
        !unrouted
    };
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "the document has the API's paths");
    for (template, item) in paths {
        let path = template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let documented_as = if method == "HEAD" && item.get("head").is_none() {
                "get"
            } else {
                &method.to_lowercase()
            };
            let documented = item.get(documented_as).is_some();
            assert_eq!(
                routed(method, &path).await,
                documented,
                "{method} {template}: documented {documented}"
            );
        }
    }
    for (path, method) in OUTSIDE_THE_DOCUMENT {
        assert!(!paths.contains_key(path), "{path} is not itself an API route");
        assert!(routed(method, path).await, "{method} {path} is served");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_routes() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let health = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = reqwest::get(format!("{}/readyz", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["storage"], "ok");
    assert_eq!(ready["kms"], "ok");
    assert_eq!(ready["queue"], "not-configured");
    assert_eq!(ready["scanner"], "not-configured");

    let missing = reqwest::get(format!("{}/v2/nothing", app.base)).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let wrong_method = app.http.put(format!("{}/v1/packages", app.base)).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    let problem: Value = wrong_method.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:method-not-allowed");

    let alice = app.uploader("alice");
    let bad_json = app
        .http
        .post(format!("{}/v1/consents", app.base))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"purposes\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let problem: Value = bad_json.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:invalid-body");
    let not_json = app
        .http
        .post(format!("{}/v1/consents", app.base))
        .bearer_auth(&alice)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);
    let empty = app
        .http
        .post(format!("{}/v1/consents", app.base))
        .bearer_auth(&alice)
        .json(
            &serde_json::json!({"purposes": [], "data_categories": ["x"], "policy_version": "1", "jurisdiction": "EU"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    app.stop().await;
}

/// Every statement that would change or remove ledger rows, and whether the engine has it.
async fn ledger_rows_cannot_be_changed_or_deleted(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["text"]).await;
    let url = { app.settings.database_url().expose_secret().to_owned() };
    let attacks = [
        "UPDATE consent_ledger SET leaf_hash = leaf_hash",
        "DELETE FROM consent_ledger",
        "UPDATE consent_records SET event_type = 'withdrawn'",
        "DELETE FROM consent_records",
        "UPDATE ledger_nodes SET hash = hash",
        "DELETE FROM ledger_nodes",
        "UPDATE ledger_checkpoints SET note = ''",
        "DELETE FROM ledger_checkpoints",
        "UPDATE ledger_head SET size = 0",
        "DELETE FROM ledger_head",
    ];
    match db {
        Db::Postgres => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let truncates = [
                "TRUNCATE consent_ledger CASCADE",
                "TRUNCATE consent_records",
                "TRUNCATE ledger_nodes",
                "TRUNCATE ledger_checkpoints",
                "TRUNCATE ledger_head",
            ];
            for sql in attacks.iter().chain(&truncates) {
                let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
                assert!(err.to_string().contains("udim:"), "{sql}: {err}");
            }
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_ledger")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(count, 1);
        }
        Db::Sqlite => {
            use sqlx::Connection as _;
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for sql in attacks {
                let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
                assert!(err.to_string().contains("udim:"), "{sql}: {err}");
            }
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_ledger")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(count, 1);
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_tus_clients_get_cors_only_from_allowed_origins() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        common::Options {
            configure: Some(Box::new(|s| {
                s.server.cors_allowed_origins = vec!["https://app.example".into()]
            })),
            ..common::Options::default()
        },
    )
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, format!("{}/v1/uploads/x", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "tus-resumable,upload-offset,content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("PATCH"), "{methods}");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let exposed = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let expose = exposed.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        expose.contains("upload-offset") && expose.contains("location"),
        "{expose}"
    );
    app.stop().await;
}

common::on_both_databases!(ledger_rows_cannot_be_changed_or_deleted);

/// A scanner that does not answer (nothing listens at its address) makes the service unready
/// when uploads fail closed without it, and leaves it ready but `degraded` when configured to
/// fail open; either way `/readyz` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_scanner_is_named_and_decides_readiness_only_when_failing_closed() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    for (fail_open, status, overall, decides) in [(false, 503, "unavailable", true), (true, 200, "degraded", false)] {
        let app = TestApp::spawn_with(
            Db::Sqlite,
            common::Options {
                configure: Some(Box::new(move |s| {
                    s.scanner = udim::config::ScannerSettings::Clamd(udim::config::ClamdSettings {
                        address: udim_local::clamd::ClamdAddress::Tcp(address.to_string()),
                        max_stream_bytes: 1 << 20,
                        fail_open,
                        admit_too_large: false,
                        timeout_secs: 1,
                    });
                })),
                ..common::Options::default()
            },
        )
        .await;
        let response = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
        assert_eq!(response.status(), status, "fail_open = {fail_open}");
        let ready: Value = response.json().await.unwrap();
        assert_eq!(ready["status"], overall, "{ready}");
        assert_eq!(ready["scanner"], "unavailable", "{ready}");
        assert_eq!(ready["database"], "ok", "{ready}");
        let deciding = ready["decides_readiness"].as_array().unwrap();
        assert_eq!(
            deciding.contains(&Value::from("scanner")),
            decides,
            "the scanner decides readiness only when uploads fail closed without it: {ready}"
        );
        app.stop().await;
    }
}

/// `x-request-id`: a sensible one from the client is kept, a missing or unsafe one (spaces,
/// too long) is replaced by a fresh UUID; either way the response echoes it and the request's
/// log lines carry it (the real binary's JSON log, at debug for the HTTP layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_echoed_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::Process::serve(|| {
        let mut command = common::process::embedded(dir.path());
        command.env("RUST_LOG", "info,tower_http=debug");
        command
    })
    .await;
    let http = reqwest::Client::new();
    let echoed = |id: Option<String>| {
        let request = http.get(format!("{}/v1/consents", server.base));
        let request = match id {
            Some(id) => request.header("x-request-id", id),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "a problem answer carries it too");
            response.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(echoed(Some("client-trace-7".into())).await, "client-trace-7");
    let made = echoed(None).await;
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    for unsafe_id in ["two words".to_owned(), "x".repeat(129)] {
        let replaced = echoed(Some(unsafe_id.clone())).await;
        assert!(
            uuid::Uuid::parse_str(&replaced).is_ok(),
            "{unsafe_id:?} became {replaced}"
        );
    }
    let logs = server.stop_and_read_logs();
    for id in ["client-trace-7", made.as_str()] {
        assert!(
            logs.lines()
                .any(|line| line.contains(&format!("\"request_id\":\"{id}\""))),
            "a log line of the request names {id}:\n{logs}"
        );
    }
    assert!(!logs.contains("two words"), "an unsafe id never reaches the log");
}
