-- Seeds tenants {first}..={last} for plan checks and benchmarks: each with an
-- entitlement, an unclaimed code (B…), a consumed code (C…) with its appliance and its
-- license. Ids are in ranges the API never hands out, so disjoint ranges can be seeded
-- by concurrent sessions. Used by gateway/tests/it/explain.rs and
-- gateway/benches/load.rs (which replace {first} and {last}); the caller runs ANALYZE.
CREATE TEMP VIEW ids AS SELECT i,
    ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid AS t,
    ('00000000-0000-4000-9000-' || lpad(to_hex(i), 12, '0'))::uuid AS a,
    'B' || lpad(i::text, 9, '0') AS b, 'C' || lpad(i::text, 9, '0') AS c
  FROM generate_series({first}, {last}) i;
INSERT INTO tenants (tenant_id, company, company_normalized, contact_name, contact_email,
                     contact_email_normalized, edition)
  SELECT t, 'Seed ' || i, 'seed ' || i, 'Ops', 'ops' || i || '@seed.test',
         'ops' || i || '@seed.test', 'pro' FROM ids;
INSERT INTO entitlements (tenant_id, edition, paid, features, seats)
  SELECT t, 'pro', true, '{}', 10 FROM ids;
INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version)
  SELECT b, t, 'pro', date_trunc('second', now() + interval '30 days'), 1 FROM ids;
INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version, state,
                           consumed_at, consumer_key_fingerprint, appliance_id)
  SELECT c, t, 'pro', date_trunc('second', now() + interval '30 days'), 1, 'consumed',
         now(), 'fp', a FROM ids;
INSERT INTO appliances (appliance_id, tenant_id, code_id, hostname, version,
                        public_key_fingerprint)
  SELECT a, t, c, 'appliance', '1.0.0', 'fp' FROM ids;
INSERT INTO licenses (jti, kid, tenant_id, appliance_id, issued_at, expires_at, reason)
  SELECT gen_random_uuid(), 'k1', t, a, now(), now() + interval '30 days', 'redeem' FROM ids;
