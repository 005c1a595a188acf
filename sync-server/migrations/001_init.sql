-- Linkbook relay storage, schema 1.
CREATE TABLE devices (
    id          TEXT PRIMARY KEY NOT NULL,   -- also the device's protocol peer id
    team        TEXT NOT NULL,
    worker      TEXT NOT NULL,
    device_name TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,        -- sha256 of the 256-bit token; the token is never stored
    enrolled_at TEXT NOT NULL,
    revoked_at  TEXT,
    last_sync_at TEXT
) STRICT;

CREATE TABLE enrolment_codes (
    code_hash  BLOB PRIMARY KEY NOT NULL,    -- sha256 of the code
    team       TEXT NOT NULL,
    worker     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    device_id  TEXT
) STRICT;

-- A document belongs to the team whose device first pushed it.
CREATE TABLE documents (
    id           TEXT PRIMARY KEY NOT NULL,
    team         TEXT NOT NULL,
    snapshot     BLOB,                       -- Automerge save(); NULL until first compaction
    change_count INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL
) STRICT;
CREATE INDEX documents_by_team ON documents(team);

CREATE TABLE changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    data   BLOB NOT NULL
) STRICT;
CREATE INDEX changes_by_doc ON changes(doc_id, seq);

-- Automerge sync::State (shared heads) per document and device.
CREATE TABLE sync_states (
    doc_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    state     BLOB NOT NULL,
    PRIMARY KEY (doc_id, device_id)
) STRICT;

-- Append-only: who did what, when. No record content.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    device_id TEXT,
    worker    TEXT,
    action    TEXT NOT NULL,
    doc_id    TEXT
) STRICT;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
