//! The legacy QLDB ledger against a stub of the QLDB session protocol that the test starts
//! (QLDB ended on 2025-07-31 and has no emulator; see `stub/mod.rs` for what the stub is and
//! is not). The provider passes the same ledger conformance suite as the SQL ledgers.

mod stub;

use std::sync::Arc;

use ion_rs::Element;
use udim_ports::conformance;
use udim_ports::ledger::ConsentLedger;
use udim_qldb::{MAX_BATCH, QldbLedger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qldb_ledger_conforms_and_its_concurrent_appends_retry_their_conflicts() {
    let stub = stub::Stub::start().await;
    let ledger = QldbLedger::connect(stub.client(), "udim").await.expect("connect");
    conformance::consent_ledger(Arc::new(ledger), MAX_BATCH).await;
    assert!(
        stub.conflicts() > 0,
        "concurrent appends met optimistic-concurrency conflicts and were retried"
    );
}

#[tokio::test]
async fn a_second_instance_finds_the_schema_and_the_log() {
    let stub = stub::Stub::start().await;
    let first = QldbLedger::connect(stub.client(), "udim").await.unwrap();
    let signer = Signer::new();
    first.append_batch(&[entry("alice")], &signer).await.unwrap();
    let second = QldbLedger::connect(stub.client(), "udim")
        .await
        .expect("tables already exist");
    assert_eq!(second.size().await.unwrap(), 1);
    let appended = second.append_batch(&[entry("bob")], &signer).await.unwrap();
    assert_eq!(appended.entries[0].index, 1);
}

#[tokio::test]
async fn expired_sessions_are_replaced_without_losing_the_append() {
    let stub = stub::Stub::start().await;
    let ledger = QldbLedger::connect(stub.client(), "udim").await.unwrap();
    let signer = Signer::new();
    ledger.append_batch(&[entry("alice")], &signer).await.unwrap();
    stub.expire_sessions();
    let appended = ledger
        .append_batch(&[entry("alice")], &signer)
        .await
        .expect("a new session");
    assert_eq!(appended.entries[0].index, 1);
    assert_eq!(ledger.size().await.unwrap(), 2);
}

#[tokio::test]
async fn batches_over_the_qldb_transaction_limit_are_refused_whole() {
    let stub = stub::Stub::start().await;
    let ledger = QldbLedger::connect(stub.client(), "udim").await.unwrap();
    let entries: Vec<_> = (0..=MAX_BATCH).map(|_| entry("alice")).collect();
    assert!(ledger.append_batch(&entries, &Signer::new()).await.is_err());
    assert_eq!(ledger.size().await.unwrap(), 0, "nothing was appended");
    assert_eq!(ledger.max_batch(), MAX_BATCH, "the sequencer learns the limit");
}

#[tokio::test]
async fn a_rewritten_tree_node_stops_signing_and_a_rewritten_record_fails_the_audit() {
    let stub = stub::Stub::start().await;
    let ledger = QldbLedger::connect(stub.client(), "udim").await.unwrap();
    let signer = Signer::new();
    ledger
        .append_batch(&[entry("alice"), entry("bob"), entry("carol")], &signer)
        .await
        .unwrap();

    // The record of entry 0 edited: its leaf no longer matches, and the audit names it.
    stub.tamper("udim_ledger_entries", 0, "record", Element::string("{\"edited\":true}"));
    let rows = ledger.audit_rows(0, 10).await.unwrap();
    let mut auditor = udim_ledger::audit::Auditor::new(signer.verifier.clone());
    let failure = auditor
        .entry(&udim_ledger::audit::StoredEntry {
            index: rows[0].index,
            leaf_hash: rows[0].leaf_hash,
            tree_leaf: rows[0].tree_leaf,
            body: rows[0].body.clone(),
            redacted: rows[0].redacted,
        })
        .expect_err("an edited record is caught");
    assert_eq!(failure.index, Some(0));

    // Entry 2's level-0 node (part of the tree's right edge) replaced: the stored tree no
    // longer rebuilds the signed root, and the ledger refuses to sign on.
    let forged: Element = ion_rs::List::from(vec![Element::from(
        ion_rs::Struct::builder()
            .with_field("level", 0)
            .with_field("hash", Element::blob(vec![7u8; 32]))
            .build(),
    )])
    .into();
    stub.tamper("udim_ledger_entries", 2, "nodes", forged);
    let refused = ledger.append_batch(&[entry("dave")], &signer).await;
    assert!(
        matches!(refused, Err(udim_ports::PortError::Integrity(_))),
        "{refused:?}"
    );
    assert_eq!(ledger.size().await.unwrap(), 3);
}

/// The service's checkpoint signer, with a fresh key.
struct Signer {
    signer: udim_ledger::note::Signer,
    verifier: udim_ledger::note::VerifierKey,
}

impl Signer {
    fn new() -> Self {
        let signer = udim_ledger::note::Signer::generate("test.example/qldb").unwrap();
        let verifier = signer.verifier();
        Self { signer, verifier }
    }
}

impl udim_ports::ledger::CheckpointSigner for Signer {
    fn sign(&self, size: u64, root: &[u8; 32]) -> Result<String, udim_ports::BoxError> {
        let checkpoint = udim_ledger::checkpoint::Checkpoint {
            origin: self.verifier.name().to_owned(),
            size,
            root: *root,
        };
        Ok(checkpoint.sign(&self.signer)?)
    }

    fn open(&self, note: &str) -> Result<(u64, [u8; 32]), udim_ports::BoxError> {
        let checkpoint = udim_ledger::checkpoint::Checkpoint::open(note, &self.verifier)?;
        Ok((checkpoint.size, checkpoint.root))
    }
}

fn entry(user: &str) -> udim_ports::ledger::NewLedgerEntry {
    use udim_ledger::entry::{ConsentEvent, ConsentRecord};
    let id = uuid::Uuid::new_v4();
    let record = ConsentRecord {
        record_id: id,
        consent_id: id,
        subject: user.into(),
        event: ConsentEvent::Given,
        purposes: vec!["model-training".into()],
        data_categories: vec!["text".into()],
        recipients: vec![],
        policy_version: "1".into(),
        policy_url: None,
        jurisdiction: "EU".into(),
        collection_method: "api".into(),
        recorded_at: chrono::Utc::now(),
        expires_at: None,
    };
    let salt = [3u8; 16];
    udim_ports::ledger::NewLedgerEntry {
        id,
        user_id: user.into(),
        consent_id: id,
        event_type: "given".into(),
        leaf_hash: record.leaf_hash(&salt),
        record: serde_json::to_value(&record).unwrap(),
        salt,
        recorded_at: record.recorded_at,
        expects_latest: None,
    }
}
