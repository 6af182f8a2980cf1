//! Hostile and greedy clients: a slowloris crowd of half-sent request heads against the real
//! binary, oversized heads and JSON bodies, a stalled upload body, a request that outlives its
//! deadline, and one user taking more than their share of uploads or consent changes. Each is
//! cut or refused with a clear answer while honest clients are served.

mod common;

use std::time::{Duration, Instant};

use common::process::{Process, embedded};
use common::{Db, Options, TestApp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use udim_testkit::{azurite, moto};

/// The HS256 secret of the tests that start the binary.
const SECRET: &str = "limits-share-this-hs256-secret-of-32+bytes";

/// Thousands of connections that each send half a request line, or half an HTTP/2 preface,
/// or nothing at all, and then wait: the service keeps answering honest clients at once, and
/// closes every one of them once `server.header_read_timeout_secs` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_crowd_is_cut_at_the_header_timeout_and_honest_clients_are_served() {
    const CROWD: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| {
        let mut command = embedded(dir.path());
        command.env("UDIM_SERVER__HEADER_READ_TIMEOUT_SECS", "3");
        command
    })
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    let mut crowd = Vec::with_capacity(CROWD);
    let openings: [&[u8]; 3] = [b"GET /v1/consents HTT", b"PRI * HTTP/2.0\r\n", b""];
    for opening in openings.iter().cycle().take(CROWD) {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(opening).await.unwrap();
        crowd.push(socket);
    }
    let opened = Instant::now();

    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for _ in 0..20 {
        let answered = tokio::time::timeout(
            Duration::from_secs(2),
            http.get(format!("{}/healthz", server.base)).send(),
        )
        .await
        .expect("an honest client is answered while the crowd holds its connections")
        .unwrap();
        assert_eq!(answered.status(), 200);
    }

    // Every half-open connection is closed by the service: a read sees the end of the stream
    // (or a reset), not a timeout of ours.
    let closed = futures::future::join_all(crowd.into_iter().map(|mut socket| async move {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(60), socket.read(&mut buf)).await,
            Ok(Ok(_) | Err(_))
        )
    }))
    .await;
    let cut_after = opened.elapsed();
    assert!(
        closed.iter().all(|c| *c),
        "{} of {CROWD} half-open connections were never closed",
        closed.iter().filter(|c| !**c).count()
    );
    assert!(
        cut_after >= Duration::from_secs(2),
        "not before the timeout: {cut_after:?}"
    );
    let answered = http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(answered.status(), 200, "and the service still serves");
}

/// `server.max_connections`: with ten connections open and silent, an eleventh waits in the
/// listen backlog, unanswered, instead of taking a descriptor; once the ten are cut at the
/// header timeout it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_wait_until_a_place_is_free() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| {
                s.server.max_connections = 10;
                s.server.header_read_timeout_secs = 3;
            })),
            ..Options::default()
        },
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    // Past the cap: accepted by the kernel, not by the service.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(raw_response_in(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(30),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "the eleventh connection waits while ten are open"
    );
    let answer = waiting.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "and is served once they are cut: {answer}"
    );
    drop(silent);
    app.stop().await;
}

