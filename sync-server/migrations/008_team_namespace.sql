-- Schema 8: documents namespaced per team (issue 11, finding 6). A document
-- is (team, id): team B sending changes for an id team A holds creates team
-- B's own document, and nothing of team A is looked at for team B's
-- connections, so an id tells nothing across teams. Every table keyed by a
-- document id gains the team in its key. Existing rows already carry their
-- team (sync states take their device's).
CREATE TABLE documents_new (
    id           TEXT NOT NULL,
    team         TEXT NOT NULL,
    snapshot     BLOB,
    change_count INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    seq          INTEGER NOT NULL DEFAULT 0,
    last_device  TEXT,
    PRIMARY KEY (team, id)
) STRICT;
INSERT INTO documents_new (id, team, snapshot, change_count, created_at, seq, last_device)
    SELECT id, team, snapshot, change_count, created_at, seq, last_device FROM documents;

CREATE TABLE changes_new (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    team   TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    data   BLOB NOT NULL,
    FOREIGN KEY (team, doc_id) REFERENCES documents_new(team, id) ON DELETE CASCADE
) STRICT;
INSERT INTO changes_new (seq, team, doc_id, data)
    SELECT c.seq, d.team, c.doc_id, c.data FROM changes c JOIN documents d ON d.id = c.doc_id;

CREATE TABLE sync_states_new (
    team      TEXT NOT NULL,
    doc_id    TEXT NOT NULL,
    device_id TEXT NOT NULL,
    state     BLOB NOT NULL,
    PRIMARY KEY (team, doc_id, device_id)
) STRICT;
INSERT OR IGNORE INTO sync_states_new (team, doc_id, device_id, state)
    SELECT coalesce((SELECT team FROM devices WHERE id = s.device_id),
                    (SELECT team FROM documents WHERE id = s.doc_id)),
           s.doc_id, s.device_id, s.state
    FROM sync_states s
    WHERE coalesce((SELECT team FROM devices WHERE id = s.device_id),
                   (SELECT team FROM documents WHERE id = s.doc_id)) IS NOT NULL;

CREATE TABLE purged_new (
    doc_id    TEXT NOT NULL,
    team      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    purged_at TEXT NOT NULL,
    PRIMARY KEY (team, doc_id)
) STRICT;
INSERT INTO purged_new (doc_id, team, reason, purged_at)
    SELECT doc_id, team, reason, purged_at FROM purged;

-- The change cursor must never go back: compaction deletes changes, so the
-- highest seq ever handed out may be in no row. Carried over explicitly.
CREATE TEMP TABLE cursor_carry AS
    SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0),
               coalesce((SELECT max(seq) FROM documents), 0),
               coalesce((SELECT max(seq) FROM changes), 0)) AS seq;

DROP TABLE changes;
DROP TABLE sync_states;
DROP TABLE purged;
DROP TABLE documents;
ALTER TABLE documents_new RENAME TO documents;
ALTER TABLE changes_new RENAME TO changes;
ALTER TABLE sync_states_new RENAME TO sync_states;
ALTER TABLE purged_new RENAME TO purged;

DELETE FROM sqlite_sequence WHERE name IN ('changes', 'changes_new');
INSERT INTO sqlite_sequence (name, seq) SELECT 'changes', seq FROM cursor_carry;
DROP TABLE cursor_carry;

CREATE INDEX documents_by_team_seq ON documents(team, seq);
-- Which teams hold an id: the cross-team audit and the admin commands.
CREATE INDEX documents_by_id ON documents(id);
CREATE INDEX changes_by_doc ON changes(team, doc_id, seq);
CREATE INDEX purged_by_team ON purged(team);

-- The team an audit record about a document belongs to, where the relay
-- knows it (NULL on older rows: a device's record takes its device's team).
ALTER TABLE audit ADD COLUMN team TEXT;
