//! Two gateway processes append at once, each with its own pool and its own
//! sequencer competing for leadership: one valid chain, no gap, fork or duplicate.

use std::process::Command;

use alga_audit::verify_database;

use crate::support::{
    InsecureTestSigner, RunningSequencer, TestDb, fast_config, verify_options, wait_all_chained,
};

async fn run_two_processes(race: bool) {
    let db = TestDb::new().await;
    let url = db.url();
    db.owner()
        .await
        .batch_execute("CREATE TABLE loadgen_business (id bigserial PRIMARY KEY, n bigint NOT NULL DEFAULT 0, who text)")
        .await
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_alga-audit-loadgen");
    let spawn = |name: &str| {
        let mut c = Command::new(bin);
        c.args([
            "--tasks",
            "8",
            "--records",
            "250",
            "--name",
            name,
            "--linger-ms",
            "500",
        ])
        .env("DATABASE_URL", &url);
        if race {
            c.arg("--danger-race");
        }
        c.spawn().expect("start alga-audit-loadgen")
    };
    let (a, b) = (spawn("gw-a"), spawn("gw-b"));
    let outputs = tokio::task::spawn_blocking(move || {
        (
            a.wait_with_output().expect("gw-a"),
            b.wait_with_output().expect("gw-b"),
        )
    })
    .await
    .unwrap();
    assert!(
        outputs.0.status.success() && outputs.1.status.success(),
        "{outputs:?}"
    );

    // Whatever the two left unchained at exit, a third sequencer finishes.
    let finisher = RunningSequencer::start(
        db.pool(2),
        InsecureTestSigner::new("k"),
        fast_config(1_000_000),
    );
    let mut rt = db.runtime().await;
    assert_eq!(wait_all_chained(&rt).await, 4000);
    finisher.stop().await;

    let row = rt
        .query_one(
            "SELECT count(*), count(DISTINCT event_id), min(seq), max(seq) FROM audit_chain",
            &[],
        )
        .await
        .unwrap();
    let (n, distinct, min, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((n, distinct, min, max), (4000, 4000, 1, 4000));
    let per_process: Vec<(String, i64)> = rt
        .query(
            "SELECT convert_from(record, 'UTF8')::jsonb #>> '{actor,identity}', count(*) \
             FROM audit_events GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per_process,
        vec![("gw-a".to_owned(), 2000), ("gw-b".to_owned(), 2000)]
    );
    let report = verify_database(
        &mut rt,
        &verify_options(InsecureTestSigner::new("k").keys()),
    )
    .await
    .unwrap();
    assert!(report.intact(), "{report:#?}");
    assert_eq!(report.records, 4000);
    db.drop_db().await;
}

#[tokio::test]
async fn two_processes_appending_concurrently_form_one_chain() {
    run_two_processes(false).await;
}

#[tokio::test]
async fn two_processes_whose_sequencers_race_without_the_lock_form_one_chain() {
    run_two_processes(true).await;
}
