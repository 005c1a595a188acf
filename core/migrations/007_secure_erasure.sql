-- Schema 7: erasure that leaves nothing (issue 12). An external-content FTS5
-- 'delete' only appends a tombstone and keeps the deleted note's terms, with
-- their positions, in notes_fts_data; with FTS5's secure-delete option
-- (persistent, in notes_fts_config) a delete removes them from the index.
-- The rebuild drops what deletes before this schema left behind; SQLite's
-- secure_delete (set on every connection) zeroes the rows it frees.
INSERT INTO notes_fts(notes_fts, rank) VALUES ('secure-delete', 1);
INSERT INTO notes_fts(notes_fts) VALUES ('rebuild');
-- Reads of families this device no longer holds (purged or dropped before
-- this schema) would only be uploaded as unknown ids.
DELETE FROM read_log WHERE family_id NOT IN (SELECT id FROM families);
