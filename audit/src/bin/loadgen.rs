//! `alga-audit-loadgen`: appends synthetic records from many tasks, each in a
//! redeem-like business transaction, while running a sequencer, in its own process.
//!
//! Used by the concurrency test (two of these at once must produce one chain) and
//! the benchmark. Not for production: it writes a `loadgen_business` table.
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::Duration;

use alga_audit::{Action, Actor, NewRecord, Sequencer, SequencerConfig};
use alga_policies::AuditPolicy;
use alga_protocol::issuer_api::{SignedCheckpoint, SignedLogCheckpoint};
use anyhow::Context;
use clap::Parser;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::OffsetDateTime;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Concurrent writer tasks.
    #[arg(long, default_value_t = 16)]
    tasks: u32,
    /// Records per task.
    #[arg(long, default_value_t = 500)]
    records: u32,
    /// A name for this process, written into each record.
    #[arg(long, default_value = "loadgen")]
    name: String,
    /// Run the sequencer without the leader lock (races other sequencers).
    #[arg(long)]
    danger_race: bool,
    /// Keep the sequencer running this long after the last append.
    #[arg(long, default_value_t = 300)]
    linger_ms: u64,
}

/// Checkpoints are never due in the load generator (see the policy below).
struct NoCheckpoints;

impl alga_audit::CheckpointSigner for NoCheckpoints {
    type Error = &'static str;
    async fn sign(&self, _: u64, _: &str) -> Result<SignedCheckpoint, &'static str> {
        Err("the load generator does not sign checkpoints")
    }
    async fn sign_log(&self, _: u64, _: [u8; 32]) -> Result<SignedLogCheckpoint, &'static str> {
        Err("the load generator does not sign checkpoints")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = tokio_postgres::Config::from_str(&args.database_url)?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(args.tasks as usize + 2)
        .build()
        .context("pool")?;
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS loadgen_business (id bigserial PRIMARY KEY, n bigint NOT NULL DEFAULT 0, who text)",
        )
        .await?;

    let mut config = SequencerConfig::new(AuditPolicy {
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: time::Duration::days(365),
        unchained_alarm_after: time::Duration::seconds(30),
    });
    config.danger_skip_leader_election = args.danger_race;
    config.leader_retry = Duration::from_millis(100);
    let sequencer = Sequencer::new(pool.clone(), NoCheckpoints, config);
    let progress = sequencer.progress();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let seq_task = sequencer.spawn(async move {
        let _ = stop_rx.await;
    });

    let action = Action::new("loadgen.append")?;
    let mut writers = Vec::new();
    for t in 0..args.tasks {
        let pool = pool.clone();
        let action = action.clone();
        let name = args.name.clone();
        let records = args.records;
        writers.push(tokio::spawn(async move {
            let mut client = pool.get().await?;
            for i in 0..records {
                let tx = client.transaction().await?;
                tx.execute("INSERT INTO loadgen_business (who) VALUES ($1)", &[&name])
                    .await?;
                let record = NewRecord::builder(
                    OffsetDateTime::now_utc(),
                    Actor::system(&name)?,
                    action.clone(),
                )
                .subject("task", t)
                .subject("n", i)
                .build()?;
                alga_audit::append_cached(&tx, &record).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    tokio::time::sleep(Duration::from_millis(args.linger_ms)).await;
    let _ = stop_tx.send(());
    seq_task.await?;
    let p = *progress.borrow();
    println!(
        "{{\"name\":\"{}\",\"appended\":{},\"chained_by_me\":{}}}",
        args.name,
        u64::from(args.tasks) * u64::from(args.records),
        p.chained
    );
    Ok(())
}
