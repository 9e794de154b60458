//! Reliability under attack and failure (RELIABILITY.md): the fast versions
//! of R1, R2, R4, R8, R10 and R13 against the in-process stack. Every test is bounded
//! in count; figures are printed (`--nocapture`), only counts are asserted.
//!
//! `ALGA_SOAK=<n>` (set by `make soak`) multiplies the counts by `n`.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alga_protocol::InstallCode;
use reqwest::StatusCode;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{
    Appliance, Opts, Stack, captured_logs, client_from, dev, guess, redeem_body, ring, send,
};

/// The soak multiplier (`ALGA_SOAK`, default 1, at most 1000).
fn scale() -> usize {
    std::env::var("ALGA_SOAK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 1000)
}

/// A count from the environment, else `default`.
fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
}

/// A code to race: a registration's (`rebuild == false`), or a rebuild's, re-issued
/// after the tenant's first appliance was redeemed, so that its redeem replaces that
/// appliance. Returns the tenant, the code id, the code and the appliance it replaces.
async fn code_to_race(s: &Stack, rebuild: bool) -> (Uuid, String, String, Option<Uuid>) {
    let (tenant, code_id, code) = s.tenant_with_code("pro").await;
    if !rebuild {
        return (tenant, code_id, code, None);
    }
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let (st, r) = s.reissue(&json!({"tenant_id": tenant})).await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["replaces_appliance_id"], json!(a.appliance_id), "{r}");
    let code_id = r["install_code"]["code_id"]
        .as_str()
        .expect("code_id")
        .to_owned();
    let code = s.code(&code_id).await;
    (tenant, code_id, code, a.appliance_id)
}

/// `(all, active, replaced)` appliances of the tenant.
async fn appliance_states(s: &Stack, tenant: Uuid) -> (i64, i64, i64) {
    let row = s
        .admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state = 'active'), \
             count(*) FILTER (WHERE state = 'replaced') FROM appliances WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1), row.get(2))
}

// ------------------------------------------------------------------------------ R1

/// R1: `n` concurrent redeems of one code, split over two gateways (each with its own
/// issuer), each with its own key: exactly one success, every other answer
/// `code_already_used`, no 5xx. Each round races a registration's code, then a
/// rebuild's: its one winner replaces the tenant's appliance, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_concurrent_redeems_of_one_code_across_two_gateways_exactly_one_wins() {
    let s = Stack::start().await;
    let pair = s.start_pair().await;
    // 100 in `make test`: with several hundred on two busy shared cores, losers blocked
    // on the winner's row lock (held across its issuer calls) fill the pool and later
    // requests are shed with 503 after the pool's 10 s wait (RELIABILITY.md, finding 3).
    // `ALGA_R1_REQUESTS=1000` runs the figure.
    let n = std::env::var("ALGA_R1_REQUESTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(2, 5000);
    let rounds = scale().min(100);
    let appliances: Vec<Appliance> = (0..n).map(|_| Appliance::new()).collect();
    let client = s.anon();
    for round in 0..rounds * 2 {
        let rebuild = round % 2 == 1;
        let (tenant, code_id, code, replaced) = code_to_race(&s, rebuild).await;
        // Warm-up: wrong-secret guesses at this code through both gateways open their
        // database and issuer connections, so the race measures the race, not the
        // start of cold pools (creating 16 Postgres connections at once on a busy
        // machine can pass the pool's 5 s creation timeout: a 503).
        let warm: Vec<_> = (0..64)
            .map(|i| {
                let gw = if i % 2 == 0 { &s.gw } else { &pair.gw };
                let rb = client
                    .post(format!("{gw}/register"))
                    .json(&redeem_body(&appliances[0], &guess(Some(&code_id))));
                tokio::spawn(async move { send(rb).await.0 })
            })
            .collect();
        for t in warm {
            let st = t.await.expect("task");
            assert_ne!(st, 200, "a wrong secret redeemed");
        }
        let started = Instant::now();
        let tasks: Vec<_> = appliances
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let gw = if i % 2 == 0 { &s.gw } else { &pair.gw };
                let rb = client
                    .post(format!("{gw}/register"))
                    .json(&redeem_body(a, &code));
                tokio::spawn(async move { send(rb).await })
            })
            .collect();
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for t in tasks {
            let (st, v, _) = t.await.expect("task");
            if st == 200 {
                assert_eq!(v["tenant_id"], tenant.to_string());
            }
            let code = v["error"]["code"].as_str().unwrap_or("ok");
            *statuses
                .entry(format!("{} {code}", st.as_u16()))
                .or_default() += 1;
        }
        let elapsed = started.elapsed();
        println!(
            "R1 round {round} ({}): {n} concurrent redeems over 2 gateways in {elapsed:?}: {statuses:?}",
            if rebuild {
                "a rebuild's code"
            } else {
                "a registration's code"
            }
        );
        assert_eq!(statuses.get("200 ok"), Some(&1), "exactly one success");
        assert_eq!(
            statuses.get("409 code_already_used"),
            Some(&(n - 1)),
            "every other answer is code_already_used, no 5xx: {statuses:?}"
        );
        // One appliance from the race (beside the one a rebuild replaced), active.
        let want = if rebuild { (2, 1, 1) } else { (1, 1, 0) };
        assert_eq!(appliance_states(&s, tenant).await, want);
        if let Some(old) = replaced {
            let state: String = s
                .admin
                .query_one(
                    "SELECT state FROM appliances WHERE appliance_id = $1",
                    &[&old],
                )
                .await
                .expect("row")
                .get(0);
            assert_eq!(state, "replaced");
        }
    }
    pair.stop().await;
    s.stop().await;
}

