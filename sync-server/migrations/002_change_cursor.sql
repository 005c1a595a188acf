-- Schema 2: a change cursor per document, so a device asks "what changed for
-- my team since cursor N" and a reconnect's work follows what changed, not
-- what exists. `seq` is the `changes.seq` of the document's latest append.
ALTER TABLE documents ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE documents SET seq = coalesce((SELECT max(seq) FROM changes WHERE doc_id = documents.id), 0);
CREATE INDEX documents_by_team_seq ON documents(team, seq);
