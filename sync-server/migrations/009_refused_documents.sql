-- Schema 9: documents and changes the relay refused (issue 11: the door's
-- checks, the Automerge budget), for the administrator
-- (`linkbook-server document refused`). Ids, a reason and counts only,
-- never content. One row per (document, device, reason): a device that
-- repeats a refusal raises its count and time, it adds no rows; the total
-- is capped by refusals.rs (oldest rows go first).
CREATE TABLE refused_documents (
    doc_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    team TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (doc_id, device_id, reason)
);
CREATE INDEX refused_documents_by_time ON refused_documents(last_at);
