//! The sequencer chains every committed record once, in order, without gaps, and
//! checkpoints the head; verify agrees.

use std::time::Duration;

use alga_audit::{Action, DamageKind, EventQuery, verify_database};

use crate::support::{
    InsecureTestSigner, RunningSequencer, TestDb, append_n, fast_config, sample_record,
    verify_options, wait_all_chained,
};

#[tokio::test]
async fn sequencer_chains_everything_and_checkpoints_verify() {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("audit-1");
    let keys = signer.keys();
    let mut seq = RunningSequencer::start(db.pool(4), signer, fast_config(25));
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 100).await;
    // Rolled-back appends leave no trace and no gap.
    for i in 0..5 {
        let tx = rt.transaction().await.unwrap();
        alga_audit::append(&tx, &sample_record(1000 + i))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    append_n(&mut rt, 100, 20).await;
    seq.wait_for(120, 1).await;
    seq.stop().await;

    let rows = rt
        .query("SELECT seq FROM audit_chain ORDER BY seq", &[])
        .await
        .unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seqs, (1..=120).collect::<Vec<i64>>());
    let cps = alga_audit::list_checkpoints(&rt, 0, 0).await.unwrap();
    assert!(!cps.is_empty());
    for cp in &cps {
        keys.check(cp).expect("checkpoint signature");
    }

    let report = verify_database(&mut rt, &verify_options(keys))
        .await
        .unwrap();
    assert!(report.intact(), "{report:#?}");
    assert_eq!(report.records, 120);
    assert_eq!(report.checkpoints_matched, cps.len() as u64);
    db.drop_db().await;
}

