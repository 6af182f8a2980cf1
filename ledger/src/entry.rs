//! Ledger entry bodies — consent records and erasure records — and their canonical encodings
//! (specified in `docs/ledger.md`).
//!
//! A leaf commits to `canonical_bytes(record, salt)`, never to the stored JSON, so the JSON
//! can be re-serialized freely, and the random per-entry salt keeps a redacted entry's leaf
//! hash from being brute-forced back to its content.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::merkle::{Hash, leaf_hash};

/// Domain separation for version 1 of the encoding.
const ENCODING_TAG: &[u8] = b"udim.consent-record.v1";
/// Domain separation for erasure records, so no erasure encodes like a consent.
const ERASURE_TAG: &str = "udim.erasure-record.v1";
/// Domain separation for the commitment to an erasure's subject.
const SUBJECT_TAG: &[u8] = b"udim.erasure-subject.v1";

/// The consent event a record is about (ISO/IEC TS 27560 consent states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentEvent {
    Given,
    Updated,
    Withdrawn,
}

impl ConsentEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Given => "given",
            Self::Updated => "updated",
            Self::Withdrawn => "withdrawn",
        }
    }
}

/// One consent record: the body of a ledger entry. Field names follow ISO/IEC TS 27560 and
/// the Kantara Consent Receipt where they fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// Record identifier (unique per entry).
    pub record_id: Uuid,
    /// The consent this record belongs to: the `record_id` of the entry that gave it.
    pub consent_id: Uuid,
    /// The data subject: the token's `sub`.
    pub subject: String,
    pub event: ConsentEvent,
    /// Purposes of processing consented to, sorted and de-duplicated.
    pub purposes: Vec<String>,
    /// Data categories covered, sorted and de-duplicated.
    pub data_categories: Vec<String>,
    /// Named recipients / processors, sorted and de-duplicated.
    pub recipients: Vec<String>,
    /// Version of the privacy notice or policy shown to the subject.
    pub policy_version: String,
    pub policy_url: Option<String>,
    /// Jurisdiction whose law applies (e.g. `EU`, `US-CA`).
    pub jurisdiction: String,
    /// How consent was collected (e.g. `api`, `web-form`).
    pub collection_method: String,
    pub recorded_at: DateTime<Utc>,
    /// End of validity; after it the consent no longer admits anything.
    pub expires_at: Option<DateTime<Utc>>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        put_str(out, item);
    }
}

fn put_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl ConsentRecord {
    /// The canonical encoding: a fixed field order, every string as `u32be length || UTF-8`,
    /// lists as `u32be count || items`, optionals as `0x00` or `0x01 || value`, times as
    /// RFC 3339 UTC with microseconds.
    pub fn canonical_bytes(&self, salt: &[u8; 16]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        put_str(&mut out, std::str::from_utf8(ENCODING_TAG).expect("ASCII"));
        out.extend_from_slice(salt);
        put_str(&mut out, &self.record_id.hyphenated().to_string());
        put_str(&mut out, &self.consent_id.hyphenated().to_string());
        put_str(&mut out, &self.subject);
        put_str(&mut out, self.event.as_str());
        put_list(&mut out, &self.purposes);
        put_list(&mut out, &self.data_categories);
        put_list(&mut out, &self.recipients);
        put_str(&mut out, &self.policy_version);
        put_opt(&mut out, self.policy_url.as_deref());
        put_str(&mut out, &self.jurisdiction);
        put_str(&mut out, &self.collection_method);
        put_str(&mut out, &time(&self.recorded_at));
        put_opt(&mut out, self.expires_at.as_ref().map(time).as_deref());
        out
    }

    /// True when this record, as of `now`, admits data of `category`.
    /// With `purpose`, the record must also name that purpose (downstream reads ask for
    /// one); without, any purpose will do (an upload only places data under the consent).
    pub fn admits(&self, category: &str, purpose: Option<&str>, now: DateTime<Utc>) -> bool {
        self.event != ConsentEvent::Withdrawn
            && self.expires_at.is_none_or(|end| end > now)
            && self.data_categories.iter().any(|c| c == category)
            && purpose.is_none_or(|p| self.purposes.iter().any(|q| q == p))
    }

    /// True when the record lets `reader` receive the data: it names no recipients (any
    /// downstream principal with the read scope may), or names `reader` among them.
    pub fn discloses_to(&self, reader: &str) -> bool {
        self.recipients.is_empty() || self.recipients.iter().any(|r| r == reader)
    }

    /// The entry's RFC 9162 leaf hash.
    pub fn leaf_hash(&self, salt: &[u8; 16]) -> Hash {
        leaf_hash(&self.canonical_bytes(salt))
    }
}
/// The one event an erasure record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureEvent {
    Erased,
}

