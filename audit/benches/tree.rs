//! Transparency-log benchmark (prints figures, asserts nothing; about a minute and a half
//! on two cores; `--smoke` (or `ALGA_BENCH_SMOKE=1`) runs the same parts on tiny logs in
//! seconds to prove the harness works):
//!
//! 1. **Tree append against the chain, in memory**: `TreeEdge::push` of leaf hashes,
//!    and the tree's whole per-record work (entry SHA-256, leaf hash, push), against
//!    the sequencer's `chain_hash` over the same realistic records, in alternating
//!    rounds; goal: the tree is no slower than the chain (ratio ≥ 1).
//! 2. **Chaining a backlog in Postgres**: records/s of the shipped sequencer (batches
//!    of 1000, the tree's nodes inserted in the chain rows' statement) on a backlog
//!    inserted beforehand, against the same loop run by this bench with the chain
//!    statement alone (as before the tree) and with the node CTE, each on its own
//!    database, in alternating rounds.
//! 3. **Proof latency**: p50/p99 of `tree::inclusion_proof` (random records) and of
//!    `tree::consistency_proof` (random old size to a random stored checkpoint) on a
//!    log of 1,010,000 records (and on one of 110,000, for contrast).
//! 4. **Incremental verify**: `tree::verify_from` of the 10,000 records after a
//!    trusted checkpoint on a 1,000,000-record log against the same on a
//!    100,000-record log (goal: ratio ≈ 1, the time follows the new records only),
//!    and the full `verify_database` for contrast when it fits in about two minutes.
//!
//! The logs are built as production builds them, only faster: audit_events rows of
//! canonical records (seven templates, each record numbered) bulk-inserted with
//! `generate_series`, then chained by the real sequencer in batches of 10,000 with a
//! test signer signing checkpoints every second (every 200 ms in a smoke run).
//!
//! Figures are lines starting with two spaces, progress lines start with `--`, and the
//! summary table's rows start with `| T`. Needs `DATABASE_URL` (a superuser); makes
//! and drops its own databases (also on SIGINT/SIGTERM).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "benchmarks set up real state directly and read the clock; anyhow is for binaries"
)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use alga_audit::tree::{self, LogCheckpoint};
use alga_audit::{
    Action, Actor, AuditKeys, CheckpointSigner, NewRecord, Sequencer, SequencerConfig,
    VerifyOptions, chain_hash,
};
use alga_policies::AuditPolicy;
use alga_protocol::issuer_api::{CheckpointStatement, SignedCheckpoint, SignedLogCheckpoint};
use alga_tlog::{Hash, LogKeys, TreeEdge, entry_of, leaf_hash};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Records per round of the in-memory part, and its rounds.
    mem_records: usize,
    mem_rounds: u32,
    /// Backlog per database of the Postgres chaining part, chained `chunk` per round.
    backlog: u64,
    chunk: u64,
    /// Proofs of each kind timed per log.
    proofs: usize,
    /// The two logs of the incremental verify, and the records added after the
    /// trusted checkpoint.
    small: u64,
    big: u64,
    new: u64,
    /// Timed `verify_from` runs per log (alternating).
    verify_runs: usize,
    /// The log builds' checkpoint interval (milliseconds).
    checkpoint_ms: i64,
}

const FULL: Sizes = Sizes {
    mem_records: 200_000,
    mem_rounds: 5,
    backlog: 200_000,
    chunk: 20_000,
    proofs: 2_000,
    small: 100_000,
    big: 1_000_000,
    new: 10_000,
    verify_runs: 5,
    checkpoint_ms: 1000,
};

const SMOKE: Sizes = Sizes {
    mem_records: 5_000,
    mem_rounds: 2,
    backlog: 3_000,
    chunk: 1_000,
    proofs: 50,
    small: 2_000,
    big: 8_000,
    new: 500,
    verify_runs: 2,
    checkpoint_ms: 200,
};

/// The shipped sequencer's batch size (`SequencerConfig::new`).
const SHIPPED_BATCH: u32 = 1000;
/// The batch size the big logs are chained with.
const BUILD_BATCH: u32 = 10_000;
/// A full `verify_database` of the big log is skipped when estimated above this.
const FULL_VERIFY_LIMIT: Duration = Duration::from_secs(120);
/// Each log build, and each wait for the sequencer, gives up after this.
const BUILD_LIMIT: Duration = Duration::from_secs(300);
/// The origin the bench log signs under.
const ORIGIN: &str = "bench.alga.test/log";

/// In-memory signer of both checkpoint kinds. **Bench only**: production signs in
/// the issuer's HSM.
#[derive(Clone)]
struct BenchSigner {
    kid: String,
    key: SigningKey,
    log_skey: String,
    log_vkey: String,
}

