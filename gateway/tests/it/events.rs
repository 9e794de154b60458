//! The store's event feed (`GET /events`), the overdue sweep and webhooks, against
//! real gateways, Postgres and an HTTP receiver on 127.0.0.1.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alga_gateway::flows::events::Cursor;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Opts, Stack, assert_error, send};

/// Reads the whole feed from `after` in pages of `limit` until a page comes back
/// empty; returns the events and the last cursor.
async fn read_all(
    client: &reqwest::Client,
    base: &str,
    mut after: Option<String>,
    limit: u32,
) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    loop {
        let mut url = format!("{base}/events?limit={limit}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (st, v, _) = send(client.get(url)).await;
        assert_eq!(st, 200, "{v}");
        let page = v["events"].as_array().expect("events").clone();
        let next = v["next"].as_str().expect("next").to_owned();
        assert!(page.len() <= limit as usize);
        let empty = page.is_empty() && after.as_deref() == Some(next.as_str());
        events.extend(page);
        after = Some(next.clone());
        if empty {
            return (events, next);
        }
    }
}

/// The chained audit records the feed must show: `(seq, type, tenant_id)`.
async fn expected_events(s: &Stack) -> Vec<(u64, String, Option<Uuid>)> {
    let rows = s
        .admin
        .query(
            "SELECT c.seq, e.action, e.tenant_id, convert_from(e.record, 'UTF8')::jsonb \
             FROM audit_chain c JOIN audit_events e ON e.id = c.event_id ORDER BY c.seq",
            &[],
        )
        .await
        .expect("chain");
    let map: HashMap<&str, &str> = [
        ("tenant.register", "tenant.registered"),
        ("code.mint", "code.issued"),
        ("code.redeem", "code.redeemed"),
        ("appliance.replace", "appliance.replaced"),
        ("appliance.revoke", "appliance.revoked"),
        ("appliance.overdue", "appliance.overdue"),
        ("entitlement.change", "entitlement.changed"),
        ("tenant.suspend", "tenant.suspended"),
        ("tenant.resume", "tenant.resumed"),
        ("mail.failed", "mail.failed"),
    ]
    .into_iter()
    .collect();
    rows.iter()
        .filter_map(|r| {
            let action: String = r.get(1);
            let record: Value = r.get(3);
            let success = record["outcome"]["status"] == "success";
            let t = map.get(action.as_str())?;
            let skipped = (!success && action != "mail.failed")
                || record["details"]["retry"] == true
                || record["details"]["changed"] == false;
            (!skipped).then(|| {
                let seq: i64 = r.get(0);
                (seq as u64, (*t).to_owned(), r.get(2))
            })
        })
        .collect()
}

