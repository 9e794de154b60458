//! `POST /register`: redemption, its error codes, the retry rule, concurrency.

use std::time::Duration;

use alga_protocol::{CodeId, InstallCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Appliance, Opts, Stack, assert_error, send};

fn without_request_id(mut v: Value) -> Value {
    v["error"]["request_id"] = json!("");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_pro_returns_tenant_license_credential_and_check_in_url() {
    let s = Stack::start().await;
    let (tenant, code_id, code) = s.tenant_with_code("pro").await;
    // Operators type codes loosely: lower case, spaces.
    let typed = code.to_lowercase().replace('-', " ");
    let (st, v, a) = s.redeem(&typed).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], tenant.to_string());
    assert_eq!(v["edition"], "pro");
    let appliance_id: Uuid = v["appliance_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let token = v["license"]["token"].as_str().expect("token");
    assert_eq!(token.split('.').count(), 3, "a JWS");
    assert!(v["license"]["expires_at"].is_string());
    assert!(
        v["credential"]["certificate"]
            .as_str()
            .expect("cert")
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        v["credential"]["chain"]
            .as_str()
            .expect("chain")
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(v["check_in_url"], "https://localhost:8443/check-in");

    // The license verifies against the published JWKS, with the claims of CONTRACT.md §5.
    let claims = s.license_claims(token).await;
    assert_eq!(claims["sub"], tenant.to_string());
    assert_eq!(claims["appliance_id"], appliance_id.to_string());
    assert_eq!(claims["edition"], "pro");

    // State: code consumed by this key, one appliance, one license, audited.
    let row = s
        .admin
        .query_one(
            "SELECT state, appliance_id FROM install_codes WHERE code_id = $1",
            &[&code_id],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, String>(0), "consumed");
    assert_eq!(row.get::<_, Option<Uuid>>(1), Some(appliance_id));
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 1);
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 1);
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events WHERE action = 'code.redeem'")
            .await,
        1
    );
    // The appliance row carries the credential it was given.
    let (serial, expires) = s.stored_credential(appliance_id).await;
    assert!(serial.is_some());
    assert_eq!(expires, Some(rfc3339(&v["credential"]["expires_at"])));

    // Retry with the same key within 15 minutes: same tenant and appliance, fresh license.
    let (st, again) = s.redeem_as(&code, &a).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["tenant_id"], tenant.to_string());
    assert_eq!(again["appliance_id"], appliance_id.to_string());
    assert!(again["credential"]["certificate"].is_string());
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 1);
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 2);
    // ...and the fresh credential is the one recorded.
    let (serial_again, expires_again) = s.stored_credential(appliance_id).await;
    assert!(serial_again.is_some() && serial_again != serial);
    assert_eq!(
        expires_again,
        Some(rfc3339(&again["credential"]["expires_at"]))
    );
    // Another key: already used.
    let (st, e, _) = s.redeem(&code).await;
    assert_error(st, &e, 409, "code_already_used");
    // Once the store revokes the appliance, even its own key's retry within the window
    // gets no new license or credential.
    let (st, r, _) = send(
        s.store()
            .post(s.url(&format!("/appliances/{appliance_id}/revoke")))
            .json(&json!({"reason": "decommissioned"})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (st, e) = s.redeem_as(&code, &a).await;
    assert_error(st, &e, 409, "code_already_used");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 2);
    s.stop().await;
}

