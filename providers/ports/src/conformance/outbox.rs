//! The outbox suite ([`Outbox`]), fed through the package store as the service feeds it.

use std::time::Duration as Lease;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{event, new_package, now, stored_object, user};
use crate::metadata::{Outbox, OutboxEntry, OutboxMessage, PackageStore};

/// How many outbox rows (newest first) are read back to find the suite's own.
const WINDOW: u32 = 10_000;
/// Claims take every due message up to this many: the suite looks only at its own.
const ALL: u32 = 10_000;

/// Outbox: leases, attempts, order, retries and pruning.
///
/// Messages get in as in the service: through [`PackageStore::mark_stored`],
/// [`PackageStore::mark_quarantined`] and [`PackageStore::mark_deleted`], with aggregates of
/// the suite's own. Checks:
/// - `claim_due` hands out due messages oldest first, counting an attempt each time, and
///   never one while an earlier unsent message of its aggregate exists;
/// - a leased message is not handed out again until its lease runs out, then it is;
/// - `give_back` ends the lease without counting the claim: the message is due again at once,
///   with its attempts as before the claim and the reason recorded;
/// - `mark_sent` ends the lease for good; `mark_failed` ends it, records the error and holds
///   the message (and its aggregate's later ones) until the next attempt is due;
/// - `limit` caps a claim, and successive claims continue oldest first;
/// - `list` shows messages newest first, only unsent ones when `pending_only`, with their
///   delivery state;
/// - `prune_sent` deletes only messages sent before the cutoff; unsent ones stay, however old;
/// - an erasure while a package's event is being published keeps that event, so
///   `package.deleted` still waits behind it; a failed publish of it then drops it, while a
///   failed `package.deleted` is kept.
///
/// Claims lease every due message in the store, the suite's or not, for a minute (times are
/// passed in, so the suite never waits): run it where no relay drains the same outbox.
pub async fn outbox(store: &dyn PackageStore, outbox: &dyn Outbox) {
    let owner = user("outbox");
    store.ensure_user(&owner).await.expect("ensure_user");
    let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
    let x1 = via_stored(store, &owner, x, now()).await;
    let y1 = via_quarantined(store, &owner, y).await;
    let x2 = via_deleted(store, &owner, x).await;
    let mine = [x1.id, y1.id, x2.id];
    let lease = Lease::from_secs(60);
    // All three are due: their first attempt is due when they are created.
    let t = now() + Duration::seconds(1);

    let claimed = claim(outbox, &mine, t, ALL).await;
    assert_eq!(
        ids(&claimed),
        [x1.id, y1.id],
        "claim_due hands out due messages oldest first, and none while an earlier message of its aggregate is unsent"
    );
    assert_eq!(
        claimed[0].message.payload, x1.payload,
        "a claimed message carries its payload"
    );
    assert_eq!(
        (
            &claimed[0].message.event_type,
            claimed[0].message.aggregate_id,
            claimed[0].message.schema_version,
            claimed[0].message.created_at
        ),
        (&x1.event_type, x1.aggregate_id, x1.schema_version, x1.created_at),
        "a claimed message reads back unchanged"
    );
    assert_attempts(&claimed, 1, "a first claim counts the first attempt");
    assert!(
        claim(outbox, &mine, t, ALL).await.is_empty(),
        "a leased message is not handed out again while its lease runs"
    );
    assert!(
        claim(outbox, &mine, t + Duration::seconds(59), ALL).await.is_empty(),
        "a leased message is not handed out again while its lease runs"
    );

    let t2 = t + Duration::seconds(61);
    let reclaimed = claim(outbox, &mine, t2, ALL).await;
    assert_eq!(
        ids(&reclaimed),
        [x1.id, y1.id],
        "a message whose lease ran out is handed out again"
    );
    assert_attempts(&reclaimed, 2, "every claim counts an attempt");

    // The first claim's lease ran out and the second claimer holds the messages: the first
    // claimer, late, ends nothing.
    let stale = &claimed[1];
    outbox.give_back(stale, "late").await.expect("give_back");
    outbox
        .mark_failed(stale, "late", t2 + Duration::hours(1))
        .await
        .expect("mark_failed");
    assert!(
        claim(outbox, &mine, t2, ALL).await.is_empty(),
        "a claim whose lease ran out and was claimed again ends nothing"
    );
    let held = listed(outbox, &[y1.id], true).await;
    assert_eq!(
        (held[0].attempts, held[0].last_error.as_deref()),
        (2, None),
        "nor changes the attempts or the error"
    );

    outbox
        .give_back(&reclaimed[1], "not attempted")
        .await
        .expect("give_back");
    // The first claimer, later still, finds the message given back (not leased): still nothing.
    outbox.give_back(stale, "later still").await.expect("give_back");
    let given_back = claim(outbox, &mine, t2, ALL).await;
    assert_eq!(ids(&given_back), [y1.id], "a message given back is due again at once");
    assert_attempts(&given_back, 2, "a claim given back is not counted as an attempt");
    assert_eq!(
        given_back[0].last_error.as_deref(),
        Some("not attempted"),
        "give_back records why"
    );

    let long_ago = long_ago();
    outbox.mark_sent(y1.id, long_ago).await.expect("mark_sent");
    let retry_at = t + Duration::hours(1);
    outbox
        .mark_failed(&reclaimed[0], "broker unavailable", retry_at)
        .await
        .expect("mark_failed");
    assert!(
        claim(outbox, &mine, t2 + Duration::seconds(1), ALL).await.is_empty(),
        "a sent message is never handed out again; a failed one waits for its next attempt, and its aggregate's later ones wait behind it"
    );

    let pending = listed(outbox, &mine, true).await;
    assert_eq!(
        ids(&pending),
        [x2.id, x1.id],
        "list(pending_only) lists unsent messages, newest first"
    );
    let failed = &pending[1];
    assert_eq!(
        (
            failed.attempts,
            failed.last_error.as_deref(),
            failed.next_attempt_at,
            failed.sent_at
        ),
        (2, Some("broker unavailable"), retry_at, None),
        "a failed message keeps its attempts and error and is rescheduled"
    );
    let everything = listed(outbox, &mine, false).await;
    assert_eq!(
        ids(&everything),
        [x2.id, y1.id, x1.id],
        "list lists sent and unsent messages, newest first"
    );
    assert_eq!(everything[1].sent_at, Some(long_ago), "a sent message records when");

    let retried = claim(outbox, &mine, retry_at, ALL).await;
    assert_eq!(
        ids(&retried),
        [x1.id],
        "a failed message is handed out again once its next attempt is due; its aggregate's next one still waits"
    );
    assert_attempts(&retried, 3, "a retry counts an attempt");
    outbox
        .mark_sent(x1.id, retry_at + Duration::seconds(1))
        .await
        .expect("mark_sent");
    let next = claim(outbox, &mine, retry_at + Duration::seconds(2), ALL).await;
    assert_eq!(
        ids(&next),
        [x2.id],
        "the aggregate's next message follows once the earlier one is sent"
    );
    assert_attempts(&next, 1, "a first claim counts the first attempt");
    outbox
        .mark_sent(x2.id, long_ago + Duration::seconds(2))
        .await
        .expect("mark_sent");

    // Limits: three due messages of three aggregates, claimed two at a time.
    let mut zs = Vec::new();
    for _ in 0..3 {
        zs.push(via_stored(store, &owner, Uuid::new_v4(), now()).await);
    }
    let z_ids: Vec<Uuid> = zs.iter().map(|z| z.id).collect();
    let at = retry_at + Duration::seconds(10);
    let mut collected = Vec::new();
    for round in 0.. {
        let batch = outbox.claim_due(at, lease, 2).await.expect("claim_due");
        assert!(
            batch.len() <= 2,
            "claim_due returned {} messages for a limit of 2",
            batch.len()
        );
        if round == 0 {
            assert_eq!(batch.len(), 2, "claim_due fills its limit while messages are due");
        }
        if batch.is_empty() {
            break;
        }
        collected.extend(batch.iter().map(|e| e.message.id).filter(|id| z_ids.contains(id)));
        assert!(round < 1000, "claim_due kept handing out messages");
    }
    assert_eq!(
        collected, z_ids,
        "successive claims hand out every due message once, oldest first"
    );
    for z in &zs {
        outbox
            .mark_sent(z.id, retry_at + Duration::seconds(11))
            .await
            .expect("mark_sent");
    }

    // Pruning: y1 was sent before the cutoff, x2 just after it, x1 and the zs long after; an
    // unsent message created long before the cutoff stays too.
    let unsent = via_stored(store, &owner, Uuid::new_v4(), long_ago - Duration::days(1)).await;
    let cutoff = long_ago + Duration::seconds(1);
    let pruned = outbox.prune_sent(cutoff).await.expect("prune_sent");
    assert!(
        pruned >= 1,
        "prune_sent deleted {pruned} messages, not the one sent before the cutoff"
    );
    let everyone: Vec<Uuid> = mine.iter().chain(&z_ids).chain([&unsent.id]).copied().collect();
    let left = ids(&listed(outbox, &everyone, false).await);
    assert!(
        !left.contains(&y1.id),
        "prune_sent deletes a message sent before the cutoff"
    );
    assert!(
        left.contains(&x2.id) && left.contains(&x1.id) && z_ids.iter().all(|z| left.contains(z)),
        "prune_sent keeps messages sent after the cutoff"
    );
    assert!(
        left.contains(&unsent.id),
        "prune_sent keeps unsent messages, however old"
    );
    erasure_during_a_publish(store, outbox, &owner).await;
}

