-- Linkbook relay storage on PostgreSQL, schema 1: the SQLite schema as it
-- stands after SQLite's migration 012 (sync-server/migrations/*.sql), in
-- one step; SQLite's history is not replayed. Differences, and why:
--
-- * Times are text (RFC 3339, as chrono's `to_rfc3339` writes them), as on
--   SQLite: the traits hand them back as strings, with nanoseconds that a
--   timestamptz (microseconds) would cut, and compare them as text.
-- * Every text column is COLLATE "C": SQLite compares text bytewise, and
--   `document_ids`, `devices` and the refusals are ordered by it; a
--   database made with another locale must still sort the same.
-- * The change cursor is a per-team counter row (`team_cursor`), advanced
--   inside the upload's transaction, not a sequence: a sequence's order is
--   not commit order in PostgreSQL, and `changed_since` must never let a
--   reader skip a change committed after its read (docs/adr/0009). The row
--   lock serialises a team's writers until commit, so a change committed
--   later always has a larger value. Values are per team: `changed_since`
--   is asked per team.
-- * Revocations take their order the same way (`revocation_counter`): the
--   relays' watchers read them by `seq` and must not skip one.
-- * The audit's append-only rule is one statement-level trigger refusing
--   UPDATE, DELETE and TRUNCATE (SQLite: two row triggers).

CREATE TABLE devices (
    id           text COLLATE "C" PRIMARY KEY,   -- also the device's protocol peer id
    team         text COLLATE "C" NOT NULL,
    worker       text COLLATE "C" NOT NULL,
    device_name  text COLLATE "C" NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,          -- sha256 of the 256-bit token; the token is never stored
    enrolled_at  text COLLATE "C" NOT NULL,
    revoked_at   text COLLATE "C",
    last_sync_at text COLLATE "C"
);

CREATE TABLE enrolment_codes (
    code_hash  bytea PRIMARY KEY,                -- sha256 of the code
    team       text COLLATE "C" NOT NULL,
    worker     text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    expires_at text COLLATE "C" NOT NULL,
    used_at    text COLLATE "C",
    device_id  text COLLATE "C"
);

-- Teams, each with a directory id chosen at random by the relay, and the
-- team's data-protection policy (NULL: no such limit).
CREATE TABLE teams (
    name           text COLLATE "C" PRIMARY KEY,
    directory_id   text COLLATE "C" NOT NULL UNIQUE,
    created_at     text COLLATE "C" NOT NULL,
    retention_days bigint,
    lease_days     bigint
);

-- The last change cursor value handed out per team (see above).
CREATE TABLE team_cursor (
    team text COLLATE "C" PRIMARY KEY,
    seq  bigint NOT NULL DEFAULT 0
);

-- Documents namespaced per team: (team, id) is a document. `seq` is the
-- cursor value of its latest change; the snapshot covers every change of
-- it with `seq` up to `compacted_through`.
CREATE TABLE documents (
    id                text COLLATE "C" NOT NULL,
    team              text COLLATE "C" NOT NULL,
    snapshot          bytea,
    change_count      bigint NOT NULL DEFAULT 0,
    created_at        text COLLATE "C" NOT NULL,
    seq               bigint NOT NULL DEFAULT 0,
    last_device       text COLLATE "C",
    compacted_through bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (team, id)
);
CREATE INDEX documents_by_team_seq ON documents (team, seq);
-- Which teams hold an id: the cross-team audit and the admin commands.
CREATE INDEX documents_by_id ON documents (id);

CREATE TABLE changes (
    team   text COLLATE "C" NOT NULL,
    doc_id text COLLATE "C" NOT NULL,
    seq    bigint NOT NULL,                      -- the team's cursor value
    data   bytea NOT NULL,
    PRIMARY KEY (team, doc_id, seq),
    FOREIGN KEY (team, doc_id) REFERENCES documents (team, id) ON DELETE CASCADE
);

-- Automerge sync::State (shared heads) per team, document and device.
CREATE TABLE sync_states (
    team      text COLLATE "C" NOT NULL,
    doc_id    text COLLATE "C" NOT NULL,
    device_id text COLLATE "C" NOT NULL,
    state     bytea NOT NULL,
    PRIMARY KEY (team, doc_id, device_id)
);

-- Purged documents (erasure at the office's request): the id stays so no
-- device can upload it again. `reason` is the administrator's words, for
-- the audit; it is not sent to devices.
CREATE TABLE purged (
    doc_id    text COLLATE "C" NOT NULL,
    team      text COLLATE "C" NOT NULL,
    reason    text COLLATE "C" NOT NULL,
    purged_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (team, doc_id)
);
CREATE INDEX purged_by_id ON purged (doc_id);

-- Append-only: who did what, when. No record content. `at` is a device's
-- claim (clamped) for uploaded reads, `received_at` the relay's receipt;
-- `client` a refused client's address; `team` the team of a record about
-- a document, where the relay knows it.
CREATE TABLE audit (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          text COLLATE "C" NOT NULL,
    device_id   text COLLATE "C",
    worker      text COLLATE "C",
    action      text COLLATE "C" NOT NULL,
    doc_id      text COLLATE "C",
    received_at text COLLATE "C",
    client      text COLLATE "C",
    team        text COLLATE "C"
);
CREATE INDEX audit_reads_by_device ON audit (device_id, received_at) WHERE action = 'read';

CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- Statement-level: refused even when no row matches.
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();

-- Documents and changes the relay refused, for the administrator. Ids, a
-- reason and counts only, never content; capped by refusals.rs.
CREATE TABLE refused_documents (
    doc_id    text COLLATE "C" NOT NULL,
    device_id text COLLATE "C" NOT NULL,
    team      text COLLATE "C" NOT NULL,
    reason    text COLLATE "C" NOT NULL,
    first_at  text COLLATE "C" NOT NULL,
    last_at   text COLLATE "C" NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (doc_id, device_id, reason)
);
CREATE INDEX refused_documents_by_time ON refused_documents (last_at);

-- The relay's identity (`store_id`), which travels with its data.
CREATE TABLE relay_meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text COLLATE "C" NOT NULL
);

-- Every revocation, in commit order, for running relays to act on: a
-- trigger, so every path that revokes is logged the same way.
CREATE TABLE revocation_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL
);
INSERT INTO revocation_counter (only_row, seq) VALUES (true, 0);

CREATE TABLE revocations (
    seq       bigint PRIMARY KEY,
    device_id text COLLATE "C" NOT NULL,
    at        text COLLATE "C" NOT NULL
);

CREATE FUNCTION log_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    next_seq bigint;
BEGIN
    -- The counter row stays locked until commit: a revocation committed
    -- later always gets a larger seq.
    UPDATE revocation_counter SET seq = seq + 1 RETURNING seq INTO next_seq;
    INSERT INTO revocations (seq, device_id, at) VALUES (next_seq, NEW.id, NEW.revoked_at);
    RETURN NULL;
END;
$$;
CREATE TRIGGER devices_revoked AFTER UPDATE OF revoked_at ON devices
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION log_revocation();
