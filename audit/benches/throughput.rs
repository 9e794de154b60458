//! Audit benchmark (prints figures, asserts nothing; about a minute):
//!
//! 1. redeem-like business transactions per second (UPDATE one row + INSERT one row,
//!    32 concurrent writers) without the audit append and with it (the sequencer
//!    running throughout); goal: ratio ≥ 0.8. The two workloads run in alternating
//!    windows (ROUNDS rounds of one plain and one audited window, the order swapped
//!    each round) and the ratio comes from the summed counts and times, because this
//!    machine's CPU speed drifts within a minute and back-to-back phases measured the
//!    drift as much as the audit append;
//! 2. commit-to-chained latency (p50, p99) of the audited transactions;
//! 3. `verify_export` bytes/s against `openssl dgst -sha256` bytes/s on the same
//!    export file; goal: ratio ≥ 0.5.
//!
//! Needs `DATABASE_URL` (a superuser); makes and drops its own database.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "benchmarks set up real state directly and read the clock; anyhow is for binaries"
)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alga_audit::export::ExportFilter;
use alga_audit::{Action, Actor, NewRecord, Sequencer, SequencerConfig, VerifyOptions};
use alga_policies::AuditPolicy;
use alga_protocol::issuer_api::{SignedCheckpoint, SignedLogCheckpoint};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::OffsetDateTime;
use tokio_postgres::{Config, NoTls};

const WRITERS: usize = 32;
/// Measuring time per workload (plain, audited), split into ROUNDS windows each.
const PHASE: Duration = Duration::from_secs(10);
const ROUNDS: u32 = 4;

