//! The consent-ledger suite ([`ConsentLedger`]).

use uuid::Uuid;

use crate::PortError;
use crate::ledger::{AppendedBatch, CheckpointSigner, ConsentLedger, Hash, NewLedgerEntry};

/// Signs checkpoints with a fresh Ed25519 key, as the service's signer does.
struct TestSigner {
    signer: udim_ledger::note::Signer,
    verifier: udim_ledger::note::VerifierKey,
}

impl TestSigner {
    fn generate() -> Self {
        let signer = udim_ledger::note::Signer::generate("conformance.example/ledger").expect("key");
        let verifier = signer.verifier();
        Self { signer, verifier }
    }
}

impl CheckpointSigner for TestSigner {
    fn sign(&self, size: u64, root: &Hash) -> std::result::Result<String, crate::BoxError> {
        let checkpoint = udim_ledger::checkpoint::Checkpoint {
            origin: self.verifier.name().to_owned(),
            size,
            root: *root,
        };
        Ok(checkpoint.sign(&self.signer)?)
    }

    fn open(&self, note: &str) -> std::result::Result<(u64, Hash), crate::BoxError> {
        let checkpoint = udim_ledger::checkpoint::Checkpoint::open(note, &self.verifier)?;
        Ok((checkpoint.size, checkpoint.root))
    }
}

/// A real consent record for `user`, as the service appends it.
fn consent_entry(user: &str) -> NewLedgerEntry {
    use chrono::SubsecRound as _;
    use udim_ledger::entry::{ConsentEvent, ConsentRecord};
    let id = Uuid::new_v4();
    // Microseconds: what the canonical encoding and PostgreSQL keep.
    let recorded_at = chrono::Utc::now().trunc_subsecs(6);
    let record = ConsentRecord {
        record_id: id,
        consent_id: id,
        subject: user.to_owned(),
        event: ConsentEvent::Given,
        purposes: vec!["model-training".into()],
        data_categories: vec!["text".into()],
        recipients: vec![],
        policy_version: "2026-01".into(),
        policy_url: None,
        jurisdiction: "EU".into(),
        collection_method: "api".into(),
        recorded_at,
        expires_at: None,
    };
    let mut salt = [0u8; 16];
    salt[..16].copy_from_slice(&Uuid::new_v4().into_bytes());
    NewLedgerEntry {
        id,
        user_id: user.to_owned(),
        consent_id: id,
        event_type: "given".into(),
        leaf_hash: record.leaf_hash(&salt),
        record: serde_json::to_value(&record).expect("record"),
        salt,
        recorded_at,
        expects_latest: None,
    }
}

fn assert_batch_proves(batch: &AppendedBatch, signer: &TestSigner) {
    let (size, root) = signer.open(&batch.checkpoint.note).expect("the checkpoint is signed");
    assert_eq!((size, root), (batch.checkpoint.size, batch.checkpoint.root));
    assert_eq!(batch.proofs.len(), batch.entries.len(), "one proof per entry");
    for (entry, proof) in batch.entries.iter().zip(&batch.proofs) {
        udim_ledger::merkle::verify_inclusion(entry.index, size, &entry.leaf_hash, proof, &root)
            .unwrap_or_else(|e| panic!("entry {}'s proof does not verify: {e}", entry.index));
    }
}

