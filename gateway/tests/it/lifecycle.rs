//! The license lifecycle: rebuilds that replace, seats, edition changes, suspension,
//! appliance health, and the bad input of each.

use std::sync::Arc;

use alga_gateway::db::appliances::{self, Health};
use alga_gateway::flows::lifecycle::health_cutoffs;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::harness::{Appliance, Stack, assert_error, send};

fn uuid(v: &Value) -> Uuid {
    v.as_str().expect("a uuid string").parse().expect("uuid")
}

/// The appliance `id` in a `GET /tenants/{id}` body.
fn appliance_in(tenant: &Value, id: Uuid) -> &Value {
    tenant["appliances"]
        .as_array()
        .expect("appliances")
        .iter()
        .find(|a| a["appliance_id"] == id.to_string())
        .unwrap_or_else(|| panic!("appliance {id} in {tenant}"))
}

/// How many audit records of `action` with `outcome` (`success`/`failure`) the tenant has.
async fn audited(s: &Stack, tenant: Uuid, action: &str, outcome: &str) -> i64 {
    s.admin
        .query_one(
            "SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND action = $2 \
             AND convert_from(record, 'UTF8')::jsonb->'outcome'->>'status' = $3",
            &[&tenant, &action, &outcome],
        )
        .await
        .expect("count")
        .get(0)
}

/// Redeems a fresh code of the tenant: reissue with `body`'s replacement fields, then
/// redeem with `a`. Returns the reissue body and the redeem's status and body.
async fn reissue_and_redeem(
    s: &Stack,
    tenant: Uuid,
    extra: Value,
    a: &Appliance,
) -> (Value, StatusCode, Value) {
    let mut body = json!({"tenant_id": tenant});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (st, r) = s.reissue(&body).await;
    assert_eq!(st, 201, "{r}");
    let code = s
        .code(r["install_code"]["code_id"].as_str().expect("code_id"))
        .await;
    let (st, v) = s.redeem_as(&code, a).await;
    (r, st, v)
}