// ------------------------------------------------------------------------------ R2

/// R2: a reissue racing a redeem of the old code, `n` trials, alternately a
/// registration's code and a rebuild's. Whichever commits first wins; never both: a
/// redeem that succeeded left the code `consumed` and outside the reissue's
/// `revoked_code_ids` (and the new code replaces the appliance it made); a revoked
/// code never redeemed, then or later, and replaced nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_reissue_racing_redeems_never_lets_a_revoked_code_redeem() {
    let s = Stack::start().await;
    let trials = 25 * scale();
    let (mut redeem_won, mut reissue_won) = (0usize, 0usize);
    let started = Instant::now();
    for trial in 0..trials {
        let rebuild = trial % 2 == 1;
        let (tenant, code_id, code, replaced) = code_to_race(&s, rebuild).await;
        let a = Appliance::new();
        let redeem = send(
            s.anon()
                .post(s.url("/register"))
                .json(&redeem_body(&a, &code)),
        );
        let reissue = send(
            s.store()
                .post(s.url("/install-codes/reissue"))
                .json(&json!({"tenant_id": tenant})),
        );
        let ((rst, rv, _), (ist, iv, _)) = tokio::join!(redeem, reissue);
        assert_eq!(ist, 201, "reissue: {iv}");
        let revoked: Vec<&str> = iv["revoked_code_ids"]
            .as_array()
            .expect("revoked_code_ids")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let row = s
            .admin
            .query_one(
                "SELECT state, consumed_at IS NOT NULL, revoked_at IS NOT NULL \
                 FROM install_codes WHERE code_id = $1",
                &[&code_id],
            )
            .await
            .expect("row");
        let (state, consumed, was_revoked): (String, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        match rst.as_u16() {
            200 => {
                redeem_won += 1;
                assert_eq!(state, "consumed");
                assert!(consumed && !was_revoked);
                assert!(
                    !revoked.contains(&code_id.as_str()),
                    "a redeemed code was reported revoked: {iv}"
                );
                // The reissue came second: its code replaces what the redeem made.
                assert_eq!(iv["replaces_appliance_id"], rv["appliance_id"], "{iv}");
            }
            410 => {
                reissue_won += 1;
                assert_eq!(rv["error"]["code"], "code_revoked", "{rv}");
                assert_eq!(state, "revoked");
                assert!(was_revoked && !consumed);
                assert!(revoked.contains(&code_id.as_str()), "{iv}");
                assert_eq!(iv["replaces_appliance_id"], json!(replaced), "{iv}");
            }
            other => panic!("R2: redeem answered {other}: {rv}"),
        }
        // After the reissue committed, the old code never redeems (fresh key).
        let (st, v) = s.redeem_as(&code, &Appliance::new()).await;
        assert!(
            st == 409 || st == 410,
            "old code after reissue answered {st}: {v}"
        );
        // A won redeem adds one appliance (replacing the rebuild's old one); a lost one
        // changes nothing.
        let won = i64::from(rst == 200);
        let want = if rebuild {
            (1 + won, 1, won)
        } else {
            (won, won, 0)
        };
        assert_eq!(appliance_states(&s, tenant).await, want);
    }
    // Audit order agrees: no code has both a successful redeem and a revocation.
    let both = s
        .count(
            "SELECT count(*) FROM install_codes WHERE consumed_at IS NOT NULL AND revoked_at IS NOT NULL",
        )
        .await;
    assert_eq!(both, 0);
    println!(
        "R2: {trials} trials in {:?}: redeem first {redeem_won}, reissue first {reissue_won}, \
         revoked codes redeemed afterwards 0",
        started.elapsed()
    );
    s.stop().await;
}

