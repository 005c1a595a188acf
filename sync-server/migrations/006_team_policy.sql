-- Schema 6: each team's data-protection policy. `retention_days`: closed
-- cases are purged this many days after their closure date. `lease_days`:
-- a device that has not synced for longer locks its records until it syncs.
-- NULL: no such limit.
ALTER TABLE teams ADD COLUMN retention_days INTEGER;
ALTER TABLE teams ADD COLUMN lease_days INTEGER;
