//! Public and operational endpoints: JWKS, CA chain, health, readiness, metrics,
//! OpenAPI, unknown routes.

use rustls_pki_types::pem::PemObject;

use crate::harness::{Stack, assert_error, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_and_ops_endpoints() {
    let s = Stack::start().await;
    let c = s.anon();
    let (st, jwks, _) = send(c.get(s.url("/.well-known/jwks.json"))).await;
    assert_eq!(st, 200);
    let k = &jwks["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    let (st, pem, _) = send(c.get(s.url("/ca.pem"))).await;
    assert_eq!(st, 200);
    assert!(pem.as_str().expect("text").contains("BEGIN CERTIFICATE"));
    let (st, _, _) = send(c.get(s.url("/healthz"))).await;
    assert_eq!(st, 200);
    let (st, v, _) = send(c.get(s.url("/readyz"))).await;
    assert_eq!(st, 200, "{v}");

    // Some traffic, then the metrics show it.
    let (_, _, code) = s.tenant_with_code("essentials").await;
    let (st, _, _) = s.redeem(&code).await;
    assert_eq!(st, 200);
    let (st, _, _) = s.redeem("garbage").await;
    assert_eq!(st, 400);
    let (st, m, _) = send(c.get(s.url("/metrics"))).await;
    assert_eq!(st, 200);
    let m = m.as_str().expect("text").to_owned();
    for needle in [
        "alga_gateway_http_requests_total{route=\"/register-tenant\",method=\"POST\",status=\"201\"}",
        "alga_gateway_http_request_duration_seconds_bucket",
        "alga_gateway_redeem_outcomes_total{outcome=\"ok\"} 1",
        "alga_gateway_redeem_outcomes_total{outcome=\"code_malformed\"} 1",
        "alga_gateway_issuer_call_duration_seconds_count{op=\"mint_code\"}",
        "alga_gateway_db_pool_connections",
    ] {
        assert!(m.contains(needle), "{needle} missing in\n{m}");
    }
    // Seconds until the newest appliance CA of the published chain expires.
    let newest_not_after =
        rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_str().expect("text").as_bytes())
            .map(|der| {
                let der = der.expect("PEM");
                let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
                let v = cert.validity();
                (v.not_before.timestamp(), v.not_after.timestamp())
            })
            .max()
            .expect("a CA")
            .1;
    let gauge: i64 = m
        .lines()
        .find_map(|l| l.strip_prefix("alga_gateway_appliance_ca_expiry_seconds "))
        .unwrap_or_else(|| panic!("no CA expiry gauge in\n{m}"))
        .parse()
        .expect("an integer");
    let expected = newest_not_after - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        gauge > 0 && (expected - 2..=expected + 60).contains(&gauge),
        "gauge {gauge}, expected about {expected}"
    );
    let (st, doc, _) = send(c.get(s.url("/openapi.json"))).await;
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/install-codes/reissue"]["post"].is_object());

    let (st, e, _) = send(c.get(s.url("/no/such/route"))).await;
    assert_error(st, &e, 404, "not_found");
    let (st, e, _) = send(c.get(s.url("/register"))).await;
    assert_error(st, &e, 405, "method_not_allowed");
    assert!(e["error"]["request_id"].is_string());
    s.stop().await;
}
