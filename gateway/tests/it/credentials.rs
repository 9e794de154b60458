//! Check-in accepts only the appliance's current credential, or the one a rotation
//! replaced while its overlap lasts and the new one is unused (`flows::check_in`).
//! Rotations are real ones: a check-in with a credential near its end (signed short by
//! the issuer and recorded as current) and a CSR.

use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::harness::{Appliance, Stack, assert_error, send};

/// Seconds the credential to rotate lives: check-in renews one with less than a third
/// of its lifetime left, and the issuer back-dates by 5 minutes (140 × 3 < 140 + 300).
/// Each test's steps with it take a few seconds.
const SHORT: u64 = 140;

/// The serial of a PEM certificate as the issuer reports it (lower-case hex of the DER
/// serial's bytes).
fn serial_of(a: &Appliance) -> String {
    let pem = a.certificate.as_deref().expect("a certificate");
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).expect("an X.509 certificate");
    hex::encode(cert.raw_serial())
}

/// `POST /check-in` with `a`'s credential and, when given, a CSR.
async fn check_in(s: &Stack, a: &Appliance, csr: Option<&str>) -> (StatusCode, Value) {
    let (st, v, _) = send(
        s.appliance(a)
            .post(s.url("/check-in"))
            .json(&json!({"appliance": {"version": "1.0.0"}, "csr": csr})),
    )
    .await;
    (st, v)
}

/// A new key for the appliance `a` (what a rotation's CSR is made from).
fn new_key(a: &Appliance) -> Appliance {
    let mut next = Appliance::new();
    next.appliance_id = a.appliance_id;
    next
}

/// `next` with the credential of a check-in's answer.
fn with_credential(mut next: Appliance, v: &Value) -> Appliance {
    next.certificate = Some(
        v["credential"]["certificate"]
            .as_str()
            .unwrap_or_else(|| panic!("a renewed credential in {v}"))
            .to_owned(),
    );
    next.chain = v["credential"]["chain"].as_str().map(str::to_owned);
    next
}

/// The appliance's credential columns: current serial, previous serial, previous until.
async fn slots(
    s: &Stack,
    a: &Appliance,
) -> (Option<String>, Option<String>, Option<OffsetDateTime>) {
    let row = s
        .admin
        .query_one(
            "SELECT credential_serial, previous_credential_serial, previous_credential_until \
             FROM appliances WHERE appliance_id = $1",
            &[&a.appliance_id.expect("redeemed")],
        )
        .await
        .expect("appliance row");
    (row.get(0), row.get(1), row.get(2))
}

/// How many failed check-ins of `tenant` were refused as `credential_superseded` with
/// the certificate `serial`.
async fn superseded_records(s: &Stack, tenant: Uuid, serial: &str) -> i64 {
    s.admin
        .query_one(
            "SELECT count(*) FROM audit_events WHERE tenant_id = $1 \
             AND action = 'appliance.check_in' \
             AND convert_from(record, 'UTF8')::jsonb->'outcome'->>'error_code' = 'credential_superseded' \
             AND convert_from(record, 'UTF8')::jsonb->'details'->>'presented_serial' = $2",
            &[&tenant, &serial],
        )
        .await
        .expect("count")
        .get(0)
}

/// A redeemed `pro` appliance whose recorded credential is near its end: `(tenant,
/// appliance with that credential)`.
async fn appliance_due_for_rotation(s: &Stack) -> (Uuid, Appliance) {
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    (tenant, s.short_credential(tenant, &a, SHORT).await)
}

