-- Linkbook device store, schema 1: the documents and their changes.
-- Each Automerge document is a compacted snapshot plus the changes made since,
-- appended one row per write, so a write is durable as soon as its row commits.
CREATE TABLE profile (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE documents (
    id           TEXT PRIMARY KEY NOT NULL,   -- automerge-repo document id (bs58check)
    doc_type     TEXT NOT NULL,               -- family | family_day | team_directory
    snapshot     BLOB NOT NULL,               -- Automerge save()
    version      INTEGER NOT NULL DEFAULT 1,  -- bumped by every write: cache validation
    change_count INTEGER NOT NULL DEFAULT 0   -- rows in `changes` since the snapshot
) STRICT;

CREATE TABLE changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    data   BLOB NOT NULL                      -- Automerge changes (save_after format)
) STRICT;
CREATE INDEX changes_by_doc ON changes(doc_id, seq);

-- Automerge sync::State per (document, peer), so a reconnect only exchanges
-- what changed.
CREATE TABLE sync_states (
    doc_id  TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    state   BLOB NOT NULL,
    PRIMARY KEY (doc_id, peer_id)
) STRICT;
