//! The events the downstream pipeline consumes: one home for their schemas.
//!
//! Every event is one JSON object: the envelope ([`Envelope`]: `schema_version`, `event_id`,
//! `event_type`, `occurred_at`, `package_id`) followed by the fields of its body type. The
//! same envelope values travel as message attributes on every queue (see
//! `OutboxMessage::attributes`). `docs/events.md` documents them for consumers; a test holds
//! that document to these types.
//!
//! Compatibility: fields may be added within a schema version; removing or changing one
//! bumps [`SCHEMA_VERSION`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use udim_ports::PortError;
use udim_ports::metadata::{OutboxMessage, ScanStatus};
use uuid::Uuid;

/// Version of every event's schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The kinds of event, with their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    /// A package is stored and readable.
    #[serde(rename = "package.stored")]
    PackageStored,
    /// Malware was found in an upload; nothing of it is readable.
    #[serde(rename = "package.quarantined")]
    PackageQuarantined,
    /// A package was erased: everything derived from it must go.
    #[serde(rename = "package.deleted")]
    PackageDeleted,
}

impl EventType {
    pub const ALL: [EventType; 3] = [Self::PackageStored, Self::PackageQuarantined, Self::PackageDeleted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PackageStored => "package.stored",
            Self::PackageQuarantined => "package.quarantined",
            Self::PackageDeleted => "package.deleted",
        }
    }
}

/// The fields every event starts with.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<B> {
    pub schema_version: u32,
    /// Unique per event; also the broker message id, for consumer de-duplication.
    pub event_id: Uuid,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub package_id: Uuid,
    #[serde(flatten)]
    pub body: B,
}

/// An event body: its type is fixed by what it is.
pub trait EventBody: Serialize {
    const TYPE: EventType;
}

/// The body of `package.stored`.
#[derive(Debug, Clone, Serialize)]
pub struct PackageStored<'a> {
    pub user_id: &'a str,
    pub data_category: &'a str,
    pub content_type: &'a str,
    /// The type sniffed from the content's magic bytes, when recognizable.
    pub sniffed_content_type: Option<&'a str>,
    pub size_bytes: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    pub storage_uri: &'a str,
    pub encryption_key_id: &'a str,
    pub consent_entry_id: Uuid,
    pub scan: ScanSummary<'a>,
}

impl EventBody for PackageStored<'_> {
    const TYPE: EventType = EventType::PackageStored;
}

/// What the malware scan concluded, in `package.stored`.
#[derive(Debug, Clone, Serialize)]
pub struct ScanSummary<'a> {
    /// `clean`, `not_scanned` or `too_large_admitted`.
    pub status: ScanStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// The body of `package.quarantined`.
#[derive(Debug, Clone, Serialize)]
pub struct PackageQuarantined<'a> {
    pub user_id: &'a str,
    pub data_category: &'a str,
    pub size_bytes: u64,
    pub sha256: String,
    /// The scanner's name for what it found.
    pub signature: &'a str,
}

impl EventBody for PackageQuarantined<'_> {
    const TYPE: EventType = EventType::PackageQuarantined;
}

/// Why a package was erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionReason {
    /// The owner asked.
    UserRequest,
    /// The data category's retention limit ran out.
    RetentionExpired,
}

impl DeletionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRequest => "user_request",
            Self::RetentionExpired => "retention_expired",
        }
    }
}

/// The body of `package.deleted`.
#[derive(Debug, Clone, Serialize)]
pub struct PackageDeleted<'a> {
    pub user_id: &'a str,
    /// Either way, everything derived from the package must go.
    pub reason: DeletionReason,
}

impl EventBody for PackageDeleted<'_> {
    const TYPE: EventType = EventType::PackageDeleted;
}

/// The one way an event becomes an outbox message: a fresh event id, the envelope, the body.
pub fn outbox_message<B: EventBody>(
    package_id: Uuid,
    occurred_at: DateTime<Utc>,
    body: B,
) -> Result<OutboxMessage, PortError> {
    let event = Envelope {
        schema_version: SCHEMA_VERSION,
        event_id: Uuid::now_v7(),
        event_type: B::TYPE,
        occurred_at,
        package_id,
        body,
    };
    Ok(OutboxMessage {
        id: event.event_id,
        event_type: B::TYPE.as_str().to_owned(),
        schema_version: SCHEMA_VERSION,
        aggregate_id: package_id,
        payload: serde_json::to_value(&event).map_err(|e| PortError::generic("event", e))?,
        created_at: occurred_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_and_the_attributes_agree() {
        let package = Uuid::now_v7();
        let message = outbox_message(
            package,
            Utc::now(),
            PackageDeleted {
                user_id: "alice",
                reason: DeletionReason::RetentionExpired,
            },
        )
        .unwrap();
        let p = &message.payload;
        assert_eq!(p["event_type"], "package.deleted");
        assert_eq!(p["reason"], "retention_expired");
        assert_eq!(p["package_id"], package.to_string());
        assert_eq!(p["event_id"], message.id.to_string());
        let attributes: std::collections::BTreeMap<_, _> = message.attributes().into_iter().collect();
        assert_eq!(attributes["event_type"], p["event_type"].as_str().unwrap());
        assert_eq!(attributes["event_id"], p["event_id"].as_str().unwrap());
        assert_eq!(attributes["package_id"], p["package_id"].as_str().unwrap());
        assert_eq!(attributes["schema_version"], p["schema_version"].to_string());
    }
}
