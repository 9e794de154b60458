//! The trust root against a real SoftHSM2 token: what `keys init` makes, what an
//! appliance can verify with nothing but the root, rotation of the license key and the
//! CA without touching the appliance's trust store, the completion of a token made
//! before the root existed, and re-endorsement after the policy grew.

use alga_issuer::Error;
use alga_issuer::hsm::admin::{self, KeysInitOutcome};
use alga_issuer::hsm::{Hsm, HsmError};
use alga_issuer::keyring::{KeyKind, KeyOps};
use alga_issuer::ops;
use alga_protocol::issuer_api::SignLicenseRequest;
use alga_protocol::trust::{LicenseExpectation, TrustRoots};
use cryptoki::object::ObjectClass;
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::hsm::{Setup, TestToken, isolated_in};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Signs a pro license with `hsm` and returns it with what it must name.
fn license(hsm: &Hsm, t: &TestToken, now: OffsetDateTime) -> (String, LicenseExpectation) {
    let req = SignLicenseRequest {
        tenant_id: Uuid::new_v4(),
        appliance_id: Uuid::new_v4(),
        edition: "pro".into(),
        lifetime_seconds: None,
    };
    let signed = rt()
        .block_on(ops::license::sign(hsm, &t.policy, &req, now))
        .expect("signs")
        .value;
    let expected = LicenseExpectation {
        tenant_id: req.tenant_id,
        appliance_id: req.appliance_id,
        edition: "pro".into(),
    };
    (signed.token.expose().to_owned(), expected)
}

fn trust_roots(t: &TestToken) -> TrustRoots {
    let pem = admin::keys_trust_root(&t.config, t.pin()).expect("trust root");
    TrustRoots::from_pem(pem.as_bytes()).expect("a usable trust root")
}

#[test]
fn the_root_certifies_the_ca_and_endorses_the_license_key() {
    isolated_in(
        "trust_root",
        "the_root_certifies_the_ca_and_endorses_the_license_key",
        Setup::Keys,
        |t| {
            let now = OffsetDateTime::now_utc();
            let roots = trust_roots(t);
            let hsm = t.open();
            let root_der = &hsm.root_certificates()[0].der;
            let (_, root) = X509Certificate::from_der(root_der).expect("x509");
            assert_eq!(
                root.subject().to_string(),
                "CN=alga-license root v1, O=alga-license"
            );
            let bc = root
                .basic_constraints()
                .expect("bc")
                .expect("present")
                .value;
            assert!(bc.ca && bc.path_len_constraint == Some(1), "{bc:?}");
            let years = (root.validity().not_after.timestamp()
                - root.validity().not_before.timestamp())
                / (365 * 86_400);
            assert_eq!(years, 20);

            // A license verifies with nothing but the root.
            let (token, expected) = license(&hsm, t, now);
            let claims = roots
                .verify_license(&token, &expected, now.unix_timestamp(), 300)
                .expect("verifies against the pinned root");
            assert_eq!(claims.iss, t.policy.license_issuer);

            // The CA as the root certified it: same subject and key as the gateway's
            // self-signed anchor.
            let ca = &hsm.ca_certificates()[0];
            let certified = ca.certified.as_ref().expect("certified");
            let (_, c) = X509Certificate::from_der(certified).expect("x509");
            let (_, s) = X509Certificate::from_der(&ca.der).expect("x509");
            assert_eq!(c.subject().as_raw(), s.subject().as_raw());
            assert_eq!(c.public_key().raw, s.public_key().raw);
            assert_eq!(c.issuer().as_raw(), root.subject().as_raw());
            assert!(c.validity().not_after.timestamp() <= root.validity().not_after.timestamp());

            // The serving issuer never signs with the root.
            let err = rt()
                .block_on(hsm.sign_digest(KeyKind::Root, 1, [1; 32]))
                .expect_err("the root signs in ceremonies only");
            assert!(
                matches!(err, Error::Hsm(HsmError::UnknownKey { .. })),
                "{err:?}"
            );
            let err = admin::keys_rotate(&t.config, t.pin(), KeyKind::Root, &t.policy, now)
                .expect_err("the root is not rotated");
            assert!(err.to_string().contains("not rotated"), "{err}");
        },
    );
}

#[test]
fn rotated_keys_verify_through_the_same_root() {
    isolated_in(
        "trust_root",
        "rotated_keys_verify_through_the_same_root",
        Setup::Keys,
        |t| {
            let now = OffsetDateTime::now_utc();
            let roots = trust_roots(t);
            let before = t.open();
            let (old, old_expected) = license(&before, t, now);
            drop(before);

            admin::keys_rotate(&t.config, t.pin(), KeyKind::License, &t.policy, now)
                .expect("rotate license");
            admin::keys_rotate(&t.config, t.pin(), KeyKind::ApplianceCa, &t.policy, now)
                .expect("rotate ca");
            // The appliance's trust store is what it was before the rotation.
            let hsm = t.open();
            assert_eq!(hsm.active_version(KeyKind::License), 2);
            let (new, new_expected) = license(&hsm, t, now);
            let at = now.unix_timestamp();
            roots
                .verify_license(&old, &old_expected, at, 300)
                .expect("a license of the old key still verifies");
            roots
                .verify_license(&new, &new_expected, at, 300)
                .expect("a license of the new key verifies through its endorsement");
            assert!(
                hsm.ca_certificates()[1].certified.is_some(),
                "the new CA is certified"
            );
            assert_eq!(
                admin::keys_trust_root(&t.config, t.pin()).expect("root"),
                roots.to_pem(),
                "rotation leaves the root alone"
            );
        },
    );
}

