-- Schema 13: the office console's store (issue 15, storage/console.rs).
-- Staff accounts and their sessions, secrets only as hashes: the set-up
-- token and the session id as SHA-256, the password as an argon2id PHC
-- string; the TOTP seed cannot be hashed and is kept as the account's
-- bytes. Times are RFC 3339 text in UTC, as everywhere in this schema, so
-- they compare as text.
CREATE TABLE staff_accounts (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL UNIQUE,
    role             TEXT NOT NULL,
    password_hash    TEXT,
    totp_secret      BLOB,
    totp_last_step   INTEGER,
    setup_hash       BLOB UNIQUE,
    setup_expires_at TEXT,
    created_at       TEXT NOT NULL,
    disabled_at      TEXT
) STRICT;

CREATE TABLE staff_sessions (
    hash         BLOB PRIMARY KEY NOT NULL,
    account_id   TEXT NOT NULL REFERENCES staff_accounts(id) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
) STRICT;
CREATE INDEX staff_sessions_by_account ON staff_sessions(account_id);

-- Report projections, one per (team, document): JSON without names or
-- note text. A purge deletes the document's rows here with the rest.
CREATE TABLE projections (
    team       TEXT NOT NULL,
    id         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (team, id)
) STRICT;
CREATE INDEX projections_by_kind ON projections(team, kind);

-- Documents whose projection is out of date: every stored upload bumps
-- `generation` in its own transaction (a new mark starts at the commit's
-- cursor value, so a document's generations only grow); a projection written for the
-- latest generation clears the mark.
CREATE TABLE projection_dirty (
    team       TEXT NOT NULL,
    id         TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (team, id)
) STRICT;

-- Documents stored before this schema have no projection yet: marked
-- dirty here, so the relay projects them once after the upgrade.
INSERT INTO projection_dirty (team, id, generation) SELECT team, id, seq FROM documents;

-- The kind of address a device last synced from (loopback, private,
-- public; never the address itself).
ALTER TABLE devices ADD COLUMN last_address_kind TEXT;
