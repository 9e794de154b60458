-- alga-audit 0001: the append-only, hash-chained audit log (DESIGN §6; FORMAT.md).
-- Run once, as the migration role (the owner). The runtime role alga_gateway must
-- exist already; it gets INSERT and SELECT only.

-- Records, inserted unsequenced by business transactions, in their own transaction.
-- `xid` is the inserting transaction's id: the sequencer chains a record only once
-- every transaction with a smaller id has ended (see sequencer.rs).
CREATE TABLE audit_events (
    id          bigserial   PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    inserted_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    recorded_at timestamptz NOT NULL,
    tenant_id   uuid,
    action      text        NOT NULL,
    -- The canonical bytes (FORMAT.md): what is hashed. The columns above are copies
    -- for filtering; verify checks they agree with these bytes.
    record      bytea       NOT NULL CHECK (octet_length(record) BETWEEN 2 AND 16384)
);
-- The sequencer's cursor. Deliberately the only secondary index: every index here
-- costs every business transaction (the benchmark measures it); the auditors'
-- filters (tenant, action, time) walk the chain in sequence order instead.
CREATE INDEX audit_events_xid_id ON audit_events (xid, id);

-- The chain: one row per record, in sequence, written by the sequencer only.
-- The keys make a fork, a gap or a double chaining fail loudly:
--   seq PRIMARY KEY            two rows can't claim one position;
--   event_id UNIQUE            a record can't be chained twice;
--   (prev_seq, prev_hash) FK   every row links to the existing row before it.
CREATE TABLE audit_chain (
    seq        bigint      PRIMARY KEY CHECK (seq >= 1),
    event_id   bigint      NOT NULL UNIQUE REFERENCES audit_events (id),
    prev_hash  bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash       bytea       NOT NULL CHECK (octet_length(hash) = 32),
    chained_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    prev_seq   bigint      GENERATED ALWAYS AS (NULLIF(seq - 1, 0)) STORED,
    UNIQUE (seq, hash),
    FOREIGN KEY (prev_seq, prev_hash) REFERENCES audit_chain (seq, hash),
    CHECK (seq > 1 OR prev_hash = '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
);

-- Signed heads: (seq, head_hash) signed by the issuer's audit key.
CREATE TABLE audit_checkpoints (
    seq        bigint      PRIMARY KEY,
    head_hash  bytea       NOT NULL CHECK (octet_length(head_hash) = 32),
    signed_at  timestamptz NOT NULL,
    kid        text        NOT NULL,
    -- base64url (no padding) raw P-256 r‖s over SHA-256 of the checkpoint statement.
    signature  text        NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    FOREIGN KEY (seq, head_hash) REFERENCES audit_chain (seq, hash)
);

-- Append-only, whoever asks: UPDATE, DELETE and TRUNCATE raise.
CREATE FUNCTION audit_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON audit_chain
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

-- Privileges: nothing for PUBLIC; the runtime role reads everything and inserts only
-- the columns that are its to set (never `xid` or `inserted_at`, so it cannot
-- backdate a record past the sequencer).
REVOKE ALL ON audit_events, audit_chain, audit_checkpoints FROM PUBLIC;
REVOKE ALL ON SEQUENCE audit_events_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_reject_change() FROM PUBLIC;
GRANT SELECT ON audit_events, audit_chain, audit_checkpoints TO alga_gateway;
GRANT INSERT (recorded_at, tenant_id, action, record) ON audit_events TO alga_gateway;
GRANT INSERT (seq, event_id, prev_hash, hash) ON audit_chain TO alga_gateway;
GRANT INSERT (seq, head_hash, signed_at, kid, signature) ON audit_checkpoints TO alga_gateway;
GRANT USAGE ON SEQUENCE audit_events_id_seq TO alga_gateway;
