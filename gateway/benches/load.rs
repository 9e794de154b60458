//! Load benchmark of the gateway's two appliance flows (BENCHMARKS.md P1, P3, P7).
//!
//! `cargo bench -p alga-gateway --bench load -- --bench [--seconds N] [--out FILE] [--smoke]
//! [--only-p2] [--license-calls N] [--pgbench-url URL --pgbench-redeem FILE]
//! [--ab-url URL --ab-client PEM]`
//! with `.dev/env` exported (`scripts/bench.sh` runs it). It starts its own issuer and
//! gateway through the test harness (a database cloned from the migrated template, the
//! `.dev` token), then measures, printing figures and asserting nothing:
//!
//! - redeems per second with distinct codes (closed loop, 8 clients, each redeem a new
//!   TLS connection without a client certificate, as at first boot) and, with
//!   `--pgbench-url URL --pgbench-redeem FILE`, P3's ceiling: pgbench running the
//!   redeem statements in windows alternating with the redeem windows;
//! - check-ins per second, a **new TLS connection per check-in** (closed loop, 8
//!   clients), as appliances check in once a day rather than over keep-alive, and,
//!   with `--ab-url URL --ab-client PEM`, P1's ceiling: `ab -E` against nginx (8
//!   concurrent, a new TLS connection per request) in windows alternating with them
//!   (the machine's speed drifts by ±30 % within minutes: a ceiling measured apart
//!   from its figure moved P3 from 0.14 to 0.38 between two runs);
//! - check-in p99 at an open-loop offered rate of half that maximum (latency counted
//!   from the scheduled send time, so a stall is not hidden by the load generator),
//!   with a probe of the disk beside it (`DiskProbe`: the check-ins over 20 ms set
//!   against the disk's flush stalls);
//! - P2 as the gateway gets it: licenses per second through the gateway's own issuer
//!   client (`IssuerClient::sign_license`, which coalesces concurrent requests into
//!   batch calls) from 32 concurrent tasks, against raw `Hsm::sign_digest` from 32
//!   tasks on the same token, in alternating 1 s windows (the machine's speed drifts);
//!   the issuer's signing log is on disk and fsynced before every reply;
//! - what each operation costs the machine (core-µs busy, from `/proc/stat` over its
//!   windows; the ceiling tools' own CPU from bash's `times`) and P3's bound: a redeem
//!   costs at least what Postgres spends on pgbench's redeem transaction, a new TLS
//!   connection with a request that does nothing, and two raw signs, so the cores allow
//!   at most `cores / (that sum)` redeems per second;
//! - P4: redeem and check-in p99 at a fixed offered rate against this stack and
//!   against a second one whose registry is seeded with 1,000,000 more tenants (codes,
//!   appliances, licenses; generate_series), in windows alternating between the two.
//!
//! The results go to stdout and, as `name value` lines, to `--out`. Without `--bench`
//! (as under `cargo test --all-targets`) it does nothing. `--only-p2` runs the P2 phase
//! alone, `--seconds` rounds of it (to profile it); `--license-calls N` sets how many
//! license calls the issuer client may have in flight during it; `--only-p1-p3` stops
//! after the redeem, check-in and open-loop phases (to compare builds of the gateway);
//! `--p7-rate R` offers R check-ins/s in the open loop instead of half the maximum.

#![allow(dead_code, clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "benchmarks set up real state directly and read the clock; anyhow is for binaries"
)]

#[path = "../../issuer/benches/support/cpu.rs"]
mod cpu;
#[path = "../tests/it/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::{Appliance, Stack};
use serde_json::json;
use time::OffsetDateTime;

const CLIENTS: usize = 8;
/// P7's goal: an open-loop check-in slower than this is counted (and when it was sent).
const SLOW: Duration = Duration::from_millis(20);
/// Offered rate of the P4 measurement (half redeems, half check-ins), per second.
const P4_RATE: u32 = 60;
/// P4's alternating windows per stack, and their length: 4 × 4 s = 16 s at 60/s is
/// 480 redeems and 480 check-ins per stack, so a p99 is not one stray sample.
const P4_ROUNDS: u32 = 4;
const P4_WINDOW_SECS: u64 = 4;
/// Redeems in one P4 window (half of `P4_RATE` for its length).
const P4_REDEEMS_PER_WINDOW: usize = (P4_RATE as usize / 2) * P4_WINDOW_SECS as usize;
/// Codes set aside for P4 on each stack (its redeems, with some to spare).
const P4_CODES: usize = 500;
/// Appliances redeemed on the big stack before P4, for its check-ins.
const P4_APPLIANCES: usize = 64;

struct Args {
    seconds: u64,
    out: Option<String>,
    smoke: bool,
    /// Only the P2 phase (for profiling it): no codes, redeems, check-ins or seeding.
    only_p2: bool,
    /// Stop after P7 (redeems, check-ins, the open loop): no P2, no P4 seeding.
    only_p1_p3: bool,
    /// P7's offered rate instead of half the measured maximum (to compare builds at one
    /// rate).
    p7_rate: Option<f64>,
    /// License calls the gateway's issuer client may have in flight in the P2 phase
    /// (its default when absent).
    license_calls: Option<usize>,
    /// P3's ceiling, run in the windows between the redeem windows.
    pgbench: Option<Pgbench>,
    /// P1's ceiling, run in the windows between the check-in windows.
    ab: Option<Ab>,
}

/// `pgbench` running the redeem statements against a scratch database (`bench.sh`
/// seeds it).
struct Pgbench {
    url: String,
    script: String,
}

/// `ab` against nginx terminating mTLS, a new TLS connection per request.
struct Ab {
    url: String,
    /// Client certificate and key, PEM, for `ab -E`.
    client_pem: String,
}