/// The whole response a raw request to `addr` gets within `patience`, as text.
async fn raw_response_in(addr: std::net::SocketAddr, request: &[u8], patience: Duration) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(patience, socket.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The whole response a raw request gets, as text.
async fn raw_response(app: &TestApp, request: &[u8]) -> String {
    raw_response_in(app.addr, request, Duration::from_secs(10)).await
}

/// A request head larger than `server.max_header_bytes` (to the byte), or with more fields
/// than `server.max_headers`, is refused with 431 before anything else reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    const CAP: usize = 32 * 1024;
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| {
                s.server.max_header_bytes = CAP;
                s.server.max_headers = 32;
            })),
            ..Options::default()
        },
    )
    .await;
    let with_filler = |bytes: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(bytes)
        )
    };
    // Far over the cap, the transport refuses the head before any request exists (a bare
    // 431); just over it, its buffer may hold the head whole, and the service refuses it with
    // a problem: either way the cap is kept to the byte.
    for (over, problem) in [(64 * 1024, false), (CAP + 1500, true)] {
        let answer = raw_response(&app, with_filler(over).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "a head of {over} bytes: {answer}");
        assert_eq!(
            answer.contains("urn:udim:problem:request-head-too-large"),
            problem,
            "a head of {over} bytes: {answer}"
        );
    }
    // To the byte, as sent: a head of exactly the cap is served, one byte more is not.
    let overhead = with_filler(0).len();
    let at_cap = with_filler(CAP - overhead);
    assert_eq!(at_cap.len(), CAP);
    let served = raw_response(&app, at_cap.as_bytes()).await;
    assert!(served.starts_with("HTTP/1.1 200 "), "a head of the cap: {served}");
    let one_over = raw_response(&app, with_filler(CAP - overhead + 1).as_bytes()).await;
    assert!(
        one_over.starts_with("HTTP/1.1 431 ") && one_over.contains("urn:udim:problem:request-head-too-large"),
        "one byte over the cap: {one_over}"
    );
    let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..40 {
        many.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert!(
        raw_response(&app, many.as_bytes()).await.starts_with("HTTP/1.1 431 "),
        "40 header fields"
    );
    app.stop().await;
}