/// Redeems a code re-issued with `add_appliance` on a new appliance; its id.
async fn add_appliance(s: &Stack, tenant: Uuid) -> Uuid {
    let (_, st, v) =
        reissue_and_redeem(s, tenant, json!({"add_appliance": true}), &Appliance::new()).await;
    assert_eq!(st, 200, "{v}");
    uuid(&v["appliance_id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_retires_the_appliance_it_replaces() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let a_id = a.appliance_id.expect("A");
    assert_eq!(s.check_in(&a).await.0, 200);

    // The seed's reinstall: a code re-issued without naming an appliance replaces the
    // tenant's only active one, and says so.
    let b = Appliance::new();
    let (r, st, v) = reissue_and_redeem(&s, tenant, json!({}), &b).await;
    assert_eq!(r["replaces_appliance_id"], a_id.to_string(), "{r}");
    assert_eq!(st, 200, "{v}");
    assert_eq!(uuid(&v["tenant_id"]), tenant);
    let b = b.with_response(&v);
    let b_id = b.appliance_id.expect("B");

    // A is refused from now on; B is licensed.
    let (st, e) = s.check_in(&a).await;
    assert_error(st, &e, 403, "appliance_replaced");
    let (st, c) = s.check_in(&b).await;
    assert_eq!(st, 200, "{c}");
    let claims = s
        .license_claims(c["license"]["token"].as_str().expect("token"))
        .await;
    assert_eq!(claims["appliance_id"], b_id.to_string());
    let a_licenses_before = s
        .admin
        .query_one(
            "SELECT count(*) FROM licenses WHERE appliance_id = $1",
            &[&a_id],
        )
        .await
        .expect("count")
        .get::<_, i64>(0);
    let (st, _) = s.check_in(&a).await;
    assert_eq!(st, 403);
    let a_licenses_after = s
        .admin
        .query_one(
            "SELECT count(*) FROM licenses WHERE appliance_id = $1",
            &[&a_id],
        )
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(
        a_licenses_after, a_licenses_before,
        "A never gets another license"
    );

    // The registry shows A replaced by B, and the code's replacement.
    let t = s.tenant(tenant).await;
    let va = appliance_in(&t, a_id);
    assert_eq!(va["state"], "replaced", "{t}");
    assert_eq!(va["replaced_by"], b_id.to_string());
    assert!(va["replaced_at"].is_string());
    assert!(va["health"].is_null(), "a replaced appliance has no health");
    let vb = appliance_in(&t, b_id);
    assert_eq!(vb["state"], "active");
    assert_eq!(vb["health"], "ok");
    assert!(vb["last_check_in_at"].is_string());
    let code_view = t["install_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .find(|c| c["code_id"] == r["install_code"]["code_id"])
        .expect("the reissued code");
    assert_eq!(code_view["replaces_appliance_id"], a_id.to_string());
    assert_eq!(t["entitlement"]["active_appliances"], 1, "{t}");
    assert_eq!(t["entitlement"]["max_appliances"], 3, "{t}");
    assert_eq!(audited(&s, tenant, "appliance.replace", "success").await, 1);

    // The redeem retry still answers the same appliance (and takes no seat).
    let rcode = s
        .code(r["install_code"]["code_id"].as_str().expect("code_id"))
        .await;
    let (st, again) = s.redeem_as(&rcode, &b).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(uuid(&again["appliance_id"]), b_id);
    let (st, e) = s.redeem_as(&rcode, &Appliance::new()).await;
    assert_error(st, &e, 409, "code_already_used");

    // Bad input: each a typed error, nothing changed, an audit record.
    let codes_before = s
        .count("SELECT count(*) FROM install_codes WHERE state = 'unclaimed'")
        .await;
    let failures_before = audited(&s, tenant, "code.reissue", "failure").await;
    let (st, e) = s
        .reissue(&json!({"tenant_id": tenant, "replaces_appliance_id": a_id}))
        .await;
    assert_error(st, &e, 409, "appliance_not_active");
    let (st, e) = s
        .reissue(&json!({"tenant_id": tenant, "replaces_appliance_id": Uuid::new_v4()}))
        .await;
    assert_error(st, &e, 404, "appliance_not_found");
    let (other, _, other_code) = s.tenant_with_code("pro").await;
    let (st, ov, _) = s.redeem(&other_code).await;
    assert_eq!(st, 200, "{ov}");
    let (st, e) = s
        .reissue(&json!({"tenant_id": tenant, "replaces_appliance_id": ov["appliance_id"]}))
        .await;
    assert_error(st, &e, 404, "appliance_not_found");
    let (st, e) = s
        .reissue(
            &json!({"tenant_id": tenant, "replaces_appliance_id": b_id, "add_appliance": true}),
        )
        .await;
    assert_error(st, &e, 400, "validation_failed");
    assert!(e["error"]["fields"]["add_appliance"].is_string(), "{e}");
    assert_eq!(
        s.count("SELECT count(*) FROM install_codes WHERE state = 'unclaimed'")
            .await,
        codes_before
    );
    // The three refused by the flow name the tenant; the malformed body is refused
    // before any tenant is known (and recorded without one).
    assert_eq!(
        audited(&s, tenant, "code.reissue", "failure").await,
        failures_before + 3
    );
    assert_eq!(
        audited(&s, other, "code.reissue", "failure").await,
        0,
        "the other tenant is untouched"
    );

    // A revoked appliance cannot be replaced either; a second active one makes the
    // implicit replacement ambiguous.
    add_appliance(&s, tenant).await;
    let (st, e) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_error(st, &e, 409, "replacement_ambiguous");
    let (st, rv, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{b_id}/revoke")))
            .json(&json!({})),
    )
    .await;
    assert_eq!(st, 200, "{rv}");
    let (st, e) = s
        .reissue(&json!({"tenant_id": tenant, "replaces_appliance_id": b_id}))
        .await;
    assert_error(st, &e, 409, "appliance_not_active");
    // Revoking a replaced appliance changes nothing and says what it is.
    let (st, rv, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{a_id}/revoke")))
            .json(&json!({})),
    )
    .await;
    assert_eq!(st, 200, "{rv}");
    assert_eq!(rv["state"], "replaced");
    assert_eq!(rv["changed"], false);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_edited_in_the_database_no_longer_verifies() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let a_id = a.appliance_id.expect("A");
    // A second appliance, so that the edit can name a real one of the tenant.
    let other_id = add_appliance(&s, tenant).await;

    let (st, r) = s
        .reissue(&json!({"tenant_id": tenant, "replaces_appliance_id": a_id}))
        .await;
    assert_eq!(st, 201, "{r}");
    let code_id = r["install_code"]["code_id"].as_str().expect("code_id");
    let code = s.code(code_id).await;
    for edit in [Some(other_id), None] {
        s.admin
            .execute(
                "UPDATE install_codes SET replaces_appliance_id = $2 WHERE code_id = $1",
                &[&code_id, &edit],
            )
            .await
            .expect("edit the binding");
        let (st, e) = s.redeem_as(&code, &Appliance::new()).await;
        assert_error(st, &e, 401, "code_invalid");
        assert_eq!(s.code_state(code_id).await, "unclaimed");
    }
    // Restored, it verifies and retires A (not the appliance the edit named).
    s.admin
        .execute(
            "UPDATE install_codes SET replaces_appliance_id = $2 WHERE code_id = $1",
            &[&code_id, &Some(a_id)],
        )
        .await
        .expect("restore");
    let (st, v) = s.redeem_as(&code, &Appliance::new()).await;
    assert_eq!(st, 200, "{v}");
    let t = s.tenant(tenant).await;
    assert_eq!(appliance_in(&t, a_id)["state"], "replaced");
    assert_eq!(appliance_in(&t, other_id)["state"], "active");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeems_never_take_more_seats_than_the_edition_allows() {
    let s = Arc::new(Stack::start().await);
    let max = s.policy.edition("pro").expect("pro").max_appliances;
    assert_eq!(max, 3, "the dev policy's pro edition");
    let (tenant, _, first) = s.tenant_with_code("pro").await;
    let mut codes = vec![first];
    for _ in 0..49 {
        let (st, r) = s
            .reissue(&json!({"tenant_id": tenant, "add_appliance": true}))
            .await;
        assert_eq!(st, 201, "{r}");
        assert!(r["replaces_appliance_id"].is_null(), "{r}");
        assert_eq!(
            r["revoked_code_ids"],
            json!([]),
            "added codes supersede nothing"
        );
        codes.push(
            s.code(r["install_code"]["code_id"].as_str().expect("code_id"))
                .await,
        );
    }
    let tasks: Vec<_> = codes
        .into_iter()
        .map(|code| {
            let s = s.clone();
            tokio::spawn(async move { s.redeem(&code).await })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let (st, v, _) = t.await.expect("task");
        match st.as_u16() {
            200 => ok += 1,
            409 => {
                assert_error(st, &v, 409, "seat_limit_reached");
                full += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((ok, full), (3, 47));
    let count = |state: &'static str| {
        let s = s.clone();
        async move {
            s.admin
                .query_one(
                    "SELECT count(*) FROM install_codes WHERE tenant_id = $1 AND state = $2",
                    &[&tenant, &state],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("consumed").await, 3);
    assert_eq!(count("unclaimed").await, 47, "refused codes stay usable");
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM appliances WHERE tenant_id = '{tenant}' AND state = 'active'"
        ))
        .await,
        3
    );
    assert_eq!(
        audited(&s, tenant, "code.redeem", "failure").await,
        47,
        "every refusal is audited"
    );
    // No seat left for another added code either.
    let (st, e) = s
        .reissue(&json!({"tenant_id": tenant, "add_appliance": true}))
        .await;
    assert_error(st, &e, 409, "seat_limit_reached");
    match Arc::try_unwrap(s) {
        Ok(s) => s.stop().await,
        Err(_) => panic!("stack still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edition_changes_reach_the_next_check_in() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let put = |edition: &str| {
        s.store()
            .put(s.url(&format!("/tenants/{tenant}/entitlement")))
            .json(&json!({"edition": edition}))
    };

    // An upgrade between paid editions: the next license carries it.
    let (st, r, _) = send(put("enterprise")).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (
            r["edition"].as_str(),
            r["previous_edition"].as_str(),
            &r["changed"]
        ),
        (Some("enterprise"), Some("pro"), &json!(true))
    );
    assert_eq!(r["max_appliances"], 10);
    let (st, c) = s.check_in(&a).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["edition"], "enterprise");
    let claims = s
        .license_claims(c["license"]["token"].as_str().expect("token"))
        .await;
    assert_eq!(claims["edition"], "enterprise");
    assert!(
        claims["entitlements"]["features"]
            .as_array()
            .expect("features")
            .contains(&json!("multi-site")),
        "{claims}"
    );
    assert!(claims["check_in_by"].as_i64().is_some(), "{claims}");

    // The same edition again changes nothing.
    let (st, r, _) = send(put("enterprise")).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["changed"], false);

    // Down to an edition without a license: license null, no credential.
    let (st, r, _) = send(put("essentials")).await;
    assert_eq!(st, 200, "{r}");
    let licenses = s.count("SELECT count(*) FROM licenses").await;
    let (st, c) = s.check_in(&a).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["edition"], "essentials");
    assert!(c["license"].is_null(), "{c}");
    assert!(c["credential"].is_null(), "{c}");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, licenses);
    assert_eq!(s.tenant(tenant).await["entitlement"]["paid"], false);

    // Bad input.
    let (st, e, _) = send(put("platinum")).await;
    assert_error(st, &e, 400, "validation_failed");
    assert!(e["error"]["fields"]["edition"].is_string(), "{e}");
    let (st, e, _) = send(
        s.store()
            .put(s.url(&format!("/tenants/{}/entitlement", Uuid::new_v4())))
            .json(&json!({"edition": "pro"})),
    )
    .await;
    assert_error(st, &e, 404, "tenant_not_found");
    let (st, e, _) = send(
        s.auditor()
            .put(s.url(&format!("/tenants/{tenant}/entitlement")))
            .json(&json!({"edition": "pro"})),
    )
    .await;
    assert_error(st, &e, 403, "forbidden");
    assert_eq!(
        audited(&s, tenant, "entitlement.change", "failure").await,
        1,
        "the unknown edition, recorded against the tenant"
    );
    assert_eq!(
        audited(&s, tenant, "entitlement.change", "success").await,
        3
    );

    // Back on pro, A (its credential still valid) is licensed again.
    let (st, r, _) = send(put("pro")).await;
    assert_eq!(st, 200, "{r}");
    let (st, c) = s.check_in(&a).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["edition"], "pro");
    assert!(c["license"]["token"].is_string());

    // Pending codes of the old edition are revoked by a change.
    let (st, r) = s
        .reissue(&json!({"tenant_id": tenant, "add_appliance": true}))
        .await;
    assert_eq!(st, 201, "{r}");
    let pending = r["install_code"]["code_id"].as_str().expect("code_id");
    let pending_code = s.code(pending).await;
    let (st, r, _) = send(put("enterprise")).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["revoked_code_ids"], json!([pending]));
    let (st, e) = s.redeem_as(&pending_code, &Appliance::new()).await;
    assert_error(st, &e, 410, "code_revoked");
    let (st, r, _) = send(put("pro")).await;
    assert_eq!(st, 200, "{r}");

    // Down to essentials (one appliance at most) with two active: refused, unchanged.
    add_appliance(&s, tenant).await;
    let (st, e, _) = send(put("essentials")).await;
    assert_error(st, &e, 409, "seat_limit_reached");
    assert_eq!(s.tenant(tenant).await["edition"], "pro");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_essentials_keeps_the_tenant() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("essentials").await;
    let running = Appliance::new();
    let (st, v) = s.redeem_as(&code, &running).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["license"].is_null(), "{v}");
    let first = uuid(&v["appliance_id"]);

    let (st, r, _) = send(
        s.store()
            .put(s.url(&format!("/tenants/{tenant}/entitlement")))
            .json(&json!({"edition": "pro"})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    // A re-issued code, redeemed on the running appliance (its own key again).
    let (r, st, v) = reissue_and_redeem(&s, tenant, json!({}), &running).await;
    assert_eq!(r["replaces_appliance_id"], first.to_string());
    assert_eq!(r["edition"], "pro");
    assert_eq!(st, 200, "{v}");
    assert_eq!(uuid(&v["tenant_id"]), tenant, "the same tenant");
    assert_eq!(v["edition"], "pro");
    assert!(v["license"]["token"].is_string(), "{v}");
    let upgraded = running.with_response(&v);
    assert_eq!(s.check_in(&upgraded).await.0, 200);
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM tenants WHERE company = (SELECT company FROM tenants WHERE tenant_id = '{tenant}')"
        ))
        .await,
        1,
        "no new tenant row"
    );
    let t = s.tenant(tenant).await;
    assert_eq!(appliance_in(&t, first)["state"], "replaced");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_round_trip() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let (st, r) = s
        .reissue(&json!({"tenant_id": tenant, "add_appliance": true}))
        .await;
    assert_eq!(st, 201, "{r}");
    let pending_id = r["install_code"]["code_id"].as_str().expect("code_id");
    let pending = s.code(pending_id).await;
    let post = |what: &str| {
        s.store()
            .post(s.url(&format!("/tenants/{tenant}/{what}")))
            .json(&json!({"reason": "invoice overdue"}))
    };

    let (st, r, _) = send(post("suspend")).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "suspended");
    assert!(r["suspended_at"].is_string());
    let (st, e, _) = send(post("suspend")).await;
    assert_error(st, &e, 409, "tenant_already_suspended");
    let t = s.tenant(tenant).await;
    assert_eq!(t["status"], "suspended");

    // Check-in, redeem and reissue are refused; nothing is consumed.
    let (st, e) = s.check_in(&a).await;
    assert_error(st, &e, 403, "tenant_suspended");
    let (st, e) = s.redeem_as(&pending, &Appliance::new()).await;
    assert_error(st, &e, 403, "tenant_suspended");
    assert_eq!(s.code_state(pending_id).await, "unclaimed");
    let (st, e) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_error(st, &e, 403, "tenant_suspended");
    assert_eq!(s.code_state(pending_id).await, "unclaimed", "not revoked");

    let (st, r, _) = send(post("resume")).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "active");
    assert!(r["suspended_at"].is_null());
    let (st, e, _) = send(post("resume")).await;
    assert_error(st, &e, 409, "tenant_not_suspended");
    assert_eq!(s.check_in(&a).await.0, 200);
    let (st, v) = s.redeem_as(&pending, &Appliance::new()).await;
    assert_eq!(st, 200, "{v}");

    // Unknown tenant; a body that is not a reason.
    let (st, e, _) = send(
        s.store()
            .post(s.url(&format!("/tenants/{}/suspend", Uuid::new_v4()))),
    )
    .await;
    assert_error(st, &e, 404, "tenant_not_found");
    let (st, e, _) = send(
        s.store()
            .post(s.url(&format!("/tenants/{tenant}/suspend")))
            .json(&json!({"reason": "a\nb"})),
    )
    .await;
    assert_error(st, &e, 400, "validation_failed");

    assert_eq!(audited(&s, tenant, "tenant.suspend", "success").await, 1);
    assert_eq!(audited(&s, tenant, "tenant.resume", "success").await, 1);
    // The second suspend, the second resume and the bad reason.
    assert_eq!(
        audited(&s, tenant, "tenant.suspend", "failure").await
            + audited(&s, tenant, "tenant.resume", "failure").await,
        3
    );
    assert_eq!(audited(&s, tenant, "code.redeem", "failure").await, 1);
    assert_eq!(
        audited(&s, tenant, "appliance.check_in", "failure").await,
        1
    );
    let reason: Value = s
        .admin
        .query_one(
            "SELECT convert_from(record, 'UTF8')::jsonb->'details' FROM audit_events \
             WHERE tenant_id = $1 AND action = 'tenant.suspend' \
             AND convert_from(record, 'UTF8')::jsonb->'outcome'->>'status' = 'success'",
            &[&tenant],
        )
        .await
        .expect("record")
        .get(0);
    assert_eq!(reason["reason"], "invoice overdue");
    s.stop().await;
}

