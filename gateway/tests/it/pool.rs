//! The database pool's floor (`database.min_connections`, RELIABILITY.md finding 3):
//! opened before the gateway listens, and re-opened after Postgres drops connections.

use std::collections::BTreeSet;

use crate::harness::{Opts, Stack};

/// Backend pids of the connections named `application` to the test database.
async fn backends(s: &Stack, application: &str) -> BTreeSet<i32> {
    s.admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&s.db, &application],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_opens_its_minimum_connections_before_it_listens() {
    let s = Stack::start_with(Opts {
        pool_size: Some(8),
        min_connections: Some(6),
        ..Opts::default()
    })
    .await;
    // Stack::start returns once the gateway answers /readyz, which it serves only after
    // the warm-up; no request has needed more than one connection at a time since.
    let open = backends(&s, "alga-gateway").await;
    assert!(open.len() >= 6, "{} connections open: {open:?}", open.len());
    assert!(open.len() <= 8, "{} connections open: {open:?}", open.len());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_replaces_the_connections_postgres_closed() {
    let s = Stack::start_with(Opts {
        min_connections: Some(0),
        ..Opts::default()
    })
    .await;
    let mut cfg = alga_gateway::runtime_pg_config(s.gateway_config()).expect("runtime config");
    cfg.application_name("alga-gateway-pool-test");
    let pool = alga_gateway::db::pool(cfg, 8).expect("pool");
    let ours = || backends(&s, "alga-gateway-pool-test");

    assert_eq!(alga_gateway::db::warm(&pool, 5).await.expect("warm"), 5);
    assert_eq!(pool.status().size, 5);
    let first = ours().await;
    assert_eq!(first.len(), 5, "{first:?}");

    // A database restart, as the pool sees it: every one of its backends terminated.
    s.admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'alga-gateway-pool-test'",
            &[&s.db],
        )
        .await
        .expect("terminate");
    // The backends exit shortly after the signal, and the pool learns that a connection
    // was closed when its driver reads the end of the stream: warm until all five are
    // new backends.
    let mut fresh = BTreeSet::new();
    for _ in 0..100 {
        let held = alga_gateway::db::warm(&pool, 5).await.expect("warm again");
        assert_eq!(held, 5);
        fresh = ours().await;
        if fresh.len() == 5 && fresh.is_disjoint(&first) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(fresh.len(), 5, "{fresh:?}");
    assert!(
        fresh.is_disjoint(&first),
        "closed connections were replaced"
    );
    // Every warmed connection works.
    let conn = pool.get().await.expect("a connection");
    conn.simple_query("SELECT 1").await.expect("usable");
    drop(conn);

    // Connections in use count as open: warming waits for none of them.
    let held: Vec<_> = futures::future::join_all((0..8).map(|_| pool.get()))
        .await
        .into_iter()
        .map(|c| c.expect("checkout"))
        .collect();
    assert_eq!(alga_gateway::db::warm(&pool, 5).await.expect("busy"), 0);
    drop(held);
    s.stop().await;
}