fn args() -> Option<Args> {
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    Some(Args {
        seconds: value("--seconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
        out: value("--out"),
        smoke: argv.iter().any(|a| a == "--smoke"),
        only_p2: argv.iter().any(|a| a == "--only-p2"),
        only_p1_p3: argv.iter().any(|a| a == "--only-p1-p3"),
        p7_rate: value("--p7-rate").and_then(|s| s.parse().ok()),
        license_calls: value("--license-calls").and_then(|s| s.parse().ok()),
        pgbench: value("--pgbench-url")
            .zip(value("--pgbench-redeem"))
            .map(|(url, script)| Pgbench { url, script }),
        ab: value("--ab-url")
            .zip(value("--ab-client"))
            .map(|(url, client_pem)| Ab { url, client_pem }),
    })
}

fn main() -> anyhow::Result<()> {
    let Some(args) = args() else {
        println!(
            "load: a benchmark; run it with `cargo bench -p alga-gateway --bench load -- --bench`"
        );
        return Ok(());
    };
    // Before the harness's capturing subscriber: a benchmark keeps only warnings.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let s = Arc::new(Stack::start().await);
    if args.only_p2 {
        licenses_vs_raw(&s, u32::try_from(args.seconds)?, args.license_calls).await?;
        return stop(s).await;
    }
    let window = Duration::from_secs(args.seconds);
    let codes_wanted: i32 = if args.smoke { 24 } else { 7000 };

    let t = Instant::now();
    let mut prepared = prepare(&s, codes_wanted).await?;
    println!(
        "prepared {} codes and appliance keys in {:.1} s",
        prepared.len(),
        t.elapsed().as_secs_f64()
    );

    let first_boot = first_boot_clients()?;

    // Codes kept for the P4 measurement on this (small) registry.
    let p4_codes = prepared.split_off(prepared.len() - P4_CODES.min(prepared.len() / 2));

    // Redeems, distinct codes, closed loop, in windows alternating with pgbench's.
    let rounds: u32 = if args.smoke { 1 } else { 5 };
    let slice = window / rounds;
    let queue = Arc::new(std::sync::Mutex::new(prepared));
    let (windows, redeem_time, redeem_busy, ceiling) = alternate(
        rounds,
        || redeem_window(&s, &first_boot, &queue, slice),
        args.pgbench
            .as_ref()
            .map(|p| move || pgbench_window(p, slice)),
    )
    .await?;
    let (mut appliances, mut failed) = (Vec::new(), 0);
    for (done, f) in windows {
        appliances.extend(done);
        failed += f;
    }
    let redeems_per_s = appliances.len() as f64 / redeem_time.as_secs_f64();
    println!(
        "redeems: {} in {:.1} s = {redeems_per_s:.0}/s ({failed} failed){}",
        appliances.len(),
        redeem_time.as_secs_f64(),
        ceiling.describe("pgbench redeem", "TPS", redeems_per_s)
    );
    let pgbench_tps = ceiling.rate();
    let redeem_us = cpu::core_us_per_op(redeem_busy, appliances.len() as u64);
    let pgbench_us = ceiling.core_us();
    let pgbench_server_us = ceiling.core_us_without_tool();
    anyhow::ensure!(!appliances.is_empty(), "no redeem succeeded");
    // One client per appliance (at most 256), made before the clock starts.
    let appliances = Arc::new(
        appliances
            .iter()
            .take(256)
            .map(appliance_client)
            .collect::<anyhow::Result<Vec<_>>>()?,
    );

    // Check-ins, a new connection each, closed loop, in windows alternating with ab's
    // against nginx.
    let next = Arc::new(AtomicUsize::new(0));
    let (windows, checkin_time, checkin_busy, ceiling) = alternate(
        rounds,
        || check_in_window(&s, &appliances, &next, slice),
        args.ab.as_ref().map(|ab| move || ab_window(ab, slice)),
    )
    .await?;
    let (count, failed) = totals(windows);
    let checkins_per_s = count as f64 / checkin_time.as_secs_f64();
    println!(
        "check-ins (new TLS connection each): {count} in {:.1} s = {checkins_per_s:.0}/s ({failed} failed){}",
        checkin_time.as_secs_f64(),
        ceiling.describe("nginx mTLS", "req/s", checkins_per_s)
    );
    let nginx_per_s = ceiling.rate();
    let checkin_us = cpu::core_us_per_op(checkin_busy, count as u64);
    let ab_us = ceiling.core_us();
    let nginx_us = ceiling.core_us_without_tool();

    // Open loop at half the maximum (or `--p7-rate`); latency from the scheduled send
    // time.
    let half = args.p7_rate.unwrap_or((checkins_per_s / 2.0).max(1.0));
    let period = Duration::from_secs_f64(1.0 / half);
    let n = ((half * window.as_secs_f64()) as usize).max(10);
    let t0 = tokio::time::Instant::now();
    let probe = DiskProbe::start(t0.into_std())?;
    let metrics_before = metrics_text(&s).await?;
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let due = t0 + period * u32::try_from(k)?;
        tokio::time::sleep_until(due).await;
        let (s, apps) = (s.clone(), appliances.clone());
        tasks.push(tokio::spawn(async move {
            let ok = check_in(&s, &apps[k % apps.len()]).await;
            (ok, due.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    // When the slow ones were sent: one stall delays every request sent during it.
    let mut slow_slots = std::collections::BTreeSet::new();
    // The slow ones' time in flight (from their scheduled send), to set beside the
    // disk's stalls.
    let mut slow_spans = Vec::new();
    for (k, t) in tasks.into_iter().enumerate() {
        let (ok, d) = t.await?;
        if !ok {
            failed += 1;
        }
        let sent = period * u32::try_from(k)?;
        if d > SLOW {
            slow_slots.insert(sent.as_millis() / 100);
            slow_spans.push((sent, sent + d));
        }
        lat.push(d);
    }
    let disk = probe.finish()?;
    let metrics_after = metrics_text(&s).await?;
    lat.sort();
    let slow = lat.iter().filter(|d| **d > SLOW).count();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!(
        "open loop at {half:.0}/s for {} check-ins: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms \
         ({failed} failed); {slow} over {} ms, sent in {} of the run's {} 100 ms slots{}",
        lat.len(),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        SLOW.as_millis(),
        slow_slots.len(),
        window.as_millis().div_ceil(100),
        match (slow_slots.first(), slow_slots.last()) {
            (Some(a), Some(b)) => format!(
                " (from {:.1} s to {:.1} s)",
                *a as f64 / 10.0,
                *b as f64 / 10.0
            ),
            _ => String::new(),
        }
    );
    let disk = disk.describe(&slow_spans);
    println!("{}", disk.text);
    // The gateway's own histograms over the open loop: the check-in handler (from the
    // request's arrival, after the TLS handshake) and its license calls to the issuer.
    let over = |metric: &str, label: &str, secs: f64| {
        let (n0, o0) = histogram_over(&metrics_before, metric, label, secs);
        let (n1, o1) = histogram_over(&metrics_after, metric, label, secs);
        (n1.saturating_sub(n0), o1.saturating_sub(o0))
    };
    const ROUTE: &str = "alga_gateway_http_request_duration_seconds";
    const ISSUER: &str = "alga_gateway_issuer_call_duration_seconds";
    let (handled, handler_10) = over(ROUTE, "route=\"/check-in\"", 0.01);
    let (_, handler_25) = over(ROUTE, "route=\"/check-in\"", 0.025);
    let (calls, calls_10) = over(ISSUER, "op=\"sign_license", 0.01);
    println!(
        "the gateway's histograms over the open loop: check-in handler over 10 ms {handler_10} of \
         {handled} (over 25 ms {handler_25}); license calls to the issuer over 10 ms {calls_10} of {calls}"
    );

    // Where a check-in's time goes, for the record (not a figure of the issue): this
    // load generator against the gateway's cheapest route (its TLS and HTTP stack
    // alone) and against nginx (with the store's certificate, as `ab` sends), in
    // alternating windows.
    let split = match &args.ab {
        Some(ab) => {
            let pem = std::fs::read_to_string(&ab.client_pem)?;
            let store = Arc::new(vec![fresh_connection_client(Some((&pem, &pem)))?]);
            let healthz = s.url("/healthz");
            let (windows, time, busy, nginx) = alternate(
                rounds,
                || get_window(&healthz, &appliances, &next, slice),
                Some(|| async {
                    let t = Instant::now();
                    let (n, failed) = get_window(&ab.url, &store, &next, slice).await?;
                    if failed > 0 {
                        // Informational: say so, and count only what succeeded.
                        println!("nginx window: {failed} requests failed");
                    }
                    Ok(ToolWindow {
                        rate: n as f64 / t.elapsed().as_secs_f64(),
                        time: t.elapsed(),
                        own_cpu: 0.0,
                    })
                }),
            )
            .await?;
            let (count, failed) = totals(windows);
            let healthz_per_s = count as f64 / time.as_secs_f64();
            println!(
                "this load generator, new mTLS connection each: gateway GET /healthz {healthz_per_s:.0}/s \
                 ({failed} failed){}",
                nginx.describe("nginx", "req/s", healthz_per_s)
            );
            let healthz_us = cpu::core_us_per_op(busy, count as u64);
            nginx
                .rate()
                .map(|n| (healthz_per_s, n, healthz_us, nginx.core_us()))
        }
        None => None,
    };
    // What a redeem's connection costs at least: a new TLS connection without a client
    // certificate (as at first boot) and a request that does nothing (P3's bound).
    let mut first_boot_busy = 0.0;
    let mut first_boot_gets = 0;
    for _ in 0..rounds {
        let cpu = cpu::CpuSample::now()?;
        let (n, _) = get_window(&s.url("/healthz"), &first_boot, &next, slice).await?;
        first_boot_busy += cpu.busy_until(&cpu::CpuSample::now()?);
        first_boot_gets += n;
    }
    let first_boot_us = cpu::core_us_per_op(first_boot_busy, first_boot_gets as u64);

    if args.only_p1_p3 {
        return stop(s).await;
    }

    let p2 = licenses_vs_raw(&s, if args.smoke { 1 } else { 5 }, args.license_calls).await?;
    let p3_bound = costs(&Costs {
        redeem_us,
        pgbench_us,
        pgbench_server_us,
        pgbench_tps,
        checkin_us,
        ab_us,
        nginx_us,
        healthz_us: split.map(|s| s.2),
        nginx_same_us: split.and_then(|s| s.3),
        first_boot_us,
        p2,
    });

    // P4: p99 of redeems and check-ins at a fixed offered rate against this stack (its
    // registry holds the few thousand tenants above) and against a second stack whose
    // registry holds a million more, in windows alternating between the two (so both
    // see the machine at the same speed).
    let extra: i32 = if args.smoke { 2_000 } else { 1_000_000 };
    let t = Instant::now();
    let big = Arc::new(Stack::start().await);
    seed(&big, extra).await?;
    // Write the seeded pages out now, so the measurement does not share the disk with
    // the checkpoint they would cause.
    // VACUUM too (statistics and the visibility map), so autovacuum's insert threshold
    // does not start on the seeded tables during the measurement.
    big.admin.batch_execute("VACUUM ANALYZE").await?;
    big.admin.batch_execute("CHECKPOINT").await?;
    println!(
        "seeded a second stack with {extra} more tenants, codes, appliances and licenses in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (n_codes, n_appliances) = if args.smoke {
        (16, 8)
    } else {
        (P4_CODES, P4_APPLIANCES)
    };
    let mut big_codes = prepare(&big, i32::try_from(n_codes + n_appliances)?).await?;
    let (big_appliances, _) = redeem_window(
        &big,
        &first_boot,
        &Arc::new(std::sync::Mutex::new(big_codes.split_off(n_codes))),
        Duration::from_secs(60),
    )
    .await?;
    anyhow::ensure!(
        !big_appliances.is_empty(),
        "no redeem succeeded on the second stack"
    );
    let big_appliances = Arc::new(
        big_appliances
            .iter()
            .map(appliance_client)
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rounds, slice) = if args.smoke {
        (1, 1)
    } else {
        (P4_ROUNDS, P4_WINDOW_SECS)
    };
    let slice = Duration::from_secs(slice);
    let (mut small_codes, mut big_codes) = (p4_codes, big_codes);
    let (mut small, mut large) = (Latencies::default(), Latencies::default());
    let mut windows = Vec::new();
    for round in 0..rounds {
        for turn in 0..2 {
            let (stack, clients, codes, into, name) = if (turn + round) % 2 == 0 {
                (&s, &appliances, &mut small_codes, &mut small, "small")
            } else {
                (&big, &big_appliances, &mut big_codes, &mut large, "big")
            };
            let codes = codes.split_off(codes.len().saturating_sub(P4_REDEEMS_PER_WINDOW));
            let l = fixed_rate(stack, clients, codes, slice).await?;
            windows.push(format!(
                "{name} {:.1}/{:.1}",
                p99_ms(l.redeem.clone()),
                p99_ms(l.check_in.clone())
            ));
            into.extend(l);
        }
    }
    println!(
        "P4 windows, redeem/check-in p99 in ms: {}",
        windows.join(", ")
    );
    stop(big).await?;
    let small = (p99_ms(small.redeem), p99_ms(small.check_in));
    let big = (p99_ms(large.redeem), p99_ms(large.check_in));
    println!(
        "P4 at {P4_RATE}/s offered, {rounds} alternating windows of {} s each: redeem p99 {:.1} -> {:.1} ms, check-in p99 {:.1} -> {:.1} ms",
        slice.as_secs(),
        small.0,
        big.0,
        small.1,
        big.1
    );

    if let Some(path) = args.out {
        std::fs::write(
            path,
            format!(
                "redeems_per_s {redeems_per_s:.1}\ncheckins_per_s {checkins_per_s:.1}\n\
                 half_rate {half:.0}\ncheckin_p50_ms_half_rate {p50:.1}\ncheckin_p99_ms_half_rate {p99:.1}\n\
                 p4_extra {extra}\np4_redeem_small {:.1}\np4_redeem_big {:.1}\n\
                 p4_checkin_small {:.1}\np4_checkin_big {:.1}\n\
                 p2_raw_per_s {:.0}\np2_client_per_s {:.0}\np2_client_core_us {:.1}\np2_raw_core_us {:.1}\n\
                 p7_slow {}\np7_slow_in_disk_stall {}\ndisk_stalls {}\ndisk_probe_max_ms {:.1}\n{}{}{}{}",
                small.0,
                big.0,
                small.1,
                big.1,
                p2.raw_per_s,
                p2.licenses_per_s,
                p2.license_us,
                p2.raw_us,
                disk.slow,
                disk.slow_in_stall,
                disk.stalls,
                disk.max_ms,
                pgbench_tps.map_or_else(String::new, |r| format!("pgbench_redeem_tps {r:.1}\n")),
                nginx_per_s.map_or_else(String::new, |r| format!("nginx_per_s {r:.1}\n")),
                split.map_or_else(String::new, |(h, n, _, _)| format!(
                    "healthz_per_s {h:.1}\nnginx_same_client_per_s {n:.1}\n"
                )),
                p3_bound.map_or_else(String::new, |b| format!(
                    "p3_bound_per_s {:.1}\np3_bound_ratio {:.2}\nredeem_core_us {redeem_us:.0}\n\
                     pgbench_redeem_core_us {:.0}\nfirst_boot_get_core_us {first_boot_us:.0}\n\
                     raw_sign_core_us {:.0}\n",
                    b.per_s,
                    b.ratio,
                    pgbench_server_us.unwrap_or(f64::NAN),
                    p2.raw_us
                )),
            ),
        )?;
    }
    stop(s).await
}

/// What one operation of each kind cost the machine (core-µs busy, from `/proc/stat`
/// over its windows, the load generator included), for the cost lines and P3's bound.
struct Costs {
    redeem_us: f64,
    pgbench_us: Option<f64>,
    /// The same without pgbench's own process: Postgres and the kernel.
    pgbench_server_us: Option<f64>,
    pgbench_tps: Option<f64>,
    checkin_us: f64,
    ab_us: Option<f64>,
    /// The same without ab's own process: nginx and the kernel.
    nginx_us: Option<f64>,
    /// `GET /healthz` over a new mTLS connection (an appliance's certificate).
    healthz_us: Option<f64>,
    nginx_same_us: Option<f64>,
    /// `GET /healthz` over a new TLS connection without a client certificate.
    first_boot_us: f64,
    p2: P2,
}

/// P3's bound: the most redeems per second the machine's cores allow if a redeem cost
/// only what it cannot do without.
#[derive(Clone, Copy)]
struct Bound {
    per_s: f64,
    ratio: f64,
}

/// Prints what each operation cost, and P3's bound (when pgbench ran): a redeem costs at
/// least what Postgres spends on pgbench's redeem transaction (the same statements;
/// pgbench's own process left out), a new TLS connection with a request that does
/// nothing, and two raw signatures (license and credential), so the cores allow at
/// most `cores / (that sum)` redeems per second.
fn costs(c: &Costs) -> Option<Bound> {
    let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
    println!(
        "cost per operation, machine core-µs busy (/proc/stat over its windows, load generator included): \
         redeem {:.0}, pgbench redeem transaction {} (without pgbench's own process {}); \
         check-in {:.0}, ab against nginx {} (without ab's own process {}); \
         GET /healthz on a new connection: with an appliance certificate {}, without (first boot) {:.0}, \
         nginx from this client {}; raw HSM sign {:.0}, license through the issuer client {:.0}",
        c.redeem_us,
        opt(c.pgbench_us),
        opt(c.pgbench_server_us),
        c.checkin_us,
        opt(c.ab_us),
        opt(c.nginx_us),
        opt(c.healthz_us),
        c.first_boot_us,
        opt(c.nginx_same_us),
        c.p2.raw_us,
        c.p2.license_us
    );
    let (pgbench_us, tps) = (c.pgbench_server_us?, c.pgbench_tps?);
    let cores = f64::from(cpu::CpuSample::now().ok()?.cores());
    let floor = pgbench_us + c.first_boot_us + 2.0 * c.p2.raw_us;
    let per_s = cores * 1e6 / floor;
    let ratio = per_s / tps;
    println!(
        "P3 bound: a redeem costs at least what Postgres spends on pgbench's redeem transaction \
         ({pgbench_us:.0}, pgbench's own process left out), a new TLS \
         connection with a request that does nothing ({:.0}) and two raw signs (2 x {:.0}) = {floor:.0} \
         core-µs, so {cores} cores allow at most {per_s:.0} redeems/s = {ratio:.2} of pgbench's {tps:.0} TPS; \
         the redeems measured {:.0} core-µs each, {:.0} above that floor",
        c.first_boot_us,
        c.p2.raw_us,
        c.redeem_us,
        c.redeem_us - floor
    );
    Some(Bound { per_s, ratio })
}

async fn stop(s: Arc<Stack>) -> anyhow::Result<()> {
    match Arc::try_unwrap(s) {
        Ok(s) => s.stop().await,
        Err(_) => println!("(stack still shared; not stopped cleanly)"),
    }
    Ok(())
}

/// `n` tenants of the `pro` edition straight into `s`'s database, a code minted for
/// each at the issuer (the HMAC) with its binding stored, and an appliance key and CSR
/// per code: everything a redeem needs, made before any clock starts.
async fn prepare(s: &Arc<Stack>, n: i32) -> anyhow::Result<Vec<(String, Appliance)>> {
    let rows = s
        .admin
        .query(
            "WITH t AS (INSERT INTO tenants (tenant_id, company, company_normalized, contact_name, \
               contact_email, contact_email_normalized, edition) \
             SELECT gen_random_uuid(), 'Bench ' || i, 'bench ' || i, 'Ops', 'ops@bench.test', \
               'ops@bench.test', 'pro' FROM generate_series(1, $1::int) i RETURNING tenant_id) \
             INSERT INTO entitlements (tenant_id, edition, paid, features, seats) \
             SELECT tenant_id, 'pro', true, '{}', 10 FROM t RETURNING tenant_id",
            &[&n],
        )
        .await?;
    let tenants: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let expires = OffsetDateTime::now_utc().replace_nanosecond(0)? + time::Duration::days(7);
    let queue = Arc::new(std::sync::Mutex::new(tenants));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (s, queue) = (s.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(tenant) = queue.lock().unwrap().pop() else {
                    break;
                };
                let (_, code) = s.mint_raw(tenant, "pro", expires).await;
                out.push((code, Appliance::new()));
            }
            out
        }));
    }
    let mut prepared = Vec::new();
    for t in tasks {
        prepared.extend(t.await?);
    }
    Ok(prepared)
}

/// `rounds` pairs of windows, the figure's (`figure`) and its ceiling's (`ceiling`, a
/// rate, when there is one), which goes first alternating from round to round: the
/// figure's window results, the time they took, the machine's busy core-seconds over
/// them, and the ceiling.
async fn alternate<T, F, FF, C, CF>(
    rounds: u32,
    mut figure: F,
    mut ceiling: Option<C>,
) -> anyhow::Result<(Vec<T>, Duration, f64, Ceiling)>
where
    F: FnMut() -> FF,
    FF: std::future::Future<Output = anyhow::Result<T>>,
    C: FnMut() -> CF,
    CF: std::future::Future<Output = anyhow::Result<ToolWindow>>,
{
    let (mut results, mut time, mut busy) = (Vec::new(), Duration::ZERO, 0.0);
    let mut measured = Ceiling::default();
    for round in 0..rounds {
        for turn in 0..2 {
            let cpu = cpu::CpuSample::now()?;
            if (turn + round) % 2 == 1 {
                if let Some(ceiling) = ceiling.as_mut() {
                    let w = ceiling().await?;
                    measured.add(&w, cpu.busy_until(&cpu::CpuSample::now()?));
                }
                continue;
            }
            let started = Instant::now();
            results.push(figure().await?);
            time += started.elapsed();
            busy += cpu.busy_until(&cpu::CpuSample::now()?);
        }
    }
    Ok((results, time, busy, measured))
}

/// A ceiling measured in windows between the figure's own.
#[derive(Default)]
struct Ceiling {
    /// Each window's rate.
    windows: Vec<f64>,
    /// Operations over all windows.
    total: f64,
    time: Duration,
    /// The machine's busy core-seconds over the windows (the tool's start included).
    busy: f64,
    /// Of which the ceiling tool's own process.
    tool_busy: f64,
}

impl Ceiling {
    fn add(&mut self, w: &ToolWindow, busy: f64) {
        self.windows.push(w.rate);
        self.total += w.rate * w.time.as_secs_f64();
        self.time += w.time;
        self.busy += busy;
        self.tool_busy += w.own_cpu;
    }

    /// The rate over all windows; `None` when there were none (no tool given).
    fn rate(&self) -> Option<f64> {
        (!self.time.is_zero()).then(|| self.total / self.time.as_secs_f64())
    }

    /// The machine's core-µs per operation over the windows; `None` without windows.
    fn core_us(&self) -> Option<f64> {
        (self.total > 0.0).then(|| self.busy * 1e6 / self.total)
    }

    /// The same without the tool's own process (the server's work and the kernel's).
    fn core_us_without_tool(&self) -> Option<f64> {
        (self.total > 0.0).then(|| (self.busy - self.tool_busy) * 1e6 / self.total)
    }

    /// `; <what> <rate> <unit> in the windows between (per window: …) = ratio` or "".
    fn describe(&self, what: &str, unit: &str, figure: f64) -> String {
        let Some(rate) = self.rate() else {
            return String::new();
        };
        let windows: Vec<String> = self.windows.iter().map(|w| format!("{w:.0}")).collect();
        format!(
            "; {what} {rate:.0} {unit} in the windows between (per window: {}) = {:.2}",
            windows.join(" "),
            figure / rate
        )
    }
}

/// Redeems of the queued codes from `CLIENTS` tasks for `window`, task `k` through
/// `clients[k]` (a new connection each, see [`first_boot_clients`]): the appliances
/// that got one, and how many failed.
async fn redeem_window(
    s: &Arc<Stack>,
    clients: &Arc<Vec<reqwest::Client>>,
    queue: &Arc<std::sync::Mutex<Vec<(String, Appliance)>>>,
    window: Duration,
) -> anyhow::Result<(Vec<Appliance>, usize)> {
    let start = Instant::now();
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let (s, queue, failures) = (s.clone(), queue.clone(), failures.clone());
        let client = clients[k % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while start.elapsed() < window {
                let Some((code, a)) = queue.lock().unwrap().pop() else {
                    break;
                };
                match redeem(&s, &client, &code, &a).await {
                    Some(v) => done.push(a.with_response(&v)),
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            done
        }));
    }
    let mut appliances = Vec::new();
    for t in tasks {
        appliances.extend(t.await?);
    }
    Ok((appliances, failures.load(Ordering::Relaxed)))
}

