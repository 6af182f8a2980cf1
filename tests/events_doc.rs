//! `docs/events.md` is the contract downstream consumers code against: its examples and
//! tables must name exactly the fields the service sends, and its attribute table exactly
//! the attributes every notifier sends.

use std::collections::BTreeSet;

use chrono::Utc;
use serde_json::Value;
use udim::pipeline::events::{self, DeletionReason, EventType};
use uuid::Uuid;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).expect("docs/events.md")
}

/// The text of the `### `name`` section, up to the next heading of level 2 or 3.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/events.md has no {heading}"));
    let rest = &doc[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .into_iter()
        .chain(rest.find("\n### "))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

fn json_example(section: &str) -> Value {
    let start = section.find("```json\n").expect("a json example") + "```json\n".len();
    let end = start + section[start..].find("```").expect("the example ends");
    serde_json::from_str(&section[start..end]).expect("the example is JSON")
}

/// Field names as the tables write them: `scan.status` for nested ones.
fn keys(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let name = format!("{prefix}{k}");
            if v.is_object() {
                keys(v, &format!("{name}."), out);
            } else {
                out.insert(name);
            }
        }
    }
}

/// The first column of every table row in `text`, without the backticks.
fn table_fields(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn sample(event_type: EventType) -> Value {
    let package = Uuid::now_v7();
    let message = match event_type {
        EventType::PackageStored => events::outbox_message(
            package,
            Utc::now(),
            events::PackageStored {
                user_id: "alice",
                data_category: "documents",
                content_type: "text/plain",
                sniffed_content_type: None,
                size_bytes: 1,
                sha256: "00".into(),
                storage_uri: "file:///x",
                encryption_key_id: "local:1",
                consent_entry_id: Uuid::now_v7(),
                scan: events::ScanSummary {
                    status: udim_ports::metadata::ScanStatus::Clean,
                    detail: None,
                },
            },
        ),
        EventType::PackageQuarantined => events::outbox_message(
            package,
            Utc::now(),
            events::PackageQuarantined {
                user_id: "alice",
                data_category: "documents",
                size_bytes: 68,
                sha256: "00".into(),
                signature: "Eicar",
            },
        ),
        EventType::PackageDeleted => events::outbox_message(
            package,
            Utc::now(),
            events::PackageDeleted {
                user_id: "alice",
                reason: DeletionReason::UserRequest,
            },
        ),
    };
    message.unwrap().payload
}

#[test]
fn every_event_type_is_documented_with_exactly_the_fields_it_carries() {
    let doc = doc();
    let envelope = table_fields(section(&doc, "## The envelope"));
    for event_type in EventType::ALL {
        let section = section(&doc, &format!("### `{}`", event_type.as_str()));
        let mut sent = BTreeSet::new();
        keys(&sample(event_type), "", &mut sent);
        let mut example = BTreeSet::new();
        keys(&json_example(section), "", &mut example);
        // Optional fields are left out when empty; the example shows the common case.
        let sent_or_optional: BTreeSet<String> = sent.union(&optional_in(event_type)).cloned().collect();
        assert!(
            example.is_superset(&sent) && example.is_subset(&sent_or_optional),
            "{}: the example has {example:?}, the service sends {sent:?}",
            event_type.as_str()
        );
        let documented: BTreeSet<String> = envelope.union(&table_fields(section)).cloned().collect();
        assert_eq!(documented, sent_or_optional, "{}: the tables", event_type.as_str());
    }
}

fn optional_in(event_type: EventType) -> BTreeSet<String> {
    match event_type {
        EventType::PackageStored => ["scan.detail".to_owned()].into(),
        _ => BTreeSet::new(),
    }
}

#[test]
fn the_attribute_table_names_what_every_notifier_sends() {
    let doc = doc();
    let documented = table_fields(section(&doc, "## Message attributes"));
    let message = udim_ports::conformance::message(serde_json::json!({}));
    let sent: BTreeSet<String> = message
        .attributes()
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(documented, sent);
}
