//! Every hot query of the flows uses an index: a plan check, not a timing.
//!
//! The statements are those `gateway::db` runs, as it runs them
//! (`db::explain_targets()`; the count of appliances by health behind the metrics gauge
//! is not one: it reads every active appliance by design, at most once per 30 s),
//! prepared and explained with the generic plan (what a prepared statement settles
//! on) against 20,000 tenants, codes, appliances, idempotency records and outbox rows. A
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

/// The arguments of EXECUTE for each of `gateway::db::explain_targets()`, by name. In
/// them, `{t}`, `{a}` and `{b}` stand for seeded tenant 42's id, its appliance's and
/// its unclaimed code's. Every target needs an entry and every entry a target, so a
/// hot statement added to `db` without one fails here.
const ARGS: &[(&str, &str)] = &[
    ("code by code_id", "('{b}')"),
    (
        "conditional consume",
        "('{b}', '{t}', 'fp', \
         gen_random_uuid(), 'pro', date_trunc('second', now() + interval '30 days'), 1, NULL)",
    ),
    ("tenant lock", "('{t}')"),
    ("seats in use", "('{t}', '{a}')"),
    ("active appliances of a tenant", "('{t}', 2)"),
    ("replace an appliance", "('{a}', '{t}', '{a}')"),
    ("revoke superseded codes", "('{t}', false, NULL)"),
    (
        "appliances of a tenant with health",
        "(now() - interval '30 days', '{pro}', ARRAY[now() - interval '4 days'], '{t}')",
    ),
    (
        "a page of appliances by health",
        "(now() - interval '30 days', '{pro}', ARRAY[now() - interval '4 days'], 'ok', '{a}', 100)",
    ),
    ("appliance by id", "('{a}')"),
    ("appliance by id for update", "('{a}')"),
    ("check-in read", "('{a}')"),
    (
        "check-in update",
        "('{a}', '1.0.1', 'ab', now() + interval '30 days', NULL, NULL)",
    ),
    ("tenant by id", "('{t}')"),
    ("entitlement by tenant", "('{t}')"),
    (
        "tenant by company and contact",
        "('seed 42', 'ops42@seed.test')",
    ),
    ("tenants by contact email", "('ops42@seed.test', 10)"),
    ("codes of a tenant", "('{t}')"),
    (
        "idempotency lookup",
        "('spiffe://alga.test/service/store', 'key-42')",
    ),
    ("outbox claim", "(16, 60.0)"),
    ("outbox claim reserved", "(gen_random_uuid(), 60.0)"),
    ("outbox sent check", "('{b}')"),
];

/// Every statement to explain: `db`'s own, each with its arguments.
fn hot() -> Vec<(&'static str, &'static str, &'static str)> {
    let targets = alga_gateway::db::explain_targets();
    let args_of = |name: &str| ARGS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let missing: Vec<&str> = targets
        .iter()
        .filter(|(n, _)| args_of(n).is_none())
        .map(|(n, _)| *n)
        .collect();
    assert!(missing.is_empty(), "no EXECUTE arguments for {missing:?}");
    let stale: Vec<&str> = ARGS
        .iter()
        .filter(|(n, _)| !targets.iter().any(|(t, _)| t == n))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        stale.is_empty(),
        "arguments for statements db does not have: {stale:?}"
    );
    targets
        .into_iter()
        .map(|(name, sql)| (name, sql, args_of(name).unwrap_or_default()))
        .collect()
}

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
    for (i, (name, sql, args)) in hot().into_iter().enumerate() {
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