/// Polls `done` every 100 ms until it holds. The bound only keeps a broken build
/// from hanging the run; nothing here is a claim about how fast anything is.
async fn wait_until<'a, F, Fut>(s: &'a Stack, what: &str, done: F)
where
    F: Fn(&'a Stack) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let guard = Instant::now() + Duration::from_secs(300);
    while !done(s).await {
        assert!(Instant::now() < guard, "hang guard: {what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's `alga_gateway_webhook_deliveries_total{outcome}`.
async fn deliveries_counted(s: &Stack, outcome: &str) -> u64 {
    let (_, metrics, _) = send(s.anon().get(s.url("/metrics"))).await;
    let line = format!("alga_gateway_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
    metrics
        .as_str()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix(line.as_str())))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect()
}

/// 5,000 suspensions and resumptions of 40 tenants through two gateways at once, with
/// refused duplicates among them (audit records that are no events), read back in
/// small pages while they are written and after: every event once, in order, as the
/// audit log has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feed_through_two_gateways_has_no_gap_and_no_repeat() {
    const TENANTS: usize = 40;
    const TOGGLES: usize = 125; // 40 × 125 = 5,000 events
    let started = Instant::now();
    // Both gateways open their whole pool before listening: opening connections in
    // the middle of the burst is slow on a loaded machine.
    let s = Stack::start_with(Opts {
        min_connections: Some(16),
        ..Opts::default()
    })
    .await;
    let pair = s.start_pair().await;
    let store = s.store();
    let gateways = [s.gw.clone(), pair.gw.clone()];

    // Tenants, registered through both gateways.
    let mut tenants = Vec::new();
    for chunk in (0..TENANTS).collect::<Vec<_>>().chunks(8) {
        let regs = chunk.iter().map(|i| {
            let (store, gw) = (store.clone(), gateways[i % 2].clone());
            async move {
                let (st, v, _) = send(store.post(format!("{gw}/register-tenant")).json(&json!({
                    "company": format!("Feed {i} {}", Uuid::new_v4().simple()),
                    "contact": {"name": "Ada", "email": format!("feed{i}@acme.test")},
                    "edition": "essentials",
                })))
                .await;
                assert_eq!(st, 201, "{v}");
                v["tenant_id"]
                    .as_str()
                    .expect("tenant")
                    .parse::<Uuid>()
                    .expect("uuid")
            }
        });
        tenants.extend(futures::future::join_all(regs).await);
    }

    // A reader paging through the feed while it is written.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (store, gw, done) = (store.clone(), s.gw.clone(), done.clone());
        async move {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let (page, next) = read_all(&store, &gw, after.clone(), 7).await;
                seen.extend(page);
                after = Some(next);
                if finished {
                    return (seen, after);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // Writers: each tenant alternates suspend and resume, every request through the
    // gateway of its turn; every 10th suspension is sent twice (409, a failure record).
    let writers = tenants.iter().enumerate().map(|(n, &t)| {
        let (store, gateways) = (store.clone(), gateways.clone());
        tokio::spawn(async move {
            for k in 0..TOGGLES {
                let gw = &gateways[(n + k) % 2];
                let op = if k % 2 == 0 { "suspend" } else { "resume" };
                let (st, v, _) = send(store.post(format!("{gw}/tenants/{t}/{op}"))).await;
                assert_eq!(st, 200, "{op} {v}");
                if k % 20 == 0 {
                    let other = &gateways[(n + k + 1) % 2];
                    let (st, v, _) = send(store.post(format!("{other}/tenants/{t}/{op}"))).await;
                    assert_eq!(st, 409, "{v}");
                }
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.expect("writer");
    }
    let written = started.elapsed();
    s.wait_until_all_chained().await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (live, live_next) = reader.await.expect("reader");

    // The records' commits were out of order: ids (taken at insert) and chain order
    // disagree somewhere.
    let inversions = s
        .count(
            "SELECT count(*) FROM (SELECT e.id, lag(e.id) OVER (ORDER BY c.seq) AS prev \
             FROM audit_chain c JOIN audit_events e ON e.id = c.event_id) x WHERE id < prev",
        )
        .await;
    assert!(inversions > 0, "the load committed out of order");

    let want = expected_events(&s).await;
    let toggles = want
        .iter()
        .filter(|(_, t, _)| t == "tenant.suspended" || t == "tenant.resumed")
        .count();
    assert_eq!(toggles, TENANTS * TOGGLES);
    assert_eq!(want.len(), TENANTS * TOGGLES + 2 * TENANTS);

    // Read live, in pages of 7, from both gateways' point of view alike.
    let got: Vec<(u64, String, Option<Uuid>)> = live
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().expect("id"),
                e["type"].as_str().expect("type").to_owned(),
                e["tenant_id"].as_str().map(|t| t.parse().expect("uuid")),
            )
        })
        .collect();
    let got_ids = ids(&live);
    assert!(
        got_ids.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeat"
    );
    assert_eq!(got, want, "the live read is the audit log's events");

    // Read again after the fact from the other gateway, in pages of 100: the same.
    let (again, _) = read_all(&store, &pair.gw, None, 100).await;
    assert_eq!(ids(&again), got_ids);
    // The live reader's last cursor goes on from where it stopped: nothing new.
    let (after, _) = read_all(&store, &s.gw, live_next, 100).await;
    assert_eq!(after, Vec::<Value>::new());

    // Each tenant's events alternate, as its changes serialized.
    let mut per_tenant: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for (_, t, tenant) in &got {
        per_tenant
            .entry(tenant.expect("tenant"))
            .or_default()
            .push(t.as_str());
    }
    for (t, kinds) in per_tenant {
        assert_eq!(kinds[..2], ["tenant.registered", "code.issued"], "{t}");
        for (k, kind) in kinds[2..].iter().enumerate() {
            let want = if k % 2 == 0 {
                "tenant.suspended"
            } else {
                "tenant.resumed"
            };
            assert_eq!(*kind, want, "{t} #{k}");
        }
    }
    // `at` is the record's time; data holds no actor or source.
    let first_toggle = live
        .iter()
        .find(|e| e["type"] == "tenant.suspended")
        .expect("a suspension");
    assert!(
        first_toggle["at"]
            .as_str()
            .is_some_and(|a| a.ends_with('Z'))
    );
    assert_eq!(first_toggle["appliance_id"], Value::Null);
    eprintln!(
        "feed: {} events, written in {written:?} through two gateways, {inversions} commit inversions, total {:?}",
        got.len(),
        started.elapsed()
    );
    pair.stop().await;
    s.stop().await;
}

/// A long stretch of audit records that are no events (check-ins, say) between two
/// events: the page after the first event still holds the second, and a reader at
/// the end gets an empty page with its own cursor back.
#[tokio::test]
async fn feed_pages_over_long_stretches_without_events() {
    let s = Stack::start().await;
    let v = s
        .register("Stretch Ltd", "stretch@acme.test", "essentials")
        .await;
    let tenant = v["tenant_id"].as_str().expect("tenant").to_owned();
    s.wait_until_all_chained().await;
    let store = s.store();
    let (st, first, _) = send(store.get(s.url("/events"))).await;
    assert_eq!(st, 200, "{first}");
    assert_eq!(first["events"].as_array().expect("events").len(), 2);
    let after = first["next"].as_str().expect("next").to_owned();

    // Two and a half windows of check-in records, in short transactions: a long one
    // would hold back the chaining of every test sharing this Postgres.
    let stretch = 2 * alga_audit::store::MAX_SCAN + 5_000;
    let mut admin = s.another_admin().await;
    for batch in 0..stretch / 500 {
        let tx = admin.transaction().await.expect("begin");
        for i in 0..500 {
            let r = alga_audit::NewRecord::builder(
                time::OffsetDateTime::now_utc(),
                alga_audit::Actor::client("appliance", "spiffe://alga.test/appliance/x")
                    .expect("actor"),
                alga_audit::Action::new("appliance.check_in").expect("action"),
            )
            .request_id(&format!("stretch-{batch}-{i}"))
            .build()
            .expect("record");
            alga_audit::append(&tx, &r).await.expect("append");
        }
        tx.commit().await.expect("commit");
    }
    let (st, v, _) = send(store.post(s.url(&format!("/tenants/{tenant}/suspend")))).await;
    assert_eq!(st, 200, "{v}");
    s.wait_until_all_chained().await;

    let (st, page, _) = send(store.get(s.url(&format!("/events?after={after}")))).await;
    assert_eq!(st, 200, "{page}");
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["type"], "tenant.suspended");
    assert!(
        events[0]["id"].as_u64().expect("id") > stretch,
        "after the stretch"
    );
    let end = page["next"].as_str().expect("next").to_owned();
    let (st, v, _) = send(store.get(s.url(&format!("/events?after={end}")))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"events": [], "next": end}));
    s.stop().await;
}

/// Malformed and unknown cursors, cursors beyond the end, limits out of range and
/// callers without the store role get clear errors.
#[tokio::test]
async fn feed_refuses_bad_input() {
    let s = Stack::start().await;
    s.register("Bad Input Ltd", "bad@acme.test", "essentials")
        .await;
    s.wait_until_all_chained().await;
    let store = s.store();
    let (st, v, _) = send(store.get(s.url("/events"))).await;
    assert_eq!(st, 200, "{v}");
    let next = v["next"].as_str().expect("next").to_owned();
    assert_eq!(v["events"].as_array().expect("events").len(), 2, "{v}");
    let head = Cursor::parse(&next).expect("our cursor").0;

    let beyond = Cursor(head + 1_000_000).encode();
    let unknown_version = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"ev9\0\0\0\0\0\0\0\x01")
    };
    for (query, field) in [
        ("after=nope".to_owned(), "after"),
        ("after=".to_owned(), "after"),
        (format!("after={next}%3D"), "after"),
        (format!("after={unknown_version}"), "after"),
        (format!("after={beyond}"), "after"),
        ("limit=0".to_owned(), "limit"),
        ("limit=1001".to_owned(), "limit"),
        ("limit=-5".to_owned(), "limit"),
        ("limit=ten".to_owned(), "query"),
        ("since=0".to_owned(), "query"),
    ] {
        let (st, v, _) = send(store.get(s.url(&format!("/events?{query}")))).await;
        assert_error(st, &v, 400, "validation_failed");
        assert!(
            v["error"]["fields"][field].is_string(),
            "{query}: names {field}: {v}"
        );
    }
    let (st, v, _) =
        send(store.get(s.url(&format!("/events?after={}", Cursor(head).encode())))).await;
    assert_eq!(st, 200, "the head itself is a valid cursor: {v}");
    assert_eq!(v["events"], json!([]));
    assert_eq!(v["next"], Cursor(head).encode());

    let (st, v, _) = send(s.auditor().get(s.url("/events"))).await;
    assert_error(st, &v, 403, "forbidden");
    let (st, v, _) = send(s.anon().get(s.url("/events"))).await;
    assert_error(st, &v, 401, "unauthenticated");
    s.stop().await;
}

