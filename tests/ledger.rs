//! The verifiable consent ledger on real databases: proofs from the running service checked
//! with only the verifier library, 16 concurrent writers on PostgreSQL, the service role's
//! missing privileges, a superuser's tampering caught by `udim ledger verify`, and the
//! ledger port's conformance suite on both databases.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use common::{Db, TestApp};
use secrecy::ExposeSecret as _;
use serde_json::Value;
use udim::config::SigningKeySource;
use udim::consent::sequencer::Sequencer;
use udim::consent::signer::LedgerSigner;
use udim::consent::{ConsentService, Grant};
use udim::formats::input::{DataCategory, Label};
use udim_ledger::checkpoint::Checkpoint;
use udim_ledger::entry::ConsentRecord;
use udim_ledger::note::VerifierKey;
use udim_ledger::proof::{ConsistencyProof, RecordProof};

const UDIM: &str = env!("CARGO_BIN_EXE_udim");
const ORIGIN: &str = "udim.local/consent-ledger";

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

/// `udim ledger …` against a data dir and database, as an operator runs it.
/// `udim ledger ARGS` on a database whose ledger was signed with the key `instance` generated
/// into `data_dir`, configured as replicas on PostgreSQL must have it.
fn ledger_cli(data_dir: &Path, database_url: &str, args: &[&str]) -> std::process::Output {
    let key_file = data_dir.join("secrets/ledger-signing-key");
    cli(
        data_dir,
        database_url,
        ("UDIM_LEDGER__SIGNING_KEY_FILE", key_file.into_os_string()),
        args,
    )
}

/// `udim ledger ARGS` with the running app's own settings.
fn app_ledger_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let key = match &app.settings.ledger.signing_key {
        Some(key) => ("UDIM_LEDGER__SIGNING_KEY", key.expose_secret().into()),
        None => (
            "UDIM_LEDGER__SIGNING_KEY_FILE",
            app.data_dir().join("secrets/ledger-signing-key").into_os_string(),
        ),
    };
    cli(&app.data_dir(), &database_url(app), key, args)
}