/// The record of an erasure: which packages were erased and when, with no personal data. A
/// person's `DELETE /v1/me` is recorded even when it erased no package (its consent records
/// went), so `packages` may be empty.
/// The subject appears only as a commitment whose nonce the person alone receives, so the
/// stored log cannot be linked back to them, while they can show it was theirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    pub record_id: Uuid,
    pub event: ErasureEvent,
    /// `SHA-256("udim.erasure-subject.v1" || nonce || subject)`, lowercase hex.
    pub subject_commitment: String,
    /// The erased packages' ids, sorted.
    pub packages: Vec<Uuid>,
    /// When the erasure had committed (the wrapped keys were destroyed).
    pub recorded_at: DateTime<Utc>,
}

/// The commitment an [`ErasureRecord`] holds instead of its subject.
pub fn subject_commitment(nonce: &[u8; 16], subject: &str) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(SUBJECT_TAG);
    context.update(nonce);
    context.update(subject.as_bytes());
    context.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl ErasureRecord {
    /// The canonical encoding, in the same style as [`ConsentRecord::canonical_bytes`]:
    /// tag, salt, record id, event, commitment, the package ids as a list, time.
    pub fn canonical_bytes(&self, salt: &[u8; 16]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + 40 * self.packages.len());
        put_str(&mut out, ERASURE_TAG);
        out.extend_from_slice(salt);
        put_str(&mut out, &self.record_id.hyphenated().to_string());
        put_str(&mut out, "erased");
        put_str(&mut out, &self.subject_commitment);
        let packages: Vec<String> = self.packages.iter().map(|p| p.hyphenated().to_string()).collect();
        put_list(&mut out, &packages);
        put_str(&mut out, &time(&self.recorded_at));
        out
    }

    pub fn leaf_hash(&self, salt: &[u8; 16]) -> Hash {
        leaf_hash(&self.canonical_bytes(salt))
    }

    /// True when `subject`, with the `nonce` the person was given, is this record's subject.
    pub fn is_about(&self, nonce: &[u8; 16], subject: &str) -> bool {
        subject_commitment(nonce, subject) == self.subject_commitment
    }
}

/// Any ledger entry's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryBody {
    Consent(ConsentRecord),
    Erasure(ErasureRecord),
}

impl EntryBody {
    pub fn leaf_hash(&self, salt: &[u8; 16]) -> Hash {
        match self {
            Self::Consent(record) => record.leaf_hash(salt),
            Self::Erasure(record) => record.leaf_hash(salt),
        }
    }
}

