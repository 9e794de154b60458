//! Every hot query of the flows uses an index (issue 8): a plan check, not a timing.
//!
//! The statements are those of `gateway::db` (copied: the module keeps them private;
//! the count of appliances by health behind the metrics gauge is left out: it reads
//! every active appliance by design, at most once per 30 s),
//! prepared and explained with the generic plan (what a prepared statement settles on)
//! against 20,000 tenants, codes, appliances, idempotency records and outbox rows. A
//! sequential scan of one of those tables would make the flow's cost grow with the
//! registry; this test fails if one appears.

use crate::harness::Stack;

const ROWS: i32 = 20_000;

/// Tables that grow with the number of tenants.
const BIG: [&str; 7] = [
    "tenants",
    "entitlements",
    "install_codes",
    "appliances",
    "licenses",
    "idempotency_keys",
    "mail_outbox",
];

/// (name, statement with $n parameters, arguments of EXECUTE). In the arguments, `{t}`,
/// `{a}` and `{b}` stand for seeded tenant 42's id, its appliance's and its unclaimed
/// code's.
const HOT: &[(&str, &str, &str)] = &[
    (
        "code by code_id",
        "SELECT code_id, tenant_id, edition, expires_at, key_version, state, created_at, \
         consumed_at, consumer_key_fingerprint, appliance_id, revoked_at, expires_at <= now(), \
         coalesce(consumed_at > now() - interval '15 minutes', false), replaces_appliance_id \
         FROM install_codes WHERE code_id = $1",
        "('{b}')",
    ),
    (
        "conditional consume",
        "UPDATE install_codes SET state = 'consumed', consumed_at = now(), \
         consumer_key_fingerprint = $3, appliance_id = $4 \
         WHERE code_id = $1 AND tenant_id = $2 AND edition = $5 AND expires_at = $6 \
         AND key_version = $7 AND replaces_appliance_id IS NOT DISTINCT FROM $8 \
         AND state = 'unclaimed' AND expires_at > now() \
         RETURNING consumed_at",
        "('{b}', '{t}', 'fp', \
         gen_random_uuid(), 'pro', date_trunc('second', now() + interval '30 days'), 1, NULL)",
    ),
    (
        "tenant lock",
        "SELECT status, edition FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE",
        "('{t}')",
    ),
    (
        "seats in use",
        "SELECT count(*), coalesce(bool_or(appliance_id = $2), false) \
         FROM appliances WHERE tenant_id = $1 AND state = 'active'",
        "('{t}', '{a}')",
    ),
    (
        "active appliances of a tenant",
        "SELECT appliance_id FROM appliances WHERE tenant_id = $1 AND state = 'active' \
         ORDER BY created_at, appliance_id LIMIT $2",
        "('{t}', 2)",
    ),
    (
        "replace an appliance",
        "UPDATE appliances SET state = 'replaced', replaced_by = $3, replaced_at = now() \
         WHERE appliance_id = $1 AND tenant_id = $2 AND state = 'active'",
        "('{a}', '{t}', '{a}')",
    ),
    (
        "revoke superseded codes",
        "UPDATE install_codes SET state = 'revoked', revoked_at = now() \
         WHERE tenant_id = $1 AND state = 'unclaimed' \
           AND ($2 OR replaces_appliance_id IS NOT DISTINCT FROM $3) \
         RETURNING code_id",
        "('{t}', false, NULL)",
    ),
    (
        "appliances of a tenant with health",
        "SELECT * FROM (SELECT a.*, \
           CASE WHEN a.state <> 'active' OR c.overdue_before IS NULL THEN NULL \
                WHEN coalesce(a.last_check_in_at, a.created_at) <= $1 THEN 'stale' \
                WHEN coalesce(a.last_check_in_at, a.created_at) < c.overdue_before THEN 'overdue' \
                ELSE 'ok' END AS health \
         FROM (SELECT * FROM appliances) a \
         LEFT JOIN entitlements e ON e.tenant_id = a.tenant_id \
         LEFT JOIN unnest($2::text[], $3::timestamptz[]) AS c(edition, overdue_before) \
           ON c.edition = e.edition \
         WHERE a.tenant_id = $4) x ORDER BY created_at, appliance_id",
        "(now() - interval '30 days', '{pro}', ARRAY[now() - interval '4 days'], '{t}')",
    ),
    (
        "a page of appliances by health",
        "SELECT * FROM (SELECT a.*, \
           CASE WHEN a.state <> 'active' OR c.overdue_before IS NULL THEN NULL \
                WHEN coalesce(a.last_check_in_at, a.created_at) <= $1 THEN 'stale' \
                WHEN coalesce(a.last_check_in_at, a.created_at) < c.overdue_before THEN 'overdue' \
                ELSE 'ok' END AS health \
         FROM (SELECT * FROM appliances) a \
         LEFT JOIN entitlements e ON e.tenant_id = a.tenant_id \
         LEFT JOIN unnest($2::text[], $3::timestamptz[]) AS c(edition, overdue_before) \
           ON c.edition = e.edition \
           WHERE ($5::uuid IS NULL OR a.appliance_id > $5) \
             AND ($4::text IS NULL OR a.state = 'active')) x \
         WHERE $4::text IS NULL OR health = $4 \
         ORDER BY appliance_id LIMIT $6",
        "(now() - interval '30 days', '{pro}', ARRAY[now() - interval '4 days'], 'ok', '{a}', 100)",
    ),
    (
        "appliance by id",
        "SELECT * FROM appliances WHERE appliance_id = $1",
        "('{a}')",
    ),
    (
        "appliance by id for update",
        "SELECT * FROM appliances WHERE appliance_id = $1 FOR UPDATE",
        "('{a}')",
    ),
    (
        "check-in read",
        "SELECT a.*, t.status, e.edition, e.paid, e.features, e.seats \
         FROM (SELECT * FROM appliances WHERE appliance_id = $1 FOR UPDATE) a \
         JOIN tenants t ON t.tenant_id = a.tenant_id \
         LEFT JOIN entitlements e ON e.tenant_id = a.tenant_id",
        "('{a}')",
    ),
    (
        "check-in update",
        "UPDATE appliances SET last_check_in_at = now(), version = $2, \
         credential_serial = $3, credential_expires_at = $4, \
         previous_credential_serial = $5, previous_credential_until = $6 \
         WHERE appliance_id = $1",
        "('{a}', '1.0.1', 'ab', now() + interval '30 days', NULL, NULL)",
    ),
    (
        "tenant by id",
        "SELECT tenant_id, company, contact_name, contact_email, edition, status, \
         suspended_at, created_at FROM tenants WHERE tenant_id = $1",
        "('{t}')",
    ),
    (
        "entitlement by tenant",
        "SELECT edition, paid, features, seats FROM entitlements WHERE tenant_id = $1",
        "('{t}')",
    ),
    (
        "tenant by company and contact",
        "SELECT tenant_id FROM tenants WHERE company_normalized = $1 \
         AND contact_email_normalized = $2",
        "('seed 42', 'ops42@seed.test')",
    ),
    (
        "tenants by contact email",
        "SELECT tenant_id FROM tenants WHERE contact_email_normalized = $1",
        "('ops42@seed.test')",
    ),
    (
        "codes of a tenant",
        "SELECT code_id FROM install_codes WHERE tenant_id = $1 ORDER BY created_at DESC, code_id",
        "('{t}')",
    ),
    (
        "idempotency lookup",
        "SELECT request_hash, response_status, response_body FROM idempotency_keys \
         WHERE caller = $1 AND key = $2",
        "('spiffe://alga.test/service/store', 'key-42')",
    ),
    (
        "outbox claim",
        "WITH due AS ( \
           SELECT mail_id FROM mail_outbox \
           WHERE state = 'queued' AND next_attempt_at <= now() \
           ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE mail_outbox m SET attempts = m.attempts + 1, \
           next_attempt_at = now() + make_interval(secs => $2) \
         FROM due, install_codes c, tenants t \
         WHERE m.mail_id = due.mail_id AND c.code_id = m.code_id \
           AND t.tenant_id = m.tenant_id \
         RETURNING m.mail_id, c.code_id, t.company",
        "(16, 60.0)",
    ),
    (
        "outbox sent check",
        "SELECT EXISTS (SELECT 1 FROM mail_outbox WHERE code_id = $1 AND state = 'sent')",
        "('{b}')",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_queries_use_indexes_on_a_seeded_registry() {
    let s = Stack::start().await;
    s.admin
        .batch_execute(&seed_sql(ROWS))
        .await
        .expect("seed the registry");
    let row = s
        .admin
        .query_one("SELECT t::text, a::text, b FROM ids WHERE i = 42", &[])
        .await
        .expect("seeded tenant 42");
    let (t, a, b): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let mut bad = Vec::new();
    for (i, (name, sql, args)) in HOT.iter().enumerate() {
        let args = args
            .replace("{t}", &t)
            .replace("{a}", &a)
            .replace("{b}", &b);
        let plan = plan(&s, i, sql, &args).await;
        let scanned: Vec<&str> = BIG
            .iter()
            .copied()
            .filter(|t| plan.contains(&format!("Seq Scan on {t} ")))
            .collect();
        if !scanned.is_empty() || !plan.contains("Index") {
            bad.push(format!("{name}: sequential scan of {scanned:?}\n{plan}"));
        }
    }
    assert!(
        bad.is_empty(),
        "hot queries without an index:\n{}",
        bad.join("\n\n")
    );
    s.stop().await;
}

/// The generic plan of `sql`, as text.
async fn plan(s: &Stack, i: usize, sql: &str, args: &str) -> String {
    s.admin
        .batch_execute(&format!("PREPARE hot{i} AS {sql}"))
        .await
        .unwrap_or_else(|e| panic!("prepare {sql}: {e}"));
    let rows = s
        .admin
        .query(&format!("EXPLAIN EXECUTE hot{i}{args}"), &[])
        .await
        .unwrap_or_else(|e| panic!("explain {sql}: {e}"));
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `n` tenants (`gateway/testdata/seed_registry.sql`), each also with an idempotency
/// record and a sent mail; a few mails still queued. Then ANALYZE, as autovacuum would.
fn seed_sql(n: i32) -> String {
    let registry = include_str!("../../testdata/seed_registry.sql")
        .replace("{first}", "1")
        .replace("{last}", &n.to_string());
    format!(
        "SET plan_cache_mode = force_generic_plan;
        {registry}
        INSERT INTO idempotency_keys (caller, key, request_hash, response_status, response_body)
          SELECT 'spiffe://alga.test/service/store', 'key-' || i, 'h', 201, '{{}}' FROM ids;
        INSERT INTO mail_outbox (mail_id, code_id, tenant_id, recipient, kind, state, sent_at)
          SELECT gen_random_uuid(), b, t, 'ops' || i || '@seed.test', 'registration',
                 CASE WHEN i % 1000 = 0 THEN 'queued' ELSE 'sent' END,
                 CASE WHEN i % 1000 = 0 THEN NULL ELSE now() END FROM ids;
        ANALYZE;"
    )
}
