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

/// An issuer of before the batch route: a TLS front (the issuer's own server
/// certificate) that answers the batch route as an older issuer does (404,
/// `bad_request`) and forwards single license calls to this stack's real issuer.
/// Returns its URL and the number of batch calls it turned away.
async fn older_issuer(s: &Stack) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use alga_protocol::issuer_api as ia;
    use axum::http::StatusCode;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let d = crate::harness::dev();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(d.path("ALGA_ISSUER_SERVER_CERT"))
            .expect("issuer certificate")
            .collect::<Result<_, _>>()
            .expect("issuer certificate");
    let key = PrivateKeyDer::from_pem_file(d.path("ALGA_ISSUER_SERVER_KEY")).expect("issuer key");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");

    let turned_away = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (http, issuer) = (s.issuer_client(), s.issuer_url());
    let batch = {
        let turned_away = turned_away.clone();
        move || async move {
            turned_away.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "error": {"code": "bad_request", "message": "no such endpoint"}
                })),
            )
        }
    };
    let single = move |body: axum::body::Bytes| async move {
        let r = http
            .post(format!("{issuer}{}", ia::SIGN_LICENSE))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the real issuer answers");
        let status = StatusCode::from_u16(r.status().as_u16()).expect("status");
        (status, r.bytes().await.expect("body"))
    };
    let router = axum::Router::new()
        .route(ia::SIGN_LICENSES, axum::routing::post(batch))
        .route(ia::SIGN_LICENSE, axum::routing::post(single));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    tokio::spawn(async move {
        let _ = axum_server::from_tcp_rustls(listener, config)
            .serve(router.into_make_service())
            .await;
    });
    (format!("https://localhost:{port}"), turned_away)
}

// Issuers and gateways can be upgraded in either order: against an issuer without the
// batch route, the queued requests go out as single calls and all succeed.
#[tokio::test]
async fn an_issuer_without_the_batch_route_gets_the_licenses_as_single_calls() {
    let s = Stack::start().await;
    let (url, turned_away) = older_issuer(&s).await;
    let metrics = Arc::new(Metrics::new());
    let client = crate::harness::gateway_issuer_client_at(&url, metrics.clone())
        .with_license_calls_in_flight(2);
    let tenant = Uuid::new_v4();
    let results = futures::future::join_all(
        (0..20).map(|_| client.sign_license(tenant, Uuid::new_v4(), "pro")),
    )
    .await;
    let jtis: std::collections::HashSet<Uuid> = results
        .iter()
        .map(|r| r.as_ref().expect("license through the fallback").jti)
        .collect();
    assert_eq!(jtis.len(), 20);
    assert!(
        turned_away.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "no batch was tried"
    );
    // Every license went out as a single call (the two first alone, the rest after the
    // refused batch), and each was signed exactly once.
    assert_eq!(calls(&metrics, "sign_license"), 20);
    let logged = alga_issuer::signlog::read_dir(s.issuer_log_dir())
        .expect("signing log")
        .records
        .iter()
        .filter(|r| r.ids.tenant_id == Some(tenant))
        .count();
    assert_eq!(logged, 20);
    s.stop().await;
}