struct NoCheckpoints;
impl alga_audit::CheckpointSigner for NoCheckpoints {
    type Error = &'static str;
    async fn sign(&self, _: u64, _: &str) -> Result<SignedCheckpoint, &'static str> {
        Err("no checkpoints in the benchmark")
    }
    async fn sign_log(&self, _: u64, _: [u8; 32]) -> Result<SignedLogCheckpoint, &'static str> {
        Err("no checkpoints in the benchmark")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not set (source .dev/env)"))?;
    let base = Config::from_str(&url)?;
    let name = format!("audit_bench_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = base.connect(NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut config = base.clone();
    config.dbname(&name);
    let result = run(config).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    result
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (owner, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    owner
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'alga_gateway') \
             THEN CREATE ROLE alga_gateway NOLOGIN; END IF; END $$;",
        )
        .await?;
    for m in alga_audit::migrations() {
        owner.batch_execute(m.sql).await?;
    }
    owner
        .batch_execute(
            "CREATE TABLE codes (id bigint PRIMARY KEY, uses bigint NOT NULL DEFAULT 0); \
             INSERT INTO codes (id) SELECT g FROM generate_series(1, 100000) g; \
             CREATE TABLE appliances (id bigserial PRIMARY KEY, code_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now()); \
             ANALYZE codes;",
        )
        .await?;
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(WRITERS + 4).build()?;

    let window = PHASE / ROUNDS;
    println!(
        "alga-audit benchmark: {WRITERS} writers, {ROUNDS} rounds of {:.1} s plain + {:.1} s audited, interleaved",
        window.as_secs_f64(),
        window.as_secs_f64()
    );

    let mut seq_config = SequencerConfig::new(AuditPolicy {
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: time::Duration::days(365),
        unchained_alarm_after: time::Duration::seconds(30),
    });
    seq_config.idle_poll = Duration::from_millis(5);
    let sequencer = Sequencer::new(pool.clone(), NoCheckpoints, seq_config);
    let mut progress = sequencer.progress();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let seq_task = sequencer.spawn(async move {
        let _ = stop_rx.await;
    });
    // Record when each cursor position was reached (one history for all audited
    // windows: the cursor only moves forward).
    let history = tokio::spawn(async move {
        let mut seen: Vec<((u64, i64), Instant)> = Vec::new();
        while progress.changed().await.is_ok() {
            let p = *progress.borrow_and_update();
            seen.push((p.cursor, Instant::now()));
        }
        seen
    });
    // Per kind: (transactions, seconds); per round: audited tx/s over plain tx/s.
    let (mut plain_sum, mut audited_sum) = ((0u64, 0f64), (0u64, 0f64));
    let mut rounds = Vec::new();
    let mut commits = Vec::new();
    for round in 0..ROUNDS {
        let (mut plain_rate, mut audited_rate) = (0.0, 0.0);
        for audited in [round % 2 == 1, round % 2 == 0] {
            let (n, secs, c) = window_run(&pool, audited, window).await?;
            if audited {
                audited_sum = (audited_sum.0 + n, audited_sum.1 + secs);
                audited_rate = n as f64 / secs;
                commits.extend(c);
                // Let the sequencer catch up outside the measured windows, as it
                // did after the single audited phase, so that its backlog does not
                // slow the next window.
                catch_up(&owner, Duration::from_secs(10)).await?;
            } else {
                plain_sum = (plain_sum.0 + n, plain_sum.1 + secs);
                plain_rate = n as f64 / secs;
            }
        }
        rounds.push(audited_rate / plain_rate);
    }
    let plain = plain_sum.0 as f64 / plain_sum.1;
    let audited = audited_sum.0 as f64 / audited_sum.1;
    println!("  business tx/s without audit append: {plain:>8.0}");
    println!(
        "  business tx/s with audit append:    {audited:>8.0}   ratio {:.2} (goal ≥ 0.80)",
        audited / plain
    );
    let spread: Vec<String> = rounds.iter().map(|r| format!("{r:.2}")).collect();
    println!("  per-round ratios: {}", spread.join(" "));
    // Let the sequencer catch up, then stop it.
    catch_up(&owner, Duration::from_secs(20)).await?;
    let _ = stop_tx.send(());
    seq_task.await?;
    let history = history.await?;

    let xids: HashMap<i64, u64> = owner
        .query("SELECT id, xid::text FROM audit_events", &[])
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                r.get::<_, String>(1).parse().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let mut latencies: Vec<Duration> = commits
        .iter()
        .filter_map(|(id, committed)| {
            let key = (*xids.get(id)?, *id);
            let pos = history.partition_point(|(cursor, _)| *cursor < key);
            history
                .get(pos)
                .map(|(_, at)| at.saturating_duration_since(*committed))
        })
        .collect();
    latencies.sort();
    if !latencies.is_empty() {
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "  commit-to-chained over {} records: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            pct(1.0).as_secs_f64() * 1e3
        );
    }

    verify_speed().await?;
    Ok(())
}

/// Waits (at most `limit`) until the sequencer has chained every audit event.
async fn catch_up(owner: &tokio_postgres::Client, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let row = owner
            .query_one(
                "SELECT (SELECT count(*) FROM audit_events) - (SELECT count(*) FROM audit_chain)",
                &[],
            )
            .await?;
        if row.get::<_, i64>(0) == 0 || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits of one window: transactions, elapsed seconds and, when audited,
/// (event id, commit instant) of every transaction.
type Window = (u64, f64, Vec<(i64, Instant)>);

/// Runs WRITERS tasks of redeem-like transactions for `length`.
async fn window_run(pool: &Pool, audited: bool, length: Duration) -> anyhow::Result<Window> {
    let stop = Arc::new(AtomicBool::new(false));
    let action = Action::new("code.redeem")?;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        let stop = stop.clone();
        let action = action.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pool.get().await?;
            let update = client
                .prepare_cached("UPDATE codes SET uses = uses + 1 WHERE id = $1")
                .await?;
            let insert = client
                .prepare_cached("INSERT INTO appliances (code_id) VALUES ($1)")
                .await?;
            let mut n: u64 = 0;
            let mut commits = Vec::new();
            let mut i = w as i64;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 7919 + 13) % 100_000 + 1;
                let tx = client.transaction().await?;
                tx.execute(&update, &[&i]).await?;
                tx.execute(&insert, &[&i]).await?;
                let id = if audited {
                    let record = NewRecord::builder(
                        OffsetDateTime::now_utc(),
                        Actor::anonymous(),
                        action.clone(),
                    )
                    .tenant(uuid::Uuid::from_u128(i as u128))
                    .subject("code_id", format!("K7M2Q{i:05}"))
                    .subject("appliance_id", uuid::Uuid::new_v4())
                    .request_id(&format!("req-{w}-{n}"))
                    .detail("edition", "pro")
                    .build()?;
                    Some(alga_audit::append_cached(&tx, &record).await?)
                } else {
                    None
                };
                tx.commit().await?;
                if let Some(id) = id {
                    commits.push((id.0, Instant::now()));
                }
                n += 1;
            }
            anyhow::Ok((n, commits))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut commits = Vec::new();
    for t in tasks {
        let (n, c) = t.await??;
        total += n;
        commits.extend(c);
    }
    Ok((total, started.elapsed().as_secs_f64(), commits))
}