/// The overdue sweep records an appliance once per episode, even with two sweeps at
/// once; a check-in starts a new episode. Essentials appliances never are overdue.
#[tokio::test]
async fn overdue_is_recorded_once_per_episode() {
    let s = Stack::start().await;
    let (_, _, code) = s.tenant_with_code("pro").await;
    let (st, v, appliance) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let appliance_id = v["appliance_id"].clone();
    assert!(appliance_id.is_string(), "{v}");
    let (_, _, code) = s.tenant_with_code("essentials").await;
    let (st, v, _) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let pool = alga_gateway::db::pool(
        alga_gateway::runtime_pg_config(s.gateway_config()).expect("config"),
        4,
    )
    .expect("pool");
    let sweep = |now| {
        let (pool, policy) = (pool.clone(), s.policy.clone());
        async move {
            alga_gateway::flows::events::sweep_overdue(&pool, &policy, now)
                .await
                .expect("sweep")
        }
    };
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(sweep(now).await, 0, "nobody is overdue yet");
    // Pro: a 24 h interval and 3 days of grace.
    let later = now + time::Duration::days(5);
    let (a, b) = tokio::join!(sweep(later), sweep(later));
    assert_eq!(a + b, 1, "two sweeps at once record it once");
    assert_eq!(
        sweep(later + time::Duration::days(30)).await,
        0,
        "same episode, stale or not"
    );

    let (st, v) = s.check_in(&appliance).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(sweep(now).await, 0, "checked in: not overdue");
    assert_eq!(
        sweep(later).await,
        1,
        "overdue again after the check-in: a new episode"
    );
    s.wait_until_all_chained().await;

    let (events, _) = read_all(&s.store(), &s.gw, None, 50).await;
    let overdue: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "appliance.overdue")
        .collect();
    assert_eq!(overdue.len(), 2, "{overdue:?}");
    for e in &overdue {
        assert_eq!(e["data"]["edition"], "pro", "{e}");
        assert!(e["data"]["last_seen_at"].is_string(), "{e}");
        assert!(e["tenant_id"].is_string(), "{e}");
    }
    assert_eq!(overdue[0]["appliance_id"], appliance_id);
    assert_eq!(overdue[1]["appliance_id"], appliance_id);
    let redeemed = events
        .iter()
        .filter(|e| e["type"] == "code.redeemed")
        .count();
    assert_eq!(redeemed, 2);
    s.stop().await;
}

