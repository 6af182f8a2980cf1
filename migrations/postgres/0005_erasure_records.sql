-- Erasures are consent-ledger entries too (event type `erased`), and a tombstone remembers the
-- entry that recorded it, so an erasure whose recording failed is recorded by the sweeper.
ALTER TABLE consent_records DROP CONSTRAINT consent_records_event_type_check;
ALTER TABLE consent_records ADD CONSTRAINT consent_records_event_type_check
    CHECK (event_type IN ('given', 'updated', 'withdrawn', 'erased'));

ALTER TABLE packages ADD COLUMN erasure_entry UUID;
-- Tombstones from before erasures were recorded: the nil id says so, and keeps the sweeper
-- from recording them now, under today's date.
UPDATE packages SET erasure_entry = '00000000-0000-0000-0000-000000000000' WHERE status = 'deleted';
CREATE INDEX packages_unrecorded_erasures ON packages (updated_at) WHERE status = 'deleted' AND erasure_entry IS NULL;