/// An upload whose body stops arriving is cut after `server.body_idle_timeout_secs`, and one
/// that trickles in below `server.body_min_bytes_per_sec` is cut once a window of waiting has
/// passed; neither leaves anything behind. One that keeps a modest rate, however slowly its
/// pieces come, is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_and_a_trickle_is_cut_and_a_slow_one_is_not() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| {
                s.server.body_idle_timeout_secs = 1;
                s.server.body_min_bytes_per_sec = 20;
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let url = format!("{}/v1/packages?data_category=documents&filename=a.txt", app.base);
    let send = |body: reqwest::Body| {
        common::status_of(
            app.http
                .post(&url)
                .bearer_auth(&alice)
                .header("content-type", "application/octet-stream")
                .body(body),
        )
    };

    let (body, stalled) = common::body_in_flight();
    let upload = send(stalled);
    body.send(Ok(b"the first words, and then nothing".to_vec()))
        .await
        .unwrap();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the stalled upload is cut, not held")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the idle timeout"
    );
    assert_eq!(status, 400, "upload-interrupted");
    drop(body);

    // A byte every 300 ms: never idle for a second, but 3 bytes/s against the 20 required.
    let (body, trickle) = common::body_in_flight();
    let mut upload = send(trickle);
    let started = Instant::now();
    let status = loop {
        tokio::select! {
            status = &mut upload => break status.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(300)) => {
                assert!(started.elapsed() < Duration::from_secs(30), "the trickle is cut, not held");
                // The service may already have cut it; its answer comes next.
                let _ = body.send(Ok(b"t".to_vec())).await;
            }
        }
    };
    assert_eq!(status, 400, "upload-interrupted");
    drop(body);
    assert!(app.packages(&alice).await.is_empty());
    assert!(app.object_files().is_empty());

    // 48 bytes every half second, three seconds in all: slow, above the rate, never idle.
    let (body, slow) = common::body_in_flight();
    let upload = send(slow);
    for i in 0..6 {
        body.send(Ok(
            format!("piece {i} of a slow but steady upload, at 96 B/s").into_bytes()
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(body);
    assert_eq!(upload.await.unwrap(), 201);
    assert_eq!(app.packages(&alice).await.len(), 1);
    app.stop().await;
}

/// A client that stops reading a response (a download it never consumes) is cut once its
/// connection has been unwritable for `server.body_idle_timeout_secs`, instead of holding
/// the connection and the read for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_reads_is_cut() {
    const SIZE: usize = 48 << 20;
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| s.server.body_idle_timeout_secs = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let stored = app.upload(&alice, "documents", vec![b'd'; SIZE]).await;
    assert_eq!(stored.status(), 201);
    let id = stored.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let reader = app.token("pipeline", &["udim:read"]);

    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(
            format!(
                "GET /v1/packages/{id}/content?purpose=model-training HTTP/1.1\r\nhost: udim\r\nauthorization: Bearer {reader}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Read nothing for a while: the socket buffers fill and the service's writes block.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut received)).await;
    assert!(ended.is_ok(), "the connection ends");
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&received[..received.len().min(100)])
    );
    assert!(
        received.len() < SIZE,
        "the service gave up on the reader after {} bytes instead of waiting for it",
        received.len()
    );
    let answered = app.http.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    app.stop().await;
}

/// The binary on the embedded default with `budget` bytes for upload buffers (all of it for
/// one user), room for a thousand uploads in flight from one user, and a 15 s idle timeout.
fn crowd_server(data_dir: &std::path::Path, budget: u64) -> std::process::Command {
    let mut command = embedded(data_dir);
    command
        .env("UDIM_AUTH__HS256_SECRET", SECRET)
        .env("UDIM_LIMITS__UPLOAD_BUFFER_BYTES", budget.to_string())
        .env("UDIM_LIMITS__UPLOAD_BUFFER_BYTES_PER_USER", budget.to_string())
        .env("UDIM_LIMITS__UPLOADS_IN_FLIGHT", "5000")
        .env("UDIM_LIMITS__UPLOADS_IN_FLIGHT_PER_USER", "5000")
        .env("UDIM_LIMITS__UPLOADS_PER_SECOND_PER_USER", "0")
        .env("UDIM_SERVER__BODY_IDLE_TIMEOUT_SECS", "15");
    command
}

/// A thousand uploads that each send 1 MiB and then stall, against a [`crowd_server`] with
/// `budget`: the process's peak memory stays within the budget and a margin per open
/// connection, the crowd is cut at the idle timeout or refused with 503 after waiting that long
/// for room, and an honest upload then completes.
async fn a_stalled_crowd_stays_within(server: &Process, budget: u64) {
    const CROWD: usize = 1000;
    // What each open connection holds besides upload buffers (its read buffer and the frame
    // in hand, its task): about 150 KiB measured here, so 192 KiB for each of the crowd.
    const MARGIN: u64 = CROWD as u64 * (192 << 10);
    let http = reqwest::Client::new();
    let token = common::uploader_token(SECRET, "crowd");
    common::grant_on(&http, &server.base, &token, &["documents"]).await;
    let url = format!("{}/v1/packages?data_category=documents&filename=f.txt", server.base);
    let before = server.peak_resident_bytes();

    // Each sends 1 MiB, then nothing until the service answers.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let crowd: Vec<_> = (0..CROWD)
        .map(|_| {
            let (body, streaming) = common::body_in_flight();
            let request = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/octet-stream")
                .body(streaming);
            tokio::spawn(async move {
                let feed = async {
                    for _ in 0..16 {
                        if body.send(Ok(vec![b'v'; 64 * 1024])).await.is_err() {
                            break;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    answer = request.send() => answer.map(|r| r.status().as_u16()).map_err(|e| e.to_string()),
                    () = feed => unreachable!(),
                }
            })
        })
        .collect();
    let started = Instant::now();
    let answers: Vec<Result<u16, String>> = futures::future::join_all(crowd)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let peak = server.peak_resident_bytes();
    assert!(
        peak <= before + budget + MARGIN,
        "peak RSS {} MiB, from {} MiB before the crowd",
        peak >> 20,
        before >> 20
    );
    // Cut at the idle timeout (400, or the connection closed under a body still being sent),
    // or refused after waiting that long for room (503).
    let count = |wanted: fn(&Result<u16, String>) -> bool| answers.iter().filter(|a| wanted(a)).count();
    let (cut, refused, closed) = (
        count(|a| a == &Ok(400)),
        count(|a| a == &Ok(503)),
        count(Result::is_err),
    );
    eprintln!(
        "peak RSS {} MiB ({} MiB before); {cut} cut, {refused} refused, {closed} closed, in {:?}",
        peak >> 20,
        before >> 20,
        started.elapsed()
    );
    let other: Vec<_> = answers
        .iter()
        .filter(|a| matches!(a, Ok(s) if ![400, 503].contains(s)))
        .collect();
    assert!(other.is_empty(), "every stalled upload is cut or refused: {other:?}");
    assert!(refused > 0, "the budget, not the crowd, decided how many were read");

    let honest = http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(vec![b'h'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(honest.status(), 201, "an honest upload completes once the crowd is cut");
}

/// On the filesystem store, whose writers buffer up to three 4 MiB parts, with a 64 MiB
/// budget (the same crowd without the budget holds over a GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_uploads_stay_within_the_memory_budget() {
    const BUDGET: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| crowd_server(dir.path(), BUDGET)).await;
    a_stalled_crowd_stays_within(&server, BUDGET).await;
}

/// On S3 (moto), whose writers buffer up to three 16 MiB parts, with a budget of three such
/// writers: the crowd is held to the budget there too, and every cut upload's multipart
/// upload is aborted, so the bucket holds the honest object and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_uploads_to_s3_stay_within_the_memory_budget() {
    const BUDGET: u64 = 3 * (48 << 20) + (1 << 20);
    let moto = moto::start().await;
    let bucket = format!("udim-{}", uuid::Uuid::new_v4().simple());
    let s3 = reqwest::Client::new();
    let created = s3.put(format!("{}/{bucket}", moto.endpoint)).send().await.unwrap();
    assert!(created.status().is_success(), "the bucket is created");
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| {
        let mut command = crowd_server(dir.path(), BUDGET);
        command
            .env("UDIM_STORAGE__TYPE", "s3")
            .env("UDIM_STORAGE__BUCKET", &bucket)
            .env("UDIM_STORAGE__REGION", moto::REGION)
            .env("UDIM_STORAGE__ENDPOINT", &moto.endpoint)
            .env("UDIM_STORAGE__ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY);
        command
    })
    .await;
    a_stalled_crowd_stays_within(&server, BUDGET).await;

    let listing = |query: &'static str| {
        let url = format!("{}/{bucket}?{query}", moto.endpoint);
        let s3 = s3.clone();
        async move { s3.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let objects = listing("list-type=2").await;
    assert_eq!(objects.matches("<Key>").count(), 1, "only the honest object: {objects}");
    let uploads = listing("uploads").await;
    assert_eq!(
        uploads.matches("<UploadId>").count(),
        0,
        "no multipart upload left: {uploads}"
    );
}

/// On Azure Blob Storage (Azurite), whose writers hold three 16 MiB blocks, with a budget of
/// three such writers: held to the budget there too, and the container ends with the honest
/// blob alone. (Azure keeps a cut upload's uncommitted blocks until it discards them itself,
/// a week later: object_store's abort cannot remove them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_uploads_to_azure_blob_stay_within_the_memory_budget() {
    const BUDGET: u64 = 3 * (48 << 20) + (1 << 20);
    let azurite = azurite::start().await;
    let container = format!("udim-{}", uuid::Uuid::new_v4().simple());
    azurite.create_container(&container).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| {
        let mut command = crowd_server(dir.path(), BUDGET);
        command
            .env("UDIM_STORAGE__TYPE", "azure")
            .env("UDIM_STORAGE__ACCOUNT", azurite::ACCOUNT)
            .env("UDIM_STORAGE__CONTAINER", &container)
            .env("UDIM_STORAGE__USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &azurite.url);
        command
    })
    .await;
    a_stalled_crowd_stays_within(&server, BUDGET).await;
    let blobs = azurite.blob_names(&container).await;
    assert_eq!(blobs.len(), 1, "only the honest object: {blobs:?}");
}

/// A request that outlives `server.request_timeout_secs` (here: waiting on an identity
/// provider that takes 3 s to answer) gets 503 `request-timeout` with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_503_request_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let slow = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(json!({ "keys": [] }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, slow).await.unwrap() });
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(move |s| {
                s.auth.jwks_url = Some(jwks);
                s.auth.issuer = "https://idp.test".into();
                s.server.request_timeout_secs = 1;
            })),
            ..Options::default()
        },
    )
    .await;
    // Any RS256 token with a kid sends the service to the identity provider.
    let header = base64_url(&json!({"alg": "RS256", "kid": "k", "typ": "JWT"}).to_string());
    let claims = base64_url(&json!({"sub": "alice", "exp": 4_000_000_000u64}).to_string());
    let token = format!("{header}.{claims}.c2ln");
    let started = Instant::now();
    let response = app
        .http
        .get(format!("{}/v1/consents", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "answered at the deadline, not after the fetch"
    );
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:request-timeout");
    app.stop().await;
}

