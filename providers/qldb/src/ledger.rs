//! The consent ledger on QLDB: the same RFC 9162 log, checkpoints and proofs as the SQL
//! ledger, stored as QLDB documents.
//!
//! - `udim_ledger_entries`: one document per entry, holding the entry and every tree node
//!   its leaf completed. A node `(level, index)` has its rightmost leaf at
//!   `(index + 1) · 2^level − 1`, so it is found with the entry of that index: an equality
//!   or `IN` lookup on the indexed `idx` field, the only kind of lookup QLDB serves from an
//!   index.
//! - `udim_ledger_checkpoints`: one document per signed checkpoint.
//! - `udim_ledger_head`: one document with the size and the latest checkpoint. Every append
//!   reads and rewrites it, so QLDB's optimistic concurrency control is the sequencer:
//!   of two concurrent appends one commits and the other conflicts and starts over.
//!
//! QLDB allows 40 documents per transaction: an append writes one per entry plus the
//! checkpoint and the head, so one batch holds at most [`MAX_BATCH`] entries.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ion_rs::{Element, Struct};
use udim_ledger::merkle::{self, Frontier, NodeId};
use udim_ports::ledger::{
    AppendedBatch, AuditRow, CheckpointSigner, ConsentLedger, Hash, LedgerEntry, NewLedgerEntry, StoredCheckpoint,
};
use udim_ports::{PortError, Result};
use uuid::Uuid;

use crate::session::{Driver, Txn, TxnError};

/// Entries per append: QLDB's 40 documents per transaction, less the checkpoint and head.
pub const MAX_BATCH: usize = 38;
/// Values per `IN (...)` list.
const IN_CHUNK: usize = 100;

const ENTRIES: &str = "udim_ledger_entries";
const CHECKPOINTS: &str = "udim_ledger_checkpoints";
const HEAD: &str = "udim_ledger_head";

/// Runs `$body`, with `$txn` a `&mut Txn`, in a transaction the driver retries; `$body`
/// evaluates to a `Result<_, TxnError>`. Whatever it uses from outside must be `Copy`
/// (references, numbers): each attempt runs it afresh.
macro_rules! transact {
    ($driver:expr, |$txn:ident| $body:expr) => {
        $driver.transact(|mut txn| async move {
            let result = async {
                let $txn = &mut txn;
                $body
            }
            .await;
            (txn, result)
        })
    };
}

fn corrupt(what: impl std::fmt::Display) -> PortError {
    PortError::Integrity(format!("QLDB ledger: {what}"))
}

fn integrity(what: impl Into<String>) -> TxnError {
    TxnError::Fatal(PortError::Integrity(what.into()))
}

fn doc(value: &Element) -> Result<&Struct> {
    value.as_struct().ok_or_else(|| corrupt("a result is not a document"))
}

fn field<'a>(doc: &'a Struct, name: &str) -> Result<&'a Element> {
    doc.get(name)
        .ok_or_else(|| corrupt(format!("a document has no `{name}`")))
}

fn int(doc: &Struct, name: &str) -> Result<u64> {
    field(doc, name)?
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| corrupt(format!("`{name}` is not a non-negative integer")))
}

fn text<'a>(doc: &'a Struct, name: &str) -> Result<&'a str> {
    field(doc, name)?
        .as_string()
        .ok_or_else(|| corrupt(format!("`{name}` is not a string")))
}

fn bytes<const N: usize>(doc: &Struct, name: &str) -> Result<[u8; N]> {
    field(doc, name)?
        .as_blob()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(format!("`{name}` is not a {N}-byte blob")))
}

fn uuid(doc: &Struct, name: &str) -> Result<Uuid> {
    text(doc, name)?
        .parse()
        .map_err(|_| corrupt(format!("`{name}` is not a UUID")))
}

fn ion_int(value: u64) -> Result<Element> {
    i64::try_from(value)
        .map(Element::int)
        .map_err(|_| corrupt("a size beyond i64"))
}

