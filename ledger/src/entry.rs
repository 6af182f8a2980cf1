//! Consent records and their canonical encoding (specified in `docs/ledger.md`).
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
}
