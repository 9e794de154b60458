-- Seeds tenants {first}..={last} for plan checks and benchmarks: each with an
-- entitlement, an unclaimed code (b), a consumed code (c) with its appliance and its
-- license. Used by gateway/tests/it/explain.rs and gateway/benches/load.rs (which
-- replace {first} and {last}); the caller runs ANALYZE.
--
-- Ids are spread over their whole key space, as the API's are (random UUIDs, random
-- code ids), so a row the API inserts later lands among the seeded ones in every index,
-- as in a registry grown through the API. They are derived from i (md5 for UUIDs; for
-- codes 50 bits of i times an odd constant mod 2^50, a bijection, so no two collide),
-- so disjoint ranges can be seeded by concurrent sessions, and seeded ids collide with
-- the API's only by chance (one in 2^50 per code).
-- Rows go in in primary-key order (a sorted insert fills each index page once; the
-- other indexes still see random keys).
SET work_mem = '256MB';
CREATE FUNCTION pg_temp.code50(x bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 45) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 40) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 35) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 30) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 25) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 20) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 15) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 10) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 5) & 31)::int + 1, 1) ||
    substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((x >> 0) & 31)::int + 1, 1)
$$;
CREATE FUNCTION pg_temp.seed_code(n bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT pg_temp.code50((n * 1442695040889) & 1125899906842623)
$$;
CREATE TEMP VIEW ids AS SELECT i,
    md5('tenant ' || i)::uuid AS t,
    md5('appliance ' || i)::uuid AS a,
    pg_temp.seed_code(2 * i) AS b, pg_temp.seed_code(2 * i + 1) AS c
  FROM generate_series({first}, {last}) i;
INSERT INTO tenants (tenant_id, company, company_normalized, contact_name, contact_email,
                     contact_email_normalized, edition)
  SELECT t, 'Seed ' || i, 'seed ' || i, 'Ops', 'ops' || i || '@seed.test',
         'ops' || i || '@seed.test', 'pro' FROM ids ORDER BY t;
INSERT INTO entitlements (tenant_id, edition, paid, features, seats)
  SELECT t, 'pro', true, '{}', 10 FROM ids ORDER BY t;
INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version)
  SELECT b, t, 'pro', date_trunc('second', now() + interval '30 days'), 1 FROM ids ORDER BY b;
INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version, state,
                           consumed_at, consumer_key_fingerprint, appliance_id)
  SELECT c, t, 'pro', date_trunc('second', now() + interval '30 days'), 1, 'consumed',
         now(), 'fp', a FROM ids ORDER BY c;
INSERT INTO appliances (appliance_id, tenant_id, code_id, hostname, version,
                        public_key_fingerprint)
  SELECT a, t, c, 'appliance', '1.0.0', 'fp' FROM ids ORDER BY a;
INSERT INTO licenses (jti, kid, tenant_id, appliance_id, issued_at, expires_at, reason)
  SELECT gen_random_uuid(), 'k1', t, a, now(), now() + interval '30 days', 'redeem' FROM ids ORDER BY a;
