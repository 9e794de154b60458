//! License requests coalesced into `SIGN_LICENSES` batches under load: each caller
//! gets its own license (or its own refusal), every license is in the signing log,
//! and the calls are fewer than the requests.

use std::sync::Arc;

use alga_gateway::issuer_client::IssuerError;
use alga_gateway::metrics::Metrics;
use alga_protocol::issuer_api::IssuerErrorCode;
use uuid::Uuid;

use crate::harness::Stack;

/// Calls of `op` in the metrics' issuer latency histogram.
fn calls(metrics: &Metrics, op: &str) -> u64 {
    let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        tokio_postgres::Config::new(),
        tokio_postgres::NoTls,
    ))
    .max_size(1)
    .build()
    .expect("unused pool");
    let text = metrics.render(&pool).expect("metrics");
    let needle = format!("issuer_call_duration_seconds_count{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| {
            l.split_once(&needle)
                .map(|(_, n)| n.trim().parse().expect("count"))
        })
        .unwrap_or(0)
}

// A current-thread runtime (the default): the spawned calls run only when the test
// task waits, so all 40 requests are queued behind the first two calls in flight.
#[tokio::test]
async fn concurrent_license_requests_share_batch_calls_and_each_gets_its_own() {
    let s = Stack::start().await;
    let metrics = Arc::new(Metrics::new());
    let client = s
        .gateway_issuer_client(metrics.clone())
        .with_license_calls_in_flight(2);
    let tenant = Uuid::new_v4();
    let appliances: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    // One request in the middle names an edition without licenses: only it fails.
    let results = futures::future::join_all(appliances.iter().enumerate().map(|(i, a)| {
        let edition = if i == 17 { "essentials" } else { "pro" };
        client.sign_license(tenant, *a, edition)
    }))
    .await;

    let mut jtis = std::collections::HashSet::new();
    for (i, (result, appliance)) in results.iter().zip(&appliances).enumerate() {
        if i == 17 {
            assert!(
                matches!(
                    result,
                    Err(IssuerError::Refused {
                        code: IssuerErrorCode::EditionNotPaid,
                        ..
                    })
                ),
                "{result:?}"
            );
            continue;
        }
        let license = result.as_ref().expect("license");
        assert!(jtis.insert(license.jti), "a jti given twice");
        let claims = s.license_claims(license.token.expose()).await;
        assert_eq!(claims["appliance_id"], appliance.to_string(), "request {i}");
        assert_eq!(claims["sub"], tenant.to_string());
    }

    let singles = calls(&metrics, "sign_license");
    let batches = calls(&metrics, "sign_licenses");
    // The two first requests go out alone; the 38 queued behind them share batch calls
    // (an issuer without the batch route would have made 40 single calls).
    assert!(
        batches >= 1 && singles <= 4 && singles + batches < 10,
        "{singles} single and {batches} batch calls for 40 requests"
    );
    // Every signed license, and nothing else, is in the signing log.
    let logged = alga_issuer::signlog::read_dir(s.issuer_log_dir())
        .expect("signing log")
        .records
        .iter()
        .filter(|r| r.ids.jti.as_ref().is_some_and(|j| jtis.contains(j)))
        .count();
    assert_eq!(logged, 39);
    s.stop().await;
}

// Light load: one request at a time goes out alone, as a plain license call.
#[tokio::test]
async fn a_lone_license_request_is_a_plain_call() {
    let s = Stack::start().await;
    let metrics = Arc::new(Metrics::new());
    let client = s.gateway_issuer_client(metrics.clone());
    for _ in 0..3 {
        client
            .sign_license(Uuid::new_v4(), Uuid::new_v4(), "pro")
            .await
            .expect("license");
    }
    assert_eq!(calls(&metrics, "sign_license"), 3);
    assert_eq!(calls(&metrics, "sign_licenses"), 0);
    s.stop().await;
}