// ------------------------------------------------------------------------------ R4

/// R4 (extends `audit::a_failing_audit_insert_leaves_no_state_change`): with the audit
/// insert failing, check-in and appliance revocation change nothing and return no
/// secret (no license token, no certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_failing_audit_insert_on_check_in_and_revoke_changes_nothing_returns_no_secret() {
    let s = Stack::start().await;
    let (_, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let id = a.appliance_id.expect("appliance id");
    let snapshot = "SELECT (SELECT count(*) FROM licenses) * 1000 \
                    + (SELECT count(*) FROM appliances WHERE state = 'revoked') * 100 \
                    + (SELECT count(*) FROM appliances WHERE last_check_in_at IS NOT NULL)";
    let before = s.count(snapshot).await;
    let events_before = s.count("SELECT count(*) FROM audit_events").await;
    s.admin
        .batch_execute("REVOKE INSERT ON audit_events FROM alga_gateway")
        .await
        .expect("revoke");

    let mut refused = 0;
    for _ in 0..3 {
        let (st, v, _) = send(
            s.appliance(&a)
                .post(s.url("/check-in"))
                .json(&json!({"appliance": {"version": "1.1"}, "csr": a.csr_pem})),
        )
        .await;
        assert_eq!(st, 500, "{v}");
        assert!(
            v.get("license").is_none() && v.get("credential").is_none(),
            "{v}"
        );
        assert!(
            !v.to_string().contains("eyJ"),
            "no JWT in a refused check-in"
        );
        refused += 1;
        let (st, v, _) = send(
            s.store()
                .post(s.url(&format!("/appliances/{id}/revoke")))
                .json(&json!({})),
        )
        .await;
        assert_eq!(st, 500, "{v}");
        refused += 1;
    }
    assert_eq!(s.count(snapshot).await, before, "no state change committed");
    assert_eq!(
        s.count("SELECT count(*) FROM audit_events").await,
        events_before
    );
    s.admin
        .batch_execute("GRANT INSERT ON audit_events TO alga_gateway")
        .await
        .expect("grant");
    // Restored: check-in works again.
    let (st, v, _) = send(
        s.appliance(&a)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1.1"}, "csr": null})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    println!(
        "R4: {refused} audited actions refused with the audit insert failing, 0 state changes"
    );
    s.stop().await;
}

// ------------------------------------------------------------------------------ R8

/// The response with its request id blanked: what a guesser can compare.
async fn comparable(rb: reqwest::RequestBuilder) -> (u16, Vec<(String, String)>, String) {
    let r = rb.send().await.expect("sent");
    let status = r.status().as_u16();
    let rid = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "date"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    headers.sort();
    let body = r.text().await.expect("body");
    (status, headers, body.replace(&rid, "<request-id>"))
}

