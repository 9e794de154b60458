//! Audit: every state change has its record in the same transaction; a failing audit
//! insert leaves no state change; the auditor pages through the chained log.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Stack, assert_error, captured_logs, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_insert_leaves_no_state_change() {
    let s = Stack::start().await;
    let (tenant, code_id, code) = s.tenant_with_code("pro").await;
    // Let the mail worker finish the registration mail first (its audit record would
    // otherwise race with the count below).
    let mut sent = 0;
    for _ in 0..100 {
        sent = s
            .count("SELECT count(*) FROM mail_outbox WHERE state = 'sent'")
            .await;
        if sent == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent, 1, "the registration mail was not sent within 10 s");
    let before = s.count("SELECT count(*) FROM audit_events").await;
    s.admin
        .batch_execute("REVOKE INSERT ON audit_events FROM alga_gateway")
        .await
        .expect("revoke");

    let (st, e, _) = send(s.store().post(s.url("/register-tenant")).json(&json!({
        "company": "Unaudited", "contact": {"name": "N", "email": "n@un.test"}, "edition": "pro"
    })))
    .await;
    assert_error(st, &e, 500, "internal");
    assert_eq!(
        e["error"]["message"], "internal error",
        "no internal detail in a 5xx body"
    );
    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 1);
    assert_eq!(s.count("SELECT count(*) FROM install_codes").await, 1);
    assert_eq!(s.count("SELECT count(*) FROM mail_outbox").await, 1);

    let (st, e, _) = s.redeem(&code).await;
    assert_error(st, &e, 500, "internal");
    let state = s.code_state(&code_id).await;
    assert_eq!(state, "unclaimed");
    assert_eq!(s.count("SELECT count(*) FROM appliances").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, 0);

    let (st, e) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_error(st, &e, 500, "internal");
    assert_eq!(
        s.count("SELECT count(*) FROM install_codes WHERE state = 'unclaimed'")
            .await,
        1
    );
    assert_eq!(s.count("SELECT count(*) FROM audit_events").await, before);

    // Restored: the same code still redeems.
    s.admin
        .batch_execute("GRANT INSERT ON audit_events TO alga_gateway")
        .await
        .expect("grant");
    let (st, v, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_pages_through_chained_events_and_signed_checkpoints() {
    let s = Stack::start().await;
    let (_, _, code) = s.tenant_with_code("pro").await;
    let (st, _, _) = s.redeem(&code).await;
    assert_eq!(st, 200);
    // The sequencer chains committed records shortly after commit.
    let mut events = Vec::new();
    for _ in 0..100 {
        let (st, v, _) = send(s.auditor().get(s.url("/audit/events?limit=1000"))).await;
        assert_eq!(st, 200, "{v}");
        events = v["events"].as_array().cloned().unwrap_or_default();
        // Not "three events": the mail worker's `mail.sent` may be chained before the
        // redeem (it is, now that responses do not wait ~40 ms for a delayed ACK).
        let chained = |want: &str| {
            events
                .iter()
                .any(|e| e["record"]["action"].as_str() == Some(want))
        };
        if ["tenant.register", "code.mint", "code.redeem"]
            .iter()
            .all(|w| chained(w))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let actions: Vec<&str> = events
        .iter()
        .filter_map(|e| e["record"]["action"].as_str())
        .collect();
    for want in ["tenant.register", "code.mint", "code.redeem"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    assert_eq!(events[0]["seq"], 1);
    // Paging.
    let (st, v, _) = send(s.auditor().get(s.url("/audit/events?after=1&limit=1"))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["events"][0]["seq"], 2);
    let (st, v, _) = send(s.auditor().get(s.url("/audit/events?action=code.redeem"))).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["events"].as_array().is_some_and(
            |a| !a.is_empty() && a.iter().all(|e| e["record"]["action"] == "code.redeem")
        ),
        "{v}"
    );
    let (st, e, _) = send(s.auditor().get(s.url("/audit/events?action=DROP%20TABLE"))).await;
    assert_error(st, &e, 400, "validation_failed");
    let (st, e, _) = send(s.auditor().get(s.url("/audit/events?limit=0"))).await;
    assert_error(st, &e, 400, "validation_failed");
    let (st, v, _) = send(s.auditor().get(s.url("/audit/checkpoints"))).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["checkpoints"].is_array());
    // The keys to verify those checkpoints offline are served to the auditor too, in
    // the issuer's `PublicKeys` form that `alga-audit verify --audit-keys` reads.
    let (st, keys, _) = send(s.auditor().get(s.url("/audit/keys"))).await;
    assert_eq!(st, 200, "{keys}");
    let kids: Vec<&str> = keys["audit_keys"]
        .as_array()
        .expect("audit_keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(!kids.is_empty(), "{keys}");
    for cp in v["checkpoints"].as_array().expect("array") {
        let kid = cp["kid"].as_str().expect("kid");
        assert!(
            kids.contains(&kid),
            "checkpoint signed by {kid}, not in {kids:?}"
        );
    }
    assert!(keys["jwks"]["keys"].is_array() && keys["ca_chain_pem"].is_string());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_audit_never_contain_codes_tokens_csrs_or_keys() {
    let s = Stack::start().await;
    let (_, code_id, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let token = v["license"]["token"].as_str().expect("token").to_owned();
    let (st, c, _) = send(
        s.appliance(&a)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "2"}, "csr": a.csr_pem})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    let token2 = c["license"]["token"].as_str().expect("token").to_owned();
    // A wrong code of the same id, and a typo, also pass through the logs' reach.
    let (st, _, _) = s.redeem(&code.replace('-', "")[..29]).await;
    assert_eq!(st, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let secret_part = code.replace('-', "")[10..].to_owned();
    let csr_body = a.csr_pem.lines().nth(1).expect("csr line").to_owned();
    let key_body = a.key_pem.lines().nth(1).expect("key line").to_owned();
    let jwt_sig = token.rsplit('.').next().expect("sig").to_owned();
    let jwt_sig2 = token2.rsplit('.').next().expect("sig").to_owned();
    let logs = captured_logs();
    assert!(
        logs.contains(&code_id),
        "the code id is logged (it is public): the capture works ({} bytes captured)",
        logs.len()
    );
    for (what, needle) in [
        ("code", code.as_str()),
        ("code secret", secret_part.as_str()),
        ("CSR", csr_body.as_str()),
        ("private key", key_body.as_str()),
        ("license", jwt_sig.as_str()),
        ("license at check-in", jwt_sig2.as_str()),
    ] {
        assert!(!logs.contains(needle), "{what} found in the logs");
        let in_audit = s
            .admin
            .query_one(
                "SELECT count(*) FROM audit_events WHERE strpos(convert_from(record, 'UTF8'), $1) > 0",
                &[&needle],
            )
            .await
            .expect("scan")
            .get::<_, i64>(0);
        assert_eq!(in_audit, 0, "{what} found in the audit log");
    }
    s.stop().await;
}
