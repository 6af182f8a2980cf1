-- UDIM schema for SQLite (the embedded default): the same tables as on PostgreSQL.
-- UUIDs are 16-byte BLOBs, times RFC 3339 TEXT, JSON TEXT.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

-- The sequencer row and the ledger tables; see the PostgreSQL migration for their roles.
CREATE TABLE ledger_head (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    size        INTEGER NOT NULL CHECK (size >= 0)
);
INSERT INTO ledger_head (singleton, size) VALUES (1, 0);
CREATE TRIGGER ledger_head_grows BEFORE UPDATE ON ledger_head
    WHEN NEW.size < OLD.size
    BEGIN SELECT RAISE(ABORT, 'udim: the ledger cannot shrink'); END;
CREATE TRIGGER ledger_head_kept BEFORE DELETE ON ledger_head
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on append-only table ledger_head is refused'); END;

CREATE TABLE consent_ledger (
    idx          INTEGER PRIMARY KEY CHECK (idx >= 0),
    id           BLOB NOT NULL UNIQUE,
    leaf_hash    BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    recorded_at  TEXT NOT NULL
);

CREATE TABLE consent_records (
    id           BLOB PRIMARY KEY,
    idx          INTEGER NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    consent_id   BLOB NOT NULL,
    event_type   TEXT NOT NULL CHECK (event_type IN ('given', 'updated', 'withdrawn')),
    record       TEXT NOT NULL CHECK (json_valid(record)),
    salt         BLOB NOT NULL CHECK (length(salt) = 16)
);
CREATE INDEX consent_records_by_user ON consent_records (user_id, idx);

CREATE TABLE ledger_redactions (
    entry_id     BLOB PRIMARY KEY REFERENCES consent_ledger (id),
    redacted_at  TEXT NOT NULL
);

CREATE TABLE ledger_nodes (
    level  INTEGER NOT NULL CHECK (level >= 0 AND level < 64),
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    hash   BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

CREATE TABLE ledger_checkpoints (
    size        INTEGER PRIMARY KEY CHECK (size > 0),
    root        BLOB NOT NULL CHECK (length(root) = 32),
    note        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TRIGGER consent_ledger_no_update BEFORE UPDATE ON consent_ledger
    BEGIN SELECT RAISE(ABORT, 'udim: UPDATE on append-only table consent_ledger is refused'); END;
CREATE TRIGGER consent_ledger_no_delete BEFORE DELETE ON consent_ledger
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on append-only table consent_ledger is refused'); END;
CREATE TRIGGER consent_records_no_update BEFORE UPDATE ON consent_records
    BEGIN SELECT RAISE(ABORT, 'udim: UPDATE on consent_records is refused'); END;
CREATE TRIGGER consent_records_delete_only_redacted BEFORE DELETE ON consent_records
    WHEN NOT EXISTS (SELECT 1 FROM ledger_redactions WHERE entry_id = OLD.id)
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on consent_records is refused unless the entry is redacted'); END;
CREATE TRIGGER ledger_redactions_no_update BEFORE UPDATE ON ledger_redactions
    BEGIN SELECT RAISE(ABORT, 'udim: UPDATE on append-only table ledger_redactions is refused'); END;
CREATE TRIGGER ledger_redactions_no_delete BEFORE DELETE ON ledger_redactions
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on append-only table ledger_redactions is refused'); END;
CREATE TRIGGER ledger_nodes_no_update BEFORE UPDATE ON ledger_nodes
    BEGIN SELECT RAISE(ABORT, 'udim: UPDATE on append-only table ledger_nodes is refused'); END;
CREATE TRIGGER ledger_nodes_no_delete BEFORE DELETE ON ledger_nodes
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on append-only table ledger_nodes is refused'); END;
CREATE TRIGGER ledger_checkpoints_no_update BEFORE UPDATE ON ledger_checkpoints
    BEGIN SELECT RAISE(ABORT, 'udim: UPDATE on append-only table ledger_checkpoints is refused'); END;
CREATE TRIGGER ledger_checkpoints_no_delete BEFORE DELETE ON ledger_checkpoints
    BEGIN SELECT RAISE(ABORT, 'udim: DELETE on append-only table ledger_checkpoints is refused'); END;

CREATE TABLE packages (
    id                     BLOB PRIMARY KEY,
    user_id                TEXT NOT NULL REFERENCES users (id),
    consent_entry_id       BLOB NOT NULL,
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
    size_bytes             INTEGER CHECK (size_bytes >= 0),
    sha256                 BLOB CHECK (length(sha256) = 32),
    encryption_key_id      TEXT,
    wrapped_key            BLOB,
    scan_status            TEXT CHECK (scan_status IN ('clean', 'not_scanned', 'too_large_admitted', 'infected')),
    scan_detail            TEXT,
    metadata               TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    CHECK (status <> 'stored' OR (object_key IS NOT NULL AND storage_uri IS NOT NULL
        AND size_bytes IS NOT NULL AND sha256 IS NOT NULL
        AND encryption_key_id IS NOT NULL AND wrapped_key IS NOT NULL))
);
CREATE INDEX packages_by_user ON packages (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX packages_idempotency ON packages (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX packages_in_flight ON packages (updated_at) WHERE status IN ('receiving', 'scanning');

-- Every downstream read: who read which package, for what purpose, which bytes, when.
CREATE TABLE package_reads (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    package_id   BLOB NOT NULL,
    reader       TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    range_start  INTEGER,
    range_end    INTEGER,
    read_at      TEXT NOT NULL
);
CREATE INDEX package_reads_by_package ON package_reads (package_id, read_at);

-- Resumable (tus) uploads in progress, and their stored (encrypted) chunks.
CREATE TABLE tus_uploads (
    id             BLOB PRIMARY KEY,
    user_id        TEXT NOT NULL,
    data_category  TEXT NOT NULL,
    filename       TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    length         INTEGER NOT NULL CHECK (length >= 0),
    upload_offset  INTEGER NOT NULL CHECK (upload_offset >= 0 AND upload_offset <= length),
    key_id         TEXT NOT NULL,
    wrapped_key    BLOB NOT NULL,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    lock_token     BLOB,
    locked_until   TEXT,
    package_id     BLOB
);
CREATE INDEX tus_uploads_expiry ON tus_uploads (expires_at) WHERE package_id IS NULL;

CREATE TABLE tus_chunks (
    upload_id     BLOB NOT NULL,
    chunk_offset  INTEGER NOT NULL,
    length        INTEGER NOT NULL,
    object_key    TEXT NOT NULL,
    PRIMARY KEY (upload_id, chunk_offset)
);

CREATE TABLE outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               BLOB NOT NULL UNIQUE,
    event_type       TEXT NOT NULL,
    aggregate_id     BLOB NOT NULL,
    payload          TEXT NOT NULL CHECK (json_valid(payload)),
    created_at       TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  TEXT NOT NULL,
    lease_until      TEXT,
    sent_at          TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE sent_at IS NULL;