#[tokio::test]
async fn events_page_by_sequence_and_filter() {
    let db = TestDb::new().await;
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 30).await;
    let mut seq =
        RunningSequencer::start(db.pool(2), InsecureTestSigner::new("k"), fast_config(1000));
    seq.wait_for(30, 0).await;
    seq.stop().await;

    let page = alga_audit::list_events(
        &rt,
        &EventQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let next = alga_audit::list_events(
        &rt,
        &EventQuery {
            after_seq: 10,
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(next[0].seq, 11);

    let redeems = alga_audit::list_events(
        &rt,
        &EventQuery {
            action: Some(Action::new("code.redeem").unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(redeems.len(), 5);
    for r in &redeems {
        assert_eq!(r.record().unwrap().action.as_str(), "code.redeem");
    }
    let tenant = sample_record(3).record().tenant_id;
    let by_tenant = alga_audit::list_events(
        &rt,
        &EventQuery {
            tenant_id: tenant,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!by_tenant.is_empty());
    assert!(
        by_tenant
            .iter()
            .all(|r| r.record().unwrap().tenant_id == tenant)
    );
    let future = alga_audit::list_events(
        &rt,
        &EventQuery {
            since: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(future.is_empty());
    // The item the gateway serves is the export line, with the record verbatim.
    let line = page[0].to_json_line().unwrap();
    assert!(line.starts_with("{\"type\":\"record\",\"seq\":1,"));
    assert!(line.contains(std::str::from_utf8(&page[0].canonical).unwrap()));
    db.drop_db().await;
}

/// `scan_actions` (the store's event feed): the records of some actions after a
/// sequence number, bounded by a count and a window of sequence numbers; going on from
/// `scanned_to` reads each record once, in order.
#[tokio::test]
async fn scan_actions_pages_by_count_and_window() {
    let db = TestDb::new().await;
    let mut rt = db.runtime().await;
    // sample_record cycles through six actions: `code.redeem` is the third, so records
    // 3, 9, 15, … 57 of 60.
    append_n(&mut rt, 0, 60).await;
    let mut seq =
        RunningSequencer::start(db.pool(2), InsecureTestSigner::new("k"), fast_config(1000));
    seq.wait_for(60, 0).await;
    seq.stop().await;
    let redeems: Vec<u64> = (0..10).map(|k| 3 + 6 * k).collect();
    let scan = |after, limit, window| {
        let rt = &rt;
        async move {
            alga_audit::scan_actions(rt, after, &["code.redeem"], limit, window)
                .await
                .unwrap()
        }
    };
    let seqs = |s: &alga_audit::ActionScan| s.records.iter().map(|r| r.seq).collect::<Vec<_>>();

    // Full by count: ends at the last record read.
    let s = scan(0, 3, 1000).await;
    assert_eq!((seqs(&s), s.scanned_to, s.head), (vec![3, 9, 15], 15, 60));
    // Bounded by the window: ends at its edge.
    let s = scan(15, 100, 10).await;
    assert_eq!((seqs(&s), s.scanned_to), (vec![21], 25));
    let s = scan(15, 100, 5).await;
    assert_eq!((seqs(&s), s.scanned_to), (vec![], 20));
    // At the head, and beyond it (the caller refuses such a cursor).
    let s = scan(60, 10, 1000).await;
    assert_eq!((seqs(&s), s.scanned_to, s.head), (vec![], 60, 60));
    let s = scan(70, 10, 1000).await;
    assert_eq!((seqs(&s), s.head), (vec![], 60));
    // Small pages and windows read every record once, in order.
    let (mut after, mut got) = (0, Vec::new());
    while after < 60 {
        let s = scan(after, 2, 7).await;
        assert!(s.scanned_to > after);
        got.extend(seqs(&s));
        after = s.scanned_to;
    }
    assert_eq!(got, redeems);
    for r in &scan(0, 100, 1000).await.records {
        assert_eq!(r.record().unwrap().action.as_str(), "code.redeem");
    }
    db.drop_db().await;
}

#[tokio::test]
async fn records_left_unchained_past_the_bound_are_flagged() {
    let db = TestDb::new().await;
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 5).await;
    let signer = InsecureTestSigner::new("k");
    let keys = signer.keys();

    // No sequencer ran: fine now, an alarm an hour from now.
    let report = verify_database(&mut rt, &verify_options(keys.clone()))
        .await
        .unwrap();
    assert!(report.intact(), "{report:#?}");
    let mut later = verify_options(keys.clone());
    later.now += time::Duration::hours(1);
    let report = verify_database(&mut rt, &later).await.unwrap();
    assert_eq!(report.findings.len(), 5, "{report:#?}");
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.kind == DamageKind::Unchained && f.seq.is_none())
    );

    let mut seq = RunningSequencer::start(db.pool(2), signer, fast_config(1000));
    seq.wait_for(5, 0).await;
    seq.stop().await;
    let report = verify_database(&mut rt, &later).await.unwrap();
    assert!(report.intact(), "{report:#?}");
    db.drop_db().await;
}

#[tokio::test]
async fn an_open_transaction_delays_chaining_but_never_reorders_or_loses() {
    let db = TestDb::new().await;
    let mut seq =
        RunningSequencer::start(db.pool(2), InsecureTestSigner::new("k"), fast_config(1000));
    let mut long = db.runtime().await;
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 3).await;
    seq.wait_for(3, 0).await;

    // A transaction takes an xid and stays open while others commit after it.
    let tx = long.transaction().await.unwrap();
    alga_audit::append(&tx, &sample_record(100)).await.unwrap();
    append_n(&mut rt, 1, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seq.progress.borrow().head_seq,
        3,
        "nothing after the open transaction is final yet"
    );

    tx.commit().await.unwrap();
    seq.wait_for(9, 0).await;
    seq.stop().await;
    assert_eq!(wait_all_chained(&rt).await, 9);
    // The long transaction's record comes first: it has the smallest xid.
    let row = rt
        .query_one(
            "SELECT e.record FROM audit_chain c JOIN audit_events e ON e.id = c.event_id WHERE c.seq = 4",
            &[],
        )
        .await
        .unwrap();
    let bytes: Vec<u8> = row.get(0);
    let rec = alga_audit::Record::from_canonical(&bytes).unwrap();
    assert_eq!(rec.request_id.as_deref(), Some("req-100"));
    let report = verify_database(
        &mut rt,
        &verify_options(InsecureTestSigner::new("k").keys()),
    )
    .await
    .unwrap();
    assert!(report.intact(), "{report:#?}");
    db.drop_db().await;
}

#[tokio::test]
async fn racing_sequencers_without_the_leader_lock_still_form_one_chain() {
    let db = TestDb::new().await;
    let signer = InsecureTestSigner::new("k");
    let keys = signer.keys();
    let mut a_cfg = fast_config(50);
    a_cfg.danger_skip_leader_election = true;
    a_cfg.batch_size = 7;
    let b_cfg = a_cfg.clone();
    let a = RunningSequencer::start(db.pool(2), signer.clone(), a_cfg);
    let b = RunningSequencer::start(db.pool(2), signer, b_cfg);

    let mut writers = Vec::new();
    for w in 0..4u64 {
        let db_rt = db.runtime().await;
        writers.push(tokio::spawn(async move {
            let mut c = db_rt;
            append_n(&mut c, w * 1000, 150).await;
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut rt = db.runtime().await;
    assert_eq!(wait_all_chained(&rt).await, 600);
    let (pa, pb) = (*a.progress.borrow(), *b.progress.borrow());
    a.stop().await;
    b.stop().await;
    assert_eq!(
        pa.chained + pb.chained,
        600,
        "each record chained exactly once: {pa:?} {pb:?}"
    );
    let report = verify_database(&mut rt, &verify_options(keys))
        .await
        .unwrap();
    assert!(report.intact(), "{report:#?}");
    db.drop_db().await;
}

/// Transaction ids are chained in numeric order, also across a power of ten: sorted as
/// text, 100 would come before 99 (a real bug once: the cluster's xids crossed 100000
/// and the sequencer chained out of order, then stalled on its own rows).
#[tokio::test]
async fn transaction_ids_order_numerically_across_a_power_of_ten() {
    let db = TestDb::new().await;
    let owner = db.owner().await;
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 3).await;
    // Give the three events ids of long-finished transactions (every cluster is past
    // xid 1000 after initdb), in an order where text and numbers disagree.
    owner
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE audit_events SET xid = '100'::xid8 WHERE id = (SELECT min(id) FROM audit_events); \
             UPDATE audit_events SET xid = '99'::xid8 WHERE id = (SELECT min(id) + 1 FROM audit_events); \
             UPDATE audit_events SET xid = '1000'::xid8 WHERE id = (SELECT min(id) + 2 FROM audit_events); \
             COMMIT;",
        )
        .await
        .unwrap();
    let mut seq =
        RunningSequencer::start(db.pool(2), InsecureTestSigner::new("k"), fast_config(1000));
    seq.wait_for(3, 0).await;
    seq.stop().await;
    let order: Vec<String> = rt
        .query(
            "SELECT e.xid::text FROM audit_chain c JOIN audit_events e ON e.id = c.event_id ORDER BY c.seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, vec!["99", "100", "1000"]);
    db.drop_db().await;
}

/// An idle log is polled less and less often, down to one poll per `idle_poll_max`
/// (at a constant 5 ms pause one idle second costs up to 200 queries), and a record
/// appended after the quiet spell, through the connection's statement cache
/// (`append_cached`, as the gateway appends), is still chained. Counted in polls, not
/// timed: each empty poll doubles the pause, so seven of them from any pause reach the
/// cap (5 ms × 2⁷ > 100 ms), and the eighth is counted only after the seventh's pause
/// is published.
#[tokio::test]
async fn an_idle_sequencer_backs_off_and_still_chains_what_comes_next() {
    let db = TestDb::new().await;
    let mut config = fast_config(1000);
    config.idle_poll = Duration::from_millis(5);
    config.idle_poll_max = Duration::from_millis(100);
    let mut seq = RunningSequencer::start(db.pool(2), InsecureTestSigner::new("audit-1"), config);
    // Deadlines below only keep a broken build from hanging the suite.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seq.progress.borrow().leading {
        assert!(tokio::time::Instant::now() < deadline, "never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = seq.progress.borrow().empty_polls;
    let mut seen = Vec::new();
    loop {
        let p = *seq.progress.borrow();
        if seen.last() != Some(&p.idle_pause) {
            seen.push(p.idle_pause);
        }
        if p.empty_polls >= before + 8 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "8 empty polls never came"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        seq.progress.borrow().idle_pause,
        Duration::from_millis(100),
        "the pause stops at idle_poll_max"
    );
    // The pauses seen (sampled, so some may be missed) only grew, each a doubling of
    // 5 ms or the cap; none went past it.
    let steps: Vec<Duration> = [5, 10, 20, 40, 80, 100]
        .into_iter()
        .map(Duration::from_millis)
        .collect();
    seen.retain(|d| !d.is_zero());
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]) && seen.iter().all(|d| steps.contains(d)),
        "pauses {seen:?}"
    );

    let pool = db.pool(2);
    let mut conn = pool.get().await.expect("connection");
    for i in 0..3 {
        let tx = conn.transaction().await.expect("begin");
        alga_audit::append_cached(&tx, &sample_record(i))
            .await
            .expect("append through the statement cache");
        tx.commit().await.expect("commit");
    }
    seq.wait_for(3, 0).await;
    seq.stop().await;
    let rt = db.runtime().await;
    assert_eq!(wait_all_chained(&rt).await, 3);
    db.drop_db().await;
}
