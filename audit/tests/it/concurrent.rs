//! Two gateway processes append at once, each with its own pool and its own
//! sequencer competing for leadership: one valid chain, no gap, fork or duplicate.
//!
//! Each process is this test binary run again on the same test, which then acts as
//! the load generator (`loadgen.rs`) instead.

use alga_audit::verify_database;

use crate::loadgen::{self, Load};
use crate::support::{
    InsecureTestSigner, RunningSequencer, TestDb, fast_config, verify_options, wait_all_chained,
};

/// `test`: this test's full name, to start the load generators on it alone.
async fn run_two_processes(test: &str, race: bool) {
    let db = TestDb::new().await;
    let url = db.url();
    db.owner()
        .await
        .batch_execute("CREATE TABLE loadgen_business (id bigserial PRIMARY KEY, n bigint NOT NULL DEFAULT 0, who text)")
        .await
        .unwrap();
    let spawn = |name: &str| {
        loadgen::spawn(
            test,
            &Load {
                database_url: url.clone(),
                name: name.to_owned(),
                tasks: 8,
                records: 250,
                danger_race: race,
                linger_ms: 500,
            },
        )
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
    for (output, name) in [(&outputs.0, "gw-a"), (&outputs.1, "gw-b")] {
        let report = loadgen::report_of(&output.stdout);
        assert_eq!((report.name.as_str(), report.appended), (name, 2000));
    }

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

/// This module's path as the test harness names it (without the crate's name).
fn test_name(function: &str) -> String {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    format!("{module}::{function}")
}

/// Runs `f` on a new current-thread runtime (as `#[tokio::test]` would), unless this
/// process is one of the load generators the test started.
fn unless_loading(f: impl std::future::Future<Output = ()>) {
    if loadgen::run_if_asked() {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

#[test]
fn two_processes_appending_concurrently_form_one_chain() {
    unless_loading(run_two_processes(
        &test_name("two_processes_appending_concurrently_form_one_chain"),
        false,
    ));
}

#[test]
fn two_processes_whose_sequencers_race_without_the_lock_form_one_chain() {
    unless_loading(run_two_processes(
        &test_name("two_processes_whose_sequencers_race_without_the_lock_form_one_chain"),
        true,
    ));
}
