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

-- The sequencer: one row whose row lock serializes appends across processes and whose size
-- hands out gap-free indices (taken in the same transaction that inserts the entries, so a
-- rollback returns them).
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

-- The log proper: one leaf per index. Only commitments live here, so it never needs to
-- change for erasure.
CREATE TABLE consent_ledger (
    idx          BIGINT PRIMARY KEY CHECK (idx >= 0),
    id           UUID NOT NULL UNIQUE,
    leaf_hash    BYTEA NOT NULL CHECK (length(leaf_hash) = 32),
    recorded_at  TIMESTAMPTZ NOT NULL
);

-- Entry bodies. Erasure may delete a body, but only one whose redaction is on record. No
-- foreign key to consent_ledger: the append writes both in one transaction, the audit checks
-- that they agree, and a per-row key check would dominate the cost of a large batch.
CREATE TABLE consent_records (
    id           UUID PRIMARY KEY,
    idx          BIGINT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    consent_id   UUID NOT NULL,
    event_type   TEXT NOT NULL CHECK (event_type IN ('given', 'updated', 'withdrawn')),
    record       JSONB NOT NULL,
    salt         BYTEA NOT NULL CHECK (length(salt) = 16)
);
CREATE INDEX consent_records_by_user ON consent_records (user_id, idx);

CREATE TABLE ledger_redactions (
    entry_id     UUID PRIMARY KEY REFERENCES consent_ledger (id),
    redacted_at  TIMESTAMPTZ NOT NULL
);

CREATE FUNCTION udim_refuse_unredacted_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_redactions WHERE entry_id = OLD.id) THEN
        RAISE EXCEPTION 'udim: DELETE on consent_records is refused unless the entry is redacted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;

-- Every complete aligned subtree of the Merkle tree, level 0 being the leaves: proofs for any
-- entry need O(log n) of these.
CREATE TABLE ledger_nodes (
    level  SMALLINT NOT NULL CHECK (level >= 0 AND level < 64),
    idx    BIGINT NOT NULL CHECK (idx >= 0),
    hash   BYTEA NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Every signed checkpoint, one per appended batch.
CREATE TABLE ledger_checkpoints (
    size        BIGINT PRIMARY KEY CHECK (size > 0),
    root        BYTEA NOT NULL CHECK (length(root) = 32),
    note        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE OR DELETE ON consent_ledger
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER consent_ledger_not_truncated BEFORE TRUNCATE ON consent_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER consent_records_not_updated BEFORE UPDATE ON consent_records
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER consent_records_deleted_only_when_redacted BEFORE DELETE ON consent_records
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_unredacted_delete();
CREATE TRIGGER consent_records_not_truncated BEFORE TRUNCATE ON consent_records
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_redactions_append_only BEFORE UPDATE OR DELETE ON ledger_redactions
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_redactions_not_truncated BEFORE TRUNCATE ON ledger_redactions
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_nodes_append_only BEFORE UPDATE OR DELETE ON ledger_nodes
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_nodes_not_truncated BEFORE TRUNCATE ON ledger_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION udim_refuse_change();
CREATE TRIGGER ledger_checkpoints_not_truncated BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION udim_refuse_change();

CREATE TABLE packages (
    id                     UUID PRIMARY KEY,
    user_id                TEXT NOT NULL REFERENCES users (id),
    consent_entry_id       UUID NOT NULL,
    data_category          TEXT NOT NULL,
    original_name          TEXT NOT NULL,
    declared_content_type  TEXT NOT NULL,
    sniffed_content_type   TEXT,
    idempotency_key        TEXT,
    status                 TEXT NOT NULL CHECK (status IN
                               ('receiving', 'scanning', 'stored', 'quarantined', 'rejected', 'deleted')),
    staging_key            TEXT NOT NULL,
    object_key             TEXT,
    storage_uri            TEXT,
    size_bytes             BIGINT CHECK (size_bytes >= 0),
    sha256                 BYTEA CHECK (length(sha256) = 32),
    encryption_key_id      TEXT,
    wrapped_key            BYTEA,
    scan_status            TEXT CHECK (scan_status IN ('clean', 'not_scanned', 'too_large_admitted', 'infected')),
    scan_detail            TEXT,
    metadata               JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    -- A stored package always has its object and key: no `stored` row without an object.
    CHECK (status <> 'stored' OR (object_key IS NOT NULL AND storage_uri IS NOT NULL
        AND size_bytes IS NOT NULL AND sha256 IS NOT NULL
        AND encryption_key_id IS NOT NULL AND wrapped_key IS NOT NULL))
);
CREATE INDEX packages_by_user ON packages (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX packages_idempotency ON packages (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX packages_metadata ON packages USING GIN (metadata);
CREATE INDEX packages_in_flight ON packages (updated_at) WHERE status IN ('receiving', 'scanning');

-- Every downstream read: who read which package, for what purpose, which bytes, when.
CREATE TABLE package_reads (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    package_id   UUID NOT NULL,
    reader       TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    range_start  BIGINT,
    range_end    BIGINT,
    read_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX package_reads_by_package ON package_reads (package_id, read_at);

-- Resumable (tus) uploads in progress, and their stored (encrypted) chunks.
CREATE TABLE tus_uploads (
    id             UUID PRIMARY KEY,
    user_id        TEXT NOT NULL,
    data_category  TEXT NOT NULL,
    filename       TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    metadata       JSONB NOT NULL,
    length         BIGINT NOT NULL CHECK (length >= 0),
    upload_offset  BIGINT NOT NULL CHECK (upload_offset >= 0 AND upload_offset <= length),
    key_id         TEXT NOT NULL,
    wrapped_key    BYTEA NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    lock_token     UUID,
    locked_until   TIMESTAMPTZ,
    package_id     UUID
);
CREATE INDEX tus_uploads_expiry ON tus_uploads (expires_at) WHERE package_id IS NULL;

CREATE TABLE tus_chunks (
    upload_id     UUID NOT NULL,
    chunk_offset  BIGINT NOT NULL,
    length        BIGINT NOT NULL,
    object_key    TEXT NOT NULL,
    PRIMARY KEY (upload_id, chunk_offset)
);

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

-- The role the service should run as (GRANT udim_service TO <login role>): it may read and
-- append to the ledger but holds no UPDATE, DELETE or TRUNCATE on it, so the triggers above
-- are a second wall, not the only one. Creating a role needs CREATEROLE; where the migrating
-- user lacks it, the DBA creates the role and these grants by hand.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'udim_service') THEN
        CREATE ROLE udim_service NOLOGIN;
    END IF;
    GRANT SELECT, INSERT ON consent_ledger, ledger_nodes, ledger_checkpoints, ledger_redactions TO udim_service;
    GRANT SELECT, INSERT, DELETE ON consent_records TO udim_service;
    GRANT SELECT, UPDATE ON ledger_head TO udim_service;
    GRANT SELECT, INSERT, UPDATE, DELETE ON users, packages, outbox TO udim_service;
    GRANT SELECT, INSERT ON package_reads TO udim_service;
    GRANT SELECT, INSERT, UPDATE, DELETE ON tus_uploads, tus_chunks TO udim_service;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'udim: no privilege to create role udim_service; create it and its grants by hand';
END
$$;
