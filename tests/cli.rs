//! The `udim` binary as operators use it: `serve` on the embedded default with no
//! configuration, `token` minting what that server accepts, `admin outbox`, `migrate`, and
//! start-up errors as one line naming the key, with secrets never printed.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::Process;
use serde_json::{Value, json};

const UDIM: &str = env!("CARGO_BIN_EXE_udim");

fn udim(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(UDIM);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("UDIM_DATA_DIR", data_dir)
        .env("UDIM_CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_token_upload_and_outbox_work_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| udim(dir.path())).await;
    let base = server.base.clone();

    let output = udim(dir.path())
        .args(["token", "--sub", "alice", "--scope", "udim:upload"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "only the token is printed");
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let http = reqwest::Client::new();
    let consent = http
        .post(format!("{base}/v1/consents"))
        .bearer_auth(token)
        .json(&json!({"purposes": ["model-training"], "data_categories": ["documents"], "policy_version": "1", "jurisdiction": "EU"}))
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 201);
    let consent: Value = consent.json().await.unwrap();
    assert!(consent["id"].is_string());

    let package = http
        .post(format!("{base}/v1/packages?data_category=documents&filename=notes.txt"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body("hello world\n")
        .send()
        .await
        .unwrap();
    assert_eq!(package.status(), 201);
    let package: Value = package.json().await.unwrap();
    assert_eq!(package["status"], "stored");
    assert_eq!(package["size_bytes"], 12);
    assert_eq!(
        package["sha256"],
        "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447"
    );

    let outbox = udim(dir.path()).args(["admin", "outbox"]).output().unwrap();
    assert!(outbox.status.success());
    let lines: Vec<Value> = String::from_utf8(outbox.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["payload"]["package_id"], package["id"]);

    // Neither the generated HS256 secret nor the key file's key reaches the logs.
    drop(server);
    let secret = std::fs::read_to_string(dir.path().join("secrets/jwt-hs256")).unwrap();
    let keys = std::fs::read_to_string(dir.path().join("keys/kek.keys")).unwrap();
    let key_material = keys.split_whitespace().nth(1).unwrap().to_owned();
    let traced = Process::serve(|| {
        let mut command = udim(dir.path());
        command.env("UDIM_LOG__LEVEL", "trace");
        command
    })
    .await;
    let base = traced.base.clone();
    let _ = http.get(format!("{base}/v1/packages")).bearer_auth(token).send().await;
    let logs = traced.stop_and_read_logs();
    assert!(!logs.is_empty());
    assert!(!logs.contains(secret.trim()), "the HS256 secret was logged");
    assert!(!logs.contains(&key_material), "key material was logged");
    assert!(!logs.contains(token), "a bearer token was logged");
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_the_key_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = udim(dir.path())
        .env("UDIM_SERVER__LISTEN", "not-an-address")
        .env("UDIM_AUTH__HS256_SECRET", "this-secret-must-never-be-printed-anywhere")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(!stderr.contains("this-secret-must-never"), "{stderr}");

    let output = udim(dir.path())
        .env("UDIM_DATABASE__URL", "mysql://u:hunter2@db/x")
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let output = udim(dir.path())
        .env("UDIM_PROFILE", "nope")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stderr).unwrap().contains("UDIM_PROFILE"));
}

#[tokio::test]
async fn migrate_creates_the_schema_on_postgres_and_is_idempotent() {
    let database = common::TestDatabase::empty().await;
    let url = database.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = udim(dir.path())
            .env("UDIM_DATABASE__URL", &url)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('users','consent_ledger','packages','outbox')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 4);
}

/// `udim upload` against a running service (a TestApp in this process).
fn upload_client(app: &common::TestApp, token: &str, file: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(UDIM)
        .env_clear()
        .env("UDIM_TOKEN", token)
        .args([
            "upload",
            "--server",
            &app.base,
            "--category",
            "documents",
            "--chunk-mib",
            "1",
        ])
        .args(["--content-type", "application/pdf"])
        .args(extra)
        .arg(file)
        .output()
        .unwrap()
}