/// One redeem of `code` by `a` over `client`: the response body if it succeeded.
async fn redeem(
    s: &Stack,
    client: &reqwest::Client,
    code: &str,
    a: &Appliance,
) -> Option<serde_json::Value> {
    let r = client
        .post(s.url("/register"))
        .json(&harness::redeem_body(a, code))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        let _ = r.bytes().await;
        return None;
    }
    r.json().await.ok()
}

/// Check-ins from `CLIENTS` tasks for `window`, each over a new connection, taking
/// appliances round-robin from `next`: how many succeeded and failed.
async fn check_in_window(
    s: &Arc<Stack>,
    apps: &Arc<Vec<reqwest::Client>>,
    next: &Arc<AtomicUsize>,
    window: Duration,
) -> anyhow::Result<(usize, usize)> {
    let (s, apps) = (s.clone(), apps.clone());
    request_window(next, window, move |i| {
        let (s, apps) = (s.clone(), apps.clone());
        async move { check_in(&s, &apps[i % apps.len()]).await }
    })
    .await
}

/// `GET url` from `CLIENTS` tasks for `window`, taking clients round-robin from `next`
/// (each request a new connection when the clients do not pool): how many succeeded and
/// failed.
async fn get_window(
    url: &str,
    clients: &Arc<Vec<reqwest::Client>>,
    next: &Arc<AtomicUsize>,
    window: Duration,
) -> anyhow::Result<(usize, usize)> {
    let (url, clients) = (Arc::new(url.to_owned()), clients.clone());
    request_window(next, window, move |i| {
        let (url, clients) = (url.clone(), clients.clone());
        async move {
            match clients[i % clients.len()].get(url.as_str()).send().await {
                Ok(r) => {
                    let ok = r.status().is_success();
                    let _ = r.bytes().await;
                    ok
                }
                Err(_) => false,
            }
        }
    })
    .await
}

