-- alga-gateway schema, version 2: an index for the outbox lookup by code.
-- POST /register-tenant's idempotent replay asks whether the code's mail went out
-- (`sent_for_code`); without this index that was a sequential scan of the whole outbox
-- (found by the plan check in gateway/tests/it/explain.rs).
CREATE INDEX mail_outbox_code ON mail_outbox (code_id);
