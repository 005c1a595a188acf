-- Schema 4: documents the office purged (erasure). The device deleted them
-- and their history, and refuses them from now on (sync, import, changes),
-- so a replica that still holds one cannot bring it back.
CREATE TABLE purged (
    doc_id    TEXT PRIMARY KEY NOT NULL,
    purged_at TEXT NOT NULL
) STRICT;