/// A change whose client has gone, still waiting on the database when the process is told
/// to stop (SIGTERM), is made before the process exits: shutdown waits for it, within the
/// grace period, before it closes the database under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_client_left_is_made_before_the_process_exits() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::create().await;
    let key = common::ledger_key();
    let mut server = Process::serve(|| {
        let mut command = embedded(dir.path());
        command
            .env("UDIM_DATABASE__URL", database.url())
            .env("UDIM_LEDGER__SIGNING_KEY", &key)
            .env("UDIM_AUTH__HS256_SECRET", SECRET);
        command
    })
    .await;
    let http = reqwest::Client::new();
    let alice = common::uploader_token(SECRET, "alice");
    common::grant_on(&http, &server.base, &alice, &["documents"]).await;
    let mut blocker = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let entries = async |conn: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM consent_ledger")
            .fetch_one(conn)
            .await
            .unwrap()
    };
    let before = entries(&mut blocker).await;

    let mut hold = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE consent_ledger IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let abandoned = tokio::spawn(
        http.post(format!("{}/v1/consents", server.base))
            .bearer_auth(&alice)
            .json(&json!({
                "purposes": ["model-training"],
                "data_categories": ["text"],
                "policy_version": "2026-01",
                "jurisdiction": "EU",
            }))
            .send(),
    );
    let mut watcher = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let mut waiting = false;
    for _ in 0..200 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if blocked > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the grant waits on the ledger");
    abandoned.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the process waits for the change"
    );
    hold.rollback().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the process exits once the change is made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        entries(&mut watcher).await,
        before + 1,
        "the abandoned grant was appended before the process exited"
    );
}

