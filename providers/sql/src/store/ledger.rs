//! The consent ledger: an RFC 9162 Merkle log with stored subtrees and a signed checkpoint
//! per batch. The tree math is `udim_ledger::merkle`; this file stores and fetches it.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::types::Json;
use udim_ledger::merkle::{self, Frontier, NodeId};
use udim_ports::ledger::{
    AppendedBatch, AuditRow, CheckpointSigner, ConsentLedger, Hash, LedgerEntry, NewLedgerEntry, StoredCheckpoint,
};
use udim_ports::{PortError, Result};
use uuid::Uuid;

use super::rows::{CheckpointRow, LedgerRow, NodeRow, convert, fixed, ledger_select, to_i64, unsigned};
use super::{CHUNK, SqlStore};
use crate::engine::{after_erasure, db_err, on_pool};

const LATEST_CHECKPOINT: &str = "SELECT size, root, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1";

fn integrity(why: impl Into<String>) -> PortError {
    PortError::Integrity(why.into())
}

/// The lookups for `ids`, a statement per chunk. Node ids are integers we produced, so they
/// are written into the text; the statements are run unprepared, since their shapes vary.
fn node_lookups(ids: &[NodeId]) -> Vec<String> {
    ids.chunks(CHUNK)
        .map(|chunk| {
            let terms: Vec<String> = chunk
                .iter()
                .map(|id| format!("(level = {} AND idx = {})", id.level, id.index))
                .collect();
            format!("SELECT level, idx, hash FROM ledger_nodes WHERE {}", terms.join(" OR "))
        })
        .collect()
}

/// What a batch adds to the tree: computed from the stored frontier, checked against the
/// last signed checkpoint before anything is written.
struct Extension {
    new_nodes: Vec<(NodeId, Hash)>,
    entries: Vec<LedgerEntry>,
    /// The nodes known without another read: the old frontier and everything new.
    known: HashMap<NodeId, Hash>,
    size: u64,
    root: Hash,
}

fn extend(
    old_size: u64,
    stored: &HashMap<NodeId, Hash>,
    last: Option<StoredCheckpoint>,
    entries: &[NewLedgerEntry],
    signer: &dyn CheckpointSigner,
) -> Result<Extension> {
    let plan = merkle::root_plan(old_size);
    let hashes = plan
        .iter()
        .map(|id| {
            stored
                .get(id)
                .copied()
                .ok_or_else(|| integrity(format!("tree node {id:?} is missing")))
        })
        .collect::<Result<Vec<Hash>>>()?;
    let mut known: HashMap<NodeId, Hash> = plan.iter().copied().zip(hashes.iter().copied()).collect();
    let mut frontier = Frontier::from_parts(old_size, hashes).map_err(|e| integrity(format!("stored tree: {e}")))?;

    // Never sign a tree that does not extend the last signed one.
    match last {
        None if old_size == 0 => {}
        None => return Err(integrity("the log has entries but no signed checkpoint")),
        Some(cp) => {
            let (size, root) = signer
                .open(&cp.note)
                .map_err(|e| integrity(format!("the last checkpoint does not verify: {e}")))?;
            if size != old_size || root != frontier.root() {
                return Err(integrity(format!(
                    "the stored tree of size {old_size} does not match the last signed checkpoint (size {size}); \
                     refusing to sign"
                )));
            }
        }
    }

    let mut new_nodes = Vec::with_capacity(entries.len() * 2);
    let mut stored_entries = Vec::with_capacity(entries.len());
    for (offset, e) in entries.iter().enumerate() {
        new_nodes.extend(
            frontier
                .push(e.leaf_hash)
                .map_err(|e| integrity(format!("tree: {e}")))?,
        );
        stored_entries.push(e.at(old_size + offset as u64));
    }
    known.extend(new_nodes.iter().copied());
    Ok(Extension {
        new_nodes,
        entries: stored_entries,
        known,
        size: frontier.size(),
        root: frontier.root(),
    })
}

