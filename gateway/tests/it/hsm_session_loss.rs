//! R6, the HSM case (RELIABILITY.md): the issuer's PKCS#11 sessions are pulled out from
//! under it (`Hsm::invalidate_sessions_for_test`: `C_Logout` of the whole process, as
//! an HSM restart or a network HSM failover would) several times while the real gateway
//! serves concurrent mixed load (redeems of distinct paid codes, registrations,
//! check-ins). The workers reopen their sessions and retry once, so every request is
//! answered with success or a clean, documented 503; nothing is half-done, no code is
//! burned, the mails go out once, the audit chain verifies, and the time from each pull
//! to the next issuer-backed success is reported.
//!
//! Login is per process and this test binary shares one HSM pool between every test
//! (`harness::hsm`), so pulling it here would disturb the tests running beside it: the
//! test re-runs itself alone in a child process (like the issuer's `isolated_in`), on
//! the same `.dev` token, whose login state is per process.
//!
//! `ALGA_R6_REQUESTS` (default 96) sets the number of requests under load.
//! `ALGA_R6_STORM_MS=<ms>` pulls every `<ms>` milliseconds for the whole load instead
//! of three spaced pulls: a pull can then land between a worker's reopen and its retry,
//! so clean 503s are expected (counted), still never a 500, a half-done request or an
//! internal error at the issuer. That mode found the worker's "key not on the token"
//! misclassification of a login pulled mid-lookup (`issuer/src/hsm/worker.rs`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{
    Appliance, Opts, SmtpSink, Stack, captured_logs, hsm_handle, redeem_body, send,
};

/// Set in the child process that runs the test body.
const CHILD_ENV: &str = "ALGA_IT_R6_CHILD";
const NAME: &str = "r6_hsm_sessions_pulled_under_mixed_load_nothing_half_done_no_code_burned";
/// Concurrent clients during the load.
const CLIENTS: usize = 12;
/// Session pulls during the load.
const PULLS: usize = 3;
/// Appliances that check in during the load.
const CHECK_IN_APPLIANCES: usize = 8;
/// Bound of the whole child run.
const CHILD_BOUND: Duration = Duration::from_secs(300);

#[test]
fn r6_hsm_sessions_pulled_under_mixed_load_nothing_half_done_no_code_burned() {
    if std::env::var_os(CHILD_ENV).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body());
        return;
    }
    // "it::hsm_session_loss" → "hsm_session_loss": test names do not include the crate.
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    let test = format!("{module}::{NAME}");
    let out = tempfile::tempdir().expect("tempdir");
    let stdout_path = out.path().join("stdout");
    let stderr_path = out.path().join("stderr");
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            test.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("re-run the test binary");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > CHILD_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // The figure line (libtest prints it after the test's name on the same line).
    for line in stdout.lines() {
        if let Some(i) = line.find("R6 HSM") {
            println!("{}", &line[i..]);
        }
    }
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains("test result: ok. 1 passed"),
        "child process for {test} failed ({status:?}, bound {CHILD_BOUND:?}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Redeem,
    Register,
    CheckIn,
}

impl Kind {
    fn success(self) -> u16 {
        match self {
            Kind::Redeem | Kind::CheckIn => 200,
            Kind::Register => 201,
        }
    }
}

/// One request of the load and its answer.
struct Done {
    kind: Kind,
    /// Index into the kind's inputs (code, company, appliance).
    input: usize,
    start: Instant,
    end: Instant,
    status: u16,
    body: Value,
}

impl Done {
    fn ok(&self) -> bool {
        self.status == self.kind.success()
    }
}