/// A change is never cut between its steps by the request deadline: with the consent ledger
/// held up (a lock) well past `server.request_timeout_secs`, a consent grant and a package
/// erasure wait and then answer with what they did (201 with the consent, 200 with the
/// erasure receipt), and a grant whose client gave up waiting is made all the same; each is in
/// the ledger once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_held_up_past_the_deadline_complete_and_answer() {
    use sqlx::Connection as _;
    let app = TestApp::spawn_with(
        Db::Postgres,
        Options {
            configure: Some(Box::new(|s| s.server.request_timeout_secs = 1)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let stored = app.upload(&alice, "documents", "a page").await;
    assert_eq!(stored.status(), 201);
    let id = stored.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let url = app.settings.database_url().expose_secret().to_owned();
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    let entries_before: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_ledger")
        .fetch_one(&mut blocker)
        .await
        .unwrap();

    let mut hold = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE consent_ledger IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let grant = tokio::spawn(
        app.http
            .post(format!("{}/v1/consents", app.base))
            .bearer_auth(&alice)
            .json(&json!({
                "purposes": ["model-training"],
                "data_categories": ["images"],
                "policy_version": "2026-01",
                "jurisdiction": "EU",
            }))
            .send(),
    );
    let erase = tokio::spawn(
        app.http
            .delete(format!("{}/v1/packages/{id}", app.base))
            .bearer_auth(&alice)
            .send(),
    );
    let abandoned = tokio::spawn(
        app.http
            .post(format!("{}/v1/consents", app.base))
            .bearer_auth(&alice)
            .json(&json!({
                "purposes": ["model-training"],
                "data_categories": ["text"],
                "policy_version": "2026-01",
                "jurisdiction": "EU",
            }))
            .send(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!grant.is_finished() && !erase.is_finished(), "both wait on the ledger");
    // Its connection closes with the request in flight.
    abandoned.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    hold.rollback().await.unwrap();

    let granted = grant.await.unwrap().unwrap();
    assert_eq!(granted.status(), 201, "the grant answers with what it did");
    let erased = erase.await.unwrap().unwrap();
    assert_eq!(erased.status(), 200, "the erasure answers with its receipt");
    let receipt: Value = erased.json().await.unwrap();
    assert!(receipt["record"]["packages"].to_string().contains(&id), "{receipt}");
    common::eventually("the abandoned grant is made", || async {
        let (_, consents) = app.get_json(&alice, "/v1/consents").await;
        consents.to_string().contains("\"text\"")
    })
    .await;
    let entries_after: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_ledger")
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    assert_eq!(
        entries_after,
        entries_before + 3,
        "two grants and one erasure record, once each"
    );
    let again = app
        .http
        .delete(format!("{}/v1/packages/{id}", app.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204, "already erased and recorded");
    app.stop().await;
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// `limits.uploads_in_flight_per_user` and `limits.uploads_in_flight`: one more upload than
/// allowed gets 429 with `Retry-After` and leaves nothing; other users keep their share; a
/// place is free again once an upload ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_are_bounded_per_user_and_in_all() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| {
                s.limits.uploads_in_flight_per_user = 2;
                s.limits.uploads_in_flight = 3;
            })),
            ..Options::default()
        },
    )
    .await;
    let (alice, bob, carol) = (app.uploader("alice"), app.uploader("bob"), app.uploader("carol"));
    for token in [&alice, &bob, &carol] {
        app.grant(token, &["documents"]).await;
    }
    let url = format!("{}/v1/packages?data_category=documents&filename=a.txt", app.base);
    let held = |token: &str| {
        let (body, streaming) = common::body_in_flight();
        let upload = common::status_of(
            app.http
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(streaming),
        );
        (body, upload)
    };
    let refused_with = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 429);
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:udim:problem:too-many-requests");
        problem["detail"].as_str().unwrap().to_owned()
    };

    let mut alices = vec![held(&alice), held(&alice)];
    for (body, _) in &alices {
        body.send(Ok(b"in flight ".to_vec())).await.unwrap();
    }
    // Each upload's package row exists from its first byte: both are in the service.
    common::eventually("alice's two uploads are in flight", || async {
        app.packages(&alice).await.len() == 2
    })
    .await;
    let detail = refused_with(app.upload(&alice, "documents", "a third").await).await;
    assert!(detail.contains("2 uploads of yours"), "{detail}");

    let (bob_body, bob_upload) = held(&bob);
    bob_body.send(Ok(b"bob's".to_vec())).await.unwrap();
    common::eventually("bob's upload takes the last place", || async {
        app.packages(&bob).await.len() == 1
    })
    .await;
    let detail = refused_with(app.upload(&carol, "documents", "no room").await).await;
    assert!(detail.contains("3 uploads in progress"), "{detail}");

    let (body, upload) = alices.remove(0);
    drop(body);
    assert_eq!(upload.await.unwrap(), 201);
    assert_eq!(app.upload(&carol, "documents", "room now").await.status(), 201);
    for (body, upload) in alices.into_iter().chain([(bob_body, bob_upload)]) {
        drop(body);
        assert_eq!(upload.await.unwrap(), 201);
    }
    assert_eq!(app.packages(&alice).await.len(), 2, "the refused ones left nothing");
    app.stop().await;
}