/// A code is expired exactly at its `expires_at`: Postgres' `now()` decides (the
/// consuming `UPDATE … AND expires_at > now()`), so the test freezes that clock for the
/// gateway's connections (a `now()` in a schema searched before `pg_catalog`) and mints
/// one code expiring exactly then and one a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_is_expired_exactly_at_its_expires_at() {
    let mut s = Stack::start().await;
    let (tenant, _, _) = s.tenant_with_code("pro").await;
    // An hour ahead, whole seconds (codes carry whole seconds), so the issuer mints it.
    let frozen = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("whole second")
        + time::Duration::hours(1);
    s.admin
        .batch_execute(
            "CREATE SCHEMA test_clock; \
             CREATE TABLE test_clock.frozen (at timestamptz NOT NULL); \
             CREATE FUNCTION test_clock.now() RETURNS timestamptz LANGUAGE sql STABLE \
                 AS 'SELECT at FROM test_clock.frozen'; \
             GRANT USAGE ON SCHEMA test_clock TO PUBLIC; \
             GRANT SELECT ON test_clock.frozen TO PUBLIC;",
        )
        .await
        .expect("the test clock");
    s.admin
        .execute("INSERT INTO test_clock.frozen VALUES ($1)", &[&frozen])
        .await
        .expect("freeze");
    s.admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET search_path = test_clock, pg_catalog, public",
            s.db
        ))
        .await
        .expect("search_path");
    s.restart_gateway().await;
    // The gateway's connections see the frozen clock.
    let (at_expiry_id, at_expiry) = s.mint_raw(tenant, "pro", frozen).await;
    let (st, e, _) = s.redeem(&at_expiry).await;
    assert_error(st, &e, 410, "code_expired");
    assert_eq!(s.code_state(&at_expiry_id).await, "unclaimed");
    // A code expiring one second after the (frozen) now is redeemed.
    let (later_id, later) = s
        .mint_raw(tenant, "pro", frozen + time::Duration::seconds(1))
        .await;
    let (st, v, _) = s.redeem(&later).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.code_state(&later_id).await, "consumed");
    // And the database did decide with the frozen clock.
    let consumed_at: time::OffsetDateTime = s
        .admin
        .query_one(
            "SELECT consumed_at FROM install_codes WHERE code_id = $1",
            &[&later_id],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(consumed_at, frozen);
    s.stop().await;
}

