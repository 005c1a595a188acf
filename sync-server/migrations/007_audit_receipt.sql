-- Schema 7: the relay's own receipt time beside a device's claimed read
-- time (issue 11): `at` is the claim clamped to what the relay can vouch
-- for, `received_at` when the relay got it (NULL for rows before this
-- schema and for rows the relay writes itself). The index serves the
-- per-device daily quota on uploaded reads.
ALTER TABLE audit ADD COLUMN received_at TEXT;
-- The client address of a refused token or a lockout (no device to name).
ALTER TABLE audit ADD COLUMN client TEXT;
CREATE INDEX audit_reads_by_device ON audit(device_id, received_at) WHERE action = 'read';
