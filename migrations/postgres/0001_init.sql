-- UDIM schema for PostgreSQL: users, the append-only consent ledger, packages, outbox.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Refuses any change to an append-only table. Grants already keep the service role from
-- UPDATE/DELETE/TRUNCATE; this trigger also stops an owner who forgets. A superuser can
-- still disable triggers: the ledger's signed checkpoints are what catch that.
CREATE FUNCTION udim_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'udim: % on append-only table % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The sequencer: one row whose update serializes appends and hands out gap-free indices
-- (the index is taken in the same transaction that inserts the entry, so a rollback
-- returns it).
CREATE TABLE ledger_head (
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    size        BIGINT NOT NULL CHECK (size >= 0)
);
INSERT INTO ledger_head (singleton, size) VALUES (TRUE, 0);

CREATE FUNCTION udim_ledger_head_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.size < OLD.size THEN
        RAISE EXCEPTION 'udim: the ledger cannot shrink (% -> %)', OLD.size, NEW.size
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_head_grows BEFORE UPDATE ON ledger_head
    FOR EACH ROW EXECUTE FUNCTION udim_ledger_head_grows();
CREATE TRIGGER ledger_head_kept BEFORE DELETE ON ledger_head
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_head_not_truncated BEFORE TRUNCATE ON ledger_head
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();

CREATE TABLE consent_ledger (
    idx          BIGINT PRIMARY KEY CHECK (idx >= 0),
    id           UUID NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    consent_id   UUID NOT NULL,
    event_type   TEXT NOT NULL CHECK (event_type IN ('given', 'updated', 'withdrawn')),
    record       JSONB NOT NULL,
    salt         BYTEA NOT NULL CHECK (length(salt) = 16),
    leaf_hash    BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
    recorded_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX consent_ledger_by_user ON consent_ledger (user_id, idx);
CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE OR DELETE ON consent_ledger
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER consent_ledger_not_truncated BEFORE TRUNCATE ON consent_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();

CREATE TABLE packages (
    id                     UUID PRIMARY KEY,
    user_id                TEXT NOT NULL REFERENCES users (id),
    consent_entry_id       UUID NOT NULL,
    data_category          TEXT NOT NULL,
    original_name          TEXT NOT NULL,
    declared_content_type  TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN
                               ('receiving', 'scanning', 'stored', 'quarantined', 'rejected', 'deleted')),
    staging_key            TEXT NOT NULL,
    object_key             TEXT,
    storage_uri            TEXT,
    size_bytes             BIGINT CHECK (size_bytes >= 0),
    sha256                 BYTEA CHECK (length(sha256) = 32),
    encryption_key_id      TEXT,
    wrapped_key            BYTEA,
    metadata               JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    -- A stored package always has its object and key: no `stored` row without an object.
    CHECK (status <> 'stored' OR (object_key IS NOT NULL AND storage_uri IS NOT NULL
        AND size_bytes IS NOT NULL AND sha256 IS NOT NULL
        AND encryption_key_id IS NOT NULL AND wrapped_key IS NOT NULL))
);
CREATE INDEX packages_by_user ON packages (user_id, created_at DESC, id DESC);
CREATE INDEX packages_metadata ON packages USING GIN (metadata);
CREATE INDEX packages_in_flight ON packages (updated_at) WHERE status IN ('receiving', 'scanning');

CREATE TABLE outbox (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               UUID NOT NULL UNIQUE,
    event_type       TEXT NOT NULL,
    aggregate_id     UUID NOT NULL,
    payload          JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    lease_until      TIMESTAMPTZ,
    sent_at          TIMESTAMPTZ
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE sent_at IS NULL;