/// The same key's retry is accepted for 15 minutes after the consumption and refused
/// after, with nothing else (revocation, another key) standing in the way: the appliance
/// stays active throughout, so only the window can refuse the last retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_keys_retry_is_accepted_for_15_minutes_after_the_consumption() {
    let s = Stack::start().await;
    let (tenant, code_id, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let appliance_id = v["appliance_id"].clone();
    let age = |interval: &'static str| {
        let s = &s;
        let code_id = code_id.clone();
        async move {
            let n = s
                .admin
                .execute(
                    &format!(
                        "UPDATE install_codes SET consumed_at = now() - interval '{interval}' \
                         WHERE code_id = $1"
                    ),
                    &[&code_id],
                )
                .await
                .expect("age the consumption");
            assert_eq!(n, 1, "one code aged");
        }
    };
    // Consumed 14 minutes 50 seconds ago: still inside the window.
    age("14 minutes 50 seconds").await;
    let (st, again) = s.redeem_as(&code, &a).await;
    assert_eq!(st, 200, "a retry inside the window refused: {again}");
    assert_eq!(again["tenant_id"], tenant.to_string());
    assert_eq!(again["appliance_id"], appliance_id);
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 2);
    // A retry does not move the window: it still counts from the first consumption.
    let row = s
        .admin
        .query_one(
            "SELECT consumed_at < now() - interval '14 minutes' FROM install_codes \
             WHERE code_id = $1",
            &[&code_id],
        )
        .await
        .expect("row");
    assert!(row.get::<_, bool>(0), "a retry restarted the window");
    // Consumed 15 minutes 10 seconds ago: outside, and the appliance is still active.
    age("15 minutes 10 seconds").await;
    let appliance: Uuid = appliance_id.as_str().expect("id").parse().expect("uuid");
    let state: String = s
        .admin
        .query_one(
            "SELECT state FROM appliances WHERE appliance_id = $1",
            &[&appliance],
        )
        .await
        .expect("appliance")
        .get(0);
    assert_eq!(state, "active");
    let (st, e) = s.redeem_as(&code, &a).await;
    assert_error(st, &e, 409, "code_already_used");
    assert_eq!(
        s.count("SELECT count(*) FROM licenses").await,
        2,
        "no license past the window"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_essentials_has_no_license_credential_or_check_in() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("essentials").await;
    let (st, v, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], tenant.to_string());
    assert_eq!(v["edition"], "essentials");
    assert!(v["appliance_id"].is_string());
    assert!(
        v["license"].is_null() && v["credential"].is_null() && v["check_in_url"].is_null(),
        "{v}"
    );
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_error_codes() {
    let mut s = Stack::start().await;
    let (tenant, code_id, code) = s.tenant_with_code("pro").await;

    // code_malformed: a typo is caught by the check symbols, before any lookup.
    let mut typo: Vec<char> = code.chars().collect();
    typo[7] = if typo[7] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    for bad in [
        typo.as_str(),
        "hello",
        "",
        "UUUUU-UUUUU-UUUUU-UUUUU-UUUUU-UUUUU",
    ] {
        let (st, e) = s.redeem_as(bad, &Appliance::new()).await;
        assert_error(st, &e, 400, "code_malformed");
    }

    // code_invalid: unknown id, and a known id with the wrong secret: the same body.
    let forged_known = InstallCode::from_mac(CodeId::parse(&code_id).expect("id"), &[7u8; 32]);
    let forged_unknown = InstallCode::from_mac(CodeId::random(), &[7u8; 32]);
    let (st1, e1) = s
        .redeem_as(&forged_known.expose_formatted(), &Appliance::new())
        .await;
    let (st2, e2) = s
        .redeem_as(&forged_unknown.expose_formatted(), &Appliance::new())
        .await;
    assert_error(st1, &e1, 401, "code_invalid");
    assert_error(st2, &e2, 401, "code_invalid");
    assert_eq!(
        without_request_id(e1),
        without_request_id(e2),
        "indistinguishable"
    );

    // csr_invalid: garbage, and a CSR whose signature does not verify; the code stays usable.
    let a = Appliance::new();
    let mut tampered = a.csr_pem.clone();
    let idx = tampered.len() / 2;
    let c = tampered.as_bytes()[idx];
    tampered.replace_range(idx..idx + 1, if c == b'A' { "B" } else { "A" });
    for csr in ["not a csr", tampered.as_str()] {
        let (st, e, _) = send(s.anon().post(s.url("/register")).json(&json!({
            "install_code": code, "csr": csr, "appliance": {"hostname": "h", "version": "1"}
        })))
        .await;
        assert_error(st, &e, 400, "csr_invalid");
    }
    // A CSR the issuer would refuse (P-384) is refused here, before the code is
    // verified and before anything is signed (refusals.rs has the signing log).
    let (st, e) = s
        .redeem_as(&code, &Appliance::with_alg(&rcgen::PKCS_ECDSA_P384_SHA384))
        .await;
    assert_error(st, &e, 400, "csr_invalid");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 0);
    // Unknown field.
    let (st, e, _) = send(s.anon().post(s.url("/register")).json(&json!({
        "install_code": code, "csr": a.csr_pem, "appliance": {"hostname": "h", "version": "1"}, "tenant_id": tenant
    })))
    .await;
    assert_error(st, &e, 400, "validation_failed");
    assert_eq!(e["error"]["fields"]["tenant_id"], "unknown field");
    assert_eq!(
        s.count("SELECT count(*) FROM install_codes WHERE state = 'unclaimed'")
            .await,
        1
    );

    // code_expired: a code that verifies but whose expiry has passed.
    let (exp_id, exp_code) = s
        .mint_raw(
            tenant,
            "pro",
            time::OffsetDateTime::now_utc() + time::Duration::seconds(2),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (st, e, _) = s.redeem(&exp_code).await;
    assert_error(st, &e, 410, "code_expired");
    let state = s.code_state(&exp_id).await;
    assert_eq!(state, "unclaimed");

    // Failures from the code's verification on are audited one by one, with the code
    // id and never the code: two code_invalid, one code_expired. Those refused before
    // (4 code_malformed, 3 csr_invalid, 1 unknown field) are counted in the refusal
    // summary, written at the latest when the gateway stops.
    let failures = s
        .count("SELECT count(*) FROM audit_events WHERE action = 'code.redeem' AND convert_from(record, 'UTF8') LIKE '%failure%'")
        .await;
    assert_eq!(failures, 3);
    s.restart_gateway().await;
    let summarized = s
        .count(
            "SELECT coalesce(sum((convert_from(record, 'UTF8')::jsonb#>>'{details,count}')::bigint), 0)::bigint \
             FROM audit_events WHERE action = 'access.refused_summary' \
             AND convert_from(record, 'UTF8')::jsonb#>>'{details,refused_action}' = 'code.redeem'",
        )
        .await;
    assert_eq!(summarized, 8);
    let leaked = s
        .count(&format!(
            "SELECT count(*) FROM audit_events WHERE convert_from(record, 'UTF8') LIKE '%{}%'",
            &code[11..]
        ))
        .await;
    assert_eq!(leaked, 0, "no code in the audit log");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_code_row_no_longer_verifies() {
    let s = Stack::start().await;
    let (_, code_id, code) = s.tenant_with_code("pro").await;
    let (other, _, _) = s.tenant_with_code("pro").await;
    // Another tenant.
    s.admin
        .execute(
            "UPDATE install_codes SET tenant_id = $2 WHERE code_id = $1",
            &[&code_id, &other],
        )
        .await
        .expect("edit");
    let (st, e, _) = s.redeem(&code).await;
    assert_error(st, &e, 401, "code_invalid");
    // Back, but with a later expiry.
    let (_, code_id2, code2) = s.tenant_with_code("pro").await;
    s.admin
        .execute(
            "UPDATE install_codes SET expires_at = expires_at + interval '30 days' WHERE code_id = $1",
            &[&code_id2],
        )
        .await
        .expect("edit");
    let (st, e, _) = s.redeem(&code2).await;
    assert_error(st, &e, 401, "code_invalid");
    // An edition upgrade.
    let (_, code_id3, code3) = s.tenant_with_code("essentials").await;
    s.admin
        .execute(
            "UPDATE install_codes SET edition = 'pro' WHERE code_id = $1",
            &[&code_id3],
        )
        .await
        .expect("edit");
    let (st, e, _) = s.redeem(&code3).await;
    assert_error(st, &e, 401, "code_invalid");
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeems_of_one_code_yield_exactly_one_appliance() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let appliances: Vec<Appliance> = (0..200).map(|_| Appliance::new()).collect();
    let client = s.anon();
    let url = s.url("/register");
    let tasks: Vec<_> = appliances
        .iter()
        .map(|a| {
            let rb = client.post(&url).json(&json!({
                "install_code": code, "csr": a.csr_pem, "appliance": {"hostname": "h", "version": "1"}
            }));
            tokio::spawn(async move { send(rb).await })
        })
        .collect();
    let mut ok = 0;
    let mut used = 0;
    for t in tasks {
        let (st, v, _) = t.await.expect("task");
        match st.as_u16() {
            200 => {
                ok += 1;
                assert_eq!(v["tenant_id"], tenant.to_string());
            }
            409 => {
                used += 1;
                assert_eq!(v["error"]["code"], "code_already_used");
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((ok, used), (1, 199));
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 1);
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_is_rate_limited_per_code_with_retry_after() {
    let s = Stack::start_with(Opts {
        real_rate_limits: true,
        ..Opts::default()
    })
    .await;
    let (_, code_id, _) = s.tenant_with_code("pro").await;
    let burst = s.policy.rate_limits.redeem_per_code.burst;
    let forged = InstallCode::from_mac(CodeId::parse(&code_id).expect("id"), &[1u8; 32]);
    let mut limited = None;
    for _ in 0..=burst {
        let (st, e, h) = send(s.anon().post(s.url("/register")).json(&json!({
            "install_code": &*forged.expose_formatted(), "csr": Appliance::new().csr_pem,
            "appliance": {"hostname": "h", "version": "1"}
        })))
        .await;
        if st == 429 {
            limited = Some((e, h));
            break;
        }
        assert_error(st, &e, 401, "code_invalid");
    }
    let (e, h) = limited.expect("the per-code burst is enforced");
    assert_eq!(e["error"]["code"], "rate_limited");
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");

    // Per source: garbage from one address is limited too (before any parsing).
    let per_source = s.policy.rate_limits.redeem_per_source.burst;
    let mut limited = false;
    for _ in 0..=per_source {
        let (st, e) = s.redeem_as("garbage", &Appliance::new()).await;
        if st == 429 {
            assert_eq!(e["error"]["code"], "rate_limited");
            limited = true;
            break;
        }
        assert_error(st, &e, 400, "code_malformed");
    }
    assert!(limited, "the per-source burst is enforced");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_down_rolls_back_and_the_code_stays_usable() {
    let mut s = Stack::start().await;
    let (tenant, code_id, code) = s.tenant_with_code("pro").await;
    s.stop_issuer().await;
    let (st, e, _) = s.redeem(&code).await;
    assert_error(st, &e, 503, "license_service_unavailable");
    let state = s.code_state(&code_id).await;
    assert_eq!(state, "unclaimed");
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 0);
    // Registration is refused too, and writes nothing.
    let (st, e, _) = send(s.store().post(s.url("/register-tenant")).json(&json!({
        "company": "Down Co", "contact": {"name": "N", "email": "n@down.test"}, "edition": "pro"
    })))
    .await;
    assert_error(st, &e, 503, "license_service_unavailable");
    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 1);
    let (st, _, _) = send(s.anon().get(s.url("/readyz"))).await;
    assert_eq!(st, 503);

    s.restart_issuer().await;
    let (st, v, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["tenant_id"], tenant.to_string());
    s.stop().await;
}

fn rfc3339(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        v.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339")
}
