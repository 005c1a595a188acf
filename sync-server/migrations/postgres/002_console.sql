-- Schema 2: the office console's store (issue 15, storage/console.rs), as
-- SQLite's migration 013. Staff accounts and their sessions, secrets only
-- as hashes: the set-up token and the session id as SHA-256, the password
-- as an argon2id PHC string; the TOTP seed cannot be hashed and is kept as
-- the account's bytes. Times are RFC 3339 text in UTC and text is
-- COLLATE "C", as in 001_init.sql, so times compare as text.
CREATE TABLE staff_accounts (
    id               text COLLATE "C" PRIMARY KEY,
    name             text COLLATE "C" NOT NULL UNIQUE,
    role             text COLLATE "C" NOT NULL,
    password_hash    text COLLATE "C",
    totp_secret      bytea,
    totp_last_step   bigint,
    setup_hash       bytea UNIQUE,
    setup_expires_at text COLLATE "C",
    created_at       text COLLATE "C" NOT NULL,
    disabled_at      text COLLATE "C"
);

CREATE TABLE staff_sessions (
    hash         bytea PRIMARY KEY,
    account_id   text COLLATE "C" NOT NULL REFERENCES staff_accounts (id) ON DELETE CASCADE,
    csrf         text COLLATE "C" NOT NULL,
    created_at   text COLLATE "C" NOT NULL,
    last_seen_at text COLLATE "C" NOT NULL
);
CREATE INDEX staff_sessions_by_account ON staff_sessions (account_id);

-- Report projections, one per (team, document): JSON without names or
-- note text. A purge deletes the document's rows here with the rest.
CREATE TABLE projections (
    team       text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    kind       text COLLATE "C" NOT NULL,
    body       text NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (team, id)
);
CREATE INDEX projections_by_kind ON projections (team, kind);

-- Documents whose projection is out of date: every stored upload bumps
-- `generation` in its own transaction (a new mark starts at the commit's
-- cursor value, so a document's generations only grow) (under the team's cursor lock); a
-- projection written for the latest generation clears the mark.
CREATE TABLE projection_dirty (
    team       text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    generation bigint NOT NULL,
    PRIMARY KEY (team, id)
);

-- Documents stored before this schema have no projection yet: marked
-- dirty here, so a node projects them once after the upgrade.
INSERT INTO projection_dirty (team, id, generation) SELECT team, id, seq FROM documents;

-- The kind of address a device last synced from (loopback, private,
-- public; never the address itself).
ALTER TABLE devices ADD COLUMN last_address_kind text COLLATE "C";