/// The windows' `(succeeded, failed)` added up.
fn totals(windows: Vec<(usize, usize)>) -> (usize, usize) {
    windows
        .into_iter()
        .fold((0, 0), |(c, f), (wc, wf)| (c + wc, f + wf))
}

/// `request(i)` from `CLIENTS` tasks for `window`, `i` counting up from `next`: how many
/// succeeded and failed.
async fn request_window<F, R>(
    next: &Arc<AtomicUsize>,
    window: Duration,
    request: F,
) -> anyhow::Result<(usize, usize)>
where
    F: Fn(usize) -> R + Clone + Send + 'static,
    R: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let count = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (request, next, count, failures) = (
            request.clone(),
            next.clone(),
            count.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < window {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if request(i).await {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((
        count.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    ))
}

/// pgbench's redeem transactions per second over `window` (8 clients, 2 threads, as
/// `bench.sh` ran it before), with the window and pgbench's own CPU time.
async fn pgbench_window(p: &Pgbench, window: Duration) -> anyhow::Result<ToolWindow> {
    let secs = window.as_secs().max(1).to_string();
    let (script, url) = (p.script.as_str(), p.url.as_str());
    let args = [
        "-n", "-M", "prepared", "-c", "8", "-j", "2", "-T", &secs, "-f", script, url,
    ];
    let (text, own_cpu) = tool_output("pgbench", &args).await?;
    word_after(&text, "tps = ")
        .and_then(|t| t.parse().ok())
        .map(|rate| ToolWindow {
            rate,
            time: window,
            own_cpu,
        })
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {text}"))
}

/// `ab`'s requests per second against nginx over `window`, `CLIENTS` concurrent, a new
/// TLS connection per request, with the window and ab's own CPU time; a failed request
/// fails the measurement.
async fn ab_window(ab: &Ab, window: Duration) -> anyhow::Result<ToolWindow> {
    let (clients, secs) = (CLIENTS.to_string(), window.as_secs().max(1).to_string());
    let args = [
        "-q",
        "-n",
        "10000000",
        "-c",
        &clients,
        "-t",
        &secs,
        "-E",
        ab.client_pem.as_str(),
        ab.url.as_str(),
    ];
    let (text, own_cpu) = tool_output("ab", &args).await?;
    let failed = word_after(&text, "Failed requests:");
    anyhow::ensure!(failed == Some("0"), "ab: {failed:?} failed requests");
    word_after(&text, "Requests per second:")
        .and_then(|r| r.parse().ok())
        .map(|rate| ToolWindow {
            rate,
            time: window,
            own_cpu,
        })
        .ok_or_else(|| anyhow::anyhow!("no rate in ab's output: {text}"))
}

/// One window of a ceiling: its rate, its length, and the core-seconds the ceiling's
/// own client used (the tool's process; 0 for this process's own client, which the
/// machine's busy time counts either way).
struct ToolWindow {
    rate: f64,
    time: Duration,
    own_cpu: f64,
}

/// Runs a ceiling tool to its end, under `bash -c '"$@"; times'` so that bash reports
/// the tool's CPU time: its standard output and the core-seconds (user + system) it
/// used, or an error with both outputs when it failed.
async fn tool_output(program: &str, args: &[&str]) -> anyhow::Result<(String, f64)> {
    let out = tokio::process::Command::new("bash")
        .args([
            "-c",
            r#""$@"; status=$?; times; exit $status"#,
            "bash",
            program,
        ])
        .args(args)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `times` prints the shell's user and system time, then its children's:
    // `0m1.234s 0m0.056s`.
    let children = stdout.lines().last().unwrap_or_default();
    let own_cpu = children
        .split_whitespace()
        .map(minutes_seconds)
        .sum::<Option<f64>>()
        .ok_or_else(|| anyhow::anyhow!("no CPU times from bash after {program}: {children:?}"))?;
    Ok((stdout, own_cpu))
}

/// `1m2.345s` as seconds.
fn minutes_seconds(text: &str) -> Option<f64> {
    let (m, s) = text.strip_suffix('s')?.split_once('m')?;
    Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// The first word after `prefix` on the first line that starts with it.
fn word_after<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next())
}

/// Concurrent tasks of the P2 measurement (a gateway under load has that many
/// license requests at once).
const P2_TASKS: usize = 32;

/// Raw HSM signatures and licenses through the gateway's issuer client: each one's rate
/// over all its windows and what one cost the machine (core-µs).
#[derive(Clone, Copy)]
struct P2 {
    raw_per_s: f64,
    licenses_per_s: f64,
    raw_us: f64,
    license_us: f64,
}

/// Licenses/s through the gateway's issuer client and raw HSM signatures/s, each from
/// `P2_TASKS` tasks, in `rounds` pairs of alternating 1 s windows. Prints the per-round
/// ratios; returns the two rates over all windows and their costs. `calls`: license
/// calls in flight (the client's default when `None`).
async fn licenses_vs_raw(s: &Stack, rounds: u32, calls: Option<usize>) -> anyhow::Result<P2> {
    use alga_issuer::keyring::{KeyKind, KeyOps};
    let hsm = harness::hsm_handle();
    let version = hsm.active_version(KeyKind::License);
    let client = s.gateway_issuer_client(Arc::new(alga_gateway::metrics::Metrics::new()));
    let client = match calls {
        Some(calls) => client.with_license_calls_in_flight(calls),
        None => client,
    };
    let window = Duration::from_secs(1);
    let (mut raw, mut lic) = ((0u64, Duration::ZERO, 0.0), (0u64, Duration::ZERO, 0.0));
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let mut pair = [0f64; 2];
        // Alternate which goes first.
        for turn in 0..2 {
            let is_raw = (turn + round) % 2 == 0;
            let cpu = cpu::CpuSample::now()?;
            let stop = Instant::now() + window;
            let started = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..P2_TASKS {
                let (hsm, client) = (hsm.clone(), client.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut digest = [t as u8; 32];
                    let (tenant, appliance) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
                    while Instant::now() < stop {
                        if is_raw {
                            digest[31] = digest[31].wrapping_add(1);
                            hsm.sign_digest(KeyKind::License, version, digest).await?;
                        } else {
                            client.sign_license(tenant, appliance, "pro").await?;
                        }
                        n += 1;
                    }
                    anyhow::Ok(n)
                }));
            }
            let mut n = 0;
            for t in tasks {
                n += t.await??;
            }
            let elapsed = started.elapsed();
            let slot = if is_raw { &mut raw } else { &mut lic };
            slot.0 += n;
            slot.1 += elapsed;
            slot.2 += cpu.busy_until(&cpu::CpuSample::now()?);
            pair[usize::from(!is_raw)] = n as f64 / elapsed.as_secs_f64();
        }
        ratios.push(pair[1] / pair[0]);
    }
    let rate = |(n, d, _): (u64, Duration, f64)| n as f64 / d.as_secs_f64();
    let cost = |(n, _, busy): (u64, Duration, f64)| cpu::core_us_per_op(busy, n);
    let p2 = P2 {
        raw_per_s: rate(raw),
        licenses_per_s: rate(lic),
        raw_us: cost(raw),
        license_us: cost(lic),
    };
    println!(
        "P2 through the gateway's issuer client, {P2_TASKS} tasks: {:.0} licenses/s vs raw HSM {:.0} signs/s \
         = {:.2} (per round: {}); a license cost the machine {:.1} core-µs, a raw sign {:.1}",
        p2.licenses_per_s,
        p2.raw_per_s,
        p2.licenses_per_s / p2.raw_per_s,
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        p2.license_us,
        p2.raw_us
    );
    Ok(p2)
}

