-- alga-gateway schema, version 5: the store's event feed and its webhooks.
--
-- The feed itself needs no table: it is read from the sequenced audit log. What is
-- here: the overdue sweep's episode mark, and the webhook outbox.

-- The reference time (last check-in, or redeem before the first) of the overdue
-- episode already recorded as `appliance.overdue`. A check-in moves the reference, so
-- the next time the appliance is overdue is a new episode; nothing clears the mark.
ALTER TABLE appliances ADD COLUMN overdue_recorded_for timestamptz;
GRANT UPDATE (overdue_recorded_for) ON appliances TO alga_gateway;

-- Per configured webhook endpoint (its URL), the last audit sequence number the
-- leading gateway has copied from the feed into the outbox.
CREATE TABLE webhook_cursors (
    endpoint   text        PRIMARY KEY,
    after_seq  bigint      NOT NULL DEFAULT 0 CHECK (after_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per endpoint and event, with the event's JSON body as sent.
-- Delivered per tenant in `seq` order: a tenant's lowest undelivered row goes first,
-- and a row is retried (back-off in `next_attempt_at`) until it is delivered.
CREATE TABLE webhook_deliveries (
    endpoint        text        NOT NULL,
    seq             bigint      NOT NULL CHECK (seq >= 1),
    tenant_id       uuid,
    event_type      text        NOT NULL,
    body            bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz,
    PRIMARY KEY (endpoint, seq)
);
-- The delivery worker's question: each tenant's lowest undelivered row.
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (endpoint, tenant_id, seq) WHERE delivered_at IS NULL;
-- Pruning delivered rows.
CREATE INDEX webhook_deliveries_delivered
    ON webhook_deliveries (delivered_at) WHERE delivered_at IS NOT NULL;

GRANT SELECT, INSERT ON webhook_cursors, webhook_deliveries TO alga_gateway;
GRANT UPDATE (after_seq, updated_at) ON webhook_cursors TO alga_gateway;
GRANT UPDATE (attempts, next_attempt_at, last_error, delivered_at)
    ON webhook_deliveries TO alga_gateway;
GRANT DELETE ON webhook_deliveries TO alga_gateway;
