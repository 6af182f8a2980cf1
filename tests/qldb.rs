//! The service on the legacy `qldb` build: consents recorded in a QLDB ledger (a stub of the
//! QLDB session protocol that the test starts; QLDB itself ended on 2025-07-31), with record
//! proofs that verify offline and `udim ledger verify` auditing the QLDB log.

mod common;

// The provider's own tests use more of the stub (fault injection) than this one does.
#[allow(dead_code)]
#[path = "../providers/qldb/tests/stub/mod.rs"]
mod stub;

use common::{Db, Options, TestApp};
use udim::config::{LedgerStore, QldbSettings};
use udim_ledger::note::VerifierKey;
use udim_ledger::proof::RecordProof;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_go_to_the_qldb_ledger_and_their_proofs_verify() {
    let stub = stub::Stub::start().await;
    let endpoint = stub.endpoint.clone();
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Options {
            configure: Some(Box::new(move |s| {
                // The service signs its requests; the stub ignores the signatures.
                s.aws_credentials = Some(udim_aws::static_credentials("testing", "testing"));
                s.ledger.store = LedgerStore::Qldb(QldbSettings {
                    ledger_name: "udim-consent".into(),
                    region: Some("us-east-1".into()),
                    endpoint: Some(endpoint),
                });
            })),
            ..Options::default()
        },
    )
    .await;
    let alice = app.uploader("alice");
    app.grant(&alice, &["text"]).await;
    app.grant(&app.uploader("bob"), &["audio"]).await;
    let second = app.grant(&alice, &["audio"]).await;

    let key = reqwest::get(format!("{}/v1/ledger/key", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = VerifierKey::parse(key.trim()).unwrap();
    let proof: RecordProof = serde_json::from_value(second["record_proof"].clone()).unwrap();
    let checkpoint = proof.verify(&key, None).expect("the record proof verifies offline");
    assert_eq!((proof.index, checkpoint.size), (2, 3));

    let (status, entries) = app.get_json(&alice, "/v1/ledger/entries").await;
    assert_eq!(status, 200);
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2, "alice sees her own two entries, from QLDB");
    for entry in entries {
        let proof: RecordProof = serde_json::from_value(entry["record_proof"].clone()).unwrap();
        proof
            .verify(&key, None)
            .expect("every listed entry carries a valid proof");
    }

    // Nothing went to the database's own ledger tables.
    let database_url = app.settings.database_url().expose_secret().to_owned();
    let database = udim_sql::connect(&udim_sql::DbOptions {
        url: database_url.clone(),
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(10),
    })
    .await
    .unwrap();
    assert_eq!(database.ledger.size().await.unwrap(), 0);

    // The operator's audit reads the QLDB log through the same settings.
    let audit = std::process::Command::new(env!("CARGO_BIN_EXE_udim"))
        .env_clear()
        .env("UDIM_DATA_DIR", app.data_dir())
        .env("UDIM_DATABASE__URL", &database_url)
        .env("UDIM_CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .env("UDIM_LEDGER__STORE__TYPE", "qldb")
        .env("UDIM_LEDGER__STORE__LEDGER_NAME", "udim-consent")
        .env("UDIM_LEDGER__STORE__REGION", "us-east-1")
        .env("UDIM_LEDGER__STORE__ENDPOINT", &stub.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(["ledger", "verify"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(stdout.contains("3 entries"), "{stdout}");
    app.stop().await;
}
