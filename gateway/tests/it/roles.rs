//! The role matrix: store, auditor, appliance, another valid service identity and no
//! certificate, against each route; the expected status only.

use serde_json::json;
use uuid::Uuid;

use crate::harness::{Stack, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let mut s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, _, a) = s.redeem(&code).await;
    assert_eq!(st, 200);
    let appliance_id = a.appliance_id.expect("id");

    let callers = [
        ("store", s.store()),
        ("auditor", s.auditor()),
        ("appliance", s.appliance(&a)),
        ("gateway-identity", s.gateway_identity()),
        ("none", s.anon()),
    ];
    // Bodies that are valid for the route, so only the identity decides the outcome.
    // (method, path, body, expected status per caller in the order above)
    let unknown = Uuid::new_v4();
    let routes: Vec<(&str, String, Option<serde_json::Value>, [u16; 5])> = vec![
        (
            "POST",
            "/register-tenant".into(),
            Some(
                json!({"company": "x", "contact": {"name": "n", "email": "n@x.test"}, "edition": "platinum"}),
            ),
            [400, 403, 403, 403, 401],
        ),
        (
            "POST",
            "/install-codes/reissue".into(),
            Some(json!({"tenant_id": unknown})),
            [404, 403, 403, 403, 401],
        ),
        (
            "GET",
            format!("/tenants/{tenant}"),
            None,
            [200, 200, 403, 403, 401],
        ),
        ("GET", "/events".into(), None, [200, 403, 403, 403, 401]),
        (
            "POST",
            format!("/appliances/{unknown}/revoke"),
            None,
            [404, 403, 403, 403, 401],
        ),
        (
            "PUT",
            format!("/tenants/{unknown}/entitlement"),
            Some(json!({"edition": "pro"})),
            [404, 403, 403, 403, 401],
        ),
        (
            "POST",
            format!("/tenants/{unknown}/suspend"),
            None,
            [404, 403, 403, 403, 401],
        ),
        (
            "POST",
            format!("/tenants/{unknown}/resume"),
            None,
            [404, 403, 403, 403, 401],
        ),
        (
            "GET",
            "/appliances?health=ok".into(),
            None,
            [200, 200, 403, 403, 401],
        ),
        (
            "GET",
            "/audit/events".into(),
            None,
            [403, 200, 403, 403, 401],
        ),
        (
            "GET",
            "/audit/checkpoints".into(),
            None,
            [403, 200, 403, 403, 401],
        ),
        ("GET", "/audit/keys".into(), None, [403, 200, 403, 403, 401]),
        (
            "POST",
            "/check-in".into(),
            Some(json!({"appliance": {"version": "1"}})),
            [403, 403, 200, 403, 401],
        ),
        (
            "POST",
            "/register".into(),
            Some(
                json!({"install_code": "hello", "csr": "x", "appliance": {"hostname": "h", "version": "1"}}),
            ),
            [400, 400, 400, 400, 400],
        ),
        ("GET", "/.well-known/jwks.json".into(), None, [200; 5]),
        ("GET", "/ca.pem".into(), None, [200; 5]),
        ("GET", "/healthz".into(), None, [200; 5]),
        ("GET", "/readyz".into(), None, [200; 5]),
        ("GET", "/metrics".into(), None, [200; 5]),
        ("GET", "/openapi.json".into(), None, [200; 5]),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in &routes {
        for ((name, client), want) in callers.iter().zip(expected) {
            let mut rb = match *method {
                "GET" => client.get(s.url(path)),
                "PUT" => client.put(s.url(path)),
                _ => client.post(s.url(path)),
            };
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let (st, v, _) = send(rb).await;
            if st.as_u16() != *want {
                failures.push(format!("{method} {path} as {name}: {st} (want {want}) {v}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every refusal of an identity is counted in the refusal summaries (flushed at a
    // graceful stop): one record per route, method, error code and source network per
    // window, the counts adding up to the refusals.
    let refusals = routes
        .iter()
        .flat_map(|r| r.3)
        .filter(|st| *st == 401 || *st == 403)
        .count();
    let keys: std::collections::BTreeSet<_> = routes
        .iter()
        .flat_map(|r| r.3.iter().map(move |st| (r.0, r.1.as_str(), *st)))
        .filter(|(_, _, st)| *st == 401 || *st == 403)
        .collect();
    s.restart_gateway().await;
    let (rows, counted) = {
        let r = s
            .admin
            .query_one(
                "SELECT count(*), coalesce(sum((convert_from(record, 'UTF8')::jsonb#>>'{details,count}')::bigint), 0)::bigint \
                 FROM audit_events WHERE action = 'access.refused_summary' \
                 AND convert_from(record, 'UTF8')::jsonb#>>'{details,refused_action}' = 'access.denied'",
                &[],
            )
            .await
            .expect("summaries");
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };
    assert_eq!(counted, i64::try_from(refusals).expect("small"));
    assert!(
        (1..=2 * i64::try_from(keys.len()).expect("small")).contains(&rows),
        "{rows} summary records for {} keys (at most two windows)",
        keys.len()
    );
    // The appliance's id is unaffected by the matrix (the revoke targeted an unknown id).
    assert_eq!(
        s.count(&format!("SELECT count(*) FROM appliances WHERE appliance_id = '{appliance_id}' AND state = 'active'")).await,
        1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_only_from_one_uri_san_with_client_auth_from_the_right_ca() {
    let s = Stack::start().await;
    let (tenant, _, _) = s.tenant_with_code("pro").await;
    let store = "spiffe://alga.test/service/nm-store";
    let auditor = "spiffe://alga.test/service/auditor";
    let appliance_uri = format!(
        "spiffe://alga.test/tenant/{tenant}/appliance/{}",
        Uuid::new_v4()
    );
    let tenant_path = s.url(&format!("/tenants/{tenant}"));

    // The shape the policy expects, freshly made: accepted (the control case).
    let (st, _, _) = send(s.forged(&[store], true, "store", false).get(&tenant_path)).await;
    assert_eq!(st, 200);
    // Refused identities: 403, whatever the CN says.
    let cases: Vec<(&str, reqwest::Client)> = vec![
        (
            "two URI SANs",
            s.forged(&[store, auditor], true, "store", false),
        ),
        (
            "no URI SAN, store in the CN",
            s.forged(&[], true, store, false),
        ),
        (
            "no clientAuth EKU",
            s.forged(&[store], false, "store", false),
        ),
        (
            "a URI the policy does not list",
            s.forged(&["spiffe://alga.test/service/intruder"], true, "x", false),
        ),
    ];
    for (what, client) in cases {
        let (st, v, _) = send(client.get(&tenant_path)).await;
        assert_eq!(st, 403, "{what}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{what}");
    }
    // An appliance identity from the service CA is not an appliance.
    let (st, v, _) = send(
        s.forged(&[&appliance_uri], true, "appliance", false)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1"}})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    // A self-signed certificate does not even complete the handshake.
    let r = s
        .forged(&[store], true, "store", true)
        .get(&tenant_path)
        .send()
        .await;
    assert!(
        r.is_err(),
        "self-signed client certificate refused at TLS: {r:?}"
    );
    s.stop().await;
}