/// A package erased while a relay is publishing its `package.stored`: the event in flight
/// stays and `package.deleted` waits behind it, so consumers never hear of the deletion
/// first; when that publish fails (`mark_failed`) or is given back, the event is dropped, not
/// retried; a failed or given-back publish of `package.deleted` itself is retried.
async fn erasure_during_a_publish(store: &dyn PackageStore, outbox: &dyn Outbox, owner: &str) {
    for given_back in [false, true] {
        let end = async |entry: &OutboxEntry, at: DateTime<Utc>| {
            if given_back {
                outbox.give_back(entry, "broker down").await.expect("give_back");
            } else {
                outbox.mark_failed(entry, "broker down", at).await.expect("mark_failed");
            }
        };
        let package = new_package(owner, "documents", now());
        store.create_package(&package).await.expect("create_package");
        let stored = event("package.stored", package.id);
        store
            .mark_stored(owner, package.id, &stored_object(package.id, now()), &stored)
            .await
            .expect("mark_stored");
        let t = now() + Duration::seconds(1);
        let claimed = claim(outbox, &[stored.id], t, ALL).await;
        assert_eq!(ids(&claimed), [stored.id]);
        let deleted = event("package.deleted", package.id);
        store
            .mark_deleted(owner, package.id, &deleted)
            .await
            .expect("mark_deleted");
        let kept = listed(outbox, &[stored.id], true).await;
        assert_eq!(ids(&kept), [stored.id], "the event being published is kept");
        assert_eq!(
            kept[0].message.payload, stored.payload,
            "whole: if its relay dies it goes out again as it was, before package.deleted"
        );
        assert!(
            claim(outbox, &[stored.id, deleted.id], t, ALL).await.is_empty(),
            "package.deleted waits behind the event being published"
        );
        end(&claimed[0], t).await;
        assert!(
            listed(outbox, &[stored.id], false).await.is_empty(),
            "a publish of an erased package's event that did not go through drops it (given back: {given_back})"
        );
        let claimed = claim(outbox, &[stored.id, deleted.id], t + Duration::seconds(1), ALL).await;
        assert_eq!(ids(&claimed), [deleted.id], "then package.deleted goes");
        end(&claimed[0], t).await;
        assert_eq!(
            ids(&listed(outbox, &[deleted.id], true).await),
            [deleted.id],
            "a publish of package.deleted that did not go through keeps it for the next attempt (given back: {given_back})"
        );
    }
}

