//! Two real `udim serve` processes on one PostgreSQL, one object store, one key file and one
//! RabbitMQ queue behave as one service: concurrent consents on both make one ledger that
//! `udim ledger verify` accepts, every checkpoint either replica signed is consistent with
//! the earlier ones, withdrawals of one consent racing on both give one withdrawn entry,
//! checkpoint pairs pass `udim ledger verify-consistency`, simple and tus uploads whose
//! PATCHes alternate between the replicas become packages whose events all arrive in
//! per-package order (erasures racing the relays included), a replica killed in the middle
//! of a PATCH leaves the upload to be resumed on the other within seconds, and one stopped
//! (SIGTERM) in the middle of a PATCH answers with what it kept and leaves no lease behind.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Process;
use common::{TestDatabase, TestQueue};
use serde_json::Value;
use udim_ledger::note::VerifierKey;
use udim_ledger::proof::ConsistencyProof;

const SECRET: &str = "replicas-share-this-hs256-secret-of-32+bytes";

/// What the replicas share.
struct Shared {
    database: TestDatabase,
    queue: TestQueue,
    signing_key: String,
    dir: tempfile::TempDir,
}

impl Shared {
    async fn new() -> Self {
        let database = TestDatabase::create().await;
        let queue = TestQueue::new(&common::amqp_url());
        let signing_key = common::ledger_key();
        Self {
            database,
            queue,
            signing_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, name: &str) -> Command {
        let q = &self.queue.settings;
        let mut cmd = common::process::udim();
        // Built-in defaults only (no data-category allow-lists), plus what is set here.
        cmd.env("UDIM_CONFIG_DIR", self.dir.path().join("no-config"))
            // Each replica has a data directory of its own; all they share is configured.
            .env("UDIM_DATA_DIR", self.dir.path().join(name))
            .env("UDIM_DATABASE__URL", self.database.url())
            .env("UDIM_STORAGE__TYPE", "filesystem")
            .env("UDIM_STORAGE__PATH", self.dir.path().join("objects"))
            .env("UDIM_KMS__TYPE", "local")
            .env("UDIM_KMS__KEY_FILE", self.dir.path().join("kek.keys"))
            .env("UDIM_AUTH__HS256_SECRET", SECRET)
            .env("UDIM_LEDGER__SIGNING_KEY", &self.signing_key)
            .env("UDIM_QUEUE__TYPE", "rabbitmq")
            .env("UDIM_QUEUE__URL", secrecy::ExposeSecret::expose_secret(&q.url))
            .env("UDIM_QUEUE__EXCHANGE", &q.exchange)
            .env("UDIM_QUEUE__QUEUE", &q.queue)
            .env("UDIM_QUEUE__DEAD_LETTER_EXCHANGE", &q.dead_letter_exchange)
            .env("UDIM_QUEUE__DEAD_LETTER_QUEUE", &q.dead_letter_queue)
            .env("UDIM_OUTBOX__POLL_INTERVAL_MS", "100");
        cmd
    }

    async fn start(&self, name: &str) -> Process {
        Process::serve(|| self.command(name)).await
    }

    fn token(&self, sub: &str) -> String {
        common::uploader_token(SECRET, sub)
    }
}

async fn grant(http: &reqwest::Client, base: &str, token: &str) -> Value {
    common::grant_on(http, base, token, &["audio"]).await
}

async fn checkpoint_size(http: &reqwest::Client, base: &str) -> u64 {
    let note = http
        .get(format!("{base}/v1/ledger/checkpoint"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    note.lines().nth(1).unwrap().parse().unwrap()
}

fn tus(request: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    request.bearer_auth(token).header("tus-resumable", "1.0.0")
}

async fn patch(http: &reqwest::Client, url: &str, token: &str, offset: usize, bytes: Vec<u8>) -> reqwest::Response {
    tus(http.patch(url), token)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Creates a tus upload of `length` bytes on `base` and starts a PATCH of it whose body the
/// test feeds through the returned sender; returns the upload's path and the PATCH's answer.
async fn patch_in_flight(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    length: usize,
) -> (
    String,
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let created = tus(http.post(format!("{base}/v1/uploads")), token)
        .header("upload-length", length.to_string())
        .header("upload-metadata", "data_category YXVkaW8=")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let path = created.headers()["location"].to_str().unwrap().to_owned();
    let (tx, body) = common::body_in_flight();
    let answer = tokio::spawn(
        tus(http.patch(format!("{base}{path}")), token)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(body)
            .send(),
    );
    (path, tx, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_are_one_service() {
    let shared = Shared::new().await;
    let (a, b) = (shared.start("a").await, shared.start("b").await);
    let bases = [a.base.clone(), b.base.clone()];
    let http = reqwest::Client::new();

    // Concurrent consents on both replicas, and the checkpoints each one signs meanwhile.
    let users: Vec<String> = (0..12).map(|n| format!("user-{n}")).collect();
    let grants = users.iter().enumerate().map(|(n, user)| {
        let (http, base, token) = (http.clone(), bases[n % 2].clone(), shared.token(user));
        tokio::spawn(async move {
            let mut sizes = Vec::new();
            for _ in 0..3 {
                grant(&http, &base, &token).await;
                sizes.push(checkpoint_size(&http, &base).await);
            }
            sizes
        })
    });
    let mut sizes: Vec<u64> = futures::future::join_all(grants)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    sizes.sort();
    sizes.dedup();
    assert_eq!(
        checkpoint_size(&http, &bases[0]).await,
        36,
        "one log: every grant on either replica"
    );
    assert_eq!(checkpoint_size(&http, &bases[1]).await, 36);
    let key = VerifierKey::parse(
        http.get(format!("{}/v1/ledger/key", bases[1]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim(),
    )
    .unwrap();
    for pair in sizes.windows(2) {
        let base = &bases[(pair[0] % 2) as usize];
        let text = http
            .get(format!("{base}/v1/ledger/consistency?from={}&to={}", pair[0], pair[1]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let proof: ConsistencyProof = serde_json::from_str(&text).unwrap();
        let (old, new) = proof
            .verify(&key)
            .expect("every checkpoint is consistent with the one before");
        assert_eq!((old.size, new.size), (pair[0], pair[1]));
        // And the operator's offline check agrees.
        let file = shared.dir.path().join("consistency.json");
        std::fs::write(&file, text).unwrap();
        let checked = common::process::udim()
            .args(["ledger", "verify-consistency", "--key", &key.to_string()])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "udim ledger verify-consistency {pair:?}: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        assert!(
            String::from_utf8_lossy(&checked.stdout)
                .contains(&format!("tree size {} extends tree size {}", pair[1], pair[0]))
        );
    }

    // Withdrawals of one consent racing on both replicas: one lands, the rest get 409.
    let token = shared.token("user-11");
    let consent = grant(&http, &bases[0], &token).await;
    let id = consent["id"].as_str().unwrap().to_owned();
    let statuses = common::concurrent_statuses((0..6).map(|n| {
        http.post(format!("{}/v1/consents/{id}/withdraw", bases[n % 2]))
            .bearer_auth(&token)
    }))
    .await;
    assert_eq!(
        statuses,
        [201, 409, 409, 409, 409, 409],
        "one withdrawal across both replicas"
    );

    // Simple uploads on both, and tus uploads whose PATCHes alternate between them.
    let mut packages = Vec::new();
    for (n, user) in users.iter().take(4).enumerate() {
        let token = shared.token(user);
        let response = http
            .post(format!(
                "{}/v1/packages?data_category=audio&filename=a.bin",
                bases[n % 2]
            ))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(common::distinctive_bytes(50_000 + n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let package: Value = response.json().await.unwrap();
        packages.push(package["id"].as_str().unwrap().to_owned());

        let body = common::distinctive_bytes(200_000 + n);
        let created = tus(http.post(format!("{}/v1/uploads", bases[(n + 1) % 2])), &token)
            .header("upload-length", body.len().to_string())
            .header("upload-metadata", "data_category YXVkaW8=")
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let path = created.headers()["location"].to_str().unwrap().to_owned();
        let mut offset = 0;
        let mut last = None;
        for (part, bytes) in body.chunks(60_000).enumerate() {
            let response = patch(
                &http,
                &format!("{}{path}", bases[part % 2]),
                &token,
                offset,
                bytes.to_vec(),
            )
            .await;
            assert_eq!(response.status(), 204, "PATCH {part} on replica {}", part % 2);
            offset += bytes.len();
            last = Some(response);
        }
        let id = last.unwrap().headers()["udim-package-id"].to_str().unwrap().to_owned();
        packages.push(id);
    }

    // Every other package is erased at once, racing the relays that may hold its `stored`
    // event.
    let mut erased = std::collections::BTreeSet::new();
    for (n, id) in packages.iter().enumerate().filter(|(n, _)| n % 2 == 1) {
        let owner = shared.token(&users[(n / 2) % users.len()]);
        let response = http
            .delete(format!("{}/v1/packages/{id}", bases[n % 2]))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "erasing {id}");
        erased.insert(id.clone());
    }

    // Every package's last event arrives, once a relay on either replica has sent it, and no
    // package's events arrive out of order: an erased package's `stored` (if it was sent at
    // all) comes before its `deleted`.
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    let done = |seen: &std::collections::BTreeMap<String, Vec<String>>| {
        packages.iter().all(|id| {
            let last = if erased.contains(id) {
                "package.deleted"
            } else {
                "package.stored"
            };
            seen.get(id).is_some_and(|events| events.iter().any(|e| e == last))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&seen) && Instant::now() < deadline {
        if let Some((_, event)) = shared.queue.next_event(Duration::from_secs(2)).await {
            seen.entry(event["package_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(event["event_type"].as_str().unwrap().to_owned());
        }
    }
    assert!(done(&seen), "every package's events are delivered: {seen:?}");
    // And nothing more comes: no late duplicate, no `stored` after its `deleted`.
    while let Some((_, event)) = shared.queue.next_event(Duration::from_secs(3)).await {
        seen.entry(event["package_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["event_type"].as_str().unwrap().to_owned());
    }
    for (id, events) in &seen {
        let expected: &[&[&str]] = if erased.contains(id) {
            &[&["package.stored", "package.deleted"], &["package.deleted"]]
        } else {
            &[&["package.stored"]]
        };
        assert!(
            expected.iter().any(|e| e == events),
            "package {id}'s events arrive once each, in order: {events:?}"
        );
    }

    // Replica a dies in the middle of a PATCH; the client resumes on b within seconds.
    let token = shared.token("user-0");
    let body = common::distinctive_bytes(400_000);
    let (path, tx, in_flight) = patch_in_flight(&http, &bases[0], &token, body.len()).await;
    tx.send(Ok(body[..100_000].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill_9();
    let killed = Instant::now();
    drop(tx);
    let _ = in_flight.await;

    let url_b = format!("{}{path}", bases[1]);
    let resumed = loop {
        let head = tus(http.head(&url_b), &token).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let offset: usize = head.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
        let response = patch(&http, &url_b, &token, offset, body[offset..].to_vec()).await;
        if response.status() == 204 {
            break response;
        }
        assert_eq!(
            response.status(),
            423,
            "only the dead replica's lease stands in the way"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the lease outlived its replica"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let waited = killed.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "resumed {waited:?} after the replica died"
    );
    let id = resumed.headers()["udim-package-id"].to_str().unwrap().to_owned();
    let (status, package) = {
        let response = http
            .get(format!("{}/v1/packages/{id}", bases[1]))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(
        package["sha256"],
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body).as_ref())
    );

    // Replica b is stopped (SIGTERM, a rolling deploy) in the middle of a PATCH: the PATCH
    // keeps what arrived and answers with its offset, the lease is released at once, and
    // the client goes on on the next replica without a 423.
    let c = shared.start("c").await;
    let body = common::distinctive_bytes(300_000);
    let (path, tx, in_flight) = patch_in_flight(&http, &bases[1], &token, body.len()).await;
    tx.send(Ok(body[..120_000].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.signal("TERM");
    let answered = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the PATCH answers when shutdown begins")
        .unwrap()
        .expect("an answer, not a dropped connection");
    assert_eq!(answered.status(), 204);
    // What had arrived when shutdown began is kept: some of the 120,000 bytes at least (hyper
    // may not have handed the last of them over yet), and the next replica agrees.
    let kept: usize = answered.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
    assert!((1..=120_000).contains(&kept), "what arrived is kept: {kept}");
    drop(tx);
    let url_c = format!("{}{path}", c.base);
    let head = tus(http.head(&url_c), &token).send().await.unwrap();
    assert_eq!(head.status(), 200, "no lease left behind");
    assert_eq!(head.headers()["upload-offset"], kept.to_string());
    let rest = patch(&http, &url_c, &token, kept, body[kept..].to_vec()).await;
    assert_eq!(rest.status(), 204, "the next replica takes it at once");
    assert!(rest.headers().contains_key("udim-package-id"));
    let mut b = b;
    assert!(b.child.wait().unwrap().success(), "replica b stopped cleanly");

    // And the one ledger both wrote passes the operator's audit.
    let audit = shared.command("audit").args(["ledger", "verify"]).output().unwrap();
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stderr));
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("42 entries"),
        "38 consent entries and 4 erasure records"
    );
    drop(c);
}

/// A replica told to stop (SIGTERM, a rolling deploy) in the middle of a large simple upload:
/// the upload finishes and its event is published before the process exits, a new upload
/// meanwhile is answered 503 `shutting-down` with `Retry-After` (not refused at connect), and
/// the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_told_to_stop_finishes_its_upload_turns_new_ones_away_and_exits_0() {
    const PIECE: usize = 1 << 20;
    const PIECES: usize = 48;
    let shared = Shared::new().await;
    let mut a = shared.start("a").await;
    let http = reqwest::Client::new();
    let token = shared.token("draining");
    grant(&http, &a.base, &token).await;
    let upload_url = format!("{}/v1/packages?data_category=audio&filename=long.bin", a.base);

    let (tx, body) = common::body_in_flight();
    let in_flight = tokio::spawn(
        http.post(&upload_url)
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send(),
    );
    let piece = common::distinctive_bytes(PIECE);
    for _ in 0..PIECES / 2 {
        tx.send(Ok(piece.clone())).await.unwrap();
    }
    a.signal("TERM");
    // Until the signal is handled, a request is still served: wait for the first 503.
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let key = reqwest::Client::new()
            .get(format!("{}/v1/ledger/key", a.base))
            .send()
            .await
            .expect("a draining replica answers instead of refusing the connection");
        if key.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica starts draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new connection, as a client arriving now makes one.
    let refused = reqwest::Client::new()
        .post(&upload_url)
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body("a new upload while the replica drains")
        .send()
        .await
        .expect("a draining replica answers instead of refusing the connection");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:shutting-down");
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "the replica waits for its upload"
    );

    for _ in PIECES / 2..PIECES {
        tx.send(Ok(piece.clone())).await.unwrap();
    }
    drop(tx);
    let finished = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the upload in flight is answered")
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!(finished.status(), 201, "the upload in flight finishes");
    let package: Value = finished.json().await.unwrap();
    assert_eq!(package["size_bytes"], (PIECE * PIECES) as u64);

    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = a.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the replica exits once its upload is done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "a drained replica exits 0: {exit}");
    let (_, event) = shared
        .queue
        .next_event(Duration::from_secs(5))
        .await
        .expect("the finished upload's event was published before the replica exited");
    assert_eq!(event["package_id"], package["id"]);
}
