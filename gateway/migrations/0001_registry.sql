-- alga-gateway schema, version 1: tenant registry, entitlements, install codes
-- (binding fields only: no secret is stored), appliances, issued licenses,
-- idempotency records and the mail outbox. Run by `alga-gateway migrate` as the schema
-- owner; the runtime role alga_gateway gets only what the flows need.

CREATE TABLE tenants (
    tenant_id                uuid PRIMARY KEY,
    company                  text NOT NULL,
    company_normalized       text NOT NULL,
    contact_name             text NOT NULL,
    contact_email            text NOT NULL,
    contact_email_normalized text NOT NULL,
    edition                  text NOT NULL,
    status                   text NOT NULL DEFAULT 'active'
                             CHECK (status IN ('active', 'suspended')),
    created_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_company_contact_unique
        UNIQUE (company_normalized, contact_email_normalized)
);
CREATE INDEX tenants_contact_email ON tenants (contact_email_normalized);

CREATE TABLE entitlements (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants,
    edition     text NOT NULL,
    paid        boolean NOT NULL,
    features    text[] NOT NULL,
    seats       integer NOT NULL CHECK (seats >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE install_codes (
    code_id                  text PRIMARY KEY CHECK (code_id ~ '^[0-9A-HJKMNP-TV-Z]{10}$'),
    tenant_id                uuid NOT NULL REFERENCES tenants,
    edition                  text NOT NULL,
    -- Whole seconds: the binding the HMAC covers has no finer precision.
    expires_at               timestamptz NOT NULL
                             CHECK (expires_at = date_trunc('second', expires_at)),
    key_version              integer NOT NULL CHECK (key_version > 0),
    state                    text NOT NULL DEFAULT 'unclaimed'
                             CHECK (state IN ('unclaimed', 'consumed', 'revoked')),
    created_at               timestamptz NOT NULL DEFAULT now(),
    consumed_at              timestamptz,
    -- Hex SHA-256 of the redeeming CSR's SubjectPublicKeyInfo (the retry rule).
    consumer_key_fingerprint text,
    appliance_id             uuid,
    revoked_at               timestamptz,
    CHECK ((state = 'consumed') = (consumed_at IS NOT NULL)),
    CHECK ((state = 'consumed') = (consumer_key_fingerprint IS NOT NULL)),
    CHECK ((state = 'consumed') = (appliance_id IS NOT NULL)),
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX install_codes_tenant ON install_codes (tenant_id);

CREATE TABLE appliances (
    appliance_id           uuid PRIMARY KEY,
    tenant_id              uuid NOT NULL REFERENCES tenants,
    code_id                text NOT NULL UNIQUE REFERENCES install_codes,
    hostname               text NOT NULL,
    version                text NOT NULL,
    state                  text NOT NULL DEFAULT 'active'
                           CHECK (state IN ('active', 'revoked')),
    public_key_fingerprint text NOT NULL,
    credential_serial      text,
    credential_expires_at  timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    last_check_in_at       timestamptz,
    revoked_at             timestamptz,
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX appliances_tenant ON appliances (tenant_id);

CREATE TABLE licenses (
    jti          uuid PRIMARY KEY,
    kid          text NOT NULL,
    tenant_id    uuid NOT NULL REFERENCES tenants,
    appliance_id uuid NOT NULL REFERENCES appliances,
    issued_at    timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    reason       text NOT NULL CHECK (reason IN ('redeem', 'redeem_retry', 'check_in'))
);
CREATE INDEX licenses_appliance ON licenses (appliance_id);

-- Idempotent POST /register-tenant: the first response, replayed for the same key and
-- body. The body holds no secret (the store never receives the code).
CREATE TABLE idempotency_keys (
    caller          text NOT NULL,
    key             text NOT NULL,
    request_hash    text NOT NULL,
    response_status smallint NOT NULL,
    response_body   jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

-- Mail to send. Never the code and never the presigned URL: the sender re-derives the
-- code through the issuer and presigns a fresh link when it sends.
CREATE TABLE mail_outbox (
    mail_id         uuid PRIMARY KEY,
    code_id         text NOT NULL REFERENCES install_codes,
    tenant_id       uuid NOT NULL REFERENCES tenants,
    recipient       text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('registration', 'reissue')),
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE state = 'queued';
CREATE INDEX mail_outbox_tenant ON mail_outbox (tenant_id);

-- Least privilege for the runtime role: no DELETE, no TRUNCATE, no DDL, and UPDATE only
-- of the columns a state transition changes.
GRANT SELECT, INSERT ON tenants, entitlements, install_codes, appliances, licenses,
    idempotency_keys, mail_outbox TO alga_gateway;
GRANT UPDATE (state, consumed_at, consumer_key_fingerprint, appliance_id, revoked_at)
    ON install_codes TO alga_gateway;
GRANT UPDATE (state, revoked_at, version, credential_serial, credential_expires_at,
    last_check_in_at) ON appliances TO alga_gateway;
GRANT UPDATE (state, attempts, next_attempt_at, last_error, sent_at)
    ON mail_outbox TO alga_gateway;