/// A second in 2000, different for every run, to send messages at: pruning before it
/// touches no other run's messages.
fn long_ago() -> DateTime<Utc> {
    let offset = i64::from(u32::from_be_bytes(Uuid::new_v4().as_bytes()[..4].try_into().unwrap()) % 31_536_000);
    DateTime::from_timestamp(946_684_800 + offset, 0).expect("a time in 2000")
}

fn ids(entries: &[OutboxEntry]) -> Vec<Uuid> {
    entries.iter().map(|e| e.message.id).collect()
}

fn assert_attempts(entries: &[OutboxEntry], attempts: u32, what: &str) {
    for entry in entries {
        assert_eq!(entry.attempts, attempts, "{what}");
    }
}

/// Claims due messages at `now` for a minute; returns those in `mine`, in the claim's order.
async fn claim(outbox: &dyn Outbox, mine: &[Uuid], now: DateTime<Utc>, limit: u32) -> Vec<OutboxEntry> {
    let claimed = outbox
        .claim_due(now, Lease::from_secs(60), limit)
        .await
        .expect("claim_due");
    claimed.into_iter().filter(|e| mine.contains(&e.message.id)).collect()
}

async fn listed(outbox: &dyn Outbox, mine: &[Uuid], pending_only: bool) -> Vec<OutboxEntry> {
    outbox
        .list(pending_only, WINDOW)
        .await
        .expect("list the outbox")
        .into_iter()
        .filter(|e| mine.contains(&e.message.id))
        .collect()
}

/// An event about `aggregate`, written by storing a new package.
async fn via_stored(
    store: &dyn PackageStore,
    owner: &str,
    aggregate: Uuid,
    created_at: DateTime<Utc>,
) -> OutboxMessage {
    let package = new_package(owner, "documents", now());
    store.create_package(&package).await.expect("create_package");
    let message = OutboxMessage {
        created_at,
        ..event("package.stored", aggregate)
    };
    store
        .mark_stored(owner, package.id, &stored_object(package.id, now()), &message)
        .await
        .expect("mark_stored");
    message
}

/// An event about `aggregate`, written by quarantining a new package.
async fn via_quarantined(store: &dyn PackageStore, owner: &str, aggregate: Uuid) -> OutboxMessage {
    let package = new_package(owner, "documents", now());
    store.create_package(&package).await.expect("create_package");
    let message = event("package.quarantined", aggregate);
    store
        .mark_quarantined(owner, package.id, "Conformance.Test-Signature", &message)
        .await
        .expect("mark_quarantined");
    message
}

/// An event about `aggregate`, written by erasing a new stored package (which drops that
/// package's own unsent event).
async fn via_deleted(store: &dyn PackageStore, owner: &str, aggregate: Uuid) -> OutboxMessage {
    let package = new_package(owner, "documents", now());
    store.create_package(&package).await.expect("create_package");
    store
        .mark_stored(
            owner,
            package.id,
            &stored_object(package.id, now()),
            &event("package.stored", package.id),
        )
        .await
        .expect("mark_stored");
    let message = event("package.deleted", aggregate);
    store
        .mark_deleted(owner, package.id, &message)
        .await
        .expect("mark_deleted");
    message
}
