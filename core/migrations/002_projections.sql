-- Schema 2: projections derived from the documents, so listing a caseload or
-- searching notes never loads every document. Rebuilt from `documents` when a
-- database is migrated from schema 1.
CREATE TABLE families (
    id                 TEXT PRIMARY KEY NOT NULL,
    name               TEXT NOT NULL,
    status             TEXT NOT NULL,
    key_worker         TEXT,
    members            INTEGER NOT NULL,
    notes              INTEGER NOT NULL,
    safeguarding_flags INTEGER NOT NULL,
    last_activity      TEXT NOT NULL
) STRICT;
CREATE INDEX families_by_name ON families(name COLLATE NOCASE);

CREATE TABLE notes (
    seq        INTEGER PRIMARY KEY,
    family_id  TEXT NOT NULL,
    id         TEXT NOT NULL,
    author     TEXT NOT NULL,
    category   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    text       TEXT NOT NULL,
    UNIQUE (family_id, id)
) STRICT;

CREATE VIRTUAL TABLE notes_fts USING fts5(
    text, content = 'notes', content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts(rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER notes_ad AFTER DELETE ON notes BEGIN
    INSERT INTO notes_fts(notes_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE TRIGGER notes_au AFTER UPDATE OF text ON notes BEGIN
    INSERT INTO notes_fts(notes_fts, rowid, text) VALUES ('delete', old.seq, old.text);
    INSERT INTO notes_fts(rowid, text) VALUES (new.seq, new.text);
END;

CREATE TABLE family_days (
    id       TEXT PRIMARY KEY NOT NULL,
    prison   TEXT NOT NULL,
    date     TEXT NOT NULL,
    capacity INTEGER,
    families INTEGER NOT NULL,
    adults   INTEGER NOT NULL,
    children INTEGER NOT NULL
) STRICT;

CREATE TABLE conflicts (
    doc_id   TEXT NOT NULL,
    doc_type TEXT NOT NULL,
    path     TEXT NOT NULL,
    doc_values TEXT NOT NULL,    -- JSON array of {value, device}
    PRIMARY KEY (doc_id, path)
) STRICT;
