//! Consent: grants and withdrawals appended to the consent ledger, and the current state
//! derived from the log. Upload admission and downstream reads ask [`ConsentState`].
//!
//! The ledger's service side lives here too: the checkpoint [`signer`], the batching
//! [`sequencer`] in front of the `ConsentLedger` port, [`proofs`] assembly and the [`audit`]
//! runner. The pure parts (tree math, notes, entry encoding) are the `udim-ledger` crate,
//! which verifiers use on their own.

pub mod audit;
pub mod proofs;
pub mod sequencer;
pub mod signer;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use udim_ledger::entry::normalized;
use udim_ledger::proof::RecordProof;
use udim_ports::ledger::{ConsentLedger, LedgerEntry, NewLedgerEntry};
use udim_ports::{PortError, Result};
use uuid::Uuid;

use crate::formats::input::{DataCategory, Label};
use sequencer::Sequencer;
use udim_ledger::entry::{ConsentEvent, ConsentRecord, ErasureEvent, ErasureRecord, subject_commitment};

/// What a grant asks for, already validated.
#[derive(Debug, Clone)]
pub struct Grant {
    pub purposes: Vec<Label>,
    pub data_categories: Vec<DataCategory>,
    pub recipients: Vec<Label>,
    pub policy_version: Label,
    pub policy_url: Option<Label>,
    pub jurisdiction: Label,
    pub collection_method: Label,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Grant {
    /// The record of this scope, lists normalized so equal scopes encode equally.
    fn into_record(self, record_id: Uuid, consent_id: Uuid, user_id: &str, event: ConsentEvent) -> ConsentRecord {
        ConsentRecord {
            record_id,
            consent_id,
            subject: user_id.to_owned(),
            event,
            purposes: normalized(self.purposes.into_iter().map(String::from).collect()),
            data_categories: normalized(self.data_categories.into_iter().map(String::from).collect()),
            recipients: normalized(self.recipients.into_iter().map(String::from).collect()),
            policy_version: self.policy_version.into(),
            policy_url: self.policy_url.map(String::from),
            jurisdiction: self.jurisdiction.into(),
            collection_method: self.collection_method.into(),
            recorded_at: now_micros(),
            expires_at: self.expires_at,
        }
    }
}

/// A ledger entry with its decoded record.
#[derive(Debug, Clone)]
pub struct RecordedConsent {
    pub entry: LedgerEntry,
    pub record: ConsentRecord,
}

/// A freshly appended entry and the proof that the log committed to it.
#[derive(Debug, Clone)]
pub struct AppendedConsent {
    pub recorded: RecordedConsent,
    pub proof: RecordProof,
}

impl TryFrom<LedgerEntry> for RecordedConsent {
    type Error = PortError;

    fn try_from(entry: LedgerEntry) -> Result<Self> {
        let record: ConsentRecord =
            serde_json::from_value(entry.record.clone()).map_err(|e| PortError::generic("consent ledger", e))?;
        Ok(Self { entry, record })
    }
}

/// What a consent is asked to admit.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Placing the person's data under the consent: any purpose will do.
    Upload,
    /// A downstream principal reading it for a purpose: the consent must name the purpose,
    /// and the reader too when it names recipients.
    Read { purpose: &'a str, reader: &'a str },
}

/// The state of one user's consents, derived from their entries in index order.
#[derive(Debug, Clone, Default)]
pub struct ConsentState {
    /// Latest record per consent id.
    latest: BTreeMap<Uuid, RecordedConsent>,
}

impl ConsentState {
    /// Folds the log: every record replaces the earlier one of its consent, so a withdrawal
    /// wins over every grant before it.
    pub fn from_log(history: &[RecordedConsent]) -> Self {
        let mut latest = BTreeMap::new();
        for recorded in history {
            latest.insert(recorded.record.consent_id, recorded.clone());
        }
        Self { latest }
    }

    /// The newest record that admits `access` to `category` now, if any: the one function
    /// upload admission and downstream reads ask.
    pub fn admitting(&self, category: &str, access: Access<'_>, now: DateTime<Utc>) -> Option<&RecordedConsent> {
        self.latest
            .values()
            .filter(|c| match access {
                Access::Upload => c.record.admits(category, None, now),
                Access::Read { purpose, reader } => {
                    c.record.admits(category, Some(purpose), now) && c.record.discloses_to(reader)
                }
            })
            .max_by_key(|c| c.entry.index)
    }

    pub fn latest(&self, consent_id: Uuid) -> Option<&RecordedConsent> {
        self.latest.get(&consent_id)
    }

    /// Records whose consent is neither withdrawn nor expired.
    pub fn active(&self, now: DateTime<Utc>) -> impl Iterator<Item = &RecordedConsent> {
        self.latest.values().filter(move |c| {
            c.record.event != ConsentEvent::Withdrawn && c.record.expires_at.is_none_or(|end| end > now)
        })
    }
}

