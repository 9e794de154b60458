-- alga-audit 0002: the audit log as a transparency log (FORMAT.md, "Tree").
-- Every chained record is a leaf of an RFC 6962 Merkle tree whose entry is
-- SHA-256(record bytes). Level-0 hashes (the leaves) are computed from the records
-- themselves; what is stored is every complete subtree of height 8, 16, 24, ...:
-- the hashes of the c2sp.org/tlog-tiles tiles above level 0.

-- Written by the sequencer in the same statement as the chain rows they cover, so the
-- tree and the chain can never disagree on how far they go.
CREATE TABLE audit_tree_nodes (
    -- Tile level: the node is the hash of a complete subtree of height 8·level.
    level smallint NOT NULL CHECK (level BETWEEN 1 AND 6),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Signed tree heads: c2sp.org/tlog-checkpoint notes signed by the issuer's log key.
CREATE TABLE audit_log_checkpoints (
    size      bigint      PRIMARY KEY REFERENCES audit_chain (seq),
    root      bytea       NOT NULL CHECK (octet_length(root) = 32),
    kid       text        NOT NULL,
    -- The whole signed note, as the issuer returned it.
    note      text        NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Witnesses' cosignatures (c2sp.org/tlog-cosignature) of those checkpoints, as the
-- signature lines they returned; served appended to the checkpoint.
CREATE TABLE audit_log_cosignatures (
    size      bigint      NOT NULL REFERENCES audit_log_checkpoints (size),
    witness   text        NOT NULL,
    line      text        NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (size, witness)
);

CREATE TRIGGER audit_tree_nodes_append_only BEFORE UPDATE OR DELETE ON audit_tree_nodes
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_tree_nodes_no_truncate BEFORE TRUNCATE ON audit_tree_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_log_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_log_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_log_checkpoints_no_truncate BEFORE TRUNCATE ON audit_log_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_log_cosignatures_append_only BEFORE UPDATE OR DELETE ON audit_log_cosignatures
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_log_cosignatures_no_truncate BEFORE TRUNCATE ON audit_log_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

REVOKE ALL ON audit_tree_nodes, audit_log_checkpoints, audit_log_cosignatures FROM PUBLIC;
GRANT SELECT ON audit_tree_nodes, audit_log_checkpoints, audit_log_cosignatures TO alga_gateway;
GRANT INSERT (level, idx, hash) ON audit_tree_nodes TO alga_gateway;
GRANT INSERT (size, root, kid, note) ON audit_log_checkpoints TO alga_gateway;
GRANT INSERT (size, witness, line) ON audit_log_cosignatures TO alga_gateway;