impl BenchSigner {
    fn new() -> BenchSigner {
        let key = loop {
            if let Ok(k) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let (log_skey, log_vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, ORIGIN);
        BenchSigner {
            kid: "bench-audit-1".into(),
            key,
            log_skey,
            log_vkey,
        }
    }

    fn keys(&self) -> AuditKeys {
        AuditKeys::single(&self.kid, *self.key.verifying_key())
    }
}

impl CheckpointSigner for BenchSigner {
    type Error = String;

    async fn sign(&self, sequence: u64, head_hash_hex: &str) -> Result<SignedCheckpoint, String> {
        let signed_at = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| e.to_string())?;
        let statement = CheckpointStatement {
            sequence,
            head_hash: head_hash_hex,
            signed_at,
            kid: &self.kid,
        }
        .to_bytes();
        let sig: Signature = self.key.sign(&statement);
        Ok(SignedCheckpoint {
            sequence,
            head_hash: head_hash_hex.to_ascii_lowercase(),
            signed_at,
            kid: self.kid.clone(),
            signature: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        })
    }

    async fn sign_log(&self, size: u64, root: [u8; 32]) -> Result<SignedLogCheckpoint, String> {
        let body = alga_tlog::checkpoint_body(ORIGIN, size, &Hash(root));
        let mut note = signed_note::Note::new(body.as_bytes(), &[]).map_err(|e| e.to_string())?;
        let signer = signed_note::StandardSigner::new(&self.log_skey).map_err(|e| e.to_string())?;
        note.add_sigs(&[&signer as &dyn signed_note::Signer])
            .map_err(|e| e.to_string())?;
        Ok(SignedLogCheckpoint {
            note: String::from_utf8(note.to_bytes()).map_err(|e| e.to_string())?,
            kid: "bench-log-1".into(),
        })
    }
}

/// A policy that never asks for a checkpoint (the chaining part measures chaining).
fn no_checkpoints() -> AuditPolicy {
    AuditPolicy {
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: time::Duration::days(365),
        unchained_alarm_after: time::Duration::seconds(30),
    }
}

/// A checkpoint every `ms` while there is anything new (the logs of parts 3 and 4).
fn every(ms: i64) -> AuditPolicy {
    AuditPolicy {
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: time::Duration::milliseconds(ms),
        unchained_alarm_after: time::Duration::seconds(30),
    }
}