/// Appends consent events for users and answers what they currently allow.
#[derive(Debug, Clone)]
pub struct ConsentService {
    ledger: Arc<dyn ConsentLedger>,
    sequencer: Sequencer,
}

impl ConsentService {
    pub fn new(ledger: Arc<dyn ConsentLedger>, sequencer: Sequencer) -> Self {
        Self { ledger, sequencer }
    }

    pub fn ledger(&self) -> &dyn ConsentLedger {
        self.ledger.as_ref()
    }

    pub async fn history(&self, user_id: &str) -> Result<Vec<RecordedConsent>> {
        self.ledger
            .entries_for_user(user_id)
            .await?
            .into_iter()
            .map(RecordedConsent::try_from)
            .collect()
    }

    pub async fn state(&self, user_id: &str) -> Result<ConsentState> {
        Ok(ConsentState::from_log(&self.history(user_id).await?))
    }

    async fn append(&self, record: ConsentRecord) -> Result<AppendedConsent> {
        self.append_expecting(record, None).await
    }

    /// Appends `record`; with `expects_latest`, only if the consent's newest entry is still
    /// at that index when the batch is written (`Conflict` otherwise).
    async fn append_expecting(&self, record: ConsentRecord, expects_latest: Option<u64>) -> Result<AppendedConsent> {
        let salt = random()?;
        let leaf = record.leaf_hash(&salt);
        let appended = self
            .sequencer
            .append(NewLedgerEntry {
                id: record.record_id,
                user_id: record.subject.clone(),
                consent_id: record.consent_id,
                event_type: record.event.as_str().to_owned(),
                record: serde_json::to_value(&record).map_err(|e| PortError::generic("consent ledger", e))?,
                salt,
                leaf_hash: leaf,
                recorded_at: record.recorded_at,
                expects_latest,
            })
            .await?;
        let proof = RecordProof::new(appended.entry.index, &leaf, &appended.proof, appended.checkpoint.note);
        Ok(AppendedConsent {
            recorded: RecordedConsent {
                entry: appended.entry,
                record,
            },
            proof,
        })
    }

    /// Appends a `given` record: a new consent.
    pub async fn grant(&self, user_id: &str, grant: Grant) -> Result<AppendedConsent> {
        let id = Uuid::now_v7();
        self.append(grant.into_record(id, id, user_id, ConsentEvent::Given))
            .await
    }

    /// Appends an `updated` record: the consent `consent_id` now has the scope of `grant`.
    pub async fn update(&self, user_id: &str, consent_id: Uuid, grant: Grant) -> Result<AppendedConsent, ConsentError> {
        self.change(user_id, consent_id, |_| {
            grant
                .clone()
                .into_record(Uuid::now_v7(), consent_id, user_id, ConsentEvent::Updated)
        })
        .await
    }

    /// Appends a `withdrawn` record for the caller's consent `consent_id`.
    pub async fn withdraw(&self, user_id: &str, consent_id: Uuid) -> Result<AppendedConsent, ConsentError> {
        self.change(user_id, consent_id, |current| ConsentRecord {
            record_id: Uuid::now_v7(),
            event: ConsentEvent::Withdrawn,
            recorded_at: now_micros(),
            ..current.clone()
        })
        .await
    }

    /// Appends `next(current)` for a consent that is not withdrawn, checked and appended as
    /// one step: the append holds only if the consent's newest entry is still the one `next`
    /// saw, across every process. If another change landed first, the state is read again:
    /// a withdrawal that won ends it (`Withdrawn`); anything else is tried once more on top.
    async fn change(
        &self,
        user_id: &str,
        consent_id: Uuid,
        next: impl Fn(&ConsentRecord) -> ConsentRecord,
    ) -> Result<AppendedConsent, ConsentError> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let state = self.state(user_id).await?;
            let current = state.latest(consent_id).ok_or(ConsentError::NotFound(consent_id))?;
            if current.record.event == ConsentEvent::Withdrawn {
                return Err(ConsentError::Withdrawn(consent_id));
            }
            match self
                .append_expecting(next(&current.record), Some(current.entry.index))
                .await
            {
                Err(PortError::Conflict(_)) => continue,
                other => return Ok(other?),
            }
        }
        Err(PortError::unavailable("consent ledger", "the consent keeps changing; retry").into())
    }
}

/// The most package ids one erasure record names: a person with more gets several records.
pub const PACKAGES_PER_ERASURE_RECORD: usize = 1_000;

