//! The whole-log audit: feed every stored entry in index order and every stored checkpoint;
//! the auditor recomputes each leaf from its body, rebuilds the tree, checks each
//! checkpoint's signature and root, and names the first index where the stored log departs
//! from what was signed.

use base64::Engine as _;

use crate::checkpoint::Checkpoint;
use crate::entry::EntryBody;
use crate::merkle::{Frontier, Hash};
use crate::note::VerifierKey;

/// One stored entry as the database holds it.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub index: u64,
    /// The leaf hash stored with the entry.
    pub leaf_hash: Hash,
    /// The leaf hash stored as the tree's level-0 node, if present.
    pub tree_leaf: Option<Hash>,
    /// The entry body (JSON text) and salt; `None` when the body was redacted.
    pub body: Option<(String, [u8; 16])>,
    /// Whether a redaction of this entry is on record (a missing body is then expected).
    pub redacted: bool,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFailure {
    /// The first bad index, when the problem is located at one entry.
    pub index: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for AuditFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "entry {i}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for AuditFailure {}

/// What a sound log looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: u64,
    pub redacted: u64,
    pub checkpoints: u64,
    pub root: Hash,
}

fn fail(index: Option<u64>, reason: impl Into<String>) -> AuditFailure {
    AuditFailure {
        index,
        reason: reason.into(),
    }
}

/// Recomputes an entry's leaf hash from its stored JSON body and salt.
pub fn recompute_leaf(body: &str, salt: &[u8; 16]) -> Result<Hash, String> {
    let record: EntryBody = serde_json::from_str(body).map_err(|e| format!("body does not parse: {e}"))?;
    Ok(record.leaf_hash(salt))
}

/// Recomputes the leaf of every entry that has a body: the expensive, parallelizable part of
/// an audit ([`Auditor::entry_with`] takes the results in order).
pub fn recompute_leaves(entries: &[StoredEntry]) -> Vec<Option<Result<Hash, String>>> {
    entries
        .iter()
        .map(|e| e.body.as_ref().map(|(body, salt)| recompute_leaf(body, salt)))
        .collect()
}

/// The streaming auditor.
#[derive(Debug)]
pub struct Auditor {
    key: VerifierKey,
    frontier: Frontier,
    last_checkpoint: Option<Checkpoint>,
    checkpoints: u64,
    redacted: u64,
}

impl Auditor {
    pub fn new(key: VerifierKey) -> Self {
        Self {
            key,
            frontier: Frontier::new(),
            last_checkpoint: None,
            checkpoints: 0,
            redacted: 0,
        }
    }

    /// The number of entries taken so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Takes the next entry; entries must come in index order.
    pub fn entry(&mut self, entry: &StoredEntry) -> Result<(), AuditFailure> {
        let recomputed = entry.body.as_ref().map(|(body, salt)| recompute_leaf(body, salt));
        self.entry_with(entry, recomputed)
    }

    /// Like [`Auditor::entry`], with the leaf already recomputed from the body (`None` when
    /// there is no body), e.g. by [`recompute_leaves`] on another thread.
    pub fn entry_with(
        &mut self,
        entry: &StoredEntry,
        recomputed: Option<Result<Hash, String>>,
    ) -> Result<(), AuditFailure> {
        let expected = self.frontier.size();
        if entry.index != expected {
            return Err(fail(
                Some(expected.min(entry.index)),
                format!("missing: the next stored entry is {}", entry.index),
            ));
        }
        let at = Some(entry.index);
        match recomputed {
            Some(leaf) => {
                if leaf.map_err(|why| fail(at, why))? != entry.leaf_hash {
                    return Err(fail(
                        at,
                        "the body does not hash to the stored leaf (the entry was altered)",
                    ));
                }
            }
            None if entry.redacted => self.redacted += 1,
            None => return Err(fail(at, "the body is missing and no redaction is on record")),
        }
        if entry.tree_leaf.is_some_and(|leaf| leaf != entry.leaf_hash) {
            return Err(fail(
                at,
                "the entry's leaf differs from the tree's leaf at this index (rows moved)",
            ));
        }
        self.frontier
            .push(entry.leaf_hash)
            .map_err(|e| fail(at, e.to_string()))?;
        Ok(())
    }