/// The stored document of one entry with the nodes its leaf completed.
fn entry_document(entry: &LedgerEntry, nodes: &[(NodeId, Hash)]) -> Result<Element> {
    let nodes: Vec<Element> = nodes
        .iter()
        .map(|(id, hash)| {
            Struct::builder()
                .with_field("level", i64::from(id.level))
                .with_field("hash", Element::blob(hash))
                .build()
                .into()
        })
        .collect();
    Ok(Struct::builder()
        .with_field("idx", ion_int(entry.index)?)
        .with_field("id", entry.id.to_string())
        .with_field("user_id", entry.user_id.as_str())
        .with_field("consent_id", entry.consent_id.to_string())
        .with_field("event_type", entry.event_type.as_str())
        // The JSON text, as the audit reads it; the leaf hash covers its canonical form.
        .with_field("record", entry.record.to_string())
        .with_field("salt", Element::blob(entry.salt))
        .with_field("leaf_hash", Element::blob(entry.leaf_hash))
        .with_field("recorded_at", entry.recorded_at.to_rfc3339())
        .with_field("nodes", ion_rs::List::from(nodes))
        .build()
        .into())
}

fn entry_from(doc: &Struct) -> Result<LedgerEntry> {
    Ok(LedgerEntry {
        index: int(doc, "idx")?,
        id: uuid(doc, "id")?,
        user_id: text(doc, "user_id")?.to_owned(),
        consent_id: uuid(doc, "consent_id")?,
        event_type: text(doc, "event_type")?.to_owned(),
        record: serde_json::from_str(text(doc, "record")?).map_err(|_| corrupt("`record` is not JSON"))?,
        salt: bytes(doc, "salt")?,
        leaf_hash: bytes(doc, "leaf_hash")?,
        recorded_at: DateTime::parse_from_rfc3339(text(doc, "recorded_at")?)
            .map_err(|_| corrupt("`recorded_at` is not RFC 3339"))?
            .with_timezone(&Utc),
    })
}

/// The nodes stored in an entry's document, by level.
fn stored_nodes(doc: &Struct) -> Result<Vec<(u8, Hash)>> {
    field(doc, "nodes")?
        .as_list()
        .ok_or_else(|| corrupt("`nodes` is not a list"))?
        .elements()
        .map(|node| {
            let node = self::doc(node)?;
            let level = u8::try_from(int(node, "level")?).map_err(|_| corrupt("a node level beyond 63"))?;
            Ok((level, bytes(node, "hash")?))
        })
        .collect()
}

fn checkpoint_from(doc: &Struct) -> Result<StoredCheckpoint> {
    Ok(StoredCheckpoint {
        size: int(doc, "size")?,
        root: bytes(doc, "root")?,
        note: text(doc, "note")?.to_owned(),
    })
}

/// The index of the entry whose document holds node `id`.
fn holder(id: NodeId) -> Option<u64> {
    1u64.checked_shl(u32::from(id.level))
        .and_then(|width| id.index.checked_add(1)?.checked_mul(width))
        .map(|end| end - 1)
}

/// `SELECT * FROM table WHERE field IN (?, ...)` over `values`, in chunks.
async fn select_in(txn: &mut Txn, table: &str, field: &str, values: &[u64]) -> Result<Vec<Element>, TxnError> {
    let mut found = Vec::with_capacity(values.len());
    for chunk in values.chunks(IN_CHUNK) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let params = chunk.iter().map(|&v| ion_int(v)).collect::<Result<Vec<_>>>()?;
        found.extend(
            txn.execute(&format!("SELECT * FROM {table} WHERE {field} IN ({marks})"), params)
                .await?,
        );
    }
    Ok(found)
}

