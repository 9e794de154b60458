//! The mail outbox against each test's own SMTP sink (`scripts/smtp_sink.py` on a free
//! port, stopped and started at will): the first attempt inside the request, delivery
//! exactly once per outbox row across an SMTP outage and a gateway restart, the retry
//! budget, and a database dump that holds neither the code nor the link's signature.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Opts, SmtpSink, Stack, dev, header, link_signatures, mailed_code_in, send};

fn recipient() -> String {
    format!("ops-{}@mail.test", Uuid::new_v4().simple())
}

async fn stack(sink: &SmtpSink, mail: &str) -> Stack {
    Stack::start_with(Opts {
        smtp_port: Some(sink.port),
        mail: Some(mail.to_owned()),
        ..Opts::default()
    })
    .await
}

fn ids(v: &Value) -> (Uuid, String) {
    let tenant = v["tenant_id"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("tenant_id");
    let code_id = v["install_code"]["code_id"]
        .as_str()
        .expect("code_id")
        .to_owned();
    (tenant, code_id)
}

/// `(state, attempts, mail_id)` of the outbox row of `code_id`.
async fn outbox_row(s: &Stack, code_id: &str) -> (String, i32, Uuid) {
    let r = s
        .admin
        .query_one(
            "SELECT state, attempts, mail_id FROM mail_outbox WHERE code_id = $1",
            &[&code_id],
        )
        .await
        .expect("one outbox row per code");
    (r.get(0), r.get(1), r.get(2))
}

async fn wait_for_state(s: &Stack, code_id: &str, state: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (st, attempts, _) = outbox_row(s, code_id).await;
        if st == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mail of {code_id} is still {st} after {attempts} attempts, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit records of `action` for `tenant`, as their canonical JSON text.
async fn audit_records(s: &Stack, tenant: Uuid, action: &str) -> Vec<String> {
    s.admin
        .query(
            "SELECT convert_from(record, 'UTF8') FROM audit_events \
             WHERE tenant_id = $1 AND action = $2",
            &[&tenant, &action],
        )
        .await
        .expect("audit query")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The value of one sample line of `/metrics`, 0 when absent.
async fn metric(s: &Stack, sample: &str) -> u64 {
    let (st, m, _) = send(s.anon().get(s.url("/metrics"))).await;
    assert_eq!(st, 200);
    let text = m.as_str().expect("text exposition");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_smtp_up_is_sent_once_within_the_request_and_the_code_redeems() {
    let sink = SmtpSink::start().await;
    let s = stack(&sink, "").await;
    let email = recipient();
    let v = s.register("Sent At Once Ltd", &email, "pro").await;
    assert_eq!(v["email"]["status"], "sent", "{v}");
    let (tenant, code_id) = ids(&v);

    // `sent` means the SMTP server had it before the response.
    assert_eq!(sink.messages_to(&email).len(), 1);
    let (state, attempts, mail_id) = outbox_row(&s, &code_id).await;
    assert_eq!((state.as_str(), attempts), ("sent", 1));
    assert_eq!(audit_records(&s, tenant, "mail.sent").await.len(), 1);
    assert_eq!(
        metric(
            &s,
            "alga_gateway_mail_deliveries_total{outcome=\"sent\",path=\"first\"}"
        )
        .await,
        1
    );
    // The worker (idle rounds every 2 s) never sends it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let msgs = sink.messages_to(&email);
    assert_eq!(msgs.len(), 1, "exactly one message for the row");
    assert_eq!(
        header(&msgs[0], "Message-ID").as_deref(),
        Some(format!("<{mail_id}.registration@alga.test>").as_str())
    );

    // The mailed code redeems, for this tenant.
    let code = mailed_code_in(&sink.dir(), &email, &code_id).await;
    let (st, r, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tenant_id"], tenant.to_string());

    // A reissue's mail is sent within its request too, once.
    let (st, v) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["email"]["status"], "sent", "{v}");
    assert_eq!(sink.messages_to(&email).len(), 2);
    s.stop().await;
}

/// A request returns its connection before the first mail attempt takes its own: on a
/// pool of 2, one of which the audit sequencer's leader holds, registrations and a
/// reissue, one after another and concurrently, still send their mail within the
/// request. (Holding both, each request waited for a connection it could not get
/// and answered `queued` after the first attempt's bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_two_connection_pool_the_first_attempt_still_sends_within_the_request() {
    let sink = SmtpSink::start().await;
    let s = Stack::start_with(Opts {
        smtp_port: Some(sink.port),
        pool_size: Some(2),
        ..Opts::default()
    })
    .await;
    let mut tenant = None;
    for i in 0..2 {
        let v = s
            .register(&format!("Small Pool {i} Ltd"), &recipient(), "pro")
            .await;
        assert_eq!(v["email"]["status"], "sent", "{v}");
        tenant = Some(ids(&v).0);
    }
    let (st, v) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["email"]["status"], "sent", "{v}");
    let s = std::sync::Arc::new(s);
    let racing: Vec<_> = (0..3)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.register(&format!("Small Pool Race {i} Ltd"), &recipient(), "pro")
                    .await
            })
        })
        .collect();
    for t in racing {
        let v = t.await.expect("registration task");
        assert_eq!(v["email"]["status"], "sent", "{v}");
    }
    match std::sync::Arc::try_unwrap(s) {
        Ok(s) => s.stop().await,
        Err(_) => panic!("stack still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_queues_then_delivers_exactly_once_across_a_gateway_restart() {
    let mut sink = SmtpSink::start().await;
    let mut s = stack(
        &sink,
        "retry_initial_secs = 0.5\nretry_max_secs = 1\nmax_attempts = 1000",
    )
    .await;
    sink.stop().await;

    let email = recipient();
    let v = s.register("Queued Then Sent GmbH", &email, "pro").await;
    assert_eq!(v["email"]["status"], "queued", "{v}");
    let (tenant, code_id) = ids(&v);
    let (state, attempts, mail_id) = outbox_row(&s, &code_id).await;
    assert_eq!((state.as_str(), attempts), ("queued", 1));
    let (_, t, _) = send(s.store().get(s.url(&format!("/tenants/{tenant}")))).await;
    assert_eq!(t["mail"][0]["status"], "queued", "{t}");
    assert!(t["mail"][0]["last_error"].is_string(), "{t}");

    // The worker keeps retrying while SMTP is down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outbox_row(&s, &code_id).await.1 < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no retry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new gateway on the same database; then SMTP comes back.
    s.restart_gateway().await;
    sink.resume().await;
    wait_for_state(&s, &code_id, "sent", Duration::from_secs(30)).await;
    // Rounds of the new worker (every 2 s when idle) send nothing more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let msgs = sink.messages_to(&email);
    assert_eq!(msgs.len(), 1, "exactly one message for the row");
    assert_eq!(
        header(&msgs[0], "Message-ID").as_deref(),
        Some(format!("<{mail_id}.registration@alga.test>").as_str()),
        "the Message-ID is the row's"
    );
    assert_eq!(audit_records(&s, tenant, "mail.sent").await.len(), 1);
    assert!(audit_records(&s, tenant, "mail.failed").await.is_empty());
    let (_, t, _) = send(s.store().get(s.url(&format!("/tenants/{tenant}")))).await;
    assert_eq!(t["mail"][0]["status"], "sent", "{t}");
    assert!(t["mail"][0]["sent_at"].is_string(), "{t}");

    let code = mailed_code_in(&sink.dir(), &email, &code_id).await;
    let (st, r, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tenant_id"], tenant.to_string());
    s.stop().await;
}

/// The worker sent a mail but cannot write its `mail.sent` record (the audit insert
/// fails): the mark and the record are one transaction, so the row is not `sent`
/// without its record; once the audit works again the claim's lease runs out (ended
/// early here, as if its 120 s had passed), the mail is sent again with the same
/// Message-ID (at least once) and recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_insert_keeps_the_sent_mail_queued_until_it_is_recorded() {
    let mut sink = SmtpSink::start().await;
    let s = stack(
        &sink,
        "retry_initial_secs = 0.5\nretry_max_secs = 1\nmax_attempts = 1000",
    )
    .await;
    sink.stop().await;
    let email = recipient();
    let v = s.register("Unrecorded Mail GmbH", &email, "pro").await;
    assert_eq!(v["email"]["status"], "queued", "{v}");
    let (tenant, code_id) = ids(&v);
    let (_, _, mail_id) = outbox_row(&s, &code_id).await;

    s.admin
        .batch_execute("REVOKE INSERT ON audit_events FROM alga_gateway")
        .await
        .expect("revoke");
    sink.resume().await;
    // The worker delivers, then fails to record: wait for the message and the error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sink.messages_to(&email).is_empty()
        || !crate::harness::captured_logs().lines().any(|l| {
            l.contains("could not record a mail outcome") && l.contains(&mail_id.to_string())
        })
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery with a failed record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (state, attempts, _) = outbox_row(&s, &code_id).await;
    assert_eq!(state, "queued", "marked sent without its audit record");
    assert!(attempts >= 2, "{attempts}");
    assert!(audit_records(&s, tenant, "mail.sent").await.is_empty());

    // The audit works again; the lease ends.
    s.admin
        .batch_execute("GRANT INSERT ON audit_events TO alga_gateway")
        .await
        .expect("grant");
    let n = s
        .admin
        .execute(
            "UPDATE mail_outbox SET next_attempt_at = now() WHERE mail_id = $1",
            &[&mail_id],
        )
        .await
        .expect("end the lease");
    assert_eq!(n, 1);
    wait_for_state(&s, &code_id, "sent", Duration::from_secs(30)).await;
    assert_eq!(audit_records(&s, tenant, "mail.sent").await.len(), 1);
    let msgs = sink.messages_to(&email);
    assert!(
        msgs.len() >= 2,
        "sent again once recordable: {}",
        msgs.len()
    );
    let want = format!("<{mail_id}.registration@alga.test>");
    for m in &msgs {
        assert_eq!(header(m, "Message-ID").as_deref(), Some(want.as_str()));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_spent_marks_the_mail_failed_audited_counted_and_shown() {
    let mut sink = SmtpSink::start().await;
    let s = stack(
        &sink,
        "max_attempts = 3\nretry_initial_secs = 0.2\nretry_max_secs = 0.4",
    )
    .await;
    sink.stop().await;

    let email = recipient();
    let v = s
        .register("Never Delivered Inc", &email, "essentials")
        .await;
    assert_eq!(v["email"]["status"], "queued", "{v}");
    let (tenant, code_id) = ids(&v);
    wait_for_state(&s, &code_id, "failed", Duration::from_secs(30)).await;
    let (_, attempts, mail_id) = outbox_row(&s, &code_id).await;
    assert_eq!(attempts, 3, "the whole budget, the first attempt included");

    let failed = audit_records(&s, tenant, "mail.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains(&mail_id.to_string()), "{}", failed[0]);
    assert!(failed[0].contains("mail_failed"), "{}", failed[0]);
    assert!(audit_records(&s, tenant, "mail.sent").await.is_empty());
    assert_eq!(
        metric(
            &s,
            "alga_gateway_mail_deliveries_total{outcome=\"failed\",path=\"worker\"}"
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &s,
            "alga_gateway_mail_deliveries_total{outcome=\"retry\",path=\"first\"}"
        )
        .await,
        1
    );
    for client in [s.store(), s.auditor()] {
        let (st, t, _) = send(client.get(s.url(&format!("/tenants/{tenant}")))).await;
        assert_eq!(st, 200, "{t}");
        let m = &t["mail"][0];
        assert_eq!(m["status"], "failed", "{t}");
        assert_eq!(m["attempts"], 3, "{t}");
        assert!(m["last_error"].is_string(), "{t}");
        assert!(m["next_attempt_at"].is_null(), "{t}");
    }

    // Failed is final: SMTP coming back sends nothing.
    sink.resume().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sink.messages_to(&email).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dump_after_registration_holds_no_code_and_no_link_signature() {
    let sink = SmtpSink::start().await;
    let s = stack(&sink, "").await;
    let email = recipient();
    let (st, v, _) = send(
        s.store()
            .post(s.url("/register-tenant"))
            .header("Idempotency-Key", format!("dump-{}", Uuid::new_v4()))
            .json(&json!({
                "company": "Dump Scan AG",
                "contact": {"name": "Dee Dump", "email": email},
                "edition": "pro",
            })),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["email"]["status"], "sent", "{v}");
    let (tenant, code_id) = ids(&v);

    // What the contact received: the code and the link.
    let code = mailed_code_in(&sink.dir(), &email, &code_id).await;
    let msgs = sink.messages_to(&email);
    assert_eq!(msgs.len(), 1);
    let signatures = link_signatures(&msgs[0]);
    assert!(!signatures.is_empty(), "the mail carries a presigned link");

    // pg_dump of this test's database, as the superuser of DATABASE_URL.
    let mut url = url::Url::parse(&dev().var("DATABASE_URL")).expect("DATABASE_URL");
    url.set_path(&s.db);
    let out = std::process::Command::new(format!("{}/pg_dump", dev().var("ALGA_PG_BIN")))
        .arg("--no-owner")
        .arg("--dbname")
        .arg(url.as_str())
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    // The dump has the registration: the tenant, the code's id, the outbox row.
    assert!(dump.contains(&tenant.to_string()));
    assert!(dump.contains(&code_id));
    assert!(dump.contains(&email));

    let plain = code.replace('-', "");
    let mut needles = vec![
        code.clone(),
        plain.clone(),
        code.to_lowercase(),
        plain.to_lowercase(),
    ];
    needles.extend(signatures);
    // And the link the store got in the response (stored for idempotent replays).
    needles.extend(link_signatures(v["download"]["url"].as_str().expect("url")));
    for n in &needles {
        assert_eq!(dump.matches(n.as_str()).count(), 0, "the dump holds {n:?}");
    }
    // The code's secret part alone (after the public code id) is not there either.
    let secret = &plain[code_id.len()..];
    assert!(!dump.contains(secret) && !dump.contains(&secret.to_lowercase()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_claims_are_exclusive_and_marks_are_fenced() {
    use alga_gateway::db::outbox::{self, MailKind};
    let sink = SmtpSink::start().await;
    let s = stack(&sink, "").await;
    let (tenant, _, _) = s.tenant_with_code("essentials").await;
    let expires = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("ns")
        + time::Duration::days(1);
    // Two pooled connections, as the gateway's db layer takes them.
    let pool = {
        let mut c: tokio_postgres::Config = dev().var("DATABASE_URL").parse().expect("url");
        c.dbname(&s.db);
        let manager = deadpool_postgres::Manager::from_config(
            c,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(2)
            .build()
            .expect("pool")
    };
    let admin = pool.get().await.expect("connection");
    let other = pool.get().await.expect("connection");
    for _ in 0..5 {
        let (code_id, _) = s.mint_raw(tenant, "essentials", expires).await;
        let to = recipient();
        let id = outbox::enqueue(&admin, &code_id, tenant, &to, MailKind::Registration, 120.0)
            .await
            .expect("enqueue");
        // Reserved for its request: no worker claims it.
        let due = outbox::claim_due(&admin, 100, 120.0).await.expect("claim");
        assert!(due.iter().all(|m| m.mail_id != id));
        // Two first-attempt claims at once (two connections): exactly one holds it.
        let (a, b) = tokio::join!(
            outbox::claim_reserved(&admin, id, 120.0),
            outbox::claim_reserved(&other, id, 120.0)
        );
        let held: Vec<_> = [a.expect("claim a"), b.expect("claim b")]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].attempts, 1);
        // Leased: still nobody else.
        assert!(
            outbox::claim_reserved(&admin, id, 120.0)
                .await
                .expect("claim")
                .is_none()
        );
        let due = outbox::claim_due(&other, 100, 120.0).await.expect("claim");
        assert!(due.iter().all(|m| m.mail_id != id));
        // A stale claim (another attempt number) changes nothing; the holder's does.
        assert!(!outbox::mark_sent(&admin, id, 0).await.expect("mark"));
        assert!(outbox::mark_sent(&admin, id, 1).await.expect("mark"));
        assert!(
            !outbox::mark_failed(&admin, id, 1, "late")
                .await
                .expect("mark")
        );
        assert!(
            sink.messages_to(&to).is_empty(),
            "the test's rows are never sent"
        );
    }
    s.stop().await;
}