#[test]
fn a_token_from_before_the_root_is_completed_by_keys_init_if_missing() {
    isolated_in(
        "trust_root",
        "a_token_from_before_the_root_is_completed_by_keys_init_if_missing",
        Setup::Keys,
        |t| {
            // Make the token what an earlier version left: no root, nothing it signed,
            // and no log key (which came later still).
            let session = t.raw_session();
            for (class, label) in [
                (ObjectClass::PRIVATE_KEY, "alga-root-v1"),
                (ObjectClass::PUBLIC_KEY, "alga-root-v1"),
                (ObjectClass::CERTIFICATE, "alga-root-v1"),
                (ObjectClass::DATA, "alga-root-v1"),
                (ObjectClass::CERTIFICATE, "alga-ca-v1/alga-root-v1"),
                (ObjectClass::DATA, "alga-license-v1/alga-root-v1"),
                (ObjectClass::PRIVATE_KEY, "alga-log-v1"),
                (ObjectClass::PUBLIC_KEY, "alga-log-v1"),
                (ObjectClass::DATA, "alga-log-v1"),
            ] {
                let found = session
                    .find_objects(&[
                        cryptoki::object::Attribute::Class(class),
                        cryptoki::object::Attribute::Label(label.as_bytes().to_vec()),
                    ])
                    .expect("find");
                assert_eq!(found.len(), 1, "{class} {label}");
                session.destroy_object(found[0]).expect("destroy");
            }
            drop(session);

            let err = Hsm::open(&t.config, t.pin()).expect_err("an incomplete set is not served");
            assert!(matches!(err, HsmError::KeysIncomplete { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("root key")
                    && text.contains("log key")
                    && text.contains("run `alga-issuer keys init --if-missing`"),
                "{text}"
            );

            let outcome = admin::keys_init(
                &t.config,
                t.pin(),
                &t.policy,
                OffsetDateTime::now_utc(),
                true,
            )
            .expect("completes");
            let KeysInitOutcome::Completed { added, .. } = &outcome else {
                panic!("{outcome:?}");
            };
            assert_eq!(
                added,
                &[
                    "alga-root-v1 (with root certificate)",
                    "the root's certificate of alga-ca-v1",
                    "the root's endorsement of alga-license-v1",
                    "alga-log-v1",
                ]
            );
            let hsm = t.open();
            let (token, expected) = license(&hsm, t, OffsetDateTime::now_utc());
            trust_roots(t)
                .verify_license(
                    &token,
                    &expected,
                    OffsetDateTime::now_utc().unix_timestamp(),
                    300,
                )
                .expect("verifies after the completion");
            let again = admin::keys_init(
                &t.config,
                t.pin(),
                &t.policy,
                OffsetDateTime::now_utc(),
                true,
            )
            .expect("idempotent");
            assert!(
                matches!(again, KeysInitOutcome::AlreadyComplete { .. }),
                "{again:?}"
            );
        },
    );
}

#[test]
fn a_grown_policy_is_refused_until_the_key_is_endorsed_again() {
    isolated_in(
        "trust_root",
        "a_grown_policy_is_refused_until_the_key_is_endorsed_again",
        Setup::Keys,
        |t| {
            let now = OffsetDateTime::now_utc();
            let hsm = t.open();
            let (old, old_expected) = license(&hsm, t, now);
            alga_issuer::endorse::check_policy_covered(&hsm, &t.policy).expect("covered");

            let mut grown = t.policy.clone();
            grown.editions.get_mut("pro").expect("pro").seats += 1;
            let err = alga_issuer::endorse::check_policy_covered(&hsm, &grown)
                .expect_err("more seats than endorsed");
            assert!(
                err.contains("keys certify") && err.contains("seats"),
                "{err}"
            );
            drop(hsm);

            let e = admin::keys_certify(&t.config, t.pin(), &grown, now).expect("certify");
            assert_eq!(e.editions["pro"].seats, t.policy.editions["pro"].seats + 1);
            let hsm = t.open();
            alga_issuer::endorse::check_policy_covered(&hsm, &grown).expect("covered now");
            // Licenses signed before keep the endorsement they carry.
            let roots = trust_roots(t);
            roots
                .verify_license(&old, &old_expected, now.unix_timestamp(), 300)
                .expect("the earlier license still verifies");
            // A license beyond the old endorsement would not have verified: the new
            // one, with the new seat count, does.
            let req = SignLicenseRequest {
                tenant_id: Uuid::new_v4(),
                appliance_id: Uuid::new_v4(),
                edition: "pro".into(),
                lifetime_seconds: None,
            };
            let signed = rt()
                .block_on(ops::license::sign(&hsm, &grown, &req, now))
                .expect("signs");
            let expected = LicenseExpectation {
                tenant_id: req.tenant_id,
                appliance_id: req.appliance_id,
                edition: "pro".into(),
            };
            let claims = roots
                .verify_license(
                    signed.value.token.expose(),
                    &expected,
                    now.unix_timestamp(),
                    300,
                )
                .expect("verifies");
            assert_eq!(claims.entitlements.seats, grown.editions["pro"].seats);
        },
    );
}
