//! Real faults against the real binary on the local profile, under load: PostgreSQL
//! connections killed while uploads run (requests fail fast with 503 and `Retry-After`, never
//! 500, and the service recovers by itself), the binary itself killed with a hundred uploads
//! in flight (every acknowledged upload survives, the rest leave nothing), PostgreSQL stopped
//! and started, RabbitMQ killed and started (every event delivered, at most one of them
//! twice), clamd killed mid-scan (fail closed), and `/readyz` naming what is down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::Process;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Each test here loads this 2-core machine on its own (the real binary under load, and for
/// some a database or a broker of its own booting): they take turns, so that no test's
/// patience rests on what the others happen to be doing at the same moment.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Terminates every connection to the app's database but the one asking.
async fn kill_connections(database_url: &str) -> i64 {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(database_url).await.unwrap();
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
async fn stored_and_unfinished(database_url: &str) -> (i64, i64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'stored'), count(*) FILTER (WHERE status <> 'stored') \
         FROM packages WHERE user_id = 'alice'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Four clients uploading small packages in a loop until stopped, keeping every answer: a
/// status (a 503 must say when to retry), "hung" past 30 s, or a transport error.
struct Load {
    answers: Arc<Mutex<Vec<String>>>,
    done: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(http: &reqwest::Client, base: &str, token: &str) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let done = CancellationToken::new();
        let workers = (0..4)
            .map(|worker| {
                let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
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
            .collect();
        Self { answers, done, workers }
    }

    /// Stops the clients; checks that every answer was 201 or 503 and returns how many of
    /// each there were.
    async fn stop(self) -> (usize, usize) {
        self.done.cancel();
        for worker in self.workers {
            worker.await.unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        let unexpected: Vec<&String> = answers
            .iter()
            .filter(|a| !matches!(a.as_str(), "201" | "503"))
            .collect();
        assert!(unexpected.is_empty(), "every answer is 201 or 503: {unexpected:?}");
        let refused = answers.iter().filter(|a| *a == "503").count();
        (answers.len() - refused, refused)
    }
}

/// Every connection of the real binary's PostgreSQL pool terminated (`pg_terminate_backend`),
/// six times under load on the local profile: uploads fail fast with 503 and `Retry-After`
/// (never 500, never a hang), the same process stores uploads again, every acknowledged upload
/// is stored and nothing refused is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_connections_fail_fast_and_the_service_recovers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = common::TestDatabase::create().await;
    let url = database.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let queue = common::TestQueue::new(&common::amqp_url());
    let key = common::ledger_key();
    let server = Process::serve(|| {
        let mut command = local_profile(dir.path(), &url, &queue, &key);
        command.env("UDIM_LIMITS__UPLOADS_PER_SECOND_PER_USER", "0");
        command
    })
    .await;
    let http = reqwest::Client::new();
    let alice = common::uploader_token(SECRET, "alice");
    common::grant_on(&http, &server.base, &alice, &["documents"]).await;
    let load = Load::start(&http, &server.base, &alice);

    let mut killed = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        killed += kill_connections(&url).await;
    }
    let (acknowledged, failed) = load.stop().await;
    assert!(killed > 0, "connections were killed");
    eprintln!(
        "{} uploads, {failed} answered 503, {killed} connections killed",
        acknowledged + failed
    );

    // No restart: the pool reconnects and uploads are stored again.
    common::eventually("uploads are stored again", || async {
        http.post(format!("{}/v1/packages?data_category=documents", server.base))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body("after the kills")
            .send()
            .await
            .unwrap()
            .status()
            == 201
    })
    .await;
    // Every package the service acknowledged is stored, and nothing is left half-made once
    // the sweeper has taken what the kills kept a refused upload from removing.
    let acknowledged = acknowledged as i64 + 1;
    common::eventually("a refused upload leaves no package behind", || async {
        stored_and_unfinished(&url).await.1 == 0
    })
    .await;
    let (stored, _) = stored_and_unfinished(&url).await;
    assert_eq!(
        stored, acknowledged,
        "every acknowledged upload, and only those, is stored"
    );
    drop(server);
}

const SECRET: &str = "faults-share-this-hs256-secret-of-32+bytes";

/// `udim serve` on the local profile (PostgreSQL, RabbitMQ, the filesystem store) over `dir`.
fn local_profile(
    dir: &std::path::Path,
    database_url: &str,
    queue: &common::TestQueue,
    key: &str,
) -> std::process::Command {
    let q = &queue.settings;
    let mut cmd = common::process::udim();
    cmd.env("UDIM_CONFIG_DIR", dir.join("no-config"))
        .env("UDIM_DATA_DIR", dir.join("data"))
        .env("UDIM_DATABASE__URL", database_url)
        .env("UDIM_STORAGE__TYPE", "filesystem")
        .env("UDIM_STORAGE__PATH", dir.join("objects"))
        .env("UDIM_KMS__TYPE", "local")
        .env("UDIM_KMS__KEY_FILE", dir.join("kek.keys"))
        .env("UDIM_AUTH__HS256_SECRET", SECRET)
        .env("UDIM_LEDGER__SIGNING_KEY", key)
        .env("UDIM_QUEUE__TYPE", "rabbitmq")
        .env("UDIM_QUEUE__URL", q.url.expose_secret())
        .env("UDIM_QUEUE__EXCHANGE", &q.exchange)
        .env("UDIM_QUEUE__QUEUE", &q.queue)
        .env("UDIM_QUEUE__DEAD_LETTER_EXCHANGE", &q.dead_letter_exchange)
        .env("UDIM_QUEUE__DEAD_LETTER_QUEUE", &q.dead_letter_queue)
        .env("UDIM_OUTBOX__POLL_INTERVAL_MS", "100")
        .env("UDIM_UPLOAD__ABANDON_AFTER_SECS", "2")
        .env("UDIM_UPLOAD__SWEEP_INTERVAL_SECS", "1");
    cmd
}

/// kill -9 of the real binary with 100 uploads in flight (50 simple, 50 tus, each half sent),
/// and 20 finished just before. After a restart every one is accounted for: each upload the
/// service acknowledged is stored, with its object, and its event is delivered; each simple
/// upload cut short is gone, with no object left once the sweeper has run; each tus upload
/// resumes from the offset the new process reports and is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_killed_with_a_hundred_uploads_in_flight_loses_none_it_acknowledged() {
    let _turn = ONE_AT_A_TIME.lock().await;
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::create().await;
    let queue = common::TestQueue::new(&common::amqp_url());
    let key = common::ledger_key();
    let first = Process::serve(|| local_profile(dir.path(), database.url(), &queue, &key)).await;
    let http = reqwest::Client::new();
    let users: Vec<String> = (0..25)
        .map(|i| common::uploader_token(SECRET, &format!("user-{i}")))
        .collect();
    for token in &users {
        common::grant_on(&http, &first.base, token, &["documents"]).await;
    }
    let simple_url = format!("{}/v1/packages?data_category=documents&filename=f.txt", first.base);

    // 20 simple uploads acknowledged before the kill.
    let mut acknowledged = BTreeSet::new();
    for (i, token) in users.iter().cycle().take(20).enumerate() {
        let response = http
            .post(&simple_url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(format!("finished before the kill {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let package: Value = response.json().await.unwrap();
        acknowledged.insert(package["id"].as_str().unwrap().to_owned());
    }

    // 50 simple and 50 tus uploads, each half sent when the process dies.
    let mut bodies = Vec::new();
    let mut simple = Vec::new();
    for token in users.iter().cycle().take(50) {
        let (body, streaming) = common::body_in_flight();
        body.send(Ok(vec![b's'; 64 * 1024])).await.unwrap();
        let request = http
            .post(&simple_url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(streaming);
        simple.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16())
        }));
        bodies.push(body);
    }
    let mut tus_uploads = Vec::new();
    for token in users.iter().cycle().take(50) {
        let created = http
            .post(format!("{}/v1/uploads", first.base))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", (256 * 1024).to_string())
            .header("upload-metadata", "filename dC5iaW4=,data_category ZG9jdW1lbnRz")
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let path = created.headers()["location"].to_str().unwrap().to_owned();
        let (body, streaming) = common::body_in_flight();
        body.send(Ok(vec![b't'; 64 * 1024])).await.unwrap();
        let request = http
            .patch(format!("{}{path}", first.base))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(streaming);
        tokio::spawn(async move { request.send().await });
        bodies.push(body);
        tus_uploads.push((token.clone(), path));
    }
    common::eventually("all 100 uploads are in the service", || async {
        in_flight_packages(database.url()).await >= 50
    })
    .await;
    first.kill_9();
    drop(bodies);
    for upload in simple {
        assert!(
            !matches!(upload.await.unwrap(), Ok(201)),
            "a simple upload cut short was never acknowledged"
        );
    }

    let second = Process::serve(|| local_profile(dir.path(), database.url(), &queue, &key)).await;
    // Each tus upload resumes where the new process says it is, and is stored: once the dead
    // process's lock on it lapses (423 until then), as a stock client retries.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    for (token, path) in &tus_uploads {
        let url = format!("{}{path}", second.base);
        loop {
            let head = http
                .head(&url)
                .bearer_auth(token)
                .header("tus-resumable", "1.0.0")
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 200, "the upload outlived the process");
            let offset: usize = head.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
            let rest = http
                .patch(&url)
                .bearer_auth(token)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", offset.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(vec![b't'; 256 * 1024 - offset])
                .send()
                .await
                .unwrap();
            if rest.status() == 204 {
                acknowledged.insert(rest.headers()["udim-package-id"].to_str().unwrap().to_owned());
                break;
            }
            assert_eq!(rest.status(), 423, "resumed at {offset}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dead process's lock never lapsed"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The cut-short simple uploads are swept away with their objects.
    common::eventually("the cut-short uploads are swept away", || async {
        in_flight_packages(database.url()).await == 0
    })
    .await;
    let stored = stored_packages(database.url()).await;
    assert_eq!(stored, acknowledged, "exactly the acknowledged uploads are stored");
    let objects: Vec<_> = common::files_under(&dir.path().join("objects"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/uploads/"))
        .collect();
    assert_eq!(
        objects.len(),
        stored.len(),
        "one object per stored package, no orphans: {objects:?}"
    );
    let events = queue
        .take_until(common::PATIENCE, |taken| {
            let arrived: BTreeSet<&str> = taken.iter().filter_map(|e| e["package_id"].as_str()).collect();
            stored.iter().all(|id| arrived.contains(id.as_str()))
        })
        .await;
    let arrived: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["package_id"].as_str().map(str::to_owned))
        .collect();
    assert!(stored.is_subset(&arrived), "every stored package's event is delivered");
    drop(second);
}

/// Packages of every user not (yet) stored.
async fn in_flight_packages(database_url: &str) -> i64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM packages WHERE status <> 'stored'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn stored_packages(database_url: &str) -> std::collections::BTreeSet<String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM packages WHERE status = 'stored'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    ids.into_iter().collect()
}

/// PostgreSQL stopped for a few seconds under load and started again (a cluster of the test's
/// own, with the real binary on the local profile): while it is down every upload fails fast
/// with 503 and `Retry-After` (never 500, never a hang past the pool's acquire timeout); once
/// it is back the same process stores uploads again, every acknowledged upload is stored and
/// its event delivered, and nothing refused is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_load_fails_fast_and_the_binary_recovers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = tokio::task::spawn_blocking(udim_testkit::cluster::Cluster::start)
        .await
        .unwrap();
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let queue = common::TestQueue::new(&common::amqp_url());
    let key = common::ledger_key();
    let server = Process::serve(|| {
        let mut command = local_profile(dir.path(), &url, &queue, &key);
        // Refusals come fast while the database is down: no upload rate to trip over.
        command
            .env("UDIM_DATABASE__ACQUIRE_TIMEOUT_SECS", "2")
            .env("UDIM_LIMITS__UPLOADS_PER_SECOND_PER_USER", "0");
        command
    })
    .await;
    let http = reqwest::Client::new();
    let alice = common::uploader_token(SECRET, "alice");
    common::grant_on(&http, &server.base, &alice, &["documents"]).await;

    let load = Load::start(&http, &server.base, &alice);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        std::thread::sleep(Duration::from_secs(4));
        cluster.resume();
        cluster
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acknowledged, refused) = load.stop().await;
    eprintln!(
        "{} uploads, {refused} answered 503 while PostgreSQL was down",
        acknowledged + refused
    );
    assert!(refused > 0, "the outage was seen");

    common::eventually("uploads are stored again", || async {
        let response = http
            .post(format!("{}/v1/packages?data_category=documents", server.base))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body("after the restart")
            .send()
            .await
            .unwrap();
        response.status() == 201
    })
    .await;
    let stored = stored_packages(&url).await;
    assert_eq!(
        stored.len(),
        acknowledged + 1,
        "every acknowledged upload, and only those, is stored"
    );
    // An upload refused half-way leaves a row the outage kept it from removing: the sweeper
    // takes it, and its object.
    common::eventually("nothing refused is left behind", || async {
        in_flight_packages(&url).await == 0
    })
    .await;
    let objects = common::files_under(&dir.path().join("objects"));
    assert_eq!(
        objects.len(),
        stored.len(),
        "one object per stored package: {objects:?}"
    );
    let events = queue
        .take_until(common::PATIENCE, |taken| {
            let arrived: std::collections::BTreeSet<&str> =
                taken.iter().filter_map(|e| e["package_id"].as_str()).collect();
            stored.iter().all(|id| arrived.contains(id.as_str()))
        })
        .await;
    let arrived: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["package_id"].as_str().map(str::to_owned))
        .collect();
    assert!(stored.is_subset(&arrived), "every stored package's event is delivered");
    drop(server);
    drop(cluster);
}

