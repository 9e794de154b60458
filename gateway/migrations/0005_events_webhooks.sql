-- alga-gateway schema, version 5: the store's event feed and its webhooks.
--
-- The feed itself needs no table: it is read from the sequenced audit log. What is
-- here: the overdue sweep's episode mark.

-- The reference time (last check-in, or redeem before the first) of the overdue
-- episode already recorded as `appliance.overdue`. A check-in moves the reference, so
-- the next time the appliance is overdue is a new episode; nothing clears the mark.
ALTER TABLE appliances ADD COLUMN overdue_recorded_for timestamptz;
GRANT UPDATE (overdue_recorded_for) ON appliances TO alga_gateway;