/// `limits.consent_changes_per_second_per_user`: a burst past the rate gets 429 with
/// `Retry-After`, and another user's changes are not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_changes_past_the_rate_get_429() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| s.limits.consent_changes_per_second_per_user = 3)),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    let grant = |token: &str| {
        app.http
            .post(format!("{}/v1/consents", app.base))
            .bearer_auth(token)
            .json(&json!({"purposes": ["model-training"], "data_categories": ["documents"], "policy_version": "1", "jurisdiction": "EU"}))
    };
    let statuses = common::concurrent_statuses((0..10).map(|_| grant(&alice))).await;
    let granted = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        (3..=4).contains(&granted),
        "a burst of three (and perhaps one refilled): {statuses:?}"
    );
    assert!(statuses.iter().all(|s| matches!(s, 201 | 429)), "{statuses:?}");
    let refused = grant(&alice).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(grant(&app.uploader("bob")).send().await.unwrap().status(), 201);
    app.stop().await;
}

/// `limits.uploads_per_second_per_user`, and `limits.uploads_per_second` for all users
/// together: a burst past either gets 429 with `Retry-After` and stores nothing for the
/// refused uploads; past only one user's rate, another user is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_per_user_or_the_global_rate_get_429() {
    for (per_user, global) in [(3, 0), (0, 3)] {
        let app = TestApp::spawn_with(
            Db::Sqlite,
            Options {
                configure: Some(Box::new(move |s| {
                    s.limits.uploads_per_second_per_user = per_user;
                    s.limits.uploads_per_second = global;
                })),
                ..Options::default()
            },
        )
        .await;
        let (alice, bob) = (app.uploader("alice"), app.uploader("bob"));
        app.grant(&alice, &["documents"]).await;
        app.grant(&bob, &["documents"]).await;
        let upload = |token: &str| {
            app.http
                .post(format!(
                    "{}/v1/packages?data_category=documents&filename=r.txt",
                    app.base
                ))
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body("rated")
        };
        let burst = (0..6).flat_map(|_| [upload(&alice), upload(&bob)]);
        let statuses = common::concurrent_statuses(burst).await;
        assert!(statuses.iter().all(|s| matches!(s, 201 | 429)), "{statuses:?}");
        let stored = statuses.iter().filter(|s| **s == 201).count();
        let expected = if global > 0 { 3..=4 } else { 6..=8 };
        assert!(
            expected.contains(&stored),
            "{per_user}/s per user, {global}/s in all: a second's burst (and perhaps one refilled each): {statuses:?}"
        );
        // The bucket refills while the burst is answered on a loaded machine: ask until the
        // rate refuses again (a few requests at most), and read that refusal.
        let mut refused = upload(&alice).send().await.unwrap();
        let mut extra_stored = 0;
        for _ in 0..10 {
            if refused.status() == 429 {
                break;
            }
            extra_stored += usize::from(refused.status() == 201);
            refused = upload(&alice).send().await.unwrap();
        }
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["type"], "urn:udim:problem:too-many-requests");
        let kept = app.packages(&alice).await.len() + app.packages(&bob).await.len();
        assert_eq!(kept, stored + extra_stored, "a refused upload stores nothing");
        if global == 0 {
            assert_eq!(
                upload(&app.uploader("carol")).send().await.unwrap().status(),
                403,
                "another user is not held back by alice's rate (carol has no consent: 403, not 429)"
            );
        }
        app.stop().await;
    }
}

