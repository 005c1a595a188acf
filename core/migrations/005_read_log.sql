-- Schema 5: reads of a case file on this device, kept until the next sync
-- uploads them to the relay's audit (who saw which family, when).
CREATE TABLE read_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    family_id TEXT NOT NULL,
    at        TEXT NOT NULL
) STRICT;