/// R8: guesses from one source and from many loopback sources, real rate limits: 0
/// hits; each source throttled within its burst (plus what its rate refilled while the
/// test ran); unknown and wrong-secret answers identical apart from the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_code_guessing_finds_nothing_is_throttled_and_learns_nothing() {
    let s = Stack::start_with(Opts {
        real_rate_limits: true,
        ..Opts::default()
    })
    .await;
    let (_, code_id, _) = s.tenant_with_code("pro").await;
    let q = s.policy.rate_limits.redeem_per_source;
    let a = Appliance::new();
    let started = Instant::now();
    let allowance = |elapsed: Duration| -> usize {
        usize::try_from(q.burst).unwrap_or(usize::MAX)
            + usize::try_from(q.per_minute).unwrap_or(usize::MAX)
                * usize::try_from(elapsed.as_secs() / 60 + 1).unwrap_or(1)
    };

    // Many sources: 127.1.x.y, `per_source` guesses each, half of them at the real
    // code id (wrong secret), half at random ids.
    // Sizes: scaled by ALGA_SOAK, or set exactly (the full run: 100,000 from one
    // source and 1,000 sources × 100) with ALGA_R8_SOURCES, ALGA_R8_PER_SOURCE and
    // ALGA_R8_SINGLE.
    let sources = env_count("ALGA_R8_SOURCES", 200 * scale().min(5)).min(62_500);
    let per_source = env_count("ALGA_R8_PER_SOURCE", 12 * scale().min(10));
    let mut hits = 0usize;
    let mut answered: Vec<usize> = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut tasks = Vec::new();
    for i in 0..sources {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
        let c = client_from(ip);
        let url = s.url("/register");
        let csr = a.csr_pem.clone();
        let code_id = code_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..per_source {
                let guess = guess((k % 2 == 0).then_some(code_id.as_str()));
                let (st, _, _) = send(c.post(&url).json(&json!({
                    "install_code": guess, "csr": csr,
                    "appliance": {"hostname": "h", "version": "1"}
                })))
                .await;
                out.push(st.as_u16());
            }
            out
        }));
    }
    // One source: 127.0.0.2, 5 × burst guesses at random ids (by default), sent by 8
    // concurrent requesters sharing the source's address.
    let one = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let mut one_answered = 0usize;
    let single = env_count(
        "ALGA_R8_SINGLE",
        5 * usize::try_from(q.burst).unwrap_or(10) * scale().min(100),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (one, next, url, a) = (one.clone(), next.clone(), s.url("/register"), a.clone());
        senders.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < single {
                let (st, v, _) = send(one.post(&url).json(&redeem_body(&a, &guess(None)))).await;
                out.push((st.as_u16(), v["error"]["code"].as_str().map(str::to_owned)));
            }
            out
        }));
    }
    for t in senders {
        for (st, code) in t.await.expect("single-source sender") {
            *statuses.entry(st).or_default() += 1;
            match st {
                429 => {}
                401 => {
                    assert_eq!(code.as_deref(), Some("code_invalid"));
                    one_answered += 1;
                }
                200 => hits += 1,
                other => panic!("R8: unexpected {other} ({code:?})"),
            }
        }
    }
    for t in tasks {
        let out = t.await.expect("task");
        answered.push(out.iter().filter(|&&st| st != 429).count());
        for st in out {
            *statuses.entry(st).or_default() += 1;
            assert!(st == 401 || st == 429, "R8: guess answered {st}");
            if st == 200 {
                hits += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let max = allowance(elapsed);
    let worst = answered.iter().copied().max().unwrap_or(0);
    println!(
        "R8: {} guesses ({single} from one source, {sources} sources × {per_source}) in {elapsed:?}: \
         hits {hits}, statuses {statuses:?}, answered (not throttled) from the single source \
         {one_answered}, worst of many sources {worst}, allowance {max}",
        single + sources * per_source
    );
    assert_eq!(hits, 0);
    assert!(
        one_answered <= max,
        "single source got {one_answered} > {max} tries"
    );
    assert!(worst <= max, "a source got {worst} > {max} tries");
    assert!(
        statuses.get(&429).is_some_and(|&n| n > 0),
        "throttling happened"
    );

    // Unknown vs wrong secret: each pair from two fresh sources (own buckets), the same
    // status, headers and body but for the request id.
    // A fresh known code every 4 pairs keeps the per-code limit out of the way.
    let mut code_id2 = String::new();
    for i in 0..20u8 {
        if i % 4 == 0 {
            code_id2 = s.tenant_with_code("pro").await.1;
        }
        let ca = client_from(IpAddr::V4(Ipv4Addr::new(127, 2, i, 1)));
        let cb = client_from(IpAddr::V4(Ipv4Addr::new(127, 2, i, 2)));
        let unknown = comparable(
            ca.post(s.url("/register"))
                .json(&redeem_body(&a, &guess(None))),
        )
        .await;
        let wrong = comparable(
            cb.post(s.url("/register"))
                .json(&redeem_body(&a, &guess(Some(&code_id2)))),
        )
        .await;
        assert_eq!(unknown.0, 401, "{unknown:?}");
        assert_eq!(unknown, wrong, "unknown vs wrong-secret answers differ");
    }
    println!("R8: 20 unknown/wrong-secret pairs byte-identical apart from request_id");
    s.stop().await;
}

// --------------------------------------------------------------------- R13 + R10

/// R13: two gateways and two issuers on one Postgres and one token under mixed load
/// (register, redeem, retry, reissue, check-in, racing redeems): one gap-free audit
/// chain with no fork, single use holds. R10 on the same run: no code, license token,
/// presigned signature or PIN used appears in the logs, the database (audit and outbox
/// included) — only in the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_two_gateways_two_issuers_mixed_load_one_chain_single_use_and_r10_no_secret_leaks() {
    let s = Stack::start().await;
    let pair = s.start_pair().await;
    let gws = [s.gw.clone(), pair.gw.clone()];
    let tenants = 12 * scale().min(50);
    let client = s.anon();
    let store = s.store();
    let mut secrets: Vec<String> = Vec::new();
    // Public ids stored beside the secrets: the scan must find every one of them (a
    // check that it read what it claims to have read).
    let mut code_ids: Vec<String> = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..tenants {
        let gw_reg = gws[t % 2].clone();
        let gw_other = gws[(t + 1) % 2].clone();
        let reg = send(
            store
                .post(format!("{gw_reg}/register-tenant"))
                .json(&json!({
                    "company": format!("Mixed {t} {}", Uuid::new_v4().simple()),
                    "contact": {"name": "Ada", "email": format!("mixed{t}@acme.test")},
                    "edition": if t % 3 == 0 { "essentials" } else { "pro" },
                })),
        )
        .await;
        assert_eq!(reg.0, 201, "{}", reg.1);
        if let Some(url) = reg.1["download"]["url"].as_str() {
            secrets.extend(signature_of(url));
        }
        let tenant = reg.1["tenant_id"].as_str().expect("tenant").to_owned();
        let code_id = reg.1["install_code"]["code_id"]
            .as_str()
            .expect("code_id")
            .to_owned();
        code_ids.push(code_id.clone());
        let mut code = s.code(&code_id).await;
        if t % 4 == 1 {
            // Reissue through the other gateway; the new code is the one to redeem.
            let (st, v, _) = send(
                store
                    .post(format!("{gw_other}/install-codes/reissue"))
                    .json(&json!({"tenant_id": tenant})),
            )
            .await;
            assert_eq!(st, 201, "{v}");
            secrets.push(code.clone());
            if let Some(url) = v["download"]["url"].as_str() {
                secrets.extend(signature_of(url));
            }
            let reissued = v["install_code"]["code_id"].as_str().expect("code_id");
            code_ids.push(reissued.to_owned());
            code = s.code(reissued).await;
        }
        secrets.push(code.clone());
        // Three racers per code through both gateways, one of them retrying with its key.
        let client = client.clone();
        let gws = gws.clone();
        tasks.push(tokio::spawn(async move {
            let racers: Vec<Appliance> = (0..3).map(|_| Appliance::new()).collect();
            let futs = racers.iter().enumerate().map(|(i, a)| {
                send(
                    client
                        .post(format!("{}/register", gws[i % 2]))
                        .json(&redeem_body(a, &code)),
                )
            });
            let results = futures::future::join_all(futs).await;
            let mut out = Vec::new();
            let mut winner = None;
            for (i, (st, v, _)) in results.into_iter().enumerate() {
                if st == StatusCode::OK {
                    winner = Some((racers[i].clone().with_response(&v), v.clone()));
                }
                out.push((st.as_u16(), v));
            }
            // The winner retries through the other gateway (lost response), and keeps
            // what the retry answered: its credential replaces the first one.
            if let Some((a, first)) = winner.take() {
                let (st, v, _) = send(
                    client
                        .post(format!("{}/register", gws[1]))
                        .json(&redeem_body(&a, &code)),
                )
                .await;
                winner = Some(if st == StatusCode::OK {
                    (a.with_response(&v), v.clone())
                } else {
                    (a, first)
                });
                out.push((st.as_u16() + 1000, v));
            }
            (tenant, out, winner)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (tenant, out, winner) = t.await.expect("task");
        let ok = out.iter().filter(|(st, _)| *st == 200).count();
        assert_eq!(ok, 1, "single use, tenant {tenant}: {out:?}");
        for (st, v) in &out {
            *statuses.entry(*st).or_default() += 1;
            assert!(
                matches!(st, 200 | 409 | 1200),
                "unexpected {st} for tenant {tenant}: {v}"
            );
            if let Some(tok) = v["license"]["token"].as_str() {
                secrets.push(tok.to_owned());
            }
        }
        winners.extend(winner);
    }
    // Check-ins of the paid winners, through both gateways.
    for (i, (a, v)) in winners.iter().enumerate() {
        if v["edition"] != "pro" {
            continue;
        }
        let (st, cv, _) = send(
            s.appliance(a)
                .post(format!("{}/check-in", gws[i % 2]))
                .json(&json!({"appliance": {"version": "2"}, "csr": null})),
        )
        .await;
        assert_eq!(st, 200, "{cv}");
        *statuses.entry(2000 + st.as_u16()).or_default() += 1;
        if let Some(tok) = cv["license"]["token"].as_str() {
            secrets.push(tok.to_owned());
        }
    }
    assert_eq!(
        s.count("SELECT count(*) FROM appliances").await,
        i64::try_from(tenants).unwrap_or(i64::MAX)
    );

    // One chain: every event sequenced once, seq 1..n gap-free, each prev_hash the
    // previous hash.
    let chained = s.wait_until_all_chained().await;
    let forks = s
        .count(
            "SELECT count(*) FROM (SELECT seq, prev_hash, lag(hash) OVER (ORDER BY seq) AS h, \
             lag(seq) OVER (ORDER BY seq) AS p FROM audit_chain) c \
             WHERE (p IS NULL AND seq <> 1) OR (p IS NOT NULL AND (p <> seq - 1 OR h <> prev_hash))",
        )
        .await;
    assert_eq!(forks, 0, "a gap or fork in the audit chain");
    let distinct = s
        .count("SELECT count(DISTINCT event_id) FROM audit_chain")
        .await;
    assert_eq!(distinct, chained);
    println!(
        "R13: {tenants} tenants over 2 gateways + 2 issuers in {:?}: statuses {statuses:?} \
         (1200 = retry with the winner's key, 2200 = check-in); {} audit events in one chain, \
         0 forks",
        started.elapsed(),
        chained
    );

    // R10: scan the process's logs and a dump of every table for every secret used.
    let pin = std::fs::read_to_string(dev().path("ALGA_HSM_PIN_FILE"))
        .expect("PIN file")
        .trim()
        .to_owned();
    secrets.push(pin);
    let mut haystack = captured_logs();
    let tables: Vec<String> = s
        .admin
        .query(
            "SELECT quote_ident(table_name) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in &tables {
        for r in s
            .admin
            .query(&format!("SELECT row_to_json(x)::text FROM {t} x"), &[])
            .await
            .expect("dump")
        {
            haystack.push_str(r.get::<_, &str>(0));
            haystack.push('\n');
        }
    }
    // The audit records as stored bytes, too.
    for r in s
        .admin
        .query("SELECT encode(record, 'escape') FROM audit_events", &[])
        .await
        .expect("records")
    {
        haystack.push_str(r.get::<_, &str>(0));
    }
    let unique: HashSet<&String> = secrets.iter().collect();
    let mut leaks = Vec::new();
    for secret in &unique {
        let plain = secret.replace('-', "");
        if haystack.contains(secret.as_str()) || (plain.len() >= 16 && haystack.contains(&plain)) {
            leaks.push(secret.chars().take(12).collect::<String>());
        }
    }
    println!(
        "R10: {} secrets (codes, license tokens, presigned signatures, PIN) scanned in {} KiB of \
         logs and {} tables: {} found",
        unique.len(),
        haystack.len() / 1024,
        tables.len(),
        leaks.len()
    );
    assert!(leaks.is_empty(), "secrets outside the mailbox: {leaks:?}…");
    // What "0 found" rests on: every code (one per tenant, one more per reissue), the
    // pro winners' license tokens, the presigned links' signatures and the PIN were
    // looked for, and the haystack holds the logs and every table of the registry
    // (each code's public id is in it).
    let codes = secrets
        .iter()
        .filter(|x| InstallCode::parse(x).is_ok())
        .count();
    assert_eq!(
        codes,
        code_ids.len(),
        "every code (current and reissued) looked for"
    );
    assert!(code_ids.len() > tenants, "reissued codes among them");
    let tokens = secrets.iter().filter(|x| x.split('.').count() == 3).count();
    assert!(tokens >= tenants / 2, "{tokens} license tokens looked for");
    assert!(
        unique.len() > codes + tokens,
        "signatures and the PIN looked for"
    );
    for t in [
        "tenants",
        "install_codes",
        "appliances",
        "licenses",
        "mail_outbox",
        "audit_events",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} scanned: {tables:?}");
    }
    let missing: Vec<&String> = code_ids
        .iter()
        .filter(|id| !haystack.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "code ids not found in the scanned text: {missing:?}"
    );
    assert!(!captured_logs().is_empty(), "the logs were captured");
    pair.stop().await;
    s.stop().await;
}

/// The SigV4 signature of a presigned URL.
fn signature_of(url: &str) -> Option<String> {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix("X-Amz-Signature="))
        .map(str::to_owned)
}

// ------------------------------------------------------------------------------ R9

/// A client presenting a certificate from the dev service CA with the store's URI SAN
/// and the given validity and EKU.
fn service_client(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
) -> reqwest::Client {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "store");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://alga.test/service/nm-store"
            .try_into()
            .expect("ia5"),
    )];
    params.extended_key_usages = ekus;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(format!("{}/pki/service-ca.key", dev().var("ALGA_DEV_DIR")))
            .expect("CA key"),
    )
    .expect("CA key parses");
    let ca_pem = std::fs::read_to_string(dev().path("ALGA_CA_BUNDLE")).expect("CA cert");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dev().path("ALGA_CA_BUNDLE")).expect("CA bundle") {
        roots.add(c.expect("cert")).expect("root");
    }
    let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .expect("key der");
    let tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.der().clone()], key_der)
        .expect("client cert");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// R9 (complements `roles.rs`): an expired store certificate, a serverAuth-only store