fn cli(data_dir: &Path, database_url: &str, key: (&str, std::ffi::OsString), args: &[&str]) -> std::process::Output {
    Command::new(UDIM)
        .env_clear()
        .env("UDIM_DATA_DIR", data_dir)
        .env("UDIM_DATABASE__URL", database_url)
        .env(key.0, key.1)
        .env("UDIM_CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .arg("ledger")
        .args(args)
        .output()
        .unwrap()
}

fn database_url(app: &TestApp) -> String {
    app.settings.database_url().expose_secret().to_owned()
}

/// Rebuilds the consent record from an API answer and the caller's `sub`.
fn record_from(entry: &Value, subject: &str) -> ConsentRecord {
    let list = |key: &str| -> Vec<String> {
        entry[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    ConsentRecord {
        record_id: entry["id"].as_str().unwrap().parse().unwrap(),
        consent_id: entry["consent_id"].as_str().unwrap().parse().unwrap(),
        subject: subject.into(),
        event: serde_json::from_value(entry["event"].clone()).unwrap(),
        purposes: list("purposes"),
        data_categories: list("data_categories"),
        recipients: list("recipients"),
        policy_version: entry["policy_version"].as_str().unwrap().into(),
        policy_url: entry["policy_url"].as_str().map(str::to_owned),
        jurisdiction: entry["jurisdiction"].as_str().unwrap().into(),
        collection_method: entry["collection_method"].as_str().unwrap().into(),
        recorded_at: entry["recorded_at"].as_str().unwrap().parse().unwrap(),
        expires_at: entry["expires_at"].as_str().map(|t| t.parse().unwrap()),
    }
}

async fn proofs_from_the_running_service_verify_with_the_library_alone(db: Db) {
    let app = TestApp::spawn(db).await;
    let key_output = app_ledger_cli(&app, &["key"]);
    assert!(key_output.status.success());
    let printed_key = String::from_utf8(key_output.stdout).unwrap();
    let key = VerifierKey::parse(printed_key.trim()).expect("`udim ledger key` prints a signed-note verifier key");
    assert_eq!(key.name(), ORIGIN);

    let alice = app.uploader("alice");
    let first = app.grant(&alice, &["audio"]).await;
    let withdrawn: Value = app
        .withdraw(&alice, first["consent_id"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    for entry in [&first, &withdrawn] {
        let proof: RecordProof = serde_json::from_value(entry["record_proof"].clone()).unwrap();
        let leaf = record_from(entry, "alice").leaf_hash(&b64(entry["salt"].as_str().unwrap()).try_into().unwrap());
        assert_eq!(
            b64(&proof.leaf_hash),
            leaf.to_vec(),
            "the leaf commits to the returned entry"
        );
        let checkpoint = proof.verify(&key, Some(&leaf)).expect("the record proof verifies");
        assert_eq!(checkpoint.size, proof.index + 1);
        let mut forged = proof.clone();
        forged.index += 1;
        assert!(forged.verify(&key, Some(&leaf)).is_err());
    }
    assert_eq!(withdrawn["event"], "withdrawn");

    // The latest checkpoint, served as text/plain, is exactly a signed note.
    let served = reqwest::get(format!("{}/v1/ledger/checkpoint", app.base))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert!(
        served.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let note = served.text().await.unwrap();
    let checkpoint = Checkpoint::open(&note, &key).expect("the served checkpoint verifies");
    assert_eq!(checkpoint.size, 2);
    assert_eq!(
        reqwest::get(format!("{}/v1/ledger/key", app.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim(),
        key.to_string()
    );

    let consistency: ConsistencyProof = reqwest::get(format!("{}/v1/ledger/consistency?from=1&to=2", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (old, new) = consistency.verify(&key).expect("the consistency proof verifies");
    assert_eq!((old.size, new.size), (1, 2));

    let (status, entries) = app.get_json(&alice, "/v1/ledger/entries").await;
    assert_eq!(status, 200);
    for entry in entries.as_array().unwrap() {
        let proof: RecordProof = serde_json::from_value(entry["record_proof"].clone()).unwrap();
        proof
            .verify(&key, None)
            .expect("every listed entry carries a valid proof");
    }
    let (status, _) = app
        .get_json(
            &app.uploader("mallory"),
            &format!("/v1/consents/{}/proof", first["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, 404, "another user cannot fetch alice's entry");

    let audit = app_ledger_cli(&app, &["verify"]);
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stderr));
    app.stop().await;
}

fn label(s: &str) -> Label {
    Label::parse(s).expect("a valid label")
}

fn category(s: &str) -> DataCategory {
    DataCategory::parse(s).expect("a valid data category")
}

fn grant() -> Grant {
    Grant {
        purposes: vec![label("model-training")],
        data_categories: vec![category("text")],
        recipients: vec![],
        policy_version: label("1"),
        policy_url: None,
        jurisdiction: label("EU"),
        collection_method: label("api"),
        expires_at: None,
    }
}

/// A consent service on its own pool and sequencer: one "service instance".
async fn instance(url: &str, data_dir: &Path) -> ConsentService {
    let db = udim_sql::connect(&udim_sql::DbOptions {
        url: url.into(),
        max_connections: 4,
        acquire_timeout: std::time::Duration::from_secs(30),
    })
    .await
    .unwrap();
    db.migrate().await.unwrap();
    let key = SigningKeySource::Generated(data_dir.join("secrets/ledger-signing-key"));
    let signer = Arc::new(LedgerSigner::load(ORIGIN, &key).unwrap());
    ConsentService::new(db.ledger.clone(), Sequencer::start(db.ledger.clone(), signer, 256))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_writers_on_two_instances_get_gap_free_indices_and_a_sound_tree() {
    let database = common::TestDatabase::create().await;
    let url = database.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let instances = [instance(&url, dir.path()).await, instance(&url, dir.path()).await];
    let writers = (0..16).map(|w| {
        let service = instances[w % 2].clone();
        tokio::spawn(async move {
            let mut indices = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let appended = service.grant(&format!("writer-{w}"), grant()).await.unwrap();
                indices.push(appended.recorded.entry.index);
            }
            indices
        })
    });
    let mut indices: Vec<u64> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..16_000).collect::<Vec<u64>>(),
        "16,000 distinct, gap-free indices"
    );
    let audit = ledger_cli(dir.path(), &url, &["verify"]);
    let stdout = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(stdout.contains("16000 entries"), "{stdout}");
}

/// A PostgreSQL ledger with `n` entries and a superuser connection to it.
async fn tamperable_ledger(n: usize) -> (common::TestDatabase, String, tempfile::TempDir, sqlx::PgConnection) {
    use sqlx::Connection as _;
    let database = common::TestDatabase::create().await;
    let url = database.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let service = instance(&url, dir.path()).await;
    for i in 0..n {
        service.grant(&format!("user-{}", i % 3), grant()).await.unwrap();
    }
    let ok = ledger_cli(dir.path(), &url, &["verify"]);
    assert!(
        ok.status.success(),
        "sound before tampering: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut superuser = sqlx::PgConnection::connect(&url).await.unwrap();
    // A superuser can switch triggers off: exactly the attack checkpoints exist to catch.
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut superuser)
        .await
        .unwrap();
    (database, url, dir, superuser)
}

async fn run(conn: &mut sqlx::PgConnection, statements: &[&'static str]) {
    for sql in statements {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
}

fn assert_caught(dir: &Path, url: &str, index: u64) {
    let audit = ledger_cli(dir, url, &["verify"]);
    let stderr = String::from_utf8_lossy(&audit.stderr);
    assert!(!audit.status.success(), "tampering went unnoticed");
    assert!(
        stderr.contains(&format!("entry {index}:")),
        "the first bad index is named: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_editing_one_byte_of_an_entry_is_caught() {
    let (_database, url, dir, mut su) = tamperable_ledger(12).await;
    run(
        &mut su,
        &["UPDATE consent_records SET record = jsonb_set(record, '{jurisdiction}', '\"EV\"') WHERE idx = 5"],
    )
    .await;
    assert_caught(dir.path(), &url, 5);
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_rewriting_an_entry_and_its_leaf_is_caught() {
    let (_database, url, dir, mut su) = tamperable_ledger(12).await;
    run(
        &mut su,
        &["UPDATE consent_ledger SET leaf_hash = sha256('forged'::bytea) WHERE idx = 8"],
    )
    .await;
    assert_caught(dir.path(), &url, 8);
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_deleting_a_row_is_caught() {
    let (_database, url, dir, mut su) = tamperable_ledger(12).await;
    run(
        &mut su,
        &[
            "DELETE FROM consent_records WHERE idx = 7",
            "DELETE FROM consent_ledger WHERE idx = 7",
        ],
    )
    .await;
    assert_caught(dir.path(), &url, 7);
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_deleting_the_newest_row_is_caught() {
    let (_database, url, dir, mut su) = tamperable_ledger(12).await;
    run(
        &mut su,
        &[
            "DELETE FROM consent_records WHERE idx = 11",
            "DELETE FROM consent_ledger WHERE idx = 11",
        ],
    )
    .await;
    assert_caught(dir.path(), &url, 11);
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_swapping_two_rows_is_caught() {
    let (_database, url, dir, mut su) = tamperable_ledger(12).await;
    run(
        &mut su,
        &[
            "UPDATE consent_ledger SET idx = 1000000 WHERE idx = 3",
            "UPDATE consent_ledger SET idx = 3 WHERE idx = 4",
            "UPDATE consent_ledger SET idx = 4 WHERE idx = 1000000",
        ],
    )
    .await;
    assert_caught(dir.path(), &url, 3);
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_to_sign_a_checkpoint_inconsistent_with_the_last() {
    let (_database, url, dir, mut su) = tamperable_ledger(5).await;
    // The newest leaf's tree node is rewritten: the stored tree no longer has the signed root.
    run(
        &mut su,
        &["UPDATE ledger_nodes SET hash = sha256('forged'::bytea) WHERE level = 0 AND idx = 4"],
    )
    .await;
    let service = instance(&url, dir.path()).await;
    let err = service.grant("alice", grant()).await.unwrap_err();
    assert!(matches!(err, udim_ports::PortError::Integrity(_)), "{err}");
    let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_checkpoints")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(checkpoints, 5, "no new checkpoint was signed");
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_holds_no_update_delete_or_truncate_even_without_triggers() {
    let (_database, _url, _dir, mut su) = tamperable_ledger(2).await;
    sqlx::query("SET ROLE udim_service").execute(&mut su).await.unwrap();
    for sql in [
        "UPDATE consent_ledger SET leaf_hash = leaf_hash",
        "DELETE FROM consent_ledger",
        "TRUNCATE consent_ledger CASCADE",
        "UPDATE consent_records SET event_type = 'withdrawn'",
        "UPDATE ledger_nodes SET hash = hash",
        "DELETE FROM ledger_checkpoints",
        "TRUNCATE ledger_nodes",
    ] {
        let err = sqlx::query(sql).execute(&mut su).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    sqlx::query("RESET ROLE").execute(&mut su).await.unwrap();
    drop(su);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_entry_keeps_its_leaf_and_the_log_still_verifies() {
    let (_database, url, dir, mut su) = tamperable_ledger(6).await;
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut su)
        .await
        .unwrap();
    // Erasure of entry 2's body through the service role's path: record the redaction, then
    // delete the body (the trigger allows it only because the redaction is on record).
    run(
        &mut su,
        &[
            "INSERT INTO ledger_redactions (entry_id, redacted_at) SELECT id, now() FROM consent_ledger WHERE idx = 2",
            "DELETE FROM consent_records WHERE idx = 2",
        ],
    )
    .await;
    let err = sqlx::query("DELETE FROM consent_records WHERE idx = 3")
        .execute(&mut su)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("redacted"),
        "an unredacted body cannot be deleted: {err}"
    );
    let audit = ledger_cli(dir.path(), &url, &["verify"]);
    let stdout = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stderr));
    assert!(stdout.contains("(1 redacted)"), "{stdout}");
    drop(su);
}

#[test]
fn record_and_consistency_proofs_verify_offline_from_files() {
    // A tiny log built with the library alone, its proofs written to files, checked by the CLI.
    let signer = udim_ledger::note::Signer::generate("example.test/log").unwrap();
    let mut frontier = udim_ledger::merkle::Frontier::new();
    let mut nodes = std::collections::HashMap::new();
    let leaves: Vec<_> = (0..5u8).map(|i| udim_ledger::merkle::leaf_hash(&[i])).collect();
    let mut notes = Vec::new();
    for leaf in &leaves {
        nodes.extend(frontier.push(*leaf).unwrap());
        let cp = Checkpoint {
            origin: "example.test/log".into(),
            size: frontier.size(),
            root: frontier.root(),
        };
        notes.push(cp.sign(&signer).unwrap());
    }
    let plan = udim_ledger::merkle::inclusion_proof_plan(2, 5).unwrap();
    let path = udim_ledger::merkle::assemble(&plan, |id| nodes.get(&id).copied()).unwrap();
    let record = RecordProof::new(2, &leaves[2], &path, notes[4].clone());
    let plan = udim_ledger::merkle::consistency_proof_plan(3, 5).unwrap();
    let proof = udim_ledger::merkle::assemble(&plan, |id| nodes.get(&id).copied()).unwrap();
    let consistency = ConsistencyProof {
        old_checkpoint: notes[2].clone(),
        new_checkpoint: notes[4].clone(),
        proof: udim_ledger::proof::encode_hashes(&proof),
    };
    let dir = tempfile::tempdir().unwrap();
    let key = signer.verifier().to_string();
    let record_file = dir.path().join("record.json");
    let consistency_file = dir.path().join("consistency.json");
    std::fs::write(&record_file, serde_json::to_string(&record).unwrap()).unwrap();
    std::fs::write(&consistency_file, serde_json::to_string(&consistency).unwrap()).unwrap();
    let verify = |args: &[&str]| {
        Command::new(UDIM)
            .env_clear()
            .arg("ledger")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        verify(&["verify-proof", "--key", &key, record_file.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        verify(&["verify-consistency", "--key", &key, consistency_file.to_str().unwrap()])
            .status
            .success()
    );

    let mut bad = record.clone();
    bad.index = 3;
    std::fs::write(&record_file, serde_json::to_string(&bad).unwrap()).unwrap();
    assert!(
        !verify(&["verify-proof", "--key", &key, record_file.to_str().unwrap()])
            .status
            .success()
    );
    let other = udim_ledger::note::Signer::generate("example.test/log")
        .unwrap()
        .verifier()
        .to_string();
    std::fs::write(&record_file, serde_json::to_string(&record).unwrap()).unwrap();
    assert!(
        !verify(&["verify-proof", "--key", &other, record_file.to_str().unwrap()])
            .status
            .success()
    );
}

common::on_both_databases!(proofs_from_the_running_service_verify_with_the_library_alone);