fn progress(started: Instant, what: &str) {
    println!("-- [{:>5.1} s] {what}", started.elapsed().as_secs_f64());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke")
        || std::env::var("ALGA_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let sizes = if smoke { SMOKE } else { FULL };
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not set (source .dev/env)"))?;
    let base = Config::from_str(&url)?;
    let (admin, conn) = base.connect(NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'alga_gateway') \
             THEN CREATE ROLE alga_gateway NOLOGIN; END IF; END $$;",
        )
        .await?;
    let mut bench = Bench {
        base,
        admin,
        prefix: format!("audit_tree_bench_{}", uuid::Uuid::new_v4().simple()),
        made: Vec::new(),
        sizes,
        started: Instant::now(),
        signer: BenchSigner::new(),
        table: Vec::new(),
    };
    println!(
        "alga-audit tree benchmark{}: {sizes:?}",
        if smoke { " (smoke: tiny sizes)" } else { "" }
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = bench.run() => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    bench.drop_all().await;
    if result.is_ok() {
        println!();
        println!("| # | figure | value | against | ratio | goal |");
        println!("|---|---|---|---|---|---|");
        for row in &bench.table {
            println!("{row}");
        }
        progress(bench.started, "done");
    }
    result
}

/// One database of the bench: its name and an owner connection.
struct Db {
    name: String,
    config: Config,
    owner: Client,
}

impl Db {
    fn pool(&self, size: usize) -> anyhow::Result<Pool> {
        let manager = Manager::from_config(
            self.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Ok(Pool::builder(manager).max_size(size).build()?)
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let (client, conn) = self.config.connect(NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Inserts records `first ..= last` (numbered) as committed, unchained events, in
    /// transactions of at most 100,000.
    async fn add_events(&self, first: u64, last: u64) -> anyhow::Result<()> {
        let mut from = first;
        while from <= last {
            let to = (from + 99_999).min(last);
            self.owner
                .execute(
                    "INSERT INTO audit_events (recorded_at, tenant_id, action, record) \
                     SELECT t.recorded_at, t.tenant_id, t.action, \
                            overlay(t.record PLACING convert_to(lpad(g::text, 12, '0'), 'UTF8') \
                                    FROM t.pos FOR 12) \
                     FROM generate_series($1::bigint, $2::bigint) g \
                     JOIN bench_templates t ON t.k = (g % $3)::int",
                    &[&(from as i64), &(to as i64), &(TEMPLATES as i64)],
                )
                .await?;
            from = to + 1;
        }
        self.owner.batch_execute("ANALYZE audit_events").await?;
        Ok(())
    }
}

struct Bench {
    base: Config,
    admin: Client,
    prefix: String,
    made: Vec<String>,
    sizes: Sizes,
    started: Instant,
    signer: BenchSigner,
    table: Vec<String>,
}

/// Record templates: distinct actions, actors, tenants and details, like a day of the
/// gateway's records; the request id's 12 digits are replaced by each record's number.
const TEMPLATES: usize = 7;
const PLACEHOLDER: &str = "999999999999";

fn template(k: usize, number: &str) -> anyhow::Result<NewRecord> {
    let tenant = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + k as u128);
    let appliance = uuid::Uuid::from_u128(0x0190_1111_0000_7000_8000_0000_0000_0000 + k as u128);
    let at = OffsetDateTime::from_unix_timestamp(1_767_225_600 + k as i64)?;
    let request = format!("req-{number}");
    let (action, actor) = match k {
        0 => (
            "tenant.register",
            Actor::client("store", "spiffe://alga.test/service/nm-store")?,
        ),
        1 => (
            "code.mint",
            Actor::client("store", "spiffe://alga.test/service/nm-store")?,
        ),
        2 => ("code.redeem", Actor::anonymous()),
        3 => (
            "code.reissue",
            Actor::client("store", "spiffe://alga.test/service/nm-store")?,
        ),
        5 => ("mail.sent", Actor::system("mail-worker")?),
        _ => (
            "appliance.check_in",
            Actor::appliance(&format!(
                "spiffe://alga.test/tenant/{tenant}/appliance/{appliance}"
            ))?,
        ),
    };
    let mut b = NewRecord::builder(at, actor, Action::new(action)?)
        .tenant(tenant)
        .subject("appliance_id", appliance)
        .request_id(&request)
        .source("198.51.100.23".parse()?)
        .detail(
            "edition",
            if k.is_multiple_of(2) {
                "pro"
            } else {
                "essentials"
            },
        )
        .detail("version", "1.4.2");
    if k == 2 {
        b = b.failure("code_invalid");
    }
    Ok(b.build()?)
}

/// Realistic record bytes, `n` distinct ones, numbered from 1.
fn sample_records(n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    (1..=n)
        .map(|i| {
            Ok(template(i % TEMPLATES, &format!("{i:012}"))?
                .canonical_bytes()
                .to_vec())
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Bench {
    async fn run(&mut self) -> anyhow::Result<()> {
        self.memory()?;
        self.chaining().await?;
        self.logs().await
    }

    /// Creates a database with the audit schema and the record templates.
    async fn db(&mut self, label: &str) -> anyhow::Result<Db> {
        let name = format!("{}_{label}", self.prefix);
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        self.made.push(name.clone());
        let mut config = self.base.clone();
        config.dbname(&name);
        let (owner, conn) = config.connect(NoTls).await?;
        tokio::spawn(conn);
        for m in alga_audit::migrations() {
            owner
                .batch_execute(&format!("BEGIN; {} COMMIT;", m.sql))
                .await?;
        }
        owner
            .batch_execute(
                "CREATE TABLE bench_templates (k int PRIMARY KEY, recorded_at timestamptz NOT NULL, \
                 tenant_id uuid, action text NOT NULL, record bytea NOT NULL, pos int NOT NULL)",
            )
            .await?;
        for k in 0..TEMPLATES {
            let t = template(k, PLACEHOLDER)?;
            let bytes = t.canonical_bytes();
            let marker = format!("\"req-{PLACEHOLDER}\"");
            let at = bytes
                .windows(marker.len())
                .position(|w| w == marker.as_bytes())
                .ok_or_else(|| anyhow::anyhow!("no request id in the template"))?;
            let pos = (at + "\"req-".len() + 1) as i32;
            let r = t.record();
            owner
                .execute(
                    "INSERT INTO bench_templates VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &(k as i32),
                        &r.time,
                        &r.tenant_id,
                        &r.action.as_str(),
                        &bytes,
                        &pos,
                    ],
                )
                .await?;
        }
        Ok(Db {
            name,
            config,
            owner,
        })
    }

    async fn drop_db(&mut self, db: Db) {
        drop(db.owner);
        if let Err(e) = self
            .admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
            .await
        {
            println!("-- could not drop {}: {e}", db.name);
        }
        self.made.retain(|n| *n != db.name);
    }

    async fn drop_all(&mut self) {
        for name in std::mem::take(&mut self.made) {
            if let Err(e) = self
                .admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
            {
                println!("-- could not drop {name}: {e}");
            }
        }
    }

    // ------------------------------------------------------------------ 1. memory

    fn memory(&mut self) -> anyhow::Result<()> {
        let s = self.sizes;
        progress(
            self.started,
            "1. tree append against the chain hash, in memory",
        );
        let records = sample_records(1024)?;
        let mean = records.iter().map(Vec::len).sum::<usize>() as f64 / records.len() as f64;
        let n = s.mem_records;
        let leaves: Vec<Hash> = (0..n)
            .map(|i| leaf_hash(&entry_of(&records[i % records.len()])))
            .collect();
        let (mut chain, mut push, mut whole) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for round in 0..s.mem_rounds {
            for part in 0..3 {
                // Rotate the order each round: drift hits every part alike.
                match (part + round) % 3 {
                    0 => {
                        let t = Instant::now();
                        let mut prev = alga_audit::GENESIS_PREV_HASH;
                        for (i, r) in records.iter().cycle().take(n).enumerate() {
                            prev = chain_hash(&prev, i as u64 + 1, r);
                        }
                        std::hint::black_box(prev);
                        chain += t.elapsed();
                    }
                    1 => {
                        let t = Instant::now();
                        let mut edge = TreeEdge::new();
                        let mut nodes = Vec::new();
                        for leaf in &leaves {
                            edge.push(*leaf, &mut nodes);
                        }
                        std::hint::black_box((edge.root(), nodes.len()));
                        push += t.elapsed();
                    }
                    _ => {
                        let t = Instant::now();
                        let mut edge = TreeEdge::new();
                        let mut nodes = Vec::new();
                        for r in records.iter().cycle().take(n) {
                            edge.push(leaf_hash(&entry_of(r)), &mut nodes);
                        }
                        std::hint::black_box((edge.root(), nodes.len()));
                        whole += t.elapsed();
                    }
                }
            }
        }
        let total = (n as u64 * u64::from(s.mem_rounds)) as f64;
        let (chain_rate, push_rate, whole_rate) = (
            total / chain.as_secs_f64(),
            total / push.as_secs_f64(),
            total / whole.as_secs_f64(),
        );
        println!(
            "  chain hash (chain_hash over records of {mean:.0} bytes): {chain_rate:.0} records/s"
        );
        println!(
            "  tree append (TreeEdge::push of leaf hashes): {push_rate:.0} records/s; ratio {:.2} to the chain hash (goal >= 1)",
            push_rate / chain_rate
        );
        println!(
            "  the tree's whole per-record work (entry SHA-256 + leaf hash + push): {whole_rate:.0} records/s; ratio {:.2} to the chain hash",
            whole_rate / chain_rate
        );
        self.table.push(format!(
            "| T1 | tree append in memory, `TreeEdge::push` of leaf hashes (records/s) | {push_rate:.0} | chain hash {chain_rate:.0} records/s ({mean:.0}-byte records) | {:.2} | >= 1 |",
            push_rate / chain_rate
        ));
        self.table.push(format!(
            "| T1b | the tree's whole work per record in memory: entry SHA-256, leaf hash, push (records/s) | {whole_rate:.0} | chain hash {chain_rate:.0} records/s | {:.2} | |",
            whole_rate / chain_rate
        ));
        Ok(())
    }

    // ---------------------------------------------------------------- 2. chaining

    async fn chaining(&mut self) -> anyhow::Result<()> {
        let s = self.sizes;
        progress(
            self.started,
            &format!(
                "2. chaining a backlog of {} records in Postgres: three databases, {} per round",
                s.backlog, s.chunk
            ),
        );
        let rounds = s.backlog.div_ceil(s.chunk);
        let shipped_db = self.db("shipped").await?;
        let with_db = self.db("with").await?;
        let without_db = self.db("without").await?;
        // The shipped sequencer may chain one batch past a round's target before it
        // stops: give it that much more.
        shipped_db
            .add_events(1, s.backlog + rounds * u64::from(SHIPPED_BATCH))
            .await?;
        with_db.add_events(1, s.backlog).await?;
        without_db.add_events(1, s.backlog).await?;
        progress(self.started, "backlogs inserted");

        let pool = shipped_db.pool(2)?;
        drop(pool.get().await?);
        let mut with = Replica::new(with_db.connect().await?, true).await?;
        let mut without = Replica::new(without_db.connect().await?, false).await?;
        let mut head = 0u64;
        // (records, seconds) per variant: shipped, with the CTE, without.
        let mut sums = [(0u64, 0f64); 3];
        let mut per_round = Vec::new();
        for round in 0..rounds {
            let mut rates = [0f64; 3];
            for part in 0..3 {
                let v = (part + round as usize) % 3;
                let (n, secs) = match v {
                    0 => {
                        let (n, secs, after) = self.shipped_round(&pool, head, s.chunk).await?;
                        head = after;
                        (n, secs)
                    }
                    1 => with.chain(s.chunk).await?,
                    _ => without.chain(s.chunk).await?,
                };
                sums[v] = (sums[v].0 + n, sums[v].1 + secs);
                rates[v] = n as f64 / secs;
            }
            per_round.push(rates[0] / rates[2]);
        }
        let rate = |v: usize| sums[v].0 as f64 / sums[v].1;
        let (shipped, with_rate, without_rate) = (rate(0), rate(1), rate(2));
        println!(
            "  sequencer as shipped (chain rows and tree nodes in one statement, batches of {SHIPPED_BATCH}): {shipped:.0} records/s"
        );
        println!(
            "  the same loop from the bench, chain statement with the node CTE: {with_rate:.0} records/s"
        );
        println!(
            "  the same loop from the bench, chain statement alone (no tree): {without_rate:.0} records/s"
        );
        println!(
            "  chaining ratio with the tree / without: shipped {:.2}, bench loop {:.2} (per round, shipped: {})",
            shipped / without_rate,
            with_rate / without_rate,
            per_round
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.table.push(format!(
            "| T2 | records chained/s from a backlog, sequencer as shipped (tree nodes in the chain statement, batches of {SHIPPED_BATCH}) | {shipped:.0} | the chain statement alone, same loop, {without_rate:.0} records/s | {:.2} | |",
            shipped / without_rate
        ));
        self.table.push(format!(
            "| T2b | the same loop from the bench with the node CTE (records/s) | {with_rate:.0} | without it {without_rate:.0} | {:.2} | |",
            with_rate / without_rate
        ));
        drop((with, without, pool));
        self.drop_db(shipped_db).await;
        self.drop_db(with_db).await;
        self.drop_db(without_db).await;
        Ok(())
    }

    /// Runs the shipped sequencer from `head` until it has chained `count` more
    /// records: (records, seconds from its start, its head once stopped).
    async fn shipped_round(
        &self,
        pool: &Pool,
        head: u64,
        count: u64,
    ) -> anyhow::Result<(u64, f64, u64)> {
        let mut config = SequencerConfig::new(no_checkpoints());
        config.batch_size = SHIPPED_BATCH;
        let started = Instant::now();
        let running = Running::start(pool.clone(), self.signer.clone(), config);
        let at = running.wait_head(head + count).await?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        // It may chain one more batch before it stops: not counted, not timed.
        let after = running.stop().await?;
        Ok((at - head, secs, after))
    }

    // ------------------------------------------------------------ 3. and 4. logs

    async fn logs(&mut self) -> anyhow::Result<()> {
        let s = self.sizes;
        let keys = LogKeys::parse(&self.signer.log_vkey)?;
        progress(
            self.started,
            &format!(
                "3./4. building a log of {} + {} records and one of {} + {}",
                s.small, s.new, s.big, s.new
            ),
        );
        let small = self.db("small").await?;
        let small_trusted = self.build_log(&small, s.small, s.new).await?;
        let big = self.db("big").await?;
        let big_trusted = self.build_log(&big, s.big, s.new).await?;

        progress(self.started, "3. proof latency");
        let mut rng = StdRng::seed_from_u64(6962);
        for (db, label) in [(&big, "T3"), (&small, "T3s")] {
            self.proofs(db, label, &mut rng).await?;
        }

        progress(self.started, "4. incremental verify");
        let (mut t_small, mut t_big) = (Vec::new(), Vec::new());
        let small_client = small.connect().await?;
        let big_client = big.connect().await?;
        for run in 0..s.verify_runs * 2 {
            let (client, note, out, size) = if run % 2 == 0 {
                (&big_client, &big_trusted, &mut t_big, s.big)
            } else {
                (&small_client, &small_trusted, &mut t_small, s.small)
            };
            let t = Instant::now();
            let report = tree::verify_from(client, note, &keys).await?;
            out.push(t.elapsed());
            if !report.intact() || report.records_checked != s.new || report.old_size != size {
                println!("  (verify_from on the log of {size}: unexpected report {report:?})");
            }
        }
        t_small.sort();
        t_big.sort();
        let (m_small, m_big) = (pct(&t_small, 0.5), pct(&t_big, 0.5));
        println!(
            "  verify_from, {} new records after a trusted checkpoint of {}: median {:.1} ms (min {:.1}); of {}: median {:.1} ms (min {:.1}); ratio {:.2} (goal ≈ 1)",
            s.new,
            s.big,
            ms(m_big),
            ms(t_big[0]),
            s.small,
            ms(m_small),
            ms(t_small[0]),
            m_big.as_secs_f64() / m_small.as_secs_f64()
        );
        self.table.push(format!(
            "| T4 | `verify_from`: {} new records after a trusted checkpoint of {}, median ms | {:.1} | the same after {}: {:.1} ms | {:.2} | ≈ 1 |",
            s.new,
            s.big,
            ms(m_big),
            s.small,
            ms(m_small),
            m_big.as_secs_f64() / m_small.as_secs_f64()
        ));
        drop((small_client, big_client));

        // The full verify, for contrast: the small log first, to estimate the big one.
        let opts = VerifyOptions {
            keys: self.signer.keys(),
            external_checkpoints: Vec::new(),
            now: OffsetDateTime::now_utc(),
            unchained_alarm_after: time::Duration::seconds(30),
        };
        let mut client = small.connect().await?;
        let t = Instant::now();
        let report = alga_audit::verify_database(&mut client, &opts).await?;
        let full_small = t.elapsed();
        if !report.intact() {
            println!(
                "  (verify_database on the small log: {:?})",
                report.first_damage()
            );
        }
        let (small_total, big_total) = (s.small + s.new, s.big + s.new);
        let estimate = full_small.mul_f64(big_total as f64 / small_total as f64);
        println!(
            "  verify_database of all {small_total} records: {:.2} s",
            full_small.as_secs_f64()
        );
        if estimate > FULL_VERIFY_LIMIT {
            println!(
                "  verify_database of all {big_total} records: skipped (estimated {:.0} s from the small log, over {} s)",
                estimate.as_secs_f64(),
                FULL_VERIFY_LIMIT.as_secs()
            );
            self.table.push(format!(
                "| T4b | full `verify_database` of all {big_total} records (s) | skipped, estimated {:.0} | | | |",
                estimate.as_secs_f64()
            ));
        } else {
            progress(
                self.started,
                &format!(
                    "full verify of the big log (estimated {:.0} s)",
                    estimate.as_secs_f64()
                ),
            );
            let mut client = big.connect().await?;
            let t = Instant::now();
            match tokio::time::timeout(
                FULL_VERIFY_LIMIT + FULL_VERIFY_LIMIT / 4,
                alga_audit::verify_database(&mut client, &opts),
            )
            .await
            {
                Ok(report) => {
                    let full_big = t.elapsed();
                    if !report?.intact() {
                        println!("  (verify_database on the big log found damage)");
                    }
                    println!(
                        "  verify_database of all {big_total} records: {:.2} s, {:.0} times verify_from of the {} new",
                        full_big.as_secs_f64(),
                        full_big.as_secs_f64() / m_big.as_secs_f64(),
                        s.new
                    );
                    self.table.push(format!(
                        "| T4b | full `verify_database` of all {big_total} records (s) | {:.2} | `verify_from` of the {} new: {:.3} s | {:.0} | |",
                        full_big.as_secs_f64(),
                        s.new,
                        m_big.as_secs_f64(),
                        full_big.as_secs_f64() / m_big.as_secs_f64()
                    ));
                }
                Err(_) => {
                    println!(
                        "  verify_database of all {big_total} records: stopped after {:.0} s",
                        t.elapsed().as_secs_f64()
                    );
                    self.table.push(format!(
                        "| T4b | full `verify_database` of all {big_total} records (s) | over {:.0} (stopped) | | | |",
                        t.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        self.drop_db(small).await;
        self.drop_db(big).await;
        Ok(())
    }

    /// Builds a log of `size` records with a signed checkpoint at exactly `size`, then
    /// `new` more with a checkpoint at `size + new`; returns the note of `size`.
    async fn build_log(&self, db: &Db, size: u64, new: u64) -> anyhow::Result<String> {
        let t = Instant::now();
        db.add_events(1, size).await?;
        let inserted = t.elapsed();
        let mut config = SequencerConfig::new(every(self.sizes.checkpoint_ms));
        config.batch_size = BUILD_BATCH;
        let t = Instant::now();
        let running = Running::start(db.pool(2)?, self.signer.clone(), config);
        running.wait_head(size).await?;
        let chained = t.elapsed();
        let trusted = wait_checkpoint(&db.owner, size).await?;
        db.add_events(size + 1, size + new).await?;
        wait_checkpoint(&db.owner, size + new).await?;
        running.stop().await?;
        println!(
            "  log of {size}: events bulk-inserted in {:.1} s, chained by the sequencer (batches of {BUILD_BATCH}) in {:.1} s ({:.0} records/s)",
            inserted.as_secs_f64(),
            chained.as_secs_f64(),
            size as f64 / chained.as_secs_f64()
        );
        Ok(trusted.note)
    }

    /// Times inclusion and consistency proofs on `db`'s log.
    async fn proofs(&mut self, db: &Db, label: &str, rng: &mut StdRng) -> anyhow::Result<()> {
        let n = self.sizes.proofs;
        let client = db.connect().await?;
        let cps: Vec<LogCheckpoint> = client
            .query(
                "SELECT size, root, kid, note FROM audit_log_checkpoints WHERE size >= 2 ORDER BY size",
                &[],
            )
            .await?
            .iter()
            .map(|row| {
                let root: Vec<u8> = row.get(1);
                Ok(LogCheckpoint {
                    size: row.get::<_, i64>(0) as u64,
                    root: <[u8; 32]>::try_from(root.as_slice())?,
                    kid: row.get(2),
                    note: row.get(3),
                    cosignatures: Vec::new(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let size = cps.last().map(|c| c.size).unwrap_or(0);
        if size == 0 {
            anyhow::bail!("no checkpoint to prove against");
        }
        let (mut incl, mut cons) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut failed = 0;
        for _ in 0..n {
            let seq = rng.gen_range(1..=size);
            let t = Instant::now();
            let ok = tree::inclusion_proof(&client, seq).await.is_ok();
            incl.push(t.elapsed());
            failed += usize::from(!ok);
            let cp = &cps[rng.gen_range(0..cps.len())];
            let old = rng.gen_range(1..cp.size);
            let t = Instant::now();
            let ok = tree::consistency_proof(&client, old, cp).await.is_ok();
            cons.push(t.elapsed());
            failed += usize::from(!ok);
        }
        incl.sort();
        cons.sort();
        if failed > 0 {
            println!("  ({failed} proofs failed on the log of {size})");
        }
        println!(
            "  inclusion proof, log of {size}, {n} random records: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(pct(&incl, 0.5)),
            ms(pct(&incl, 0.99)),
            ms(pct(&incl, 1.0))
        );
        println!(
            "  consistency proof, log of {size}, {n} random old sizes to {} stored checkpoints: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            cps.len(),
            ms(pct(&cons, 0.5)),
            ms(pct(&cons, 0.99)),
            ms(pct(&cons, 1.0))
        );
        self.table.push(format!(
            "| {label} | inclusion proof, log of {size}: p50 / p99 (ms), {n} random records | {:.2} / {:.2} | | | |",
            ms(pct(&incl, 0.5)),
            ms(pct(&incl, 0.99))
        ));
        self.table.push(format!(
            "| {label}b | consistency proof, log of {size}: p50 / p99 (ms), {n} random pairs | {:.2} / {:.2} | | | |",
            ms(pct(&cons, 0.5)),
            ms(pct(&cons, 0.99))
        ));
        Ok(())
    }
}

/// Waits until the checkpoint of exactly `size` is stored.
async fn wait_checkpoint(client: &Client, size: u64) -> anyhow::Result<LogCheckpoint> {
    let deadline = Instant::now() + BUILD_LIMIT;
    loop {
        if let Some(cp) = tree::checkpoint_of_size(client, size).await? {
            return Ok(cp);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "no checkpoint of size {size} after {} s",
                BUILD_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sequencer running in the background.
struct Running {
    progress: tokio::sync::watch::Receiver<alga_audit::Progress>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(pool: Pool, signer: BenchSigner, config: SequencerConfig) -> Running {
        let s = Sequencer::new(pool, signer, config);
        let progress = s.progress();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = s.spawn(async move {
            let _ = rx.await;
        });
        Running {
            progress,
            stop,
            task,
        }
    }

    /// Waits until the head reaches `seq`; returns the head then.
    async fn wait_head(&self, seq: u64) -> anyhow::Result<u64> {
        let mut progress = self.progress.clone();
        let deadline = Instant::now() + BUILD_LIMIT;
        loop {
            let head = progress.borrow_and_update().head_seq;
            if head >= seq {
                return Ok(head);
            }
            if Instant::now() > deadline {
                anyhow::bail!("the sequencer is stuck at {head}, waiting for {seq}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
        }
    }

    /// Stops it; returns its head.
    async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(());
        self.task.await?;
        Ok(self.progress.borrow().head_seq)
    }
}

/// The sequencer's chaining loop, run by the bench on its own connection: the same
/// read of final events, the same hashes and the same insert, with the tree's node
/// CTE (as shipped) or without it (the chain as before the tree: no leaf hashes, no
/// nodes).
struct Replica {
    client: Client,
    select: Statement,
    insert: Statement,
    with_tree: bool,
    edge: TreeEdge,
    seq: u64,
    hash: [u8; 32],
    xid: String,
    id: i64,
}

impl Replica {
    async fn new(client: Client, with_tree: bool) -> anyhow::Result<Replica> {
        // The statements of `store::final_events_after` and `store::insert_chain`.
        let select = client
            .prepare_typed(
                "SELECT e.id, e.xid::text AS xid_text, e.record FROM audit_events e \
                 WHERE (e.xid, e.id) > ($1::text::xid8, $2) \
                   AND e.xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY e.xid, e.id LIMIT $3",
                &[Type::TEXT, Type::INT8, Type::INT8],
            )
            .await?;
        let insert = if with_tree {
            client
                .prepare_typed(
                    "WITH chained AS ( \
                         INSERT INTO audit_chain (seq, event_id, prev_hash, hash) \
                         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[])) \
                     INSERT INTO audit_tree_nodes (level, idx, hash) \
                     SELECT * FROM unnest($5::smallint[], $6::bigint[], $7::bytea[])",
                    &[
                        Type::INT8_ARRAY,
                        Type::INT8_ARRAY,
                        Type::BYTEA_ARRAY,
                        Type::BYTEA_ARRAY,
                        Type::INT2_ARRAY,
                        Type::INT8_ARRAY,
                        Type::BYTEA_ARRAY,
                    ],
                )
                .await?
        } else {
            client
                .prepare_typed(
                    "INSERT INTO audit_chain (seq, event_id, prev_hash, hash) \
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[])",
                    &[
                        Type::INT8_ARRAY,
                        Type::INT8_ARRAY,
                        Type::BYTEA_ARRAY,
                        Type::BYTEA_ARRAY,
                    ],
                )
                .await?
        };
        Ok(Replica {
            client,
            select,
            insert,
            with_tree,
            edge: TreeEdge::new(),
            seq: 0,
            hash: alga_audit::GENESIS_PREV_HASH,
            xid: "0".into(),
            id: 0,
        })
    }

    /// Chains up to `count` more records in batches of the shipped size: (records,
    /// seconds).
    async fn chain(&mut self, count: u64) -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let mut done = 0u64;
        while done < count {
            let limit = i64::from(SHIPPED_BATCH).min((count - done) as i64);
            let rows = self
                .client
                .query(&self.select, &[&self.xid, &self.id, &limit])
                .await?;
            if rows.is_empty() {
                break;
            }
            let n = rows.len();
            let mut seqs = Vec::with_capacity(n);
            let mut ids = Vec::with_capacity(n);
            let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(n + 1);
            let mut nodes = Vec::new();
            hashes.push(self.hash);
            for (i, row) in rows.iter().enumerate() {
                let seq = self.seq + 1 + i as u64;
                let record: &[u8] = row.try_get(2)?;
                seqs.push(seq as i64);
                ids.push(row.try_get::<_, i64>(0)?);
                hashes.push(chain_hash(&hashes[i], seq, record));
                if self.with_tree {
                    self.edge.push(leaf_hash(&entry_of(record)), &mut nodes);
                }
            }
            let prev: Vec<&[u8]> = hashes[..n].iter().map(|h| h.as_slice()).collect();
            let own: Vec<&[u8]> = hashes[1..].iter().map(|h| h.as_slice()).collect();
            if self.with_tree {
                let levels: Vec<i16> = nodes.iter().map(|n| i16::from(n.level)).collect();
                let idxs: Vec<i64> = nodes.iter().map(|n| n.index as i64).collect();
                let node_hashes: Vec<&[u8]> = nodes.iter().map(|n| n.hash.0.as_slice()).collect();
                self.client
                    .execute(
                        &self.insert,
                        &[&seqs, &ids, &prev, &own, &levels, &idxs, &node_hashes],
                    )
                    .await?;
            } else {
                self.client
                    .execute(&self.insert, &[&seqs, &ids, &prev, &own])
                    .await?;
            }
            let last = &rows[n - 1];
            self.seq += n as u64;
            self.hash = hashes[n];
            self.xid = last.try_get(1)?;
            self.id = last.try_get(0)?;
            done += n as u64;
        }
        Ok((done, started.elapsed().as_secs_f64().max(1e-9)))
    }
}
