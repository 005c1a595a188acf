-- Schema 6: documents a sync skipped because this Linkbook cannot read them
-- (issue 11: no Linkbook type, a newer schema, over the budget). Ids and a
-- content-free reason only; the bytes are not kept. Every full sync asks the
-- relay for them again, so a later readable version (after an app update,
-- or once the relay's copy is fixed) is taken, and the row is dropped.
CREATE TABLE skipped_documents (
    doc_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    first_skipped_at TEXT NOT NULL,
    last_skipped_at TEXT NOT NULL
);