/// Rotates `old`'s credential with a new key: the check-in's answer must carry one.
async fn rotate(s: &Stack, old: &Appliance) -> Appliance {
    let next = new_key(old);
    let (st, v) = check_in(s, old, Some(&next.csr_pem)).await;
    assert_eq!(st, 200, "{v}");
    with_credential(next, &v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replaced_credential_is_refused_once_the_new_one_was_used() {
    let s = Stack::start().await;
    let (tenant, old) = appliance_due_for_rotation(&s).await;
    let new = rotate(&s, &old).await;
    assert_eq!(
        slots(&s, &old).await.0.as_deref(),
        Some(serial_of(&new).as_str())
    );
    assert_eq!(
        slots(&s, &old).await.1.as_deref(),
        Some(serial_of(&old).as_str()),
        "the replaced credential is kept for the overlap"
    );

    // The new credential is used: the old one is done with.
    let (st, v) = check_in(&s, &new, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(slots(&s, &old).await.1, None);

    let licenses = s.count("SELECT count(*) FROM licenses").await;
    let (st, e) = check_in(&s, &old, None).await;
    assert_error(st, &e, 403, "credential_superseded");
    // Even with a CSR, near its end: nothing is signed, nothing recorded but the refusal.
    let (st, e) = check_in(&s, &old, Some(&new_key(&old).csr_pem)).await;
    assert_error(st, &e, 403, "credential_superseded");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, licenses);
    assert_eq!(
        slots(&s, &old).await,
        (Some(serial_of(&new)), None, None),
        "the refusal changed no credential"
    );
    assert_eq!(superseded_records(&s, tenant, &serial_of(&old)).await, 2);

    // The current one still works.
    let (st, v) = check_in(&s, &new, None).await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replaced_credential_works_until_the_overlap_ends_and_retries_never_extend_it() {
    let s = Stack::start().await;
    let (tenant, old) = appliance_due_for_rotation(&s).await;
    // The appliance crashes before saving the credential of this rotation…
    let lost = rotate(&s, &old).await;
    let (_, _, until) = slots(&s, &old).await;
    // The policy's 24 h overlap, cut to the old certificate's own end…
    assert!(
        until.expect("an overlap") - OffsetDateTime::now_utc()
            <= time::Duration::seconds(SHORT as i64)
    );
    // …and shortened here, so that an end a retry recomputed would show.
    let until: OffsetDateTime = s
        .admin
        .query_one(
            "UPDATE appliances SET previous_credential_until = now() + interval '100 seconds' \
             WHERE appliance_id = $1 RETURNING previous_credential_until",
            &[&old.appliance_id.expect("redeemed")],
        )
        .await
        .expect("shorten the overlap")
        .get(0);

    // …and checks in again with the old one: accepted, as often as it takes.
    let licenses = s.count("SELECT count(*) FROM licenses").await;
    let (st, v) = check_in(&s, &old, None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["license"]["token"].is_string(), "{v}");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, licenses + 1);
    // Its retried rotation: the new credential is current, the lost one is refused,
    // the old one keeps the end the first rotation gave it.
    let retried = rotate(&s, &old).await;
    assert_eq!(
        slots(&s, &old).await,
        (
            Some(serial_of(&retried)),
            Some(serial_of(&old)),
            Some(until)
        )
    );
    let (st, e) = check_in(&s, &lost, None).await;
    assert_error(st, &e, 403, "credential_superseded");
    let (st, v) = check_in(&s, &old, None).await;
    assert_eq!(st, 200, "still inside the overlap: {v}");

    // The overlap ends (aged in the database): the old one is refused, though the new
    // one was never used and the certificate itself is still valid.
    s.admin
        .execute(
            "UPDATE appliances SET previous_credential_until = now() - interval '1 second' \
             WHERE appliance_id = $1",
            &[&old.appliance_id.expect("redeemed")],
        )
        .await
        .expect("age the overlap");
    let licenses = s.count("SELECT count(*) FROM licenses").await;
    let (st, e) = check_in(&s, &old, Some(&new_key(&old).csr_pem)).await;
    assert_error(st, &e, 403, "credential_superseded");
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, licenses);
    assert_eq!(superseded_records(&s, tenant, &serial_of(&old)).await, 1);
    assert_eq!(superseded_records(&s, tenant, &serial_of(&lost)).await, 1);
    let (st, v) = check_in(&s, &retried, None).await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_is_not_the_appliances_credential_is_refused() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, first) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    // The redeem retry (same code, same key, within the window) issues another
    // credential for the same appliance: the only one accepted from then on.
    let (st, v) = s.redeem_as(&code, &first).await;
    assert_eq!(st, 200, "{v}");
    let retried = first.clone().with_response(&v);
    assert_eq!(retried.appliance_id, first.appliance_id);
    assert_ne!(serial_of(&retried), serial_of(&first));
    assert_eq!(
        slots(&s, &first).await,
        (Some(serial_of(&retried)), None, None)
    );
    // And one the issuer signed for this appliance that was never recorded at all.
    let (stray, _) = s.unrecorded_credential(tenant, &first, 3600).await;

    let licenses = s.count("SELECT count(*) FROM licenses").await;
    for a in [&first, &stray] {
        let (st, e) = check_in(&s, a, None).await;
        assert_error(st, &e, 403, "credential_superseded");
        assert_eq!(superseded_records(&s, tenant, &serial_of(a)).await, 1);
    }
    assert_eq!(s.count("SELECT count(*) FROM licenses").await, licenses);
    let (st, v) = check_in(&s, &retried, None).await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
}

/// A row without a recorded credential (none since the first schema for a paid
/// appliance; a hand-edited one) adopts the first certificate of the appliance that
/// checks in, and then holds it to the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appliance_without_a_recorded_credential_adopts_the_first_one_presented() {
    let s = Stack::start().await;
    let (tenant, _, code) = s.tenant_with_code("pro").await;
    let (st, v, a) = s.redeem(&code).await;
    assert_eq!(st, 200, "{v}");
    let (other, _) = s.unrecorded_credential(tenant, &a, 3600).await;
    s.admin
        .execute(
            "UPDATE appliances SET credential_serial = NULL, credential_expires_at = NULL \
             WHERE appliance_id = $1",
            &[&a.appliance_id.expect("redeemed")],
        )
        .await
        .expect("forget the credential");

    let (st, v) = check_in(&s, &a, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(slots(&s, &a).await, (Some(serial_of(&a)), None, None));
    assert!(
        s.stored_credential(a.appliance_id.expect("id"))
            .await
            .1
            .is_some()
    );
    let (st, e) = check_in(&s, &other, None).await;
    assert_error(st, &e, 403, "credential_superseded");
    s.stop().await;
}