/// Sorts and de-duplicates a list so equal sets encode equally.
pub fn normalized(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items.dedup();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsentRecord {
        ConsentRecord {
            record_id: Uuid::from_u128(1),
            consent_id: Uuid::from_u128(1),
            subject: "alice".into(),
            event: ConsentEvent::Given,
            purposes: vec!["model-training".into()],
            data_categories: vec!["audio".into(), "documents".into()],
            recipients: vec![],
            policy_version: "2026-01".into(),
            policy_url: None,
            jurisdiction: "EU".into(),
            collection_method: "api".into(),
            recorded_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
            expires_at: None,
        }
    }

    #[test]
    fn encoding_is_stable_and_every_field_and_the_salt_change_it() {
        let base = record();
        let salt = [5u8; 16];
        let bytes = base.canonical_bytes(&salt);
        assert_eq!(bytes, base.canonical_bytes(&salt));
        assert_ne!(bytes, base.canonical_bytes(&[6u8; 16]));
        let variants: Vec<ConsentRecord> = vec![
            ConsentRecord {
                subject: "bob".into(),
                ..record()
            },
            ConsentRecord {
                event: ConsentEvent::Withdrawn,
                ..record()
            },
            ConsentRecord {
                purposes: vec![],
                ..record()
            },
            ConsentRecord {
                data_categories: vec!["audio".into()],
                ..record()
            },
            ConsentRecord {
                recipients: vec!["x".into()],
                ..record()
            },
            ConsentRecord {
                policy_version: "2026-02".into(),
                ..record()
            },
            ConsentRecord {
                policy_url: Some(String::new()),
                ..record()
            },
            ConsentRecord {
                jurisdiction: "US".into(),
                ..record()
            },
            ConsentRecord {
                collection_method: "web".into(),
                ..record()
            },
            ConsentRecord {
                recorded_at: base.recorded_at + chrono::Duration::microseconds(1),
                ..record()
            },
            ConsentRecord {
                expires_at: Some(base.recorded_at),
                ..record()
            },
        ];
        for v in variants {
            assert_ne!(v.canonical_bytes(&salt), bytes, "{v:?}");
        }
    }

    #[test]
    fn length_prefixes_keep_field_boundaries_unambiguous() {
        let a = ConsentRecord {
            purposes: vec!["ab".into(), "c".into()],
            ..record()
        };
        let b = ConsentRecord {
            purposes: vec!["a".into(), "bc".into()],
            ..record()
        };
        assert_ne!(a.canonical_bytes(&[0; 16]), b.canonical_bytes(&[0; 16]));
    }

    #[test]
    fn admission_needs_category_purpose_no_withdrawal_and_no_expiry() {
        let now = record().recorded_at;
        assert!(record().admits("audio", None, now));
        assert!(record().admits("audio", Some("model-training"), now));
        assert!(!record().admits("audio", Some("advertising"), now));
        assert!(!record().admits("video", None, now));
        let withdrawn = ConsentRecord {
            event: ConsentEvent::Withdrawn,
            ..record()
        };
        assert!(!withdrawn.admits("audio", None, now));
        let expired = ConsentRecord {
            expires_at: Some(now),
            ..record()
        };
        assert!(!expired.admits("audio", None, now));
    }

    fn erasure() -> ErasureRecord {
        ErasureRecord {
            record_id: Uuid::from_u128(7),
            event: ErasureEvent::Erased,
            subject_commitment: subject_commitment(&[9; 16], "alice"),
            packages: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            recorded_at: record().recorded_at,
        }
    }

    #[test]
    fn an_erasure_record_commits_to_every_field_and_never_encodes_like_a_consent() {
        let salt = [5u8; 16];
        let bytes = erasure().canonical_bytes(&salt);
        let variants = [
            ErasureRecord {
                packages: vec![Uuid::from_u128(1)],
                ..erasure()
            },
            ErasureRecord {
                subject_commitment: subject_commitment(&[9; 16], "bob"),
                ..erasure()
            },
            ErasureRecord {
                recorded_at: record().recorded_at + chrono::Duration::microseconds(1),
                ..erasure()
            },
            ErasureRecord {
                record_id: Uuid::from_u128(8),
                ..erasure()
            },
        ];
        for v in variants {
            assert_ne!(v.canonical_bytes(&salt), bytes, "{v:?}");
        }
        assert_ne!(erasure().leaf_hash(&salt), record().leaf_hash(&salt));
        assert!(bytes.windows(ERASURE_TAG.len()).any(|w| w == ERASURE_TAG.as_bytes()));
    }

    #[test]
    fn the_commitment_names_the_subject_only_with_the_nonce() {
        let record = erasure();
        assert!(record.is_about(&[9; 16], "alice"));
        assert!(!record.is_about(&[8; 16], "alice"));
        assert!(!record.is_about(&[9; 16], "alicf"));
        assert!(!serde_json::to_string(&record).unwrap().contains("alice"));
    }

    #[test]
    fn bodies_of_either_kind_parse_back_as_themselves() {
        for body in [EntryBody::Consent(record()), EntryBody::Erasure(erasure())] {
            let json = serde_json::to_string(&body).unwrap();
            assert_eq!(serde_json::from_str::<EntryBody>(&json).unwrap(), body);
        }
    }
}
