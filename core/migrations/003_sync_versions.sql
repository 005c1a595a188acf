-- Schema 3: the document version each sync state was saved at, so a sync
-- only opens the documents changed since (locally, by version; on the relay,
-- by its change cursor) instead of every document on the device.
ALTER TABLE sync_states ADD COLUMN doc_version INTEGER NOT NULL DEFAULT -1;