/// Sets an appliance's last check-in (`None`: never, so its redeem counts).
async fn checked_in_at(s: &Stack, id: Uuid, at: Option<OffsetDateTime>, created: OffsetDateTime) {
    s.admin
        .execute(
            "UPDATE appliances SET last_check_in_at = $2, created_at = $3 WHERE appliance_id = $1",
            &[&id, &at, &created],
        )
        .await
        .expect("backdate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_computed_from_the_now_passed_in() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let mut ids = vec![uuid(&v["appliance_id"])];
    for _ in 0..2 {
        ids.push(add_appliance(&s, tenant).await);
    }
    // pro: a 24 h interval and 3 days of grace, so overdue 4 days after a check-in;
    // stale after 30 days.
    let t0 = OffsetDateTime::parse(
        "2031-01-01T00:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .expect("t0");
    let long_ago = t0 - Duration::days(400);
    checked_in_at(&s, ids[0], Some(t0), long_ago).await;
    checked_in_at(&s, ids[1], None, t0).await;
    checked_in_at(&s, ids[2], Some(t0 - Duration::days(10)), long_ago).await;

    let pool = s.admin_pool();
    let conn = pool.get().await.expect("conn");
    let health_at = |now: OffsetDateTime| {
        let (conn, policy, ids) = (&conn, &s.policy, &ids);
        async move {
            let rows = appliances::list_for_tenant(conn, tenant, &health_cutoffs(policy, now))
                .await
                .expect("list");
            ids.iter()
                .map(|id| {
                    rows.iter()
                        .find(|r| r.appliance.appliance_id == *id)
                        .expect("row")
                        .health
                })
                .collect::<Vec<_>>()
        }
    };
    use Health::{Ok as Fine, Overdue, Stale};
    let day = Duration::days(1);
    // The references: t0 (a check-in), t0 (the redeem, never checked in), t0 - 10 days.
    let table = [
        (t0 - 7 * day, [Some(Fine), Some(Fine), Some(Fine)]),
        (t0, [Some(Fine), Some(Fine), Some(Overdue)]),
        // Exactly at interval + grace: still ok (overdue is past it).
        (t0 + 4 * day, [Some(Fine), Some(Fine), Some(Overdue)]),
        (
            t0 + 4 * day + Duration::seconds(1),
            [Some(Overdue), Some(Overdue), Some(Overdue)],
        ),
        // 30 days since t0 - 10 days: stale at exactly 30.
        (
            t0 + 20 * day - Duration::seconds(1),
            [Some(Overdue), Some(Overdue), Some(Overdue)],
        ),
        (t0 + 20 * day, [Some(Overdue), Some(Overdue), Some(Stale)]),
        (
            t0 + 30 * day - Duration::seconds(1),
            [Some(Overdue), Some(Overdue), Some(Stale)],
        ),
        (t0 + 30 * day, [Some(Stale), Some(Stale), Some(Stale)]),
    ];
    for (now, want) in table {
        assert_eq!(health_at(now).await, want, "at {now}");
    }

    // Paging in id order with a health filter, and the count the gauge shows.
    let cutoffs = health_cutoffs(&s.policy, t0 + 22 * day);
    let overdue = appliances::page(&conn, &cutoffs, Some(Overdue), None, 10)
        .await
        .expect("page");
    let mut want: Vec<Uuid> = ids[..2].to_vec();
    want.sort();
    let got: Vec<Uuid> = overdue.iter().map(|r| r.appliance.appliance_id).collect();
    assert_eq!(got, want);
    let first = appliances::page(&conn, &cutoffs, Some(Overdue), None, 1)
        .await
        .expect("page");
    let second = appliances::page(
        &conn,
        &cutoffs,
        Some(Overdue),
        Some(first[0].appliance.appliance_id),
        1,
    )
    .await
    .expect("page");
    assert_eq!(
        [
            first[0].appliance.appliance_id,
            second[0].appliance.appliance_id
        ],
        [want[0], want[1]]
    );
    let mut counts = appliances::count_by_health(&conn, &cutoffs)
        .await
        .expect("counts");
    counts.sort();
    assert_eq!(counts, vec![(Overdue, 2), (Stale, 1)]);

    // An essentials tenant's appliance has no health.
    let (ess, _, ecode) = s.tenant_with_code("essentials").await;
    let (st, v, _) = s.redeem(&ecode).await;
    assert_eq!(st, 200, "{v}");
    let rows = appliances::list_for_tenant(&conn, ess, &cutoffs)
        .await
        .expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].health, None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliances_are_listed_by_health_and_counted_in_the_metrics() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let fresh = uuid(&v["appliance_id"]);
    let mut stale = Vec::new();
    for _ in 0..2 {
        let id = add_appliance(&s, tenant).await;
        let then = OffsetDateTime::now_utc() - Duration::days(45);
        checked_in_at(&s, id, Some(then), then).await;
        stale.push(id);
    }
    stale.sort();

    // Page through the stale ones, one at a time, as the store and as an auditor.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = s.url("/appliances?health=stale&limit=1");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (st, p, _) = send(s.auditor().get(url)).await;
        assert_eq!(st, 200, "{p}");
        for a in p["appliances"].as_array().expect("appliances") {
            assert_eq!(a["health"], "stale");
            assert_eq!(a["tenant_id"], tenant.to_string());
            seen.push(uuid(&a["appliance_id"]));
        }
        match p["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, stale);
    let (st, p, _) = send(s.store().get(s.url("/appliances?health=ok"))).await;
    assert_eq!(st, 200, "{p}");
    let ok: Vec<Uuid> = p["appliances"]
        .as_array()
        .expect("appliances")
        .iter()
        .map(|a| uuid(&a["appliance_id"]))
        .collect();
    assert_eq!(ok, vec![fresh]);
    assert!(p["next"].is_null());

    for bad in [
        "health=late",
        "after=nope",
        "limit=0",
        "limit=1001",
        "colour=blue",
    ] {
        let (st, e, _) = send(s.store().get(s.url(&format!("/appliances?{bad}")))).await;
        assert_error(st, &e, 400, "validation_failed");
    }
    let (st, e, _) = send(s.anon().get(s.url("/appliances"))).await;
    assert_error(st, &e, 401, "unauthenticated");

    // The gauge: active appliances of paid editions by health (counted at the first
    // scrape).
    let text = s
        .anon()
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (health, n) in [("ok", 1), ("overdue", 0), ("stale", 2)] {
        let line = format!("alga_gateway_appliances{{health=\"{health}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    s.stop().await;
}