/// Outbox rows not yet confirmed by the broker.
async fn unsent_events(database_url: &str) -> i64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// RabbitMQ killed (SIGKILL, a node of the test's own) under load and started again a few
/// seconds later, with the real binary on the local profile and its default back-off: uploads
/// go on being acknowledged while the broker is down, since their events wait in the outbox;
/// once it is back the same process delivers every stored package's event, with no restart.
/// (How soon after its return is the relay's pause, unit-tested in `src/pipeline/relay.rs`.)
/// Delivery is at least once and no more: the relay has one publish awaiting its confirm at a
/// time, so the kill can leave at most one event both queued and unconfirmed, sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_outage_under_load_delays_events_and_loses_none() {
    let _turn = ONE_AT_A_TIME.lock().await;
    use std::collections::BTreeMap;
    let mut node = tokio::task::spawn_blocking(udim_testkit::rabbitmq::Node::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::create().await;
    let queue = common::TestQueue::new(&node.url());
    let key = common::ledger_key();
    let server = Process::serve(|| {
        let mut command = local_profile(dir.path(), database.url(), &queue, &key);
        command.env("UDIM_LIMITS__UPLOADS_PER_SECOND_PER_USER", "0");
        command
    })
    .await;
    let http = reqwest::Client::new();
    let alice = common::uploader_token(SECRET, "alice");
    common::grant_on(&http, &server.base, &alice, &["documents"]).await;

    let load = Load::start(&http, &server.base, &alice);
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The load stops before the broker boots again, so the backlog a loaded machine drains
    // is what five seconds of uploads left, however slowly the broker boots.
    let (acknowledged, refused) = load.stop().await;
    let held = unsent_events(database.url()).await;
    let node = tokio::task::spawn_blocking(move || {
        node.resume();
        node
    })
    .await
    .unwrap();
    eprintln!("{acknowledged} uploads acknowledged, {refused} refused; {held} events waited in the outbox");
    assert_eq!(refused, 0, "an upload never waits on the broker");
    assert!(held > 0, "the outage was seen: events waited in the outbox");

    let back = std::time::Instant::now();
    common::eventually("every event is confirmed by the broker", || async {
        unsent_events(database.url()).await == 0
    })
    .await;
    eprintln!("the outbox drained {:?} after the broker was back", back.elapsed());
    let stored = stored_packages(database.url()).await;
    assert_eq!(stored.len(), acknowledged, "every acknowledged upload is stored");
    // Everything confirmed is on the queue now; what is still taken after the last stored
    // package's event has arrived would be a late duplicate.
    let mut events = queue
        .take_until(common::PATIENCE, |taken| {
            let arrived: std::collections::BTreeSet<&str> =
                taken.iter().filter_map(|e| e["package_id"].as_str()).collect();
            stored.iter().all(|id| arrived.contains(id.as_str()))
        })
        .await;
    events.extend(queue.take_until(Duration::from_secs(2), |_| false).await);
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for event in &events {
        assert_eq!(event["event_type"], "package.stored", "{event}");
        *deliveries
            .entry(event["package_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let delivered: std::collections::BTreeSet<String> = deliveries.keys().cloned().collect();
    assert_eq!(
        delivered, stored,
        "an event for every stored package, and for nothing else"
    );
    let again: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        again.iter().map(|(_, n)| **n - 1).sum::<usize>() <= 1,
        "at most the one unconfirmed event is sent twice: {again:?}"
    );
    drop(server);
    drop(queue);
    drop(node);
}

/// A tmpfs of `size` mounted over `dir` for one test (root only: the test fails, never skips,
/// without it), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root (CI runs as root)");
        Self(dir.to_owned())
    }

    fn remount(&self, mode: &str) {
        let remounted = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(remounted.success(), "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The object store failing under the real binary (its storage path on a 4 MiB tmpfs): an
/// upload that fills the filesystem, then uploads while it is read-only, each answer 503 with
/// `Retry-After` and a problem document; nothing is marked stored and no object, part or
/// temporary file is left; once there is room and writes are allowed again, uploads are
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_object_store_answers_503_and_leaves_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let store = Tmpfs::mount(&objects, "4m");
    let server = Process::serve(|| {
        let mut command = common::process::embedded(&dir.path().join("data"));
        command
            .env("UDIM_STORAGE__PATH", &objects)
            .env("UDIM_AUTH__HS256_SECRET", SECRET);
        command
    })
    .await;
    let http = reqwest::Client::new();
    let alice = common::uploader_token(SECRET, "alice");
    common::grant_on(&http, &server.base, &alice, &["documents"]).await;
    let upload = |body: Vec<u8>| {
        http.post(format!(
            "{}/v1/packages?data_category=documents&filename=f.txt",
            server.base
        ))
        .bearer_auth(&alice)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
    };
    let stored = || async {
        let listed: Value = http
            .get(format!("{}/v1/packages", server.base))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.to_string().matches("\"stored\"").count()
    };
    let assert_refused = |response: reqwest::Response, what: &'static str| async move {
        assert_eq!(response.status(), 503, "{what}");
        assert!(response.headers().contains_key("retry-after"), "{what}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 503, "{what}: {problem}");
    };

    assert_refused(
        upload(vec![b'f'; 8 << 20]).await.unwrap(),
        "an upload that fills the store",
    )
    .await;
    assert_eq!(stored().await, 0, "nothing is marked stored");
    assert!(
        common::files_under(&objects).is_empty(),
        "nothing is left: {:?}",
        common::files_under(&objects)
    );
    assert_eq!(
        upload(b"a small one".to_vec()).await.unwrap().status(),
        201,
        "room again"
    );

    store.remount("ro");
    assert_refused(
        upload(b"while read-only".to_vec()).await.unwrap(),
        "an upload to a read-only store",
    )
    .await;
    assert_eq!(stored().await, 1);
    store.remount("rw");
    assert_eq!(upload(b"writable again".to_vec()).await.unwrap().status(), 201);
    assert_eq!(stored().await, 2);
    assert_eq!(common::files_under(&objects).len(), 2, "one object per stored package");
    drop(server);
}

/// `/readyz` of the real binary on the local profile names each dependency: all `ok` at
/// first; with the broker unreachable it stays ready (200) but `degraded`, naming the queue;
/// with PostgreSQL stopped it is not ready (503), naming the database; and it is ready again
/// once each is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_dependency_that_is_down_and_recovers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = tokio::task::spawn_blocking(udim_testkit::cluster::Cluster::start)
        .await
        .unwrap();
    let url = cluster.url();
    let amqp = common::amqp_url();
    let broker = amqp.rsplit_once('@').map_or(amqp.as_str(), |(_, host)| host);
    let link = common::faults::Link::to(broker.split('/').next().unwrap().to_owned()).await;
    let queue = common::TestQueue::new(&format!("amqp://guest:guest@{}/%2f", link.address));
    let dir = tempfile::tempdir().unwrap();
    let key = common::ledger_key();
    let server = Process::serve(|| local_profile(dir.path(), &url, &queue, &key)).await;
    let http = reqwest::Client::new();
    let readiness = || async {
        let response = http.get(format!("{}/readyz", server.base)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let named = |body: &Value| {
        ["database", "storage", "kms", "queue", "scanner"]
            .map(|name| body[name].as_str().unwrap_or("missing").to_owned())
    };

    let (status, body) = readiness().await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
    assert_eq!(named(&body), ["ok", "ok", "ok", "ok", "not-configured"], "{body}");
    assert_eq!(
        body["decides_readiness"],
        serde_json::json!(["database", "storage", "kms"]),
        "the queue does not decide readiness"
    );

    link.refuse(true);
    link.cut();
    common::eventually("the queue is named, and the service stays ready", || async {
        let (status, body) = readiness().await;
        status == 200
            && body["status"] == "degraded"
            && named(&body) == ["ok", "ok", "ok", "unavailable", "not-configured"]
    })
    .await;
    link.refuse(false);
    common::eventually("ready again once the broker is back", || async {
        let (status, body) = readiness().await;
        status == 200 && body["status"] == "ok" && body["queue"] == "ok"
    })
    .await;

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    common::eventually("the database is named, and the service is not ready", || async {
        let (status, body) = readiness().await;
        status == 503
            && body["status"] == "unavailable"
            && named(&body) == ["unavailable", "ok", "ok", "ok", "not-configured"]
    })
    .await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.resume();
        cluster
    })
    .await
    .unwrap();
    common::eventually("ready again once PostgreSQL is back", || async {
        let (status, body) = readiness().await;
        status == 200 && body["status"] == "ok"
    })
    .await;
    drop(server);
    drop(cluster);
}

/// clamd killed (SIGKILL) in the middle of scanning an upload to the real binary on the local
/// profile: the upload fails closed with 503 `scanner-unavailable`, and no package, object
/// (temporary or not) or event is left of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_killed_mid_scan_fails_closed_and_leaves_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut clamd = udim_testkit::clamd::Clamd::start("10M").await;
    let database = common::TestDatabase::create().await;
    let url = database.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let queue = common::TestQueue::new(&common::amqp_url());
    let key = common::ledger_key();
    let scanner = format!("tcp://{}", clamd.address());
    let server = Process::serve(|| {
        let mut command = local_profile(dir.path(), &url, &queue, &key);
        command
            .env("UDIM_SCANNER__TYPE", "clamd")
            .env("UDIM_SCANNER__ADDRESS", &scanner);
        command
    })
    .await;
    let http = reqwest::Client::new();
    let alice = common::uploader_token(SECRET, "alice");
    common::grant_on(&http, &server.base, &alice, &["documents"]).await;

    let (body, streaming) = common::body_in_flight();
    let upload = tokio::spawn(
        http.post(format!(
            "{}/v1/packages?data_category=documents&filename=a.txt",
            server.base
        ))
        .bearer_auth(&alice)
        .header("content-type", "application/octet-stream")
        .body(streaming)
        .send(),
    );
    let piece = vec![b'a'; 256 * 1024];
    for _ in 0..4 {
        body.send(Ok(piece.clone())).await.unwrap();
    }
    // A megabyte is in: the service has read it and is feeding clamd.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clamd.kill();
    for _ in 0..8 {
        if body.send(Ok(piece.clone())).await.is_err() {
            break;
        }
    }
    drop(body);
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:udim:problem:scanner-unavailable");
    assert_eq!(stored_and_unfinished(&url).await, (0, 0), "no package of it");
    assert_eq!(unsent_events(&url).await, 0, "no event of it");
    let left = common::files_under(&dir.path().join("objects"));
    assert!(left.is_empty(), "no object of it, temporary or not: {left:?}");
    drop(server);
}
