//! `POST /register-tenant`, `POST /install-codes/reissue`, `GET /tenants/{id}`.

use serde_json::json;
use uuid::Uuid;

use crate::harness::{Stack, assert_error, mailed_code, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_tenant_creates_tenant_code_link_and_mail() {
    let s = Stack::start().await;
    let v = s.register("Acme GmbH", "Ops@Acme.test", "pro").await;
    let tenant: Uuid = v["tenant_id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(v["edition"], "pro");
    // `sent` with the stack's SMTP sink up, `queued` while it is down (tests/it/mail.rs
    // covers both with a sink of its own).
    assert!(
        ["sent", "queued"].contains(&v["email"]["status"].as_str().unwrap_or("")),
        "{v}"
    );
    let code_id = v["install_code"]["code_id"].as_str().expect("code_id");
    assert_eq!(code_id.len(), 10);
    assert!(v["install_code"]["expires_at"].as_str().is_some());
    let url = v["download"]["url"].as_str().expect("url");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=259200"),
        "{url}"
    );
    assert!(v.get("revoked_code_ids").is_none());
    // Nothing secret in the response: not the code.
    let code = s.code(code_id).await;
    assert!(!v.to_string().contains(&code));
    // The presigned link works against the real S3 server.
    let iso = s.anon().get(url).send().await.expect("s3 reachable");
    assert_eq!(iso.status(), 200, "presigned link downloads");

    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 1);
    assert_eq!(
        s.count("SELECT count(*) FROM entitlements WHERE paid")
            .await,
        1
    );
    assert_eq!(
        s.count("SELECT count(*) FROM install_codes WHERE state = 'unclaimed'")
            .await,
        1
    );
    let row = s
        .admin
        .query_one(
            "SELECT recipient, kind, state, attempts FROM mail_outbox",
            &[],
        )
        .await
        .expect("outbox row");
    assert_eq!(row.get::<_, String>(0), "Ops@Acme.test");
    assert_eq!(row.get::<_, String>(1), "registration");
    // The first attempt may have sent it.
    assert!(["queued", "sent"].contains(&row.get::<_, String>(2).as_str()));
    // Audit: the registration and the mint, in the same transaction.
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM audit_events WHERE tenant_id = '{tenant}' AND action IN ('tenant.register', 'code.mint')"
        ))
        .await,
        2
    );

    // GET /tenants/{id}: codes without secrets, mail status.
    for client in [s.store(), s.auditor()] {
        let (st, t, _) = send(client.get(s.url(&format!("/tenants/{tenant}")))).await;
        assert_eq!(st, 200, "{t}");
        assert_eq!(t["tenant_id"], tenant.to_string());
        assert_eq!(t["edition"], "pro");
        assert_eq!(t["install_codes"][0]["code_id"], code_id);
        assert_eq!(t["install_codes"][0]["state"], "unclaimed");
        assert!(
            t["mail"][0]["status"] == "queued" || t["mail"][0]["status"] == "sent",
            "{t}"
        );
        assert!(!t.to_string().contains(&code));
    }
    let (st, t, _) = send(
        s.store()
            .get(s.url(&format!("/tenants/{}", Uuid::new_v4()))),
    )
    .await;
    assert_error(st, &t, 404, "tenant_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_tenant_idempotency_and_duplicates() {
    let s = Stack::start().await;
    let body = json!({"company": "Idem AG", "contact": {"name": "Bo", "email": "bo@idem.test"}, "edition": "essentials"});
    let post = |b: &serde_json::Value, key: &str| {
        s.store()
            .post(s.url("/register-tenant"))
            .header("Idempotency-Key", key)
            .json(b)
    };
    let (s1, v1, _) = send(post(&body, "k-1")).await;
    assert_eq!(s1, 201, "{v1}");
    let (s2, v2, _) = send(post(&body, "k-1")).await;
    assert_eq!(s2, 201, "{v2}");
    // Same response; the link is presigned again (nothing stores a presigned query)
    // for the same object and the same expiry.
    let link = |v: &serde_json::Value| {
        let url = v["download"]["url"].as_str().expect("url").to_owned();
        assert!(url.contains("X-Amz-Signature="), "{url}");
        url.split_once('?')
            .map(|(b, _)| b.to_owned())
            .expect("query")
    };
    assert_eq!(link(&v1), link(&v2));
    assert_eq!(v1["download"]["expires_at"], v2["download"]["expires_at"]);
    let (mut r1, mut r2) = (v1.clone(), v2.clone());
    r1["download"]["url"] = json!(null);
    r2["download"]["url"] = json!(null);
    assert_eq!(r1, r2, "same key + same body → same response");
    let iso = s
        .anon()
        .get(v2["download"]["url"].as_str().expect("url"))
        .send()
        .await
        .expect("s3 reachable");
    assert_eq!(iso.status(), 200, "the replayed link downloads");
    let stored = s
        .count("SELECT count(*) FROM idempotency_keys WHERE response_body::text LIKE '%X-Amz-%'")
        .await;
    assert_eq!(stored, 0, "no presigned query is stored");
    let mut other = body.clone();
    other["company"] = json!("Idem AG 2");
    let (s3, v3, _) = send(post(&other, "k-1")).await;
    assert_error(s3, &v3, 409, "idempotency_conflict");
    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 1);

    // Same company + contact (case and spacing aside), no key → tenant_exists with the id.
    let dup = json!({"company": "  idem   ag ", "contact": {"name": "Other", "email": "BO@idem.test"}, "edition": "pro"});
    let (s4, v4, _) = send(s.store().post(s.url("/register-tenant")).json(&dup)).await;
    assert_error(s4, &v4, 409, "tenant_exists");
    assert_eq!(v4["error"]["tenant_id"], v1["tenant_id"]);
    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 1);
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events WHERE action = 'tenant.register'")
            .await,
        3,
        "the success, the idempotency conflict and the refused duplicate are all audited"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_tenant_bad_input_is_refused_and_nothing_is_written() {
    let s = Stack::start().await;
    let ok = json!({"company": "Good", "contact": {"name": "N", "email": "n@good.test"}, "edition": "pro"});
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"company": "Evil\r\nBcc: x@y.z", "contact": {"name": "N", "email": "n@good.test"}, "edition": "pro"}),
            "company",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N\nX", "email": "n@good.test"}, "edition": "pro"}),
            "contact.name",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N\u{7}", "email": "n@good.test"}, "edition": "pro"}),
            "contact.name",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N", "email": "not-an-email"}, "edition": "pro"}),
            "contact.email",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N", "email": "n@good.test\r\n"}, "edition": "pro"}),
            "contact.email",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N", "email": "n@good.test"}, "edition": "platinum"}),
            "edition",
        ),
        (
            json!({"company": "", "contact": {"name": "N", "email": "n@good.test"}, "edition": "pro"}),
            "company",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N", "email": "n@good.test"}, "edition": "pro", "admin": true}),
            "admin",
        ),
        (
            json!({"company": "Good", "contact": {"name": "N", "email": "n@good.test"}}),
            "edition",
        ),
    ];
    for (body, field) in cases {
        let (st, v, _) = send(s.store().post(s.url("/register-tenant")).json(&body)).await;
        assert_error(st, &v, 400, "validation_failed");
        assert!(v["error"]["fields"][field].is_string(), "{field}: {v}");
    }
    // Wrong content type, oversized body.
    let (st, v, _) = send(
        s.store()
            .post(s.url("/register-tenant"))
            .header("content-type", "text/plain")
            .body(ok.to_string()),
    )
    .await;
    assert_error(st, &v, 415, "unsupported_media_type");
    let big = json!({"company": "x".repeat(70 * 1024), "contact": {"name": "N", "email": "n@good.test"}, "edition": "pro"});
    let (st, v, _) = send(s.store().post(s.url("/register-tenant")).json(&big)).await;
    assert_error(st, &v, 413, "payload_too_large");
    let (st, v, _) = send(
        s.store()
            .post(s.url("/register-tenant"))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_error(st, &v, 400, "validation_failed");
    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM install_codes").await, 0);
    // Each refusal is audited (12 requests above), and nothing else was written.
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events WHERE action = 'tenant.register' AND convert_from(record, 'UTF8') LIKE '%failure%'")
            .await,
        12
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reissue_revokes_unclaimed_and_mints_for_the_same_tenant() {
    let s = Stack::start().await;
    let (tenant, old_id, old_code) = s.tenant_with_code("pro").await;

    let (st, v) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["tenant_id"], tenant.to_string());
    assert_eq!(v["edition"], "pro");
    assert_eq!(v["revoked_code_ids"], json!([old_id]));
    assert!(
        ["sent", "queued"].contains(&v["email"]["status"].as_str().unwrap_or("")),
        "{v}"
    );
    assert!(
        v["download"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("X-Amz-Signature"))
    );
    let new_id = v["install_code"]["code_id"]
        .as_str()
        .expect("code_id")
        .to_owned();
    assert_ne!(new_id, old_id);
    let new_code = s.code(&new_id).await;

    // The old code is revoked (it verifies, so the caller may know).
    let (st, e, _) = s.redeem(&old_code).await;
    assert_error(st, &e, 410, "code_revoked");
    // The new one redeems to the same tenant.
    let (st, r, _) = s.redeem(&new_code).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tenant_id"], tenant.to_string());

    // By contact email (case-insensitive); nothing unclaimed left to revoke → [] and a new code.
    let (st, v) = s.reissue(&json!({"contact_email": "OPS@acme.test"})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["tenant_id"], tenant.to_string());
    assert_eq!(v["revoked_code_ids"], json!([]));
    assert_eq!(
        s.count("SELECT count(*) FROM mail_outbox WHERE kind = 'reissue'")
            .await,
        2
    );

    // Errors.
    let (st, e) = s.reissue(&json!({"tenant_id": Uuid::new_v4()})).await;
    assert_error(st, &e, 404, "tenant_not_found");
    let (st, e) = s
        .reissue(&json!({"contact_email": "nobody@acme.test"}))
        .await;
    assert_error(st, &e, 404, "tenant_not_found");
    s.register("Second Co", "ops@acme.test", "essentials").await;
    let (st, e) = s.reissue(&json!({"contact_email": "ops@acme.test"})).await;
    assert_error(st, &e, 409, "ambiguous_contact");
    let (st, e) = s
        .reissue(&json!({"contact_email": "ops@acme.test", "tenant_id": tenant}))
        .await;
    assert_error(st, &e, 400, "validation_failed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_register_mail_redeem_check_in_reissue() {
    let s = Stack::start().await;
    let email = format!("ops-{}@customer.test", Uuid::new_v4().simple());
    let v = s.register("Seed Flow Ltd", &email, "pro").await;
    let tenant = v["tenant_id"].as_str().expect("tenant").to_owned();
    let code_id = v["install_code"]["code_id"]
        .as_str()
        .expect("code_id")
        .to_owned();

    // The code reaches the contact's mailbox (and only there).
    let code = mailed_code(&email, &code_id).await;
    for _ in 0..50 {
        if s.count("SELECT count(*) FROM mail_outbox WHERE state = 'sent'")
            .await
            == 1
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.count("SELECT count(*) FROM mail_outbox WHERE state = 'sent' AND attempts = 1")
            .await,
        1
    );
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events WHERE action = 'mail.sent'")
            .await,
        1
    );
    let (_, t, _) = send(s.store().get(s.url(&format!("/tenants/{tenant}")))).await;
    assert_eq!(t["mail"][0]["status"], "sent", "{t}");

    // The appliance redeems the mailed code and checks in.
    let (st, r, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tenant_id"], tenant);
    let (st, c, _) = send(
        s.appliance(&a)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1"}})),
    )
    .await;
    assert_eq!(st, 200, "{c}");

    // Reinstall: a reissued code arrives by mail and binds to the same tenant.
    let (st, v) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_eq!(st, 201, "{v}");
    let new_id = v["install_code"]["code_id"]
        .as_str()
        .expect("code_id")
        .to_owned();
    let new_code = mailed_code(&email, &new_id).await;
    let (st, r, _) = s.redeem(&new_code).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tenant_id"], tenant);
    s.stop().await;
}
