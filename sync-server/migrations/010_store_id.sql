-- Schema 10: the relay's identity lives in its database, so it travels with
-- the data it describes. `store_id` (a random UUID, written by the relay when
-- it first opens the database, or adopted from an older relay's `storage-id`
-- file) names this store in every `peer` message; devices key their sync
-- states and change cursor by it, and a device meeting another id than the
-- one it last synced with drops those and sends everything again.
CREATE TABLE relay_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