/// verify_export vs `openssl dgst -sha256` on one ~128 MB export file.
async fn verify_speed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("export.jsonl");
    let records = 280_000u64;
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(
            w,
            "{{\"type\":\"header\",\"format\":\"alga-license/audit-export/v1\",\"exported_at\":\"2025-01-01T00:00:00Z\",\"head_seq\":{records},\"filter\":{{}}}}"
        )?;
        let mut prev = alga_audit::GENESIS_PREV_HASH;
        let action = Action::new("appliance.check_in")?;
        for seq in 1..=records {
            let r = NewRecord::builder(
                OffsetDateTime::now_utc(),
                Actor::appliance(&format!(
                    "spiffe://alga.test/tenant/{}/appliance/{}",
                    uuid::Uuid::from_u128(seq as u128 % 977),
                    uuid::Uuid::from_u128(seq as u128)
                ))?,
                action.clone(),
            )
            .tenant(uuid::Uuid::from_u128(seq as u128 % 977))
            .subject("appliance_id", uuid::Uuid::from_u128(seq as u128))
            .subject("jti", uuid::Uuid::new_v4())
            .request_id(&format!("req-{seq}"))
            .source("198.51.100.23".parse()?)
            .detail("version", "1.4.2")
            .detail("license_expires_at", "2025-02-01T00:00:00Z")
            .build()?;
            let hash = alga_audit::chain_hash(&prev, seq, r.canonical_bytes());
            let line = alga_audit::ChainedRecord {
                seq,
                event_id: alga_audit::EventId(seq as i64),
                prev_hash: prev,
                hash,
                chained_at: OffsetDateTime::now_utc(),
                canonical: r.canonical_bytes().to_vec(),
            }
            .to_json_line()?;
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
            prev = hash;
        }
        w.flush()?;
    }
    let bytes = std::fs::metadata(&path)?.len() as f64;
    let opts = VerifyOptions {
        keys: alga_audit::AuditKeys::default(),
        external_checkpoints: Vec::new(),
        now: OffsetDateTime::now_utc(),
        unchained_alarm_after: time::Duration::seconds(30),
    };
    let mut best_verify = f64::MAX;
    let mut best_openssl = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let report = alga_audit::verify_export(&path, &opts)?;
        best_verify = best_verify.min(t.elapsed().as_secs_f64());
        if !report.intact() {
            println!(
                "  (benchmark export did not verify: {:?})",
                report.first_damage()
            );
        }
        let t = Instant::now();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(&path)
            .output()?;
        best_openssl = best_openssl.min(t.elapsed().as_secs_f64());
        if !out.status.success() {
            println!(
                "  (openssl failed: {})",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let (v, o) = (bytes / best_verify, bytes / best_openssl);
    println!(
        "  verify export: {:.0} MB/s; openssl dgst -sha256: {:.0} MB/s; ratio {:.2} (goal ≥ 0.50) on {:.0} MB, {records} records",
        v / 1e6,
        o / 1e6,
        v / o,
        bytes / 1e6
    );
    let _ = ExportFilter::default();
    Ok(())
}