/// A JSON request body past the 64 KiB limit gets 413 as a problem, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_json_body_gets_413() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let alice = app.uploader("alice");
    let huge = json!({
        "purposes": ["model-training"], "data_categories": ["documents"], "policy_version": "1",
        "jurisdiction": "x".repeat(100 * 1024),
    });
    let response = app
        .http
        .post(format!("{}/v1/consents", app.base))
        .bearer_auth(&alice)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:payload-too-large");
    let (status, consents) = app.get_json(&alice, "/v1/consents").await;
    assert_eq!(status, 200);
    assert!(
        !consents.to_string().contains("xxxxxxxx"),
        "nothing was recorded: {consents}"
    );
    app.stop().await;
}

/// Creates a tus upload of `length` bytes; returns the status and its URL when created.
async fn tus_create(app: &TestApp, token: &str, length: u64, metadata: &str) -> (u16, Option<String>) {
    let response = app
        .http
        .post(format!("{}/v1/uploads", app.base))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .header("upload-metadata", metadata)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let url = (status == 201).then(|| format!("{}{}", app.base, response.headers()["location"].to_str().unwrap()));
    if status == 429 {
        assert!(response.headers().contains_key("retry-after"));
    }
    (status, url)
}

/// `limits.open_uploads_per_user` and `limits.staged_bytes_per_user`: a user cannot stage
/// more unfinished tus uploads, or more declared bytes, than allowed (429), and terminating
/// one makes room; an `Upload-Metadata` past 4 KiB is refused (400) and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_user_can_stage_in_unfinished_uploads_is_bounded() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| {
                s.limits.open_uploads_per_user = 2;
                s.limits.staged_bytes_per_user = 1000;
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let metadata = "filename YS50eHQ=,data_category ZG9jdW1lbnRz";
    let (status, first) = tus_create(&app, &alice, 600, metadata).await;
    assert_eq!(status, 201);
    assert_eq!(
        tus_create(&app, &alice, 500, metadata).await.0,
        429,
        "1,100 bytes staged"
    );
    let (status, _second) = tus_create(&app, &alice, 300, metadata).await;
    assert_eq!(status, 201, "900 bytes staged");
    assert_eq!(tus_create(&app, &alice, 50, metadata).await.0, 429, "a third upload");
    let bob = app.uploader("bob");
    app.grant(&bob, &["documents"]).await;
    assert_eq!(tus_create(&app, &bob, 600, metadata).await.0, 201, "bob stages his own");

    let terminated = app
        .http
        .delete(first.unwrap())
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(terminated.status(), 204);
    assert_eq!(tus_create(&app, &alice, 650, metadata).await.0, 201, "room again");

    let long = format!("{metadata},note {}", "QUFB".repeat(1100));
    assert_eq!(
        tus_create(&app, &bob, 10, &long).await.0,
        400,
        "Upload-Metadata past 4 KiB"
    );
    app.stop().await;
}

