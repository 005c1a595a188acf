-- Schema 13: the kind of address a device last synced from (loopback,
-- private, public; never the address itself).
ALTER TABLE devices ADD COLUMN last_address_kind TEXT;