/// Consent ledger, on an EMPTY ledger: gap-free indices from 0 under concurrent appends,
/// proofs that verify, signed checkpoints, per-user reads in index order, stored nodes that
/// rebuild the signed root, audit rows that pass the full audit, and refusal to sign over a
/// tree that does not match the last checkpoint. `max_batch` is the largest batch to try.
pub async fn consent_ledger(ledger: std::sync::Arc<dyn ConsentLedger>, max_batch: usize) {
    use udim_ledger::merkle;

    let signer = std::sync::Arc::new(TestSigner::generate());
    let run = Uuid::new_v4().simple().to_string();
    let (alice, bob) = (format!("alice-{run}"), format!("bob-{run}"));
    assert_eq!(ledger.size().await.unwrap(), 0, "the suite needs an empty ledger");
    assert!(ledger.latest_checkpoint().await.unwrap().is_none());
    assert!(
        ledger.append_batch(&[], signer.as_ref()).await.is_err(),
        "an empty batch is refused"
    );
    assert!(
        ledger.max_batch() >= max_batch,
        "the ledger takes batches of {max_batch}"
    );

    let first = ledger
        .append_batch(
            &[consent_entry(&alice), consent_entry(&bob), consent_entry(&alice)],
            signer.as_ref(),
        )
        .await
        .expect("append");
    assert_eq!(first.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(first.checkpoint.size, 3);
    assert_batch_proves(&first, &signer);

    let big: Vec<NewLedgerEntry> = (0..max_batch).map(|_| consent_entry(&bob)).collect();
    let second = ledger.append_batch(&big, signer.as_ref()).await.expect("a full batch");
    assert_eq!(second.entries.first().map(|e| e.index), Some(3));
    assert_eq!(second.checkpoint.size, 3 + max_batch as u64);
    assert_batch_proves(&second, &signer);

    // Concurrent writers: every index once, every batch provable against its checkpoint.
    let writers = (0..6).map(|w| {
        let (ledger, signer) = (ledger.clone(), signer.clone());
        let user = format!("writer-{w}-{run}");
        async move {
            let mut batches = Vec::new();
            for _ in 0..3 {
                let entries = [consent_entry(&user), consent_entry(&user)];
                batches.push(
                    ledger
                        .append_batch(&entries, signer.as_ref())
                        .await
                        .expect("concurrent append"),
                );
            }
            batches
        }
    });
    let mut indices: Vec<u64> = Vec::new();
    for batch in futures::future::join_all(writers).await.into_iter().flatten() {
        assert_batch_proves(&batch, &signer);
        indices.extend(batch.entries.iter().map(|e| e.index));
    }
    indices.sort_unstable();
    let start = 3 + max_batch as u64;
    assert_eq!(
        indices,
        (start..start + 36).collect::<Vec<_>>(),
        "indices are gap-free and unique"
    );
    let size = start + 36;
    assert_eq!(ledger.size().await.unwrap(), size);

    let latest = ledger.latest_checkpoint().await.unwrap().expect("a checkpoint");
    assert_eq!(latest.size, size);
    assert_eq!(ledger.checkpoint_at(3).await.unwrap(), Some(first.checkpoint.clone()));
    assert_eq!(
        ledger.checkpoint_at(4).await.unwrap(),
        None,
        "no checkpoint was signed at 4"
    );
    let all = ledger.checkpoints(1, 1000).await.unwrap();
    assert_eq!(all.len(), 2 + 18, "one checkpoint per batch");
    assert!(all.windows(2).all(|w| w[0].size < w[1].size), "checkpoints ascend");
    assert_eq!(all.last(), Some(&latest));
    let page = ledger.checkpoints(4, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0], second.checkpoint, "the page starts at the first size >= 4");

    // The stored complete subtrees rebuild the signed root.
    let plan = merkle::root_plan(size);
    let ids: Vec<(u8, u64)> = plan.iter().map(|id| (id.level, id.index)).collect();
    let nodes = ledger.nodes(&ids).await.unwrap();
    let hashes: Vec<Hash> = nodes.into_iter().map(|n| n.expect("a root node is stored")).collect();
    assert_eq!(
        merkle::combine(&hashes),
        latest.root,
        "the stored nodes rebuild the root"
    );
    assert_eq!(
        ledger.nodes(&[(0, size)]).await.unwrap(),
        vec![None],
        "no node past the end"
    );

    let mine = ledger.entries_for_user(&alice).await.unwrap();
    assert_eq!(
        mine.iter().map(|e| e.index).collect::<Vec<_>>(),
        [0, 2],
        "only alice's, in order"
    );
    assert!(mine.iter().all(|e| e.user_id == alice));
    assert_eq!(
        mine[0].record, first.entries[0].record,
        "the record reads back unchanged"
    );
    assert_eq!(
        (mine[0].salt, mine[0].leaf_hash),
        (first.entries[0].salt, first.entries[0].leaf_hash)
    );
    assert_eq!(mine[0].recorded_at, first.entries[0].recorded_at);
    assert!(ledger.entries_for_user("nobody").await.unwrap().is_empty());

    // Audit rows in pages pass the full audit.
    let mut auditor = udim_ledger::audit::Auditor::new(signer.verifier.clone());
    let mut checkpoints = all.iter().peekable();
    let mut from = 0;
    loop {
        let rows = ledger.audit_rows(from, 7).await.unwrap();
        let Some(last) = rows.last() else { break };
        assert!(rows.len() <= 7, "a page holds at most `limit` rows");
        from = last.index + 1;
        for row in rows {
            auditor
                .entry(&udim_ledger::audit::StoredEntry {
                    index: row.index,
                    leaf_hash: row.leaf_hash,
                    tree_leaf: row.tree_leaf,
                    body: row.body,
                    redacted: row.redacted,
                })
                .expect("the stored log audits");
            while let Some(cp) = checkpoints.next_if(|cp| cp.size == auditor.size()) {
                auditor.checkpoint(&cp.note).expect("each checkpoint matches the log");
            }
        }
    }
    let report = auditor.finish().expect("audit");
    assert_eq!(
        (report.entries, report.checkpoints, report.root),
        (size, all.len() as u64, latest.root)
    );

    // Another key cannot open the last checkpoint: the ledger refuses to sign on.
    let stranger = TestSigner::generate();
    assert!(
        matches!(
            ledger.append_batch(&[consent_entry(&alice)], &stranger).await,
            Err(PortError::Integrity(_))
        ),
        "a tree that does not match the last signed checkpoint is never signed"
    );
    assert_eq!(
        ledger.size().await.unwrap(),
        size,
        "a refused append leaves nothing behind"
    );
}
