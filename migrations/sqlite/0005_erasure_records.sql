-- Erasures are consent-ledger entries too (event type `erased`), and a tombstone remembers the
-- entry that recorded it; see the PostgreSQL migration. SQLite cannot alter a CHECK, so
-- `consent_records` is rebuilt with the same rows, indexes and triggers.
CREATE TABLE consent_records_v5 (
    id           BLOB PRIMARY KEY,
    idx          INTEGER NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    consent_id   BLOB NOT NULL,
    event_type   TEXT NOT NULL CHECK (event_type IN ('given', 'updated', 'withdrawn', 'erased')),
    record       TEXT NOT NULL CHECK (json_valid(record)),
    salt         BLOB NOT NULL CHECK (length(salt) = 16)
);
INSERT INTO consent_records_v5 (id, idx, user_id, consent_id, event_type, record, salt)
    SELECT id, idx, user_id, consent_id, event_type, record, salt FROM consent_records;
-- Dropping a table fires none of its triggers and takes them with it.
DROP TABLE consent_records;
ALTER TABLE consent_records_v5 RENAME TO consent_records;
CREATE INDEX consent_records_by_user ON consent_records (user_id, idx);
CREATE INDEX consent_records_by_consent ON consent_records (consent_id, idx);
CREATE TRIGGER consent_records_no_update BEFORE UPDATE ON consent_records
    BEGIN SELECT RAISE(ABORT, 'udim: UPDATE on consent_records is refused'); END;
CREATE TRIGGER consent_records_delete_only_redacted BEFORE DELETE ON consent_records
    WHEN NOT EXISTS (SELECT 1 FROM ledger_redactions WHERE entry_id = OLD.id)
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on consent_records is refused unless the entry is redacted'); END;

ALTER TABLE packages ADD COLUMN erasure_entry BLOB;
ALTER TABLE packages ADD COLUMN erasure_claimed_until TEXT;
UPDATE packages SET erasure_entry = zeroblob(16) WHERE status = 'deleted';
CREATE INDEX packages_unrecorded_erasures ON packages (updated_at) WHERE status = 'deleted' AND erasure_entry IS NULL;

-- The fence a person's erasure raises: each erasure of everything counts the user's epoch up,
-- a package takes the epoch current at its creation, and one whose epoch is no longer current
-- can be neither stored nor quarantined, even if its upload was finishing while the erasure
-- ran. A counter, not a time, so the replicas' clocks play no part.
ALTER TABLE users ADD COLUMN erasure_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN erasure_epoch INTEGER NOT NULL DEFAULT 0;
