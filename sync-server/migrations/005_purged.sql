-- Schema 5: purged documents (erasure at the office's request). Their
-- changes, snapshot and sync states are deleted; the id stays here so no
-- device can upload them again, and devices learn of the purge at sync.
-- `reason` is the administrator's words, for the audit; it is not sent to
-- devices.
CREATE TABLE purged (
    doc_id    TEXT PRIMARY KEY NOT NULL,
    team      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    purged_at TEXT NOT NULL
) STRICT;
CREATE INDEX purged_by_team ON purged(team);
