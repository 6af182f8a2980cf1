-- Erasures are consent-ledger entries too (event type `erased`), and a tombstone remembers the
-- entry that recorded it, so an erasure whose recording failed is recorded by the sweeper.
-- NOT VALID: every existing row met the narrower check this one replaces, so scanning them
-- again (under a lock that stops the replicas still serving) would prove nothing new.
ALTER TABLE consent_records DROP CONSTRAINT consent_records_event_type_check;
ALTER TABLE consent_records ADD CONSTRAINT consent_records_event_type_check
    CHECK (event_type IN ('given', 'updated', 'withdrawn', 'erased')) NOT VALID;

ALTER TABLE packages ADD COLUMN erasure_entry UUID;
-- Who records an erasure: the request that erased (claimed in the erasure's own transaction)
-- or, once its claim has run out, a sweeper; concurrent recorders never take one package both.
ALTER TABLE packages ADD COLUMN erasure_claimed_until TIMESTAMPTZ;
-- Tombstones from before erasures were recorded: the nil id says so, and keeps the sweeper
-- from recording them now, under today's date.
UPDATE packages SET erasure_entry = '00000000-0000-0000-0000-000000000000' WHERE status = 'deleted';
CREATE INDEX packages_unrecorded_erasures ON packages (updated_at) WHERE status = 'deleted' AND erasure_entry IS NULL;

-- The fence a person's erasure raises: each erasure of everything counts the user's epoch up,
-- a package takes the epoch current at its creation, and one whose epoch is no longer current
-- can be neither stored nor quarantined, even if its upload was finishing while the erasure
-- ran. A counter, not a time, so the replicas' clocks play no part.
ALTER TABLE users ADD COLUMN erasure_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN erasure_epoch BIGINT NOT NULL DEFAULT 0;
