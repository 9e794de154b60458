//! `POST /check-in` and `POST /appliances/{id}/revoke`.

use serde_json::json;
use uuid::Uuid;

use crate::harness::{Stack, assert_error, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_refreshes_the_license_and_honours_revocation_and_suspension() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let appliance_id = a.appliance_id.expect("id");
    let me = s.appliance(&a);

    // A fresh credential (30 days left of 30): a new license, no new credential even with a CSR.
    let (st, c, _) = send(
        me.post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1.1.0"}, "csr": a.csr_pem})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        c["license"]["token"]
            .as_str()
            .expect("token")
            .split('.')
            .count(),
        3
    );
    assert!(c["credential"].is_null(), "{c}");
    let next = time::OffsetDateTime::parse(
        c["next_check_in_after"].as_str().expect("time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::hours(24);
    assert!(
        (next - in_a_day).abs() < time::Duration::minutes(5),
        "{next}"
    );
    let (st, c, _) = send(
        me.post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1.1.0"}, "csr": null})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        s.count("SELECT count(*) FROM licenses WHERE reason = 'check_in'")
            .await,
        2
    );
    let row = s
        .admin
        .query_one(
            "SELECT version, last_check_in_at IS NOT NULL FROM appliances WHERE appliance_id = $1",
            &[&appliance_id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "1.1.0");
    assert!(row.get::<_, bool>(1));

    // Without a credential, and with the wrong kind of identity.
    let body = json!({"appliance": {"version": "1"}});
    let (st, e, _) = send(s.anon().post(s.url("/check-in")).json(&body)).await;
    assert_error(st, &e, 401, "credential_required");
    let (st, e, _) = send(s.store().post(s.url("/check-in")).json(&body)).await;
    assert_error(st, &e, 403, "forbidden");

    // Suspended tenant (the store's API; `lifecycle` covers it in full).
    let (st, v, _) = send(s.store().post(s.url(&format!("/tenants/{tenant}/suspend")))).await;
    assert_eq!(st, 200, "{v}");
    let (st, e, _) = send(me.post(s.url("/check-in")).json(&body)).await;
    assert_error(st, &e, 403, "tenant_suspended");
    let (st, v, _) = send(s.store().post(s.url(&format!("/tenants/{tenant}/resume")))).await;
    assert_eq!(st, 200, "{v}");

    // A tenant whose entitlement row is gone (corruption, not an API state) gets an
    // internal error, not "appliance not found", and no license is recorded.
    let licenses = s.count("SELECT count(*) FROM licenses").await;
    let saved = s
        .admin
        .query_one(
            "DELETE FROM entitlements WHERE tenant_id = $1 RETURNING edition, paid, features, seats",
            &[&tenant],
        )
        .await
        .expect("remove the entitlement");
    let (st, e, _) = send(me.post(s.url("/check-in")).json(&body)).await;
    assert_error(st, &e, 500, "internal");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, licenses);
    s.admin
        .execute(
            "INSERT INTO entitlements (tenant_id, edition, paid, features, seats) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &tenant,
                &saved.get::<_, String>(0),
                &saved.get::<_, bool>(1),
                &saved.get::<_, Vec<String>>(2),
                &saved.get::<_, i32>(3),
            ],
        )
        .await
        .expect("restore the entitlement");

    // A body in another media type (even one that starts like JSON's) is refused and
    // changes nothing.
    for ct in ["application/jsonx", "text/plain"] {
        let (st, e, _) = send(
            s.store()
                .post(s.url(&format!("/appliances/{appliance_id}/revoke")))
                .header("content-type", ct)
                .body(r#"{"reason": "stolen"}"#),
        )
        .await;
        assert_error(st, &e, 415, "unsupported_media_type");
    }
    let (st, _, _) = send(me.post(s.url("/check-in")).json(&body)).await;
    assert_eq!(st, 200, "still active after refused revocations");

    // Revocation by the store: idempotent, audited, and check-in refused afterwards.
    let (st, r, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{appliance_id}/revoke")))
            .json(&json!({"reason": "stolen"})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["state"], "revoked");
    assert_eq!(r["changed"], true);
    let (st, r, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{appliance_id}/revoke"))),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["changed"], false);
    let (st, e, _) = send(me.post(s.url("/check-in")).json(&body)).await;
    assert_error(st, &e, 403, "appliance_revoked");
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events WHERE action = 'appliance.revoke'")
            .await,
        1
    );
    let (st, e, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{}/revoke", Uuid::new_v4()))),
    )
    .await;
    assert_error(st, &e, 404, "appliance_not_found");
    let (st, t, _) = send(s.auditor().get(s.url(&format!("/tenants/{tenant}")))).await;
    assert_eq!(st, 200);
    assert_eq!(t["appliances"][0]["state"], "revoked");
    assert_eq!(t["install_codes"][0]["state"], "consumed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_renews_a_credential_with_less_than_a_third_left() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let appliance_id = a.appliance_id.expect("id");
    // 5 minutes backdated + 60 s ahead: less than a third of its lifetime is left.
    let short = s.short_credential(tenant, &a, 60).await;
    let me = s.appliance(&short);

    // Without a CSR: a license, no credential.
    let (st, c, _) = send(
        me.post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1"}})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    assert!(c["credential"].is_null(), "{c}");
    // With one: a fresh credential (the policy's 30 days), recorded on the appliance.
    let (st, c, _) = send(
        me.post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1"}, "csr": a.csr_pem})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    let cert = c["credential"]["certificate"].as_str().expect("renewed");
    let expires = time::OffsetDateTime::parse(
        c["credential"]["expires_at"].as_str().expect("time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert!(expires - time::OffsetDateTime::now_utc() > time::Duration::days(29));
    assert_eq!(s.stored_credential(appliance_id).await.1, Some(expires));
    // The renewed credential works for the next check-in.
    let mut renewed = a.clone();
    renewed.certificate = Some(cert.to_owned());
    renewed.chain = c["credential"]["chain"].as_str().map(str::to_owned);
    let (st, c, _) = send(
        s.appliance(&renewed)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1"}})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events WHERE action = 'appliance.check_in'")
            .await,
        3
    );
    // A check-in that renews nothing keeps the recorded credential.
    assert_eq!(s.stored_credential(appliance_id).await.1, Some(expires));
    s.stop().await;
}

/// A gateway that started while the issuer was down (as at a host's boot) has no
/// appliance CA to check credentials against; it keeps asking every few seconds, so
/// appliances check in again soon after the issuer answers, not a key-refresh period
/// (a minute) later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_its_issuer_accepts_credentials_once_it_answers() {
    let mut s = Stack::start().await;
    let (_, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    s.stop_issuer().await;
    s.restart_gateway_unready().await;
    // Long enough for the new gateway's first fetch of the keys to fail.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    s.restart_issuer().await;
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Ok(r) = s
            .appliance(&a)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1"}}))
            .send()
            .await
        {
            last = Some(r.status());
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    println!(
        "check-in accepted {:?} after the issuer came back",
        started.elapsed()
    );
    assert_eq!(
        last.map(|s| s.as_u16()),
        Some(200),
        "the appliance's credential was still refused 20 s after the issuer answered \
         (the keys are re-fetched every {:?} while the gateway has none)",
        alga_gateway::KEY_RETRY
    );
    s.stop().await;
}
