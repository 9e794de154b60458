-- alga-gateway schema, version 6: relayed check-ins (`POST /check-in/relayed`), the
-- offline refresh of an air-gapped appliance. A relayed request is authenticated by
-- the appliance's signature, not by a TLS session, so anyone holding the file could
-- submit it again: each accepted request is recorded here by the SHA-256 of its
-- signed payload (which holds its nonce), in the check-in's own transaction, and a
-- second submission is refused. Requests older than the accepted window are refused
-- before this table is read, so rows older than the window only ever refuse what the
-- window refuses anyway (see gateway/src/flows/relayed.rs).

CREATE TABLE relayed_check_ins (
    payload_sha256 bytea PRIMARY KEY CHECK (octet_length(payload_sha256) = 32),
    nonce uuid NOT NULL,
    appliance_id uuid NOT NULL REFERENCES appliances (appliance_id),
    issued_at timestamptz NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT ON relayed_check_ins TO alga_gateway;