/// certificate, and an appliance of tenant A reaching for tenant B's resources are all
/// refused (at TLS, or 401/403), and nothing of B changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_expired_server_auth_only_and_cross_tenant_callers_are_refused() {
    let s = Stack::start().await;
    let (_, _, code_a) = s.tenant_with_code("pro").await;
    let (tenant_b, _, code_b) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code_a).await;
    assert_eq!(st, 200, "{v}");
    let (st, v, b) = s.redeem(&code_b).await;
    assert_eq!(st, 200, "{v}");
    let b_id = b.appliance_id.expect("id");
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let good = service_client(
        now - day,
        now + day,
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    );
    let tenant_path = s.url(&format!("/tenants/{tenant_b}"));
    let (st, v, _) = send(good.get(&tenant_path)).await;
    assert_eq!(
        st, 200,
        "control: a valid store certificate is accepted: {v}"
    );

    let mut refused = 0;
    let callers = [
        (
            "expired store certificate",
            service_client(
                now - 10 * day,
                now - day,
                vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
            ),
        ),
        (
            "not yet valid store certificate",
            service_client(
                now + day,
                now + 10 * day,
                vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
            ),
        ),
        (
            "serverAuth-only store certificate",
            service_client(
                now - day,
                now + day,
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
            ),
        ),
    ];
    for (what, c) in &callers {
        for rb in [
            c.get(&tenant_path),
            c.post(s.url(&format!("/appliances/{b_id}/revoke")))
                .json(&json!({})),
        ] {
            match rb.send().await {
                Err(_) => refused += 1,
                Ok(r) => {
                    let st = r.status().as_u16();
                    assert!(st == 401 || st == 403, "{what}: answered {st}");
                    refused += 1;
                }
            }
        }
    }
    // Appliance of tenant A: B's tenant record, B's appliance revocation, and a store
    // route are refused.
    let ca = s.appliance(&a);
    for rb in [
        ca.get(&tenant_path),
        ca.post(s.url(&format!("/appliances/{b_id}/revoke")))
            .json(&json!({})),
        ca.post(s.url("/install-codes/reissue"))
            .json(&json!({"tenant_id": tenant_b})),
    ] {
        let (st, v, _) = send(rb).await;
        assert_eq!(st, 403, "{v}");
        refused += 1;
    }
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM appliances WHERE appliance_id = '{b_id}' AND state = 'active'"
        ))
        .await,
        1
    );
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM install_codes WHERE tenant_id = '{tenant_b}'"
        ))
        .await,
        1,
        "no code reissued for B"
    );
    println!(
        "R9: {refused}/{refused} expired, not-yet-valid, serverAuth-only and cross-tenant calls refused"
    );
    s.stop().await;
}
