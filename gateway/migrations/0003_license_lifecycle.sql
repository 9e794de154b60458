-- alga-gateway schema, version 3: the license lifecycle. A rebuild's code names the
-- appliance its redeem retires (`replaced`, with `replaced_by`); the store suspends
-- and resumes tenants and changes their edition; appliances are counted against the
-- edition's `max_appliances` (active ones only).

-- Since when a tenant is suspended (rows suspended by hand before: from now).
ALTER TABLE tenants ADD COLUMN suspended_at timestamptz;
UPDATE tenants SET suspended_at = now() WHERE status = 'suspended';
ALTER TABLE tenants ADD CONSTRAINT tenants_suspended_at
    CHECK ((status = 'suspended') = (suspended_at IS NOT NULL));

-- When the edition last changed (NULL: as registered).
ALTER TABLE entitlements ADD COLUMN updated_at timestamptz;

-- The appliance a code's redeem retires; part of the code's HMAC binding.
ALTER TABLE install_codes ADD COLUMN replaces_appliance_id uuid REFERENCES appliances;

ALTER TABLE appliances DROP CONSTRAINT appliances_state_check;
ALTER TABLE appliances ADD CONSTRAINT appliances_state_check
    CHECK (state IN ('active', 'replaced', 'revoked'));
ALTER TABLE appliances ADD COLUMN replaced_by uuid REFERENCES appliances;
ALTER TABLE appliances ADD COLUMN replaced_at timestamptz;
ALTER TABLE appliances ADD CONSTRAINT appliances_replaced CHECK (
    (state = 'replaced') = (replaced_by IS NOT NULL)
    AND (state = 'replaced') = (replaced_at IS NOT NULL));
-- Seat counting and the implicit replacement read a tenant's active appliances.
CREATE INDEX appliances_active_tenant ON appliances (tenant_id) WHERE state = 'active';

-- The runtime role: the state transitions above, column by column. Row locks on
-- `tenants` (`FOR NO KEY UPDATE`, which serializes a tenant's redeems, reissues and
-- changes) need UPDATE on the table's columns too.
GRANT UPDATE (status, suspended_at, edition) ON tenants TO alga_gateway;
GRANT UPDATE (edition, paid, features, seats, updated_at) ON entitlements TO alga_gateway;
GRANT UPDATE (replaced_by, replaced_at) ON appliances TO alga_gateway;
