//! The concurrency test's load generator: appends synthetic records from many tasks,
//! each in a redeem-like business transaction (a row of `loadgen_business` and its
//! audit record, committed together), while running a sequencer, as a gateway does.
//!
//! `concurrent.rs` runs two of them at once, each in its own process: this test
//! binary, started again on one test with the [`Load`] in [`LOAD_ENV`]. It lives here,
//! not in a shipped binary, because it writes a table of its own.

use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use alga_audit::{Action, Actor, NewRecord, Sequencer, SequencerConfig};
use alga_policies::AuditPolicy;
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::support::InsecureTestSigner;

/// The environment variable that makes a test process a load generator.
pub const LOAD_ENV: &str = "ALGA_AUDIT_LOADGEN";

/// What one load generator does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Load {
    /// The database (the superuser URL of the test's database).
    pub database_url: String,
    /// A name for this process, written into each record's actor.
    pub name: String,
    /// Concurrent writer tasks.
    pub tasks: u32,
    /// Records per task.
    pub records: u32,
    /// Run the sequencer without the leader lock (races other sequencers).
    pub danger_race: bool,
    /// Keep the sequencer running this long after the last append.
    pub linger_ms: u64,
}

/// What one load generator did: its last line of standard output, in JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub appended: u64,
    pub chained_by_me: u64,
}

/// Starts `load` in a process of its own: this test binary, run on `test` alone
/// (the full name of a test that calls [`run_if_asked`] first).
pub fn spawn(test: &str, load: &Load) -> std::process::Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(
            LOAD_ENV,
            serde_json::to_string(load).expect("a Load is JSON"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the load generator {}: {e}", load.name))
}

/// The report a load generator printed, from its standard output.
pub fn report_of(stdout: &[u8]) -> Report {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("{\"name\""))
        .unwrap_or_else(|| panic!("no report in the load generator's output: {text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
}

/// In a process started by [`spawn`]: runs its load, prints its report and returns
/// true (the test has nothing else to do). Otherwise false.
pub fn run_if_asked() -> bool {
    let Ok(json) = std::env::var(LOAD_ENV) else {
        return false;
    };
    let load: Load = serde_json::from_str(&json).expect("the Load in ALGA_AUDIT_LOADGEN");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(run(&load)).expect("the load generator");
    println!(
        "{}",
        serde_json::to_string(&report).expect("a Report is JSON")
    );
    true
}

/// Appends `tasks × records` records, each with its `loadgen_business` row (the
/// table must exist), while a sequencer of its own chains them.
async fn run(load: &Load) -> anyhow::Result<Report> {
    let config = tokio_postgres::Config::from_str(&load.database_url)?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(load.tasks as usize + 2)
        .build()
        .context("pool")?;

    let mut config = SequencerConfig::new(AuditPolicy {
        checkpoint_every_records: u64::MAX,
        checkpoint_interval: time::Duration::days(365),
        unchained_alarm_after: time::Duration::seconds(30),
    });
    config.danger_skip_leader_election = load.danger_race;
    config.leader_retry = Duration::from_millis(100);
    // Checkpoints are never due under this policy: the signer is never called.
    let sequencer = Sequencer::new(pool.clone(), InsecureTestSigner::new("k"), config);
    let progress = sequencer.progress();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let seq_task = sequencer.spawn(async move {
        let _ = stop_rx.await;
    });

    let action = Action::new("loadgen.append")?;
    let mut writers = Vec::new();
    for t in 0..load.tasks {
        let pool = pool.clone();
        let action = action.clone();
        let name = load.name.clone();
        let records = load.records;
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
    tokio::time::sleep(Duration::from_millis(load.linger_ms)).await;
    let _ = stop_tx.send(());
    seq_task.await?;
    let chained_by_me = progress.borrow().chained;
    Ok(Report {
        name: load.name.clone(),
        appended: u64::from(load.tasks) * u64::from(load.records),
        chained_by_me,
    })
}
