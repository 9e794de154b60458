-- alga-gateway schema, version 4: check-in accepts only an appliance's current
-- credential (`credential_serial`), or the one a rotation replaced while the new one
-- has not been used yet and the overlap has not ended. The replaced credential is
-- kept here with the end of its overlap; a check-in with the current credential, a
-- later rotation or a redeem retry clears it (see gateway/src/flows/check_in.rs).
-- Existing rows start with no previous credential: their current one stays accepted.

ALTER TABLE appliances ADD COLUMN previous_credential_serial text;
ALTER TABLE appliances ADD COLUMN previous_credential_until timestamptz;
ALTER TABLE appliances ADD CONSTRAINT appliances_previous_credential CHECK (
    (previous_credential_serial IS NULL) = (previous_credential_until IS NULL));

GRANT UPDATE (previous_credential_serial, previous_credential_until)
    ON appliances TO alga_gateway;