/// What the test receiver got: `(Alga-Event-Id, Alga-Signature, body)`.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A webhook receiver on `port`: records every delivery and answers 204.
async fn receiver(port: u16) -> (Received, tokio::sync::oneshot::Sender<()>) {
    let got: Received = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let got = got.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let got = got.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    got.lock().expect("lock").push((
                        h("alga-event-id"),
                        h("alga-signature"),
                        body.to_vec(),
                    ));
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the receiver's port is free again");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    (got, tx)
}

/// Webhooks while the receiver is down for a while (and the gateway restarts
/// meanwhile): once it is up, every event arrives, each tenant's in order, signed as
/// documented (checked by `scripts/webhook_verify.py`, Python's standard library).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_deliver_everything_after_an_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, "whsec_0123456789abcdef0123456789abcdef\n").expect("secret");
    // A port nobody listens on yet: deliveries are refused until the receiver starts.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s_opts = Opts {
        extra: Some(format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\n\
             retry_initial_secs = 0.2\nretry_max_secs = 1.0\ntimeout_secs = 2\n",
            secret_file.display()
        )),
        ..Opts::default()
    };
    let mut s = Stack::start_with(s_opts).await;
    let store = s.store();
    let mut tenants = Vec::new();
    for i in 0..4 {
        let v = s
            .register(
                &format!("Hook {i} {}", Uuid::new_v4().simple()),
                "hook@acme.test",
                "essentials",
            )
            .await;
        tenants.push(v["tenant_id"].as_str().expect("tenant").to_owned());
    }
    for k in 0..10 {
        for t in &tenants {
            let op = if k % 2 == 0 { "suspend" } else { "resume" };
            let (st, v, _) = send(store.post(s.url(&format!("/tenants/{t}/{op}")))).await;
            assert_eq!(st, 200, "{v}");
        }
    }
    // The receiver is down: attempts fail and are retried with back-off.
    wait_until(&s, "4 deliveries tried 3 times", |s| async move {
        s.count("SELECT count(*) FROM webhook_deliveries WHERE attempts >= 3")
            .await
            >= 4
    })
    .await;
    assert_eq!(
        s.count("SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL")
            .await,
        0
    );
    // A restart while the receiver is still down: the outbox is in Postgres. The new
    // gateway queues the events written after it started and fails them too.
    s.restart_gateway().await;
    for t in &tenants {
        let (st, v, _) = send(store.post(s.url(&format!("/tenants/{t}/suspend")))).await;
        assert_eq!(st, 200, "{v}");
    }
    s.wait_until_all_chained().await;
    let (feed, _) = read_all(&store, &s.gw, None, 100).await;
    assert_eq!(feed.len(), 4 * 2 + 4 * 10 + 4);
    let last = feed.last().expect("events")["id"].as_u64().expect("id");
    wait_until(&s, "the last event queued", |s| async move {
        s.count(&format!(
            "SELECT count(*) FROM webhook_deliveries WHERE seq = {last}"
        ))
        .await
            == 1
    })
    .await;
    assert_eq!(
        s.count("SELECT count(*) FROM webhook_deliveries").await,
        feed.len() as i64,
        "every event queued once"
    );
    // The restarted gateway retries too (each tenant's first event; the others wait
    // behind it).
    wait_until(&s, "the restarted gateway's retries", |s| async move {
        deliveries_counted(s, "retry").await >= 4
    })
    .await;
    let failed_attempts = s
        .count("SELECT coalesce(sum(attempts), 0) FROM webhook_deliveries")
        .await;

    // The receiver comes up: the outbox drains.
    let (got, stop_receiver) = receiver(port).await;
    wait_until(&s, "every queued event delivered", |s| async move {
        s.count("SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NULL")
            .await
            == 0
    })
    .await;
    let got = got.lock().expect("lock").clone();
    let _ = stop_receiver.send(());

    // Every event, at least once, with the feed's body and its id in the header.
    let by_id: HashMap<u64, &Value> = feed
        .iter()
        .map(|e| (e["id"].as_u64().expect("id"), e))
        .collect();
    let mut first_seen: Vec<u64> = Vec::new();
    let mut seen = HashSet::new();
    for (id, _, body) in &got {
        let id: u64 = id.parse().expect("Alga-Event-Id is the event id");
        let body: Value = serde_json::from_slice(body).expect("JSON body");
        assert_eq!(Some(&&body), by_id.get(&id), "the body is the feed's event");
        if seen.insert(id) {
            first_seen.push(id);
        }
    }
    assert_eq!(seen.len(), feed.len(), "every event delivered");
    // Each tenant's in order.
    let mut last: HashMap<String, u64> = HashMap::new();
    for id in &first_seen {
        let tenant = by_id[id]["tenant_id"].as_str().expect("tenant").to_owned();
        let prev = last.insert(tenant.clone(), *id);
        assert!(
            prev.is_none_or(|p| p < *id),
            "{tenant}: {prev:?} before {id}"
        );
    }

    // Signatures, checked by the README's Python snippet.
    let lines: String = got
        .iter()
        .map(|(_, sig, body)| {
            use base64::Engine;
            format!(
                "{}\n",
                json!({"signature": sig, "body_b64": base64::engine::general_purpose::STANDARD.encode(body)})
            )
        })
        .collect();
    let deliveries = dir.path().join("deliveries.jsonl");
    std::fs::write(&deliveries, lines).expect("write");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/webhook_verify.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&deliveries)
        .arg(&secret_file)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{n} of {n} signatures verified", n = got.len())),
        "{stdout}"
    );

    // Counted (the restarted gateway made every delivery), and the secret is nowhere
    // in the logs.
    assert!(deliveries_counted(&s, "delivered").await >= feed.len() as u64);
    let (_, metrics, _) = send(s.anon().get(s.url("/metrics"))).await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains("alga_gateway_webhook_backlog_events"),
        "{metrics}"
    );
    assert!(!crate::harness::captured_logs().contains("whsec_0123456789abcdef"));
    eprintln!(
        "webhooks: {} events, {failed_attempts} failed attempts while the receiver was down, \
         then {} deliveries ({} repeated)",
        feed.len(),
        got.len(),
        got.len() - seen.len()
    );
    s.stop().await;
}