#[async_trait]
impl ConsentLedger for SqlStore {
    async fn append_batch(&self, entries: &[NewLedgerEntry], signer: &dyn CheckpointSigner) -> Result<AppendedBatch> {
        if entries.is_empty() {
            return Err(PortError::Conflict("an empty batch".into()));
        }
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            // Taking the head row's write lock first is the sequencer: concurrent appends,
            // from this process or another, queue here until this transaction ends.
            let (old_size,): (i64,) = sqlx::query_as("UPDATE ledger_head SET size = size RETURNING size")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
            let old_size = unsigned(old_size, "ledger size")?;
            let mut stored = HashMap::new();
            for sql in node_lookups(&merkle::root_plan(old_size)) {
                let rows: Vec<NodeRow> = sqlx::query_as(&sql)
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                stored.extend(convert::<_, (NodeId, Hash)>(rows)?);
            }
            let last: Option<CheckpointRow> = sqlx::query_as(LATEST_CHECKPOINT)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let last = last.map(StoredCheckpoint::try_from).transpose()?;
            // Entries whose consent moved on since their caller looked are refused, alone.
            let mut latest: HashMap<Uuid, Option<u64>> = HashMap::new();
            let mut accepted = Vec::with_capacity(entries.len());
            let mut refused = Vec::new();
            for (position, entry) in entries.iter().enumerate() {
                if let Some(expected) = entry.expects_latest {
                    let newest = match latest.get(&entry.consent_id) {
                        Some(newest) => *newest,
                        None => {
                            let (max,): (Option<i64>,) =
                                sqlx::query_as("SELECT max(idx) FROM consent_records WHERE consent_id = $1")
                                    .bind(entry.consent_id)
                                    .fetch_one(&mut *tx)
                                    .await
                                    .map_err(db_err)?;
                            max.map(|m| unsigned(m, "ledger index")).transpose()?
                        }
                    };
                    if newest != Some(expected) {
                        latest.insert(entry.consent_id, newest);
                        refused.push(position);
                        continue;
                    }
                }
                latest.insert(entry.consent_id, Some(old_size + accepted.len() as u64));
                accepted.push(entry.clone());
            }
            if accepted.is_empty() {
                let checkpoint = last.ok_or_else(|| integrity("refused entries in an empty log"))?;
                return Ok(AppendedBatch {
                    entries: Vec::new(),
                    refused,
                    proofs: Vec::new(),
                    checkpoint,
                });
            }
            let mut ext = extend(old_size, &stored, last, &accepted, signer)?;

            // Unnamed statements: batch sizes vary, and caching one prepared statement per
            // size would only fill the cache.
            for chunk in ext.entries.chunks(CHUNK) {
                let mut sql = sqlx::QueryBuilder::new("INSERT INTO consent_ledger (idx, id, leaf_hash, recorded_at) ");
                sql.push_values(chunk, |mut row, e| {
                    row.push_bind(e.index as i64)
                        .push_bind(e.id)
                        .push_bind(e.leaf_hash.to_vec())
                        .push_bind(e.recorded_at);
                });
                sql.build().persistent(false).execute(&mut *tx).await.map_err(db_err)?;
                let mut sql = sqlx::QueryBuilder::new(
                    "INSERT INTO consent_records (id, idx, user_id, consent_id, event_type, record, salt) ",
                );
                sql.push_values(chunk, |mut row, e| {
                    row.push_bind(e.id)
                        .push_bind(e.index as i64)
                        .push_bind(e.user_id.clone())
                        .push_bind(e.consent_id)
                        .push_bind(e.event_type.clone())
                        .push_bind(Json(e.record.clone()))
                        .push_bind(e.salt.to_vec());
                });
                sql.build().persistent(false).execute(&mut *tx).await.map_err(db_err)?;
            }
            for chunk in ext.new_nodes.chunks(CHUNK) {
                let mut sql = sqlx::QueryBuilder::new("INSERT INTO ledger_nodes (level, idx, hash) ");
                sql.push_values(chunk, |mut row, (id, hash)| {
                    row.push_bind(i16::from(id.level))
                        .push_bind(id.index as i64)
                        .push_bind(hash.to_vec());
                });
                sql.build().persistent(false).execute(&mut *tx).await.map_err(db_err)?;
            }

            let note = signer
                .sign(ext.size, &ext.root)
                .map_err(|e| PortError::generic("checkpoint signer", e))?;
            let size = to_i64(ext.size, "ledger size")?;
            sqlx::query("INSERT INTO ledger_checkpoints (size, root, note, created_at) VALUES ($1, $2, $3, $4)")
                .bind(size)
                .bind(ext.root.to_vec())
                .bind(&note)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query("UPDATE ledger_head SET size = $1")
                .bind(size)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;

            // Inclusion proofs against the new checkpoint. Every sibling of a leaf appended
            // here is either a complete subtree of the old tree's frontier or a node this
            // batch completed, so the proofs need no further reads; anything else is
            // fetched here.
            let batch = merkle::InclusionBatch::plan(ext.entries.iter().map(|e| e.index), ext.size)
                .map_err(|e| integrity(format!("proof plan: {e}")))?;
            for sql in node_lookups(&batch.missing(&ext.known)) {
                let rows: Vec<NodeRow> = sqlx::query_as(&sql)
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                ext.known.extend(convert::<_, (NodeId, Hash)>(rows)?);
            }
            let proofs = batch
                .assemble(&ext.known)
                .map_err(|e| integrity(format!("proof: {e}")))?;
            tx.commit().await.map_err(db_err)?;
            Ok(AppendedBatch {
                entries: ext.entries,
                refused,
                proofs,
                checkpoint: StoredCheckpoint {
                    size: ext.size,
                    root: ext.root,
                    note,
                },
            })
        })
    }

    async fn entries_for_user(&self, user_id: &str) -> Result<Vec<LedgerEntry>> {
        let rows: Vec<LedgerRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(ledger_select!(), " WHERE r.user_id = $1 ORDER BY r.idx"))
                .bind(user_id)
                .fetch_all(pool)
                .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn nodes(&self, ids: &[(u8, u64)]) -> Result<Vec<Option<Hash>>> {
        let ids: Vec<NodeId> = ids.iter().map(|&(level, index)| NodeId { level, index }).collect();
        let mut found = HashMap::with_capacity(ids.len());
        for sql in node_lookups(&ids) {
            let rows: Vec<NodeRow> = on_pool!(&self.pool, |pool| {
                sqlx::query_as(&sql).persistent(false).fetch_all(pool).await
            })
            .map_err(db_err)?;
            found.extend(convert::<_, (NodeId, Hash)>(rows)?);
        }
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        let row: Option<CheckpointRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(LATEST_CHECKPOINT).fetch_optional(pool).await
        })
        .map_err(db_err)?;
        row.map(StoredCheckpoint::try_from).transpose()
    }

    async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>> {
        let size = to_i64(size, "size")?;
        let row: Option<CheckpointRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT size, root, note FROM ledger_checkpoints WHERE size = $1")
                .bind(size)
                .fetch_optional(pool)
                .await
        })
        .map_err(db_err)?;
        row.map(StoredCheckpoint::try_from).transpose()
    }

    async fn checkpoints(&self, from_size: u64, limit: u32) -> Result<Vec<StoredCheckpoint>> {
        let from_size = to_i64(from_size, "size")?;
        let rows: Vec<CheckpointRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT size, root, note FROM ledger_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2")
                .bind(from_size)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn audit_rows(&self, from_index: u64, limit: u32) -> Result<Vec<AuditRow>> {
        let from_index = to_i64(from_index, "index")?;
        // Range scans on each table's own index, merged here: far cheaper than a four-way
        // join per row, and a row moved between tables still shows up as a mismatch in the
        // audit.
        let (leaves, tree_leaves, bodies, redacted) = on_pool!(&self.pool, |pool| {
            let mut conn = pool.acquire().await.map_err(db_err)?;
            let leaves: Vec<(i64, Uuid, Vec<u8>)> =
                sqlx::query_as("SELECT idx, id, leaf_hash FROM consent_ledger WHERE idx >= $1 ORDER BY idx LIMIT $2")
                    .bind(from_index)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?;
            let (Some(&(lo, ..)), Some(&(hi, ..))) = (leaves.first(), leaves.last()) else {
                return Ok(Vec::new());
            };
            let tree_leaves: Vec<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT idx, hash FROM ledger_nodes WHERE level = 0 AND idx >= $1 AND idx <= $2")
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?;
            // The body as text: the audit parses it on all cores, straight into the record.
            let bodies: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
                "SELECT id, CAST(record AS TEXT) AS record, salt FROM consent_records WHERE idx >= $1 AND idx <= $2",
            )
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            let redacted: Vec<(Uuid,)> = sqlx::query_as(
                "SELECT x.entry_id FROM ledger_redactions x JOIN consent_ledger l ON l.id = x.entry_id \
                 WHERE l.idx >= $1 AND l.idx <= $2",
            )
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            (leaves, tree_leaves, bodies, redacted)
        });
        let tree_leaves = tree_leaves
            .into_iter()
            .map(|(idx, hash)| Ok((idx, fixed::<32>(hash, "tree leaf")?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let mut bodies = bodies
            .into_iter()
            .map(|(id, record, salt)| Ok((id, (record, fixed::<16>(salt, "salt")?))))
            .collect::<Result<HashMap<_, _>>>()?;
        let redacted: HashSet<Uuid> = redacted.into_iter().map(|(id,)| id).collect();
        leaves
            .into_iter()
            .map(|(idx, id, leaf_hash)| {
                Ok(AuditRow {
                    index: unsigned(idx, "ledger index")?,
                    leaf_hash: fixed(leaf_hash, "leaf hash")?,
                    tree_leaf: tree_leaves.get(&idx).copied(),
                    body: bodies.remove(&id),
                    redacted: redacted.contains(&id),
                })
            })
            .collect()
    }

    async fn redact_user(&self, user_id: &str) -> Result<u64> {
        let removed = on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            // The redaction goes on record first: the trigger lets a body go only then.
            sqlx::query(
                "INSERT INTO ledger_redactions (entry_id, redacted_at) \
                 SELECT id, $2 FROM consent_records WHERE user_id = $1 \
                 AND id NOT IN (SELECT entry_id FROM ledger_redactions)",
            )
            .bind(user_id)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            // Only what is on record as redacted: an entry appended since the INSERT above
            // (another snapshot under READ COMMITTED) stays for the next erasure.
            let removed = sqlx::query(
                "DELETE FROM consent_records WHERE user_id = $1 AND id IN (SELECT entry_id FROM ledger_redactions)",
            )
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            tx.commit().await.map_err(db_err)?;
            removed
        });
        after_erasure(&self.pool).await;
        Ok(removed)
    }

    async fn size(&self) -> Result<u64> {
        let (size,): (i64,) = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT size FROM ledger_head").fetch_one(pool).await
        })
        .map_err(db_err)?;
        unsigned(size, "ledger size")
    }
}