/// An upload created as `udim upload` creates them, with `fingerprint` in its metadata.
async fn upload_client_created(app: &common::TestApp, token: &str, length: usize, fingerprint: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let created = app
        .http
        .post(format!("{}/v1/uploads", app.base))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .header(
            "upload-metadata",
            format!(
                "filename {},data_category {},fingerprint {}",
                b64("report.pdf"),
                b64("documents"),
                b64(fingerprint)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    format!("{}{}", app.base, created.headers()["location"].to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_client_sends_a_file_in_chunks_and_resumes_an_interrupted_upload() {
    use base64::Engine as _;
    let app = common::TestApp::spawn(common::Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["documents"]).await;
    let mut data = b"%PDF-1.7\n".to_vec();
    data.extend(common::distinctive_bytes(3 * 1024 * 1024 + 777));
    let file = app.data_dir().join("report.pdf");
    std::fs::write(&file, &data).unwrap();
    let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data));

    let output = upload_client(&app, &alice, &file, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let package: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(package["status"], "stored");
    assert_eq!(package["sha256"], sha256.as_str());
    assert_eq!(package["original_name"], "report.pdf");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--resume"));

    // An upload some earlier run left at 1 MiB: the client asks where it is and finishes it.
    let created = app
        .http
        .post(format!("{}/v1/uploads", app.base))
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len().to_string())
        .header(
            "upload-metadata",
            format!(
                "filename {},filetype {},data_category {}",
                base64::engine::general_purpose::STANDARD.encode("report.pdf"),
                base64::engine::general_purpose::STANDARD.encode("application/pdf"),
                base64::engine::general_purpose::STANDARD.encode("documents"),
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let url = format!("{}{}", app.base, created.headers()["location"].to_str().unwrap());
    let first = app
        .http
        .patch(&url)
        .bearer_auth(&alice)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(data[..1024 * 1024].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 204);
    let output = upload_client(&app, &alice, &file, &["--resume", &url]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let resumed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(resumed["sha256"], sha256.as_str());
    assert_ne!(resumed["id"], package["id"], "a second package");

    // Another file of the same size is not spliced onto an upload started for this one.
    let mut other = data.clone();
    other[2 * 1024 * 1024] ^= 1;
    let other_file = app.data_dir().join("other.pdf");
    std::fs::write(&other_file, &other).unwrap();
    let started = upload_client_created(&app, &alice, data.len(), "0123456789abcdef0123456789abcdef").await;
    let output = upload_client(&app, &alice, &other_file, &["--resume", &started]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("another file"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Refusals are explained: no consent covers `video`.
    let output = Command::new(UDIM)
        .env_clear()
        .env("UDIM_TOKEN", &alice)
        .args(["upload", "--server", &app.base, "--category", "video"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("403") && stderr.to_lowercase().contains("consent"),
        "{stderr}"
    );
    app.stop().await;
}

/// Replicas on one PostgreSQL must sign one ledger with one key: a key generated per
/// replica is refused, `udim ledger keygen` makes the one to configure, and with it the
/// service starts.
#[tokio::test]
async fn on_postgres_the_ledger_key_must_be_configured_and_keygen_makes_one() {
    let database = common::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut refused = udim(dir.path())
        .env("UDIM_DATABASE__URL", database.url())
        .env("UDIM_SERVER__LISTEN", "127.0.0.1:0")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while refused.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            panic!("the service started on PostgreSQL with a generated ledger key");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("`ledger.signing_key`") && stderr.contains("udim ledger keygen"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("secrets/ledger-signing-key").exists(),
        "no key is generated for PostgreSQL"
    );

    let keygen = udim(dir.path()).args(["ledger", "keygen"]).output().unwrap();
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    let key = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();
    let signer = udim_ledger::note::Signer::parse(&key).expect("keygen prints a signing key");
    assert_eq!(signer.verifier().name(), "udim.local/consent-ledger");

    let server = Process::serve(|| {
        let mut command = udim(dir.path());
        command
            .env("UDIM_DATABASE__URL", database.url())
            .env("UDIM_LEDGER__SIGNING_KEY", &key);
        command
    })
    .await;
    drop(server);
}

/// `udim admin rotate-key` end to end: after it (and a restart), new packages are sealed under
/// the new key, and packages sealed under the old one still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_seals_new_packages_under_the_new_key_and_old_ones_still_read() {
    let app = common::TestApp::spawn(common::Db::Sqlite).await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["audio"]).await;
    let before_bytes = common::distinctive_bytes(70_000);
    let before: Value = app
        .upload(&alice, "audio", before_bytes.clone())
        .await
        .json()
        .await
        .unwrap();

    let rotated = udim(&app.data_dir())
        .env("UDIM_CONFIG_DIR", app.data_dir().join("no-config"))
        .args(["admin", "rotate-key"])
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let new_key = String::from_utf8(rotated.stdout).unwrap().trim().to_owned();
    assert!(!new_key.is_empty() && before["encryption_key_id"] != new_key.as_str());

    let app = app.restart().await;
    let after_bytes = common::distinctive_bytes(30_000);
    let after: Value = app
        .upload(&alice, "audio", after_bytes.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["encryption_key_id"],
        new_key.as_str(),
        "new packages use the new key"
    );
    let pipeline = app.token("pipeline", &["udim:read"]);
    for (package, bytes) in [(&before, &before_bytes), (&after, &after_bytes)] {
        let read = app
            .http
            .get(format!(
                "{}/v1/packages/{}/content?purpose=model-training",
                app.base,
                package["id"].as_str().unwrap()
            ))
            .bearer_auth(&pipeline)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        assert!(
            read.bytes().await.unwrap() == bytes.as_slice(),
            "{} reads",
            package["id"]
        );
    }
    app.stop().await;
}

/// `udim ledger checkpoint` prints the latest signed checkpoint and `udim ledger proof` an
/// entry's record proof against it: both verify offline with the ledger's public key alone
/// (the library, and `udim ledger verify-proof`), the proof's leaf is the entry's, and a proof
/// with a changed byte is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_checkpoint_and_proof_print_what_verifies_offline() {
    use udim_ledger::note::VerifierKey;
    use udim_ledger::proof::RecordProof;
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(|| udim(dir.path())).await;
    let http = reqwest::Client::new();
    let token = |sub: &str| {
        let output = udim(dir.path())
            .args(["token", "--sub", sub, "--scope", "udim:upload"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let mut consents = Vec::new();
    for (sub, category) in [("alice", "documents"), ("bob", "audio"), ("alice", "text")] {
        consents.push(common::grant_on(&http, &server.base, &token(sub), &[category]).await);
    }
    let key_text = http
        .get(format!("{}/v1/ledger/key", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = VerifierKey::parse(key_text.trim()).unwrap();
    drop(server);

    let checkpoint = udim(dir.path()).args(["ledger", "checkpoint"]).output().unwrap();
    assert!(
        checkpoint.status.success(),
        "{}",
        String::from_utf8_lossy(&checkpoint.stderr)
    );
    let note = String::from_utf8(checkpoint.stdout).unwrap();
    let opened = udim_ledger::checkpoint::Checkpoint::open(&note, &key).expect("a checkpoint the ledger key signed");
    assert_eq!(opened.size, 3, "the checkpoint covers the three consents");

    let proof = udim(dir.path())
        .args(["ledger", "proof", "--index", "1"])
        .output()
        .unwrap();
    assert!(proof.status.success(), "{}", String::from_utf8_lossy(&proof.stderr));
    let printed: RecordProof = serde_json::from_slice(&proof.stdout).unwrap();
    let verified = printed.verify(&key, None).expect("the printed proof verifies offline");
    assert_eq!((printed.index, verified.size), (1, 3));
    let served: RecordProof = serde_json::from_value(consents[1]["record_proof"].clone()).unwrap();
    assert_eq!(printed.leaf_hash, served.leaf_hash, "the proof is of bob's entry");

    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, &proof.stdout).unwrap();
    let key_file = dir.path().join("ledger.key");
    std::fs::write(&key_file, &key_text).unwrap();
    let verify = |file: &std::path::Path| {
        udim(dir.path())
            .args(["ledger", "verify-proof", "--key"])
            .arg(&key_file)
            .arg(file)
            .output()
            .unwrap()
    };
    let verified = verify(&proof_file);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let mut tampered: Value = serde_json::from_slice(&proof.stdout).unwrap();
    tampered["index"] = json!(2);
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(&tampered_file, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let refused = verify(&tampered_file);
    assert!(!refused.status.success(), "a proof moved to another index is refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let missing = udim(dir.path())
        .args(["ledger", "proof", "--index", "3"])
        .output()
        .unwrap();
    assert!(!missing.status.success(), "no entry 3 in a ledger of three");
    assert!(
        !String::from_utf8_lossy(&missing.stderr).contains("Usage"),
        "refused for the index, not the arguments"
    );
}

/// `udim upload` in one run rides out the service going away mid-upload (SIGKILL) and coming
/// back: it waits, asks the new process where the upload is, and finishes it from there,
/// without sending the file again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_client_rides_out_a_service_that_dies_and_comes_back_in_one_run() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let first = Process::serve(|| udim(dir.path())).await;
    let link = common::faults::Link::to(first.base.trim_start_matches("http://").to_owned()).await;
    let token = {
        let output = udim(dir.path())
            .args(["token", "--sub", "alice", "--scope", "udim:upload"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let http = reqwest::Client::new();
    common::grant_on(&http, &first.base, &token, &["documents"]).await;
    let mut data = b"%PDF-1.7\n".to_vec();
    data.extend(common::distinctive_bytes(40 * 1024 * 1024));
    let file = dir.path().join("big.pdf");
    std::fs::write(&file, &data).unwrap();
    let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data));

    let client = Command::new(UDIM)
        .env_clear()
        .env("UDIM_TOKEN", &token)
        .args(["upload", "--server", &format!("http://{}", link.address)])
        .args([
            "--category",
            "documents",
            "--chunk-mib",
            "1",
            "--content-type",
            "application/pdf",
        ])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..1200 {
        if link.sent.load(Ordering::SeqCst) > 4 * 1024 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent_before = link.sent.load(Ordering::SeqCst);
    assert!(sent_before > 4 * 1024 * 1024, "the upload is under way");
    assert!(sent_before < data.len() as u64, "and not finished");
    link.refuse(true);
    first.kill_9();
    link.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let second = Process::serve(|| udim(dir.path())).await;
    // All the first process ever got (the link refuses and its connections are cut).
    let sent_to_first = link.sent.load(Ordering::SeqCst);
    link.retarget(second.base.trim_start_matches("http://").to_owned());
    link.refuse(false);
    let pid = client.id();
    let finished = tokio::task::spawn_blocking(move || client.wait_with_output());
    let output = match tokio::time::timeout(common::PATIENCE, finished).await {
        Ok(joined) => joined.unwrap().unwrap(),
        Err(_) => {
            // Never leave the client retrying after the test.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("udim upload did not finish within {:?}", common::PATIENCE);
        }
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let package: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(package["status"], "stored");
    assert_eq!(package["sha256"], sha256.as_str());
    // How many bytes the second process was sent is not checked: retries refused with 423
    // while the dead process's lease runs out each push part of a chunk through the link, so
    // the count says nothing sure about the offset resumed from (see the issue-12 note).
    assert!(
        link.sent.load(Ordering::SeqCst) > sent_to_first,
        "the rest went to the second process"
    );
    let (status, packages) = {
        let response = http
            .get(format!("{}/v1/packages", second.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(packages["items"].as_array().unwrap().len(), 1, "one package");
    drop(second);
}
