-- Each outbox message carries its schema version explicitly, so notifiers send it as an
-- attribute without reading it back out of the payload.
ALTER TABLE outbox ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 1;