/// An erasure record as appended, with what its subject keeps to prove it: the salt that
/// recomputes its leaf, the nonce that opens its subject commitment, and the record proof.
#[derive(Debug, Clone)]
pub struct AppendedErasure {
    pub record: ErasureRecord,
    pub salt: [u8; 16],
    pub subject_nonce: [u8; 16],
    pub proof: RecordProof,
}

impl ConsentService {
    /// Records that `user_id`'s `packages` were erased, as one ledger entry per
    /// [`PACKAGES_PER_ERASURE_RECORD`] ids (one entry when there are none). The entries carry
    /// no personal data: the subject appears as a commitment whose nonce only the returned
    /// receipt holds, and they belong to no user of the ledger, so no later redaction takes
    /// them.
    pub async fn record_erasure(&self, user_id: &str, mut packages: Vec<Uuid>) -> Result<Vec<AppendedErasure>> {
        packages.sort();
        packages.dedup();
        let mut appended = Vec::new();
        let mut parts: Vec<&[Uuid]> = packages.chunks(PACKAGES_PER_ERASURE_RECORD).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        for part in parts {
            let subject_nonce: [u8; 16] = random()?;
            let salt: [u8; 16] = random()?;
            let record = ErasureRecord {
                record_id: Uuid::now_v7(),
                event: ErasureEvent::Erased,
                subject_commitment: subject_commitment(&subject_nonce, user_id),
                packages: part.to_vec(),
                recorded_at: now_micros(),
            };
            let leaf = record.leaf_hash(&salt);
            let entry = self
                .sequencer
                .append(NewLedgerEntry {
                    id: record.record_id,
                    user_id: String::new(),
                    consent_id: record.record_id,
                    event_type: "erased".to_owned(),
                    record: serde_json::to_value(&record).map_err(|e| PortError::generic("consent ledger", e))?,
                    salt,
                    leaf_hash: leaf,
                    recorded_at: record.recorded_at,
                    expects_latest: None,
                })
                .await?;
            appended.push(AppendedErasure {
                proof: RecordProof::new(entry.entry.index, &leaf, &entry.proof, entry.checkpoint.note),
                record,
                salt,
                subject_nonce,
            });
        }
        Ok(appended)
    }
}

fn random() -> Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PortError::generic("rng", "random generator failed"))?;
    Ok(bytes)
}

/// Why a consent change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The caller has no such consent (another user's looks the same).
    #[error("consent {0} not found")]
    NotFound(Uuid),
    /// A withdrawn consent stays withdrawn: grant a new one instead.
    #[error("consent {0} is already withdrawn")]
    Withdrawn(Uuid),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Now, truncated to the microsecond precision that the canonical encoding and both
/// databases keep, so a record reads back exactly as it was hashed.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(index: u64, consent: u128, event: ConsentEvent, categories: &[&str]) -> RecordedConsent {
        let record = ConsentRecord {
            record_id: Uuid::from_u128(1000 + index as u128),
            consent_id: Uuid::from_u128(consent),
            subject: "alice".into(),
            event,
            purposes: vec!["training".into()],
            data_categories: categories.iter().map(|c| c.to_string()).collect(),
            recipients: vec![],
            policy_version: "1".into(),
            policy_url: None,
            jurisdiction: "EU".into(),
            collection_method: "api".into(),
            recorded_at: Utc::now(),
            expires_at: None,
        };
        RecordedConsent {
            entry: LedgerEntry {
                index,
                id: record.record_id,
                user_id: "alice".into(),
                consent_id: record.consent_id,
                event_type: event.as_str().into(),
                record: serde_json::to_value(&record).unwrap(),
                salt: [0; 16],
                leaf_hash: [0; 32],
                recorded_at: record.recorded_at,
            },
            record,
        }
    }

    #[test]
    fn withdrawal_wins_over_the_grant_before_it_but_not_over_other_consents() {
        let log = vec![
            recorded(0, 1, ConsentEvent::Given, &["audio"]),
            recorded(1, 2, ConsentEvent::Given, &["audio", "text"]),
            recorded(2, 2, ConsentEvent::Withdrawn, &["audio", "text"]),
        ];
        let state = ConsentState::from_log(&log);
        let now = Utc::now();
        assert_eq!(
            state.admitting("audio", Access::Upload, now).unwrap().record.consent_id,
            Uuid::from_u128(1)
        );
        assert!(state.admitting("text", Access::Upload, now).is_none());
        assert_eq!(state.active(now).count(), 1);
    }

    #[test]
    fn the_newest_admitting_consent_is_chosen() {
        let log = vec![
            recorded(0, 1, ConsentEvent::Given, &["audio"]),
            recorded(1, 2, ConsentEvent::Given, &["audio"]),
        ];
        let state = ConsentState::from_log(&log);
        assert_eq!(
            state
                .admitting("audio", Access::Upload, Utc::now())
                .unwrap()
                .entry
                .index,
            1
        );
    }
}