    /// Takes a stored checkpoint; call it once all entries below its size were taken.
    pub fn checkpoint(&mut self, signed: &str) -> Result<(), AuditFailure> {
        let checkpoint = Checkpoint::open(signed, &self.key).map_err(|e| fail(None, format!("checkpoint: {e}")))?;
        if checkpoint.size != self.frontier.size() {
            return Err(fail(
                Some(self.frontier.size()),
                format!(
                    "checkpoint for size {} but the log has {} entries here",
                    checkpoint.size,
                    self.frontier.size()
                ),
            ));
        }
        if let Some(last) = &self.last_checkpoint
            && checkpoint.size < last.size
        {
            return Err(fail(
                None,
                format!(
                    "checkpoint sizes go backwards ({} after {})",
                    checkpoint.size, last.size
                ),
            ));
        }
        if checkpoint.root != self.frontier.root() {
            let first = self.last_checkpoint.as_ref().map_or(0, |c| c.size);
            return Err(fail(
                Some(first),
                format!(
                    "the tree of size {} does not match its signed root {}; an entry in {first}..{} was changed",
                    checkpoint.size,
                    base64::engine::general_purpose::STANDARD.encode(checkpoint.root),
                    checkpoint.size
                ),
            ));
        }
        self.checkpoints += 1;
        self.last_checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Ends the audit. The log may not be shorter than its latest signed checkpoint (checked
    /// in [`Auditor::checkpoint`]); entries after it are reported but not yet signed.
    pub fn finish(self) -> Result<AuditReport, AuditFailure> {
        Ok(AuditReport {
            entries: self.frontier.size(),
            redacted: self.redacted,
            checkpoints: self.checkpoints,
            root: self.frontier.root(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ConsentEvent, ConsentRecord};
    use crate::note::Signer;

    fn record(i: u64) -> ConsentRecord {
        ConsentRecord {
            record_id: uuid::Uuid::from_u128(u128::from(i) + 1),
            consent_id: uuid::Uuid::from_u128(1),
            subject: format!("user-{i}"),
            event: ConsentEvent::Given,
            purposes: vec!["training".into()],
            data_categories: vec!["audio".into()],
            recipients: vec![],
            policy_version: "1".into(),
            policy_url: None,
            jurisdiction: "EU".into(),
            collection_method: "api".into(),
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
            expires_at: None,
        }
    }

    /// A sound log of `n` entries with a checkpoint after every `every` entries.
    fn log(n: u64, every: u64, signer: &Signer) -> (Vec<StoredEntry>, Vec<String>) {
        let mut frontier = Frontier::new();
        let mut entries = Vec::new();
        let mut notes = Vec::new();
        for i in 0..n {
            let salt = [i as u8; 16];
            let r = record(i);
            let leaf = r.leaf_hash(&salt);
            frontier.push(leaf).unwrap();
            entries.push(StoredEntry {
                index: i,
                leaf_hash: leaf,
                tree_leaf: Some(leaf),
                body: Some((serde_json::to_string(&r).unwrap(), salt)),
                redacted: false,
            });
            if (i + 1) % every == 0 || i + 1 == n {
                let cp = Checkpoint {
                    origin: "t.test/log".into(),
                    size: frontier.size(),
                    root: frontier.root(),
                };
                notes.push(cp.sign(signer).unwrap());
            }
        }
        (entries, notes)
    }

    fn checkpoint_size(note: &str) -> u64 {
        Checkpoint::parse(&note[..note.find("\n\n").unwrap() + 1]).unwrap().size
    }

    /// Feeds entries and checkpoints in order, as the service's audit runner does.
    fn run(entries: &[StoredEntry], notes: &[String], key: &VerifierKey) -> Result<AuditReport, AuditFailure> {
        let mut auditor = Auditor::new(key.clone());
        let mut notes = notes.iter().peekable();
        for e in entries {
            auditor.entry(e)?;
            while let Some(note) = notes.next_if(|n| checkpoint_size(n) == auditor.size()) {
                auditor.checkpoint(note)?;
            }
        }
        if let Some(note) = notes.next() {
            auditor.checkpoint(note)?;
        }
        auditor.finish()
    }

    #[test]
    fn a_sound_log_passes_and_every_kind_of_tampering_names_its_index() {
        let signer = Signer::generate("t.test/log").unwrap();
        let key = signer.verifier();
        let (entries, notes) = log(20, 4, &signer);
        let report = run(&entries, &notes, &key).unwrap();
        assert_eq!((report.entries, report.checkpoints), (20, 5));

        let mut edited = entries.clone();
        if let Some((body, _)) = &mut edited[9].body {
            *body = body.replace("\"EU\"", "\"EV\"");
        }
        assert_eq!(run(&edited, &notes, &key).unwrap_err().index, Some(9));

        let mut removed = entries.clone();
        removed.remove(6);
        assert_eq!(run(&removed, &notes, &key).unwrap_err().index, Some(6));

        let mut truncated = entries.clone();
        truncated.pop();
        assert_eq!(run(&truncated, &notes, &key).unwrap_err().index, Some(19));

        let mut swapped = entries.clone();
        swapped.swap(2, 3);
        for i in [2, 3] {
            // The rows moved; the tree's own leaves stayed where they were.
            swapped[i].index = i as u64;
            swapped[i].tree_leaf = entries[i].tree_leaf;
        }
        assert_eq!(run(&swapped, &notes, &key).unwrap_err().index, Some(2));

        // Rows swapped together with the tree's own leaves: only the signed root catches it.
        let mut rewritten = swapped.clone();
        rewritten[2].tree_leaf = Some(rewritten[2].leaf_hash);
        rewritten[3].tree_leaf = Some(rewritten[3].leaf_hash);
        let failure = run(&rewritten, &notes, &key).unwrap_err();
        assert_eq!(failure.index, Some(0), "{failure}");

        let other = Signer::generate("t.test/log").unwrap().verifier();
        assert!(
            run(&entries, &notes, &other).is_err(),
            "checkpoints by another key are refused"
        );
    }

    #[test]
    fn redacted_bodies_verify_only_when_the_redaction_is_on_record() {
        let signer = Signer::generate("t.test/log").unwrap();
        let (mut entries, notes) = log(8, 8, &signer);
        entries[5].body = None;
        assert_eq!(run(&entries, &notes, &signer.verifier()).unwrap_err().index, Some(5));
        entries[5].redacted = true;
        assert_eq!(run(&entries, &notes, &signer.verifier()).unwrap().redacted, 1);
    }
}