fn requests() -> usize {
    std::env::var("ALGA_R6_REQUESTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(96)
        .clamp(16, 5000)
}

/// `ALGA_R6_STORM_MS`: the storm's interval between pulls, if set.
fn storm() -> Option<Duration> {
    std::env::var("ALGA_R6_STORM_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(|ms| Duration::from_millis(ms.min(10_000)))
}

fn recipient() -> String {
    format!("r6-{}@mail.test", Uuid::new_v4().simple())
}

fn register_body(company: &str, email: &str) -> Value {
    json!({
        "company": company,
        "contact": {"name": "Ada Lovelace", "email": email},
        "edition": "pro",
    })
}

async fn body() {
    let n = requests();
    let mut sink = SmtpSink::start().await;
    let s = Stack::start_with(Opts {
        smtp_port: Some(sink.port),
        // A mail whose first attempt failed is retried within a second, not 30 s.
        mail: Some("retry_initial_secs = 0.5\nretry_max_secs = 1".into()),
        ..Opts::default()
    })
    .await;
    let hsm = hsm_handle();

    // ---- inputs: the load's kinds interleaved, half redeems, a quarter each of the rest.
    let kinds: Vec<Kind> = (0..n)
        .map(|i| match i % 4 {
            0 | 2 => Kind::Redeem,
            1 => Kind::Register,
            _ => Kind::CheckIn,
        })
        .collect();
    let count = |k: Kind| kinds.iter().filter(|&&x| x == k).count();
    let (n_redeem, n_register, n_check_in) = (
        count(Kind::Redeem),
        count(Kind::Register),
        count(Kind::CheckIn),
    );

    // Distinct paid codes to redeem (and the check-in appliances' codes), registered
    // before the load, eight at a time.
    let setup_started = Instant::now();
    let codes: Vec<(String, String)> = futures::stream::iter(0..n_redeem + CHECK_IN_APPLIANCES)
        .map(|i| {
            let s = &s;
            async move {
                let v = s
                    .register(
                        &format!("R6 setup {i} {}", Uuid::new_v4().simple()),
                        &recipient(),
                        "pro",
                    )
                    .await;
                let code_id = v["install_code"]["code_id"]
                    .as_str()
                    .expect("code_id")
                    .to_owned();
                let code = s.code(&code_id).await;
                (code_id, code)
            }
        })
        .buffered(8)
        .collect()
        .await;
    let (codes, appliance_codes) = codes.split_at(n_redeem);
    let mut check_in_clients = Vec::new();
    for (_, code) in appliance_codes {
        let (st, v, a) = s.redeem(code).await;
        assert_eq!(st, 200, "{v}");
        check_in_clients.push(s.appliance(&a));
    }
    let companies: Vec<(String, String)> = (0..n_register)
        .map(|i| {
            (
                format!("R6 load {i} {}", Uuid::new_v4().simple()),
                recipient(),
            )
        })
        .collect();
    let redeemers: Vec<Appliance> = (0..n_redeem).map(|_| Appliance::new()).collect();
    let setup = setup_started.elapsed();
    let recoveries_before = hsm.session_recoveries();

    // ---- the load: CLIENTS tasks take the next request until all n are sent.
    let next = Arc::new(AtomicUsize::new(0));
    let load_over = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<Done>>> = Arc::new(Mutex::new(Vec::new()));
    let inputs = Arc::new((
        kinds,
        codes.to_vec(),
        companies.clone(),
        redeemers.clone(),
        check_in_clients,
    ));
    let load_started = Instant::now();

    // The puller: pulls the sessions when a quarter, half and three quarters of the
    // requests have been sent, each time only after a request sent after the previous
    // pull succeeded (so every pull hits a pool in use, and is counted). In a storm:
    // every interval from the first request to the end of the load.
    let storm = storm();
    let puller = {
        let (next, load_over, done, hsm) =
            (next.clone(), load_over.clone(), done.clone(), hsm.clone());
        tokio::spawn(async move {
            let mut pulls: Vec<Instant> = Vec::new();
            if let Some(every) = storm {
                while next.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                while !load_over.load(Ordering::SeqCst) {
                    pulls.push(pull_sessions(&hsm).await);
                    tokio::time::sleep(every).await;
                }
                return pulls;
            }
            'pulls: for i in 0..PULLS {
                let threshold = n * (i + 1) / (PULLS + 1);
                loop {
                    let sent = next.load(Ordering::SeqCst);
                    let recovered = pulls.last().is_none_or(|p| {
                        done.lock()
                            .expect("results")
                            .iter()
                            .any(|d| d.ok() && d.start >= *p)
                    });
                    if sent >= threshold && recovered {
                        break;
                    }
                    if load_over.load(Ordering::SeqCst) {
                        break 'pulls;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                pulls.push(pull_sessions(&hsm).await);
            }
            pulls
        })
    };

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, done, inputs) = (next.clone(), done.clone(), inputs.clone());
            let anon = s.anon();
            let store = s.store();
            let gw = s.gw.clone();
            tokio::spawn(async move {
                let (kinds, codes, companies, redeemers, check_in_clients) = &*inputs;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= kinds.len() {
                        break;
                    }
                    let kind = kinds[i];
                    // The k-th request of its kind uses the k-th input of that kind.
                    let input = kinds[..i].iter().filter(|&&k| k == kind).count();
                    let rb = match kind {
                        Kind::Redeem => anon
                            .post(format!("{gw}/register"))
                            .json(&redeem_body(&redeemers[input], &codes[input].1)),
                        Kind::Register => {
                            let (company, email) = &companies[input];
                            store
                                .post(format!("{gw}/register-tenant"))
                                .json(&register_body(company, email))
                        }
                        Kind::CheckIn => check_in_clients[input % check_in_clients.len()]
                            .post(format!("{gw}/check-in"))
                            .json(&json!({"appliance": {"version": "2"}, "csr": null})),
                    };
                    let start = Instant::now();
                    let (status, body, _) = send(rb).await;
                    done.lock().expect("results").push(Done {
                        kind,
                        input,
                        start,
                        end: Instant::now(),
                        status: status.as_u16(),
                        body,
                    });
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let load = load_started.elapsed();
    load_over.store(true, Ordering::SeqCst);
    let pulls = puller.await.expect("puller");
    let recoveries_after = hsm.session_recoveries();
    let done = std::mem::take(&mut *done.lock().expect("results"));
    assert_eq!(done.len(), n);

    // ---- answers: success or a clean, documented 503; never a 500.
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for d in &done {
        let code = d.body["error"]["code"].as_str().unwrap_or("ok");
        *statuses
            .entry(format!("{:?} {} {code}", d.kind, d.status))
            .or_default() += 1;
        let clean_503 = d.status == 503
            && matches!(code, "license_service_unavailable" | "service_unavailable")
            && d.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty());
        if !d.ok() && !clean_503 {
            unexpected.push(format!("{:?} {} {}", d.kind, d.status, d.body));
        }
    }
    let n500 = done.iter().filter(|d| d.status == 500).count();
    let n503 = done.iter().filter(|d| d.status == 503).count();
    assert_eq!(n500, 0, "500 internal under HSM session loss: {statuses:?}");
    assert!(
        unexpected.is_empty(),
        "answers that are neither success nor a clean 503: {unexpected:?}"
    );

    // ---- recovery: from each pull to the first success of a request sent after it.
    let recovery: Vec<Option<Duration>> = pulls
        .iter()
        .map(|p| {
            done.iter()
                .filter(|d| d.ok() && d.start >= *p)
                .map(|d| d.end - *p)
                .min()
        })
        .collect();
    if storm.is_none() {
        // Pulls spaced apart: a worker reopens its session and retries once, so no
        // request sees the loss (a storm may pull again before that retry).
        assert_eq!(n503, 0, "503 without a storm: {statuses:?}");
        assert_eq!(pulls.len(), PULLS, "every pull happened during the load");
        assert!(
            recovery.iter().all(Option::is_some),
            "a success after every pull: {recovery:?}"
        );
        assert!(
            recoveries_after - recoveries_before >= PULLS as u64,
            "every pull made a worker recover: {recoveries_before} → {recoveries_after}"
        );
    } else {
        assert!(
            recoveries_after > recoveries_before,
            "the workers recovered: {recoveries_before} → {recoveries_after}"
        );
    }
    // The issuer (in process: its log is this process's) never took a pulled login for
    // an internal error, such as a key missing from the token.
    let internal: Vec<String> = captured_logs()
        .lines()
        .filter(|l| l.contains("operation failed") && l.contains("error.code=Internal"))
        .map(str::to_owned)
        .collect();
    assert!(
        internal.is_empty(),
        "internal errors at the issuer: {internal:?}"
    );

    // ---- redeems: complete or not at all.
    let mut half_done = Vec::new();
    let mut failed_codes = Vec::new();
    for d in done.iter().filter(|d| d.kind == Kind::Redeem) {
        let code_id = &codes[d.input].0;
        if d.ok() {
            let appliance: Uuid = d.body["appliance_id"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .expect("appliance_id");
            let row = s
                .admin
                .query_one(
                    "SELECT \
                     (SELECT count(*) FROM appliances WHERE appliance_id = $1 AND code_id = $2 \
                        AND credential_serial IS NOT NULL), \
                     (SELECT count(*) FROM install_codes WHERE code_id = $2 AND state = 'consumed' \
                        AND appliance_id = $1), \
                     (SELECT count(*) FROM licenses WHERE appliance_id = $1 AND reason = 'redeem'), \
                     (SELECT count(*) FROM audit_events WHERE action = 'code.redeem' \
                        AND position(convert_to($3, 'UTF8') IN record) > 0 \
                        AND position(convert_to('\"status\":\"success\"', 'UTF8') IN record) > 0)",
                    &[&appliance, code_id, &appliance.to_string()],
                )
                .await
                .expect("redeem state");
            let got: [i64; 4] = [row.get(0), row.get(1), row.get(2), row.get(3)];
            if got != [1, 1, 1, 1] {
                half_done.push(format!(
                    "{code_id}: appliance, consumed, license, audit = {got:?}"
                ));
            }
        } else {
            let row = s
                .admin
                .query_one(
                    "SELECT (SELECT state FROM install_codes WHERE code_id = $1), \
                     (SELECT count(*) FROM appliances WHERE code_id = $1)",
                    &[code_id],
                )
                .await
                .expect("code state");
            let (state, appliances): (String, i64) = (row.get(0), row.get(1));
            if state != "unclaimed" || appliances != 0 {
                half_done.push(format!(
                    "{code_id} failed but is {state} with {appliances} appliances"
                ));
            }
            failed_codes.push(d.input);
        }
    }
    assert!(half_done.is_empty(), "half-done redeems: {half_done:?}");
    let redeem_ok = done
        .iter()
        .filter(|d| d.kind == Kind::Redeem && d.ok())
        .count();
    let load_code_ids: Vec<String> = codes.iter().map(|c| c.0.clone()).collect();
    let consumed: i64 = s
        .admin
        .query_one(
            "SELECT count(*) FROM install_codes WHERE code_id = ANY($1) AND state = 'consumed'",
            &[&load_code_ids],
        )
        .await
        .expect("consumed")
        .get(0);
    assert_eq!(
        consumed,
        i64::try_from(redeem_ok).expect("count"),
        "a code consumed without a successful answer"
    );
    // Codes not burned: every code whose redeem failed redeems now.
    for &i in &failed_codes {
        let (st, v, _) = send(
            s.anon()
                .post(s.url("/register"))
                .json(&redeem_body(&Appliance::new(), &codes[i].1)),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "a failed code redeems afterwards: {v}");
    }

    // ---- registrations: a 201 has its tenant, code and outbox mail; a failure left nothing.
    let mut registered = Vec::new();
    for d in done.iter().filter(|d| d.kind == Kind::Register) {
        let (company, email) = &companies[d.input];
        let row = s
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM tenants WHERE company = $1), \
                 (SELECT count(*) FROM install_codes c JOIN tenants t USING (tenant_id) \
                    WHERE t.company = $1 AND c.state = 'unclaimed'), \
                 (SELECT count(*) FROM mail_outbox m JOIN tenants t USING (tenant_id) \
                    WHERE t.company = $1 AND m.recipient = $2 AND m.kind = 'registration')",
                &[company, email],
            )
            .await
            .expect("registration state");
        let got: [i64; 3] = [row.get(0), row.get(1), row.get(2)];
        if d.ok() {
            assert_eq!(
                got,
                [1, 1, 1],
                "201 without tenant, code or outbox row (tenant {})",
                // Only the id: the body's download link carries a presigned signature.
                d.body["tenant_id"]
            );
            registered.push(email.clone());
        } else {
            assert_eq!(got, [0, 0, 0], "a failed registration left state behind");
        }
    }
    // Mail delivered afterwards, once per registration.
    let emails: Vec<String> = registered.clone();
    let mut outbox = (0, 0);
    for _ in 0..300 {
        let row = s
            .admin
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'sent'), count(*) FILTER (WHERE state = 'failed') \
                 FROM mail_outbox WHERE recipient = ANY($1)",
                &[&emails],
            )
            .await
            .expect("outbox");
        outbox = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if outbox.0 + outbox.1 == i64::try_from(emails.len()).expect("count") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        outbox,
        (i64::try_from(emails.len()).expect("count"), 0),
        "every registration's mail sent, none failed"
    );
    let delivered_once = emails
        .iter()
        .filter(|e| sink.messages_to(e).len() == 1)
        .count();
    assert_eq!(
        delivered_once,
        emails.len(),
        "each mail delivered exactly once"
    );

    // ---- check-ins: one license and one success record per 200.
    let check_in_ok = done
        .iter()
        .filter(|d| d.kind == Kind::CheckIn && d.ok())
        .count();
    let row = s
        .admin
        .query_one(
            "SELECT (SELECT count(*) FROM licenses WHERE reason = 'check_in'), \
             (SELECT count(*) FROM audit_events WHERE action = 'appliance.check_in' \
                AND position(convert_to('\"status\":\"success\"', 'UTF8') IN record) > 0)",
            &[],
        )
        .await
        .expect("check-in state");
    let expected = i64::try_from(check_in_ok).expect("count");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (expected, expected),
        "check-in licenses and audit records match the 200s"
    );

    // ---- the audit chain: every record chained, verified with the issuer's audit keys.
    let chained = s.wait_until_all_chained().await;
    let (st, keys, _) = send(s.auditor().get(s.url("/audit/keys"))).await;
    assert_eq!(st, 200, "{keys}");
    let keys = alga_audit::AuditKeys::parse(&keys.to_string()).expect("audit keys");
    let mut verifier = s.another_admin().await;
    let report = alga_audit::verify_database(
        &mut verifier,
        &alga_audit::VerifyOptions {
            keys,
            external_checkpoints: Vec::new(),
            now: time::OffsetDateTime::now_utc(),
            unchained_alarm_after: time::Duration::minutes(10),
        },
    )
    .await
    .expect("verify");
    assert!(
        report.intact(),
        "the audit chain verifies: {:?}",
        report.first_damage()
    );
    assert_eq!(report.records, u64::try_from(chained).expect("count"));

    let mut latencies: Vec<Duration> = done.iter().map(|d| d.end - d.start).collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let ms = |d: &Option<Duration>| {
        d.map_or_else(
            || "none".to_owned(),
            |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        )
    };
    let recovered: Vec<&Duration> = recovery.iter().flatten().collect();
    let recovery_figure = match storm {
        None => format!(
            "[{}]",
            recovery.iter().map(ms).collect::<Vec<_>>().join(", ")
        ),
        Some(_) => format!(
            "at most {} over the {} pulls followed by a request",
            ms(&recovered.iter().max().map(|d| **d)),
            recovered.len()
        ),
    };
    let pull_figure = match storm {
        None => format!("{} pulls mid-load", pulls.len()),
        Some(every) => format!("{} pulls (one every {every:?})", pulls.len()),
    };
    println!(
        "R6 HSM sessions pulled: {n} requests ({n_redeem} redeems of distinct pro codes, \
         {n_register} registrations, {n_check_in} check-ins) from {CLIENTS} clients in {:.1} s \
         (setup {:.1} s), {pull_figure}: {statuses:?}; 0 × 500, {n503} × 503; first success \
         of a request sent after each pull: {recovery_figure} (median request {:.0} ms); session_recoveries {recoveries_before} → \
         {recoveries_after}; {redeem_ok} redeems complete (appliance, license, audit), {} failed \
         redeems left unclaimed and redeemed afterwards; {} registrations with code and outbox \
         row, {delivered_once} mails delivered once; {} audit records, chain verified intact",
        load.as_secs_f64(),
        setup.as_secs_f64(),
        median.as_secs_f64() * 1000.0,
        failed_codes.len(),
        registered.len(),
        report.records,
    );

    drop(verifier);
    s.stop().await;
    sink.stop().await;
}

/// Logs the process out of the token under the HSM workers (the test hook); returns
/// when it happened.
async fn pull_sessions(hsm: &alga_issuer::hsm::Hsm) -> Instant {
    let h = hsm.clone();
    tokio::task::spawn_blocking(move || h.invalidate_sessions_for_test())
        .await
        .expect("the hook runs")
        .expect("the test hook logs the process out");
    Instant::now()
}