async fn fetch_nodes(txn: &mut Txn, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, TxnError> {
    let mut wanted: Vec<u64> = ids.iter().filter_map(|&id| holder(id)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut by_index = HashMap::with_capacity(wanted.len());
    for value in select_in(txn, ENTRIES, "idx", &wanted).await? {
        let d = doc(&value)?;
        by_index.insert(int(d, "idx")?, stored_nodes(d)?);
    }
    Ok(ids
        .iter()
        .filter_map(|&id| {
            let nodes = by_index.get(&holder(id)?)?;
            nodes
                .iter()
                .find(|(level, _)| *level == id.level)
                .map(|(_, hash)| (id, *hash))
        })
        .collect())
}

/// The head document: the size, and the latest checkpoint once there is one.
async fn head(txn: &mut Txn) -> Result<(u64, Option<StoredCheckpoint>), TxnError> {
    let rows = txn.execute(&format!("SELECT * FROM {HEAD}"), Vec::new()).await?;
    let [row] = rows.as_slice() else {
        return Err(integrity(format!("{HEAD} holds {} documents, not one", rows.len())));
    };
    let d = doc(row)?;
    let size = int(d, "size")?;
    let checkpoint = if size == 0 { None } else { Some(checkpoint_from(d)?) };
    Ok((size, checkpoint))
}

/// [`ConsentLedger`] on Amazon QLDB (legacy; see the crate documentation).
#[derive(Debug)]
pub struct QldbLedger {
    driver: Driver,
}

impl QldbLedger {
    /// Connects to `ledger_name` and creates the tables, indexes and head document it
    /// needs if they are missing.
    pub async fn connect(client: aws_sdk_qldbsession::Client, ledger_name: &str) -> Result<Self> {
        let ledger = Self {
            driver: Driver::new(client, ledger_name),
        };
        ledger.ensure_schema().await?;
        Ok(ledger)
    }

    async fn ensure_schema(&self) -> Result<()> {
        let tables = transact!(self.driver, |txn| {
            txn.execute(
                "SELECT name FROM information_schema.user_tables WHERE status = 'ACTIVE'",
                Vec::new(),
            )
            .await
        })
        .await?;
        let existing: Vec<&str> = tables
            .iter()
            .filter_map(|r| r.as_struct()?.get("name")?.as_string())
            .collect();
        let indexes: [(&str, &[&str]); 3] = [
            (ENTRIES, &["idx", "user_id", "id"]),
            (CHECKPOINTS, &["size"]),
            (HEAD, &[]),
        ];
        for (table, fields) in indexes {
            if existing.contains(&table) {
                continue;
            }
            // QLDB runs one DDL statement per transaction.
            let mut statements = vec![format!("CREATE TABLE {table}")];
            statements.extend(fields.iter().map(|field| format!("CREATE INDEX ON {table} ({field})")));
            for statement in &statements {
                transact!(self.driver, |txn| txn.execute(statement, Vec::new()).await).await?;
            }
        }
        // Two instances starting at once both see no head; both read the table, so one of
        // them conflicts, starts over and finds the other's head.
        transact!(self.driver, |txn| {
            if txn
                .execute(&format!("SELECT * FROM {HEAD}"), Vec::new())
                .await?
                .is_empty()
            {
                let head: Element = Struct::builder().with_field("size", 0).build().into();
                txn.execute(&format!("INSERT INTO {HEAD} ?"), vec![head]).await?;
            }
            Ok(())
        })
        .await
    }

    async fn append_in(
        txn: &mut Txn,
        entries: &[NewLedgerEntry],
        signer: &dyn CheckpointSigner,
    ) -> Result<AppendedBatch, TxnError> {
        let (old_size, last) = head(txn).await?;
        let plan = merkle::root_plan(old_size);
        let stored = fetch_nodes(txn, &plan).await?;
        let frontier_hashes = plan
            .iter()
            .map(|id| {
                stored
                    .get(id)
                    .copied()
                    .ok_or_else(|| integrity(format!("tree node {id:?} is missing")))
            })
            .collect::<Result<Vec<Hash>, TxnError>>()?;
        let mut frontier = Frontier::from_parts(old_size, frontier_hashes.clone())
            .map_err(|e| integrity(format!("stored tree: {e}")))?;
        // Never sign a tree that does not extend the last signed one.
        if let Some(cp) = &last {
            let (size, root) = signer
                .open(&cp.note)
                .map_err(|e| integrity(format!("the last checkpoint does not verify: {e}")))?;
            if size != old_size || root != frontier.root() {
                return Err(integrity(format!(
                    "the stored tree of size {old_size} does not match the last signed checkpoint (size {size}); refusing to sign"
                )));
            }
        }

        let mut new_nodes = Vec::with_capacity(entries.len() * 2);
        let mut stored_entries = Vec::with_capacity(entries.len());
        let mut documents = Vec::with_capacity(entries.len());
        for (offset, e) in entries.iter().enumerate() {
            let completed = frontier
                .push(e.leaf_hash)
                .map_err(|e| integrity(format!("tree: {e}")))?;
            let entry = e.at(old_size + offset as u64);
            documents.push(entry_document(&entry, &completed)?);
            new_nodes.extend(completed);
            stored_entries.push(entry);
        }
        let marks = vec!["?"; documents.len()].join(", ");
        txn.execute(&format!("INSERT INTO {ENTRIES} << {marks} >>"), documents)
            .await?;

        let new_size = frontier.size();
        let root = frontier.root();
        let note = signer
            .sign(new_size, &root)
            .map_err(|e| PortError::generic("checkpoint signer", e))?;
        let checkpoint: Element = Struct::builder()
            .with_field("size", ion_int(new_size)?)
            .with_field("root", Element::blob(root))
            .with_field("note", note.as_str())
            .build()
            .into();
        txn.execute(&format!("INSERT INTO {CHECKPOINTS} ?"), vec![checkpoint])
            .await?;
        txn.execute(
            &format!("UPDATE {HEAD} SET size = ?, root = ?, note = ?"),
            vec![ion_int(new_size)?, Element::blob(root), Element::string(note.as_str())],
        )
        .await?;

        // Inclusion proofs against the new checkpoint, as in the SQL ledger: siblings come
        // from the old frontier or this batch, anything else is read.
        let mut known: HashMap<NodeId, Hash> = new_nodes.iter().copied().collect();
        known.extend(plan.iter().copied().zip(frontier_hashes));
        let batch = merkle::InclusionBatch::plan(stored_entries.iter().map(|e| e.index), new_size)
            .map_err(|e| integrity(format!("proof plan: {e}")))?;
        let missing = batch.missing(&known);
        if !missing.is_empty() {
            known.extend(fetch_nodes(txn, &missing).await?);
        }
        let proofs = batch.assemble(&known).map_err(|e| integrity(format!("proof: {e}")))?;
        // `expects_latest` is not checked on this legacy store: a withdrawal racing another
        // change of the same consent is not atomic here (docs/ledger.md says so).
        Ok(AppendedBatch {
            entries: stored_entries,
            refused: Vec::new(),
            proofs,
            checkpoint: StoredCheckpoint {
                size: new_size,
                root,
                note,
            },
        })
    }
}

#[async_trait]
impl ConsentLedger for QldbLedger {
    async fn append_batch(&self, entries: &[NewLedgerEntry], signer: &dyn CheckpointSigner) -> Result<AppendedBatch> {
        if entries.is_empty() {
            return Err(PortError::Conflict("an empty batch".into()));
        }
        if entries.len() > MAX_BATCH {
            return Err(PortError::Conflict(format!(
                "a batch of {} entries; QLDB takes at most {MAX_BATCH} per transaction",
                entries.len()
            )));
        }
        transact!(self.driver, |txn| Self::append_in(txn, entries, signer).await).await
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn entries_for_user(&self, user_id: &str) -> Result<Vec<LedgerEntry>> {
        let rows = transact!(self.driver, |txn| {
            txn.execute(
                &format!("SELECT * FROM {ENTRIES} WHERE user_id = ?"),
                vec![Element::string(user_id)],
            )
            .await
        })
        .await?;
        let mut entries = rows
            .iter()
            .map(|row| entry_from(doc(row)?))
            .collect::<Result<Vec<_>>>()?;
        // QLDB returns documents in no particular order.
        entries.sort_by_key(|e| e.index);
        Ok(entries)
    }

    async fn nodes(&self, ids: &[(u8, u64)]) -> Result<Vec<Option<Hash>>> {
        let ids: Vec<NodeId> = ids.iter().map(|&(level, index)| NodeId { level, index }).collect();
        let wanted = &ids;
        let found = transact!(self.driver, |txn| fetch_nodes(txn, wanted).await).await?;
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        Ok(transact!(self.driver, |txn| head(txn).await).await?.1)
    }

    async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>> {
        let rows = transact!(self.driver, |txn| {
            txn.execute(
                &format!("SELECT * FROM {CHECKPOINTS} WHERE size = ?"),
                vec![ion_int(size)?],
            )
            .await
        })
        .await?;
        rows.first().map(|row| checkpoint_from(doc(row)?)).transpose()
    }

    async fn checkpoints(&self, from_size: u64, limit: u32) -> Result<Vec<StoredCheckpoint>> {
        // A range predicate: QLDB scans the table for it (indexes serve only `=` and `IN`).
        // There is one checkpoint per batch, and audits read them, not requests.
        let rows = transact!(self.driver, |txn| {
            txn.execute(
                &format!("SELECT * FROM {CHECKPOINTS} WHERE size >= ?"),
                vec![ion_int(from_size)?],
            )
            .await
        })
        .await?;
        let mut checkpoints = rows
            .iter()
            .map(|row| checkpoint_from(doc(row)?))
            .collect::<Result<Vec<_>>>()?;
        checkpoints.sort_by_key(|c| c.size);
        checkpoints.truncate(limit as usize);
        Ok(checkpoints)
    }

    async fn audit_rows(&self, from_index: u64, limit: u32) -> Result<Vec<AuditRow>> {
        // Indices are gap-free, so a page is an `IN` lookup on the indexed `idx`; rows
        // missing from the store are simply absent, as the audit expects.
        let size = self.size().await?;
        let end = from_index.saturating_add(u64::from(limit)).min(size);
        let wanted: Vec<u64> = (from_index..end).collect();
        let wanted = &wanted;
        let rows = transact!(self.driver, |txn| select_in(txn, ENTRIES, "idx", wanted).await).await?;
        let mut audit_rows = rows
            .iter()
            .map(|row| {
                let d = doc(row)?;
                let tree_leaf = stored_nodes(d)?
                    .into_iter()
                    .find(|(level, _)| *level == 0)
                    .map(|(_, hash)| hash);
                Ok(AuditRow {
                    index: int(d, "idx")?,
                    leaf_hash: bytes(d, "leaf_hash")?,
                    tree_leaf,
                    body: Some((text(d, "record")?.to_owned(), bytes(d, "salt")?)),
                    // QLDB's own redaction (RedactRevision) works on document revisions in
                    // its journal; UDIM does not use it, so no entry here is redacted.
                    redacted: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        audit_rows.sort_by_key(|r| r.index);
        Ok(audit_rows)
    }

    async fn size(&self) -> Result<u64> {
        Ok(transact!(self.driver, |txn| head(txn).await).await?.0)
    }

    async fn redact_user(&self, _user_id: &str) -> Result<u64> {
        Err(PortError::Unsupported(
            "erasing consent records from the legacy QLDB ledger (QLDB keeps every revision in its journal; \
             move the ledger to PostgreSQL)"
                .into(),
        ))
    }
}