/// One user's stalled uploads hold at most `limits.upload_buffer_bytes_per_user` of the upload
/// buffers: with the budget room for four writers and a user's share for two, a user who
/// opens four uploads and stalls them gets two read and two waiting, and another user's
/// upload is stored at once. (Without the share, the four took the whole budget and the
/// other user waited out the idle timeout for a 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_stalled_uploads_leave_the_rest_of_the_budget_to_others() {
    // What an upload of unknown size reserves on the filesystem store: three 4 MiB parts and
    // the upload's own buffers.
    const ONE: u64 = 3 * (4 << 20) + (128 << 10);
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(|s| {
                s.limits.upload_buffer_bytes = 4 * ONE;
                s.limits.upload_buffer_bytes_per_user = 2 * ONE;
                s.server.body_idle_timeout_secs = 20;
            })),
            ..Options::default()
        },
    )
    .await;
    let greedy = app.uploader("greedy");
    let honest = app.uploader("honest");
    app.grant(&greedy, &["documents"]).await;
    app.grant(&honest, &["documents"]).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let (body, streaming) = common::body_in_flight();
        body.send(Ok(vec![b's'; 64 * 1024])).await.unwrap();
        let request = app
            .http
            .post(format!(
                "{}/v1/packages?data_category=documents&filename=s.bin",
                app.base
            ))
            .bearer_auth(&greedy)
            .header("content-type", "application/octet-stream")
            .body(streaming)
            .send();
        stalled.push((body, tokio::spawn(request)));
    }
    // The stalled uploads have reached the budget: two hold their reservations, two wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let stored = app.upload(&honest, "documents", vec![b'h'; 1 << 20]).await;
    assert_eq!(stored.status(), 201, "another user's upload is stored");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "at once, not after the stalled uploads are cut"
    );
    for (body, request) in stalled {
        drop(body);
        let _ = request.await;
    }
    app.stop().await;
}