/// One check-in over `client`, which keeps no idle connection: a new TCP connection
/// and a full TLS handshake each time.
async fn check_in(s: &Stack, client: &reqwest::Client) -> bool {
    let r = client
        .post(s.url("/check-in"))
        .json(&json!({"appliance": {"version": "1.0.1"}, "csr": null}))
        .send()
        .await;
    match r {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

/// The appliance's client: its credential, the dev CA, no connection pooling and no
/// TLS session resumption (an appliance checks in once a day: every check-in is a
/// full mTLS handshake, like `ab` against nginx with session caching off).
fn appliance_client(a: &Appliance) -> anyhow::Result<reqwest::Client> {
    let chain = format!(
        "{}\n{}",
        a.certificate.as_deref().unwrap_or(""),
        a.chain.as_deref().unwrap_or("")
    );
    fresh_connection_client(Some((&chain, &a.key_pem)))
}

/// `CLIENTS` clients without a certificate, as an appliance redeems at first boot, each
/// request a new connection (see [`fresh_connection_client`]); made before any clock
/// starts, so that a window counts no client set-up (reading the CA bundle, building
/// the client), only the connection and the request.
fn first_boot_clients() -> anyhow::Result<Arc<Vec<reqwest::Client>>> {
    Ok(Arc::new(
        (0..CLIENTS)
            .map(|_| fresh_connection_client(None))
            .collect::<anyhow::Result<_>>()?,
    ))
}

/// A client presenting `identity` (a chain and its key, PEM) if any, verifying servers
/// against the dev CA bundle, with no connection pooling and no TLS session resumption:
/// a full handshake per request.
fn fresh_connection_client(identity: Option<(&str, &str)>) -> anyhow::Result<reqwest::Client> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(harness::dev().path("ALGA_CA_BUNDLE"))? {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(harness::ring())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The gateway's Prometheus metrics, as text.
async fn metrics_text(s: &Stack) -> anyhow::Result<String> {
    Ok(s.anon()
        .get(s.url("/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A histogram of the gateway's metrics, summed over its series whose labels contain
/// `label`: how many observations, and how many were over `secs` (which must be one of
/// its bucket bounds).
fn histogram_over(text: &str, metric: &str, label: &str, secs: f64) -> (u64, u64) {
    let bound = format!("le=\"{secs}\"");
    let (mut count, mut within) = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if !series.contains(label) {
            continue;
        }
        if series.starts_with("_count") {
            count += value as u64;
        } else if series.starts_with("_bucket") && series.contains(&bound) {
            within += value as u64;
        }
    }
    (count, count.saturating_sub(within))
}

/// The disk under the stack (Postgres' WAL and the issuer's signing log share it with
/// the temporary directory), probed while the open loop runs: a thread appends 256
/// bytes to a temporary file and `fdatasync`s it every `DiskProbe::EVERY`, timing each.
/// Every check-in waits for two such flushes (the commit's WAL flush and the signing
/// log's), so a stall of the disk stalls every check-in in flight.
struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<Vec<(Duration, Duration)>>>,
}

/// The probe's samples: when each flush started (from the open loop's start) and how
/// long it took.
struct DiskSamples(Vec<(Duration, Duration)>);

impl DiskProbe {
    const EVERY: Duration = Duration::from_millis(20);
    /// A flush slower than this counts as a stall (a healthy one takes 0.3–0.6 ms here).
    const STALL: Duration = Duration::from_millis(10);

    fn start(t0: Instant) -> anyhow::Result<DiskProbe> {
        let mut file = tempfile::tempfile()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                file.write_all(&[b'x'; 256])?;
                file.sync_data()?;
                samples.push((start - t0, start.elapsed()));
                std::thread::sleep(Self::EVERY);
            }
            Ok(samples)
        });
        Ok(DiskProbe { stop, thread })
    }

    fn finish(self) -> anyhow::Result<DiskSamples> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the disk probe panicked"))??;
        Ok(DiskSamples(samples))
    }
}

impl DiskSamples {
    /// The probe's distribution, its stalls, and how many of the slow check-ins
    /// (`slow`: each one's time in flight) overlapped a stall, beside the share of the
    /// run the stalls covered (what chance alone would give).
    fn describe(&self, slow: &[(Duration, Duration)]) -> DiskSummary {
        let mut lat: Vec<Duration> = self.0.iter().map(|(_, d)| *d).collect();
        lat.sort();
        let Some(max) = lat.last() else {
            return DiskSummary {
                text: "disk probe: no sample".to_string(),
                ..DiskSummary::default()
            };
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let stalls: Vec<(Duration, Duration)> = self
            .0
            .iter()
            .filter(|(_, d)| *d > DiskProbe::STALL)
            .map(|(at, d)| (*at, *at + *d))
            .collect();
        let overlapping = slow
            .iter()
            .filter(|(a, b)| stalls.iter().any(|(s, e)| a < e && s < b))
            .count();
        let run = self.0.last().map_or(Duration::ZERO, |(at, d)| *at + *d);
        let covered: Duration = stalls.iter().map(|(s, e)| *e - *s).sum();
        let text = format!(
            "disk probe (256-byte append + fdatasync every {} ms, {} flushes): p50 {:.2} ms, \
             p99 {:.2} ms, max {:.1} ms; {} over {} ms, covering {:.1} % of the run; \
             {overlapping} of the {} check-ins over {} ms were in flight during one",
            DiskProbe::EVERY.as_millis(),
            lat.len(),
            ms(lat[lat.len() / 2]),
            ms(lat[(lat.len() * 99 / 100).min(lat.len() - 1)]),
            ms(*max),
            stalls.len(),
            DiskProbe::STALL.as_millis(),
            100.0 * covered.as_secs_f64() / run.as_secs_f64().max(1e-9),
            slow.len(),
            SLOW.as_millis(),
        );
        DiskSummary {
            text,
            stalls: stalls.len(),
            max_ms: ms(*max),
            slow: slow.len(),
            slow_in_stall: overlapping,
        }
    }
}

#[derive(Default)]
struct DiskSummary {
    text: String,
    stalls: usize,
    max_ms: f64,
    /// Open-loop check-ins slower than `SLOW`, and how many of them were in flight
    /// during a stall of the probe.
    slow: usize,
    slow_in_stall: usize,
}

/// p99 (ms) of redeems and of check-ins offered open loop at `P4_RATE`/s, alternating.
/// Latencies of one or more P4 windows.
#[derive(Default)]
struct Latencies {
    redeem: Vec<Duration>,
    check_in: Vec<Duration>,
}

impl Latencies {
    fn extend(&mut self, other: Latencies) {
        self.redeem.extend(other.redeem);
        self.check_in.extend(other.check_in);
    }
}

async fn fixed_rate(
    s: &Arc<Stack>,
    clients: &Arc<Vec<reqwest::Client>>,
    mut codes: Vec<(String, Appliance)>,
    window: Duration,
) -> anyhow::Result<Latencies> {
    let period = Duration::from_secs(1) / P4_RATE;
    let n = (window.as_secs_f64() * f64::from(P4_RATE)) as usize;
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for k in 0..n {
        let due = t0 + period * u32::try_from(k)?;
        tokio::time::sleep_until(due).await;
        let (s, clients) = (s.clone(), clients.clone());
        let code = if k % 2 == 0 { codes.pop() } else { None };
        tasks.push(tokio::spawn(async move {
            match code {
                Some((code, a)) => {
                    let (st, _) = s.redeem_as(&code, &a).await;
                    (true, st == 200, due.elapsed())
                }
                None => {
                    let ok = check_in(&s, &clients[k % clients.len()]).await;
                    (false, ok, due.elapsed())
                }
            }
        }));
    }
    let mut out = Latencies::default();
    for t in tasks {
        let (is_redeem, _ok, d) = t.await?;
        if is_redeem {
            out.redeem.push(d)
        } else {
            out.check_in.push(d)
        }
    }
    Ok(out)
}

fn p99_ms(mut v: Vec<Duration>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

/// `n` more tenants, codes, appliances and licenses (ids spread over their key spaces
/// like the API's, see `seed_registry.sql`), seeded by one session per core over
/// disjoint halves of the range:
/// each `INSERT … SELECT generate_series` runs on one backend, so two sessions use
/// both cores. A bench seed, so without waiting for each commit's fsync.
async fn seed(s: &Stack, n: i32) -> anyhow::Result<()> {
    let mut cfg: tokio_postgres::Config = harness::dev().var("DATABASE_URL").parse()?;
    cfg.dbname(&s.db);
    let half = n / 2;
    let sessions = [(1, half), (half + 1, n)].map(|(first, last)| {
        let cfg = cfg.clone();
        async move {
            let sql = include_str!("../testdata/seed_registry.sql")
                .replace("{first}", &first.to_string())
                .replace("{last}", &last.to_string());
            harness::connect(&cfg)
                .await
                .batch_execute(&format!("SET synchronous_commit = off;\n{sql}"))
                .await
        }
    });
    let [a, b] = sessions;
    let (a, b) = tokio::join!(a, b);
    a?;
    b?;
    Ok(())
}
