-- Schema 11: every revocation, in order, for running relays to act on.
-- `linkbook-server device revoke` runs in another process than the relay
-- that holds the device's open WebSockets; the relay polls this log
-- (revocation.rs) and cuts them. A trigger, so every path that revokes (the
-- CLI today, a console later, a hand-run UPDATE) is logged the same way, and
-- the poll is a range scan over revocations only, never over the audit.
CREATE TABLE revocations (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    at        TEXT NOT NULL
) STRICT;
CREATE TRIGGER devices_revoked AFTER UPDATE OF revoked_at ON devices
    WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
BEGIN
    INSERT INTO revocations (device_id, at) VALUES (NEW.id, NEW.revoked_at);
END;
