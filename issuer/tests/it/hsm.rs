//! The HSM module against a real SoftHSM2: keys, protection, signatures, the CA
//! certificate, rotation, session recovery, errors and the `alga-issuer` CLI.
//!
//! Isolation: SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, which happens
//! once per process; and this crate forbids `unsafe`, so a test cannot set the
//! variable for itself (`std::env::set_var` is unsafe in edition 2024). So every test
//! here runs its body in a child process: the parent makes a throwaway sandbox (a
//! tempdir with its own `softhsm2.conf` and token directory, random PINs in 0600
//! files, a random token label), then re-runs this very test binary filtered to the
//! one test, with `SOFTHSM2_CONF` pointing into the sandbox. The child initializes the
//! token through `admin::token_init` (and usually `admin::keys_init`), then runs the
//! body. CLI tests run the real binary against a sandbox in the same way. Other
//! test modules of this binary can use the same harness: [`isolated_in`].
//!
//! Environment: `ALGA_HSM_MODULE` names the PKCS#11 module (default
//! `/usr/lib/softhsm/libsofthsm2.so` if it exists); `pkcs11-tool` (opensc) and
//! `openssl` must be on PATH. Missing pieces fail the tests loudly.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use alga_issuer::Error;
use alga_issuer::config::HsmConfig;
use alga_issuer::hsm::admin::{self, KeysInitOutcome, TokenInitOutcome};
use alga_issuer::hsm::{CaSigner, Hsm, HsmError};
use alga_issuer::keyring::{KeyAlgorithm, KeyKind, KeyOps};
use alga_policies::Policy;
use alga_protocol::issuer_api::IssuerErrorCode;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Set in a child process to the name of the one test it runs.
const CHILD_ENV: &str = "ALGA_IT_HSM_CHILD";
/// Set in a child process to its sandbox directory.
const SANDBOX_ENV: &str = "ALGA_IT_HSM_SANDBOX";
const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[test]
fn keys_init_creates_six_sensitive_never_extractable_keys() {
    isolated(
        "keys_init_creates_six_sensitive_never_extractable_keys",
        Setup::Keys,
        |t| {
            let keys = admin::keys_list(&t.config, t.pin()).expect("keys list");
            let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
            assert_eq!(
                kids,
                [
                    "alga-root-v1",
                    "alga-license-v1",
                    "alga-ca-v1",
                    "alga-code-v1",
                    "alga-audit-v1",
                    "alga-log-v1"
                ]
            );
            for key in &keys {
                assert_eq!(key.version, 1);
                assert!(
                    key.fingerprint.as_deref().is_some_and(|f| f.len() == 64),
                    "{key:?}"
                );
                assert_eq!(
                    key.public_key_spki.is_some(),
                    key.kind.is_key_pair(),
                    "{key:?}"
                );
                assert!(
                    (OffsetDateTime::now_utc() - key.created)
                        .whole_minutes()
                        .abs()
                        < 10,
                    "{key:?}"
                );
            }

            // Checked independently of the module under test, with plain cryptoki.
            let session = t.raw_session();
            for key in &keys {
                let (class, key_type) = match key.kind.algorithm() {
                    KeyAlgorithm::EcP256 => (ObjectClass::PRIVATE_KEY, KeyType::EC),
                    KeyAlgorithm::Ed25519 => (ObjectClass::PRIVATE_KEY, KeyType::EC_EDWARDS),
                    KeyAlgorithm::HmacSha256 => (ObjectClass::SECRET_KEY, KeyType::GENERIC_SECRET),
                };
                let handle = find_one(&session, class, &key.kid);
                let attrs = session
                    .get_attributes(
                        handle,
                        &[
                            AttributeType::KeyType,
                            AttributeType::Token,
                            AttributeType::Private,
                            AttributeType::Sensitive,
                            AttributeType::AlwaysSensitive,
                            AttributeType::Extractable,
                            AttributeType::NeverExtractable,
                            AttributeType::Sign,
                            AttributeType::Decrypt,
                            AttributeType::Unwrap,
                            AttributeType::Derive,
                        ],
                    )
                    .expect("attributes");
                for want in [
                    Attribute::KeyType(key_type),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::AlwaysSensitive(true),
                    Attribute::Extractable(false),
                    Attribute::NeverExtractable(true),
                    Attribute::Sign(true),
                    Attribute::Decrypt(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ] {
                    assert!(
                        attrs.contains(&want),
                        "{}: want {want:?} in {attrs:?}",
                        key.kid
                    );
                }

                // The key value cannot be read: SoftHSM answers with an empty value (or an
                // error); either way nothing usable comes out.
                match session.get_attributes(handle, &[AttributeType::Value]) {
                    Err(_) => {}
                    Ok(attrs) => {
                        for a in attrs {
                            if let Attribute::Value(v) = a {
                                assert!(
                                    v.is_empty(),
                                    "{}: CKA_VALUE readable ({} bytes)",
                                    key.kid,
                                    v.len()
                                );
                            }
                        }
                    }
                }

                if key.kind.is_key_pair() {
                    let public = find_one(&session, ObjectClass::PUBLIC_KEY, &key.kid);
                    let attrs = session
                        .get_attributes(public, &[AttributeType::Token, AttributeType::EcParams])
                        .expect("public attributes");
                    assert!(attrs.contains(&Attribute::Token(true)), "{}", key.kid);
                    let (params, curve) = match key.kind.algorithm() {
                        KeyAlgorithm::Ed25519 => (vec![0x06, 0x03, 0x2b, 0x65, 0x70], "Ed25519"),
                        _ => (
                            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                            "P-256",
                        ),
                    };
                    assert!(
                        attrs.contains(&Attribute::EcParams(params)),
                        "{}: not {curve}",
                        key.kid
                    );
                }
            }
        },
    );
}

#[test]
fn pkcs11_tool_sees_the_keys_as_sensitive_and_never_extractable() {
    isolated(
        "pkcs11_tool_sees_the_keys_as_sensitive_and_never_extractable",
        Setup::Keys,
        |t| {
            // The PIN goes through the environment (`--pin env:NAME`), never argv.
            let out = Command::new("pkcs11-tool")
                .arg("--module")
                .arg(&t.config.module)
                .args([
                    "--token-label",
                    &t.config.token_label,
                    "--login",
                    "--pin",
                    "env:ALGA_IT_PKCS11_PIN",
                ])
                .arg("--list-objects")
                .env("ALGA_IT_PKCS11_PIN", t.pin().expose_secret())
                .output()
                .expect("pkcs11-tool must be installed (Debian package opensc)");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "pkcs11-tool failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );

            let objects = parse_pkcs11_tool_objects(&stdout);
            let mut seen = Vec::new();
            for object in objects.iter().filter(|o| o.label.starts_with("alga-")) {
                if !(object.kind.starts_with("Private Key Object")
                    || object.kind.starts_with("Secret Key Object"))
                {
                    continue;
                }
                seen.push(object.label.clone());
                let access: Vec<&str> = object.access.split(", ").map(str::trim).collect();
                assert!(access.contains(&"sensitive"), "{object:?}");
                assert!(access.contains(&"always sensitive"), "{object:?}");
                assert!(access.contains(&"never extractable"), "{object:?}");
                assert!(!access.contains(&"extractable"), "{object:?}");
                let usage: Vec<&str> = object.usage.split(", ").map(str::trim).collect();
                // pkcs11-tool 0.23 does not print CKA_SIGN for secret keys; the in-process
                // test reads it. Here: nothing beyond signing and verifying.
                if object.kind.starts_with("Private Key Object") {
                    assert_eq!(usage, ["sign"], "{object:?}");
                } else {
                    assert!(
                        usage.iter().all(|u| ["sign", "verify"].contains(u)),
                        "{object:?}"
                    );
                }
                for forbidden in ["decrypt", "unwrap", "derive", "encrypt", "wrap"] {
                    assert!(!usage.contains(&forbidden), "{object:?}");
                }
            }
            seen.sort();
            assert_eq!(
                seen,
                [
                    "alga-audit-v1",
                    "alga-ca-v1",
                    "alga-code-v1",
                    "alga-license-v1",
                    "alga-log-v1",
                    "alga-root-v1"
                ],
                "{stdout}"
            );
        },
    );
}

#[test]
fn signatures_verify_with_the_published_key_and_macs_are_deterministic() {
    isolated(
        "signatures_verify_with_the_published_key_and_macs_are_deterministic",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = runtime();
            for kind in [KeyKind::License, KeyKind::ApplianceCa, KeyKind::Audit] {
                let version = hsm.active_version(kind);
                assert_eq!(version, 1);
                let spki = hsm.keys(kind)[0]
                    .public_key_spki
                    .clone()
                    .expect("EC keys have an SPKI");
                let verifying =
                    p256::ecdsa::VerifyingKey::from_public_key_der(&spki).expect("P-256 SPKI");
                let message = format!("a {kind} message");
                let digest: [u8; 32] = Sha256::digest(message.as_bytes()).into();
                let raw = rt
                    .block_on(hsm.sign_digest(kind, version, digest))
                    .expect("sign");
                let signature = p256::ecdsa::Signature::from_slice(&raw).expect("r||s");
                verifying
                    .verify(message.as_bytes(), &signature)
                    .expect("signature verifies");
                assert!(verifying.verify(b"another message", &signature).is_err());

                let raw = hsm
                    .sign_digest_blocking(kind, version, digest)
                    .expect("blocking sign");
                let signature = p256::ecdsa::Signature::from_slice(&raw).expect("r||s");
                verifying
                    .verify(message.as_bytes(), &signature)
                    .expect("blocking signature verifies");
            }

            let a = rt
                .block_on(hsm.hmac_sha256(1, b"binding one".to_vec()))
                .expect("hmac");
            let b = rt
                .block_on(hsm.hmac_sha256(1, b"binding one".to_vec()))
                .expect("hmac");
            let c = rt
                .block_on(hsm.hmac_sha256(1, b"binding two".to_vec()))
                .expect("hmac");
            assert_eq!(a.len(), 32);
            assert_eq!(a, b, "HMAC is deterministic");
            assert_ne!(a, c);

            // Asking for what is not there, or for the wrong kind of key, is UnknownKey.
            let digest = [7u8; 32];
            assert!(matches!(
                rt.block_on(hsm.sign_digest(KeyKind::License, 9, digest)),
                Err(Error::Hsm(HsmError::UnknownKey {
                    kind: KeyKind::License,
                    version: 9
                }))
            ));
            assert!(matches!(
                rt.block_on(hsm.sign_digest(KeyKind::Code, 1, digest)),
                Err(Error::Hsm(HsmError::UnknownKey {
                    kind: KeyKind::Code,
                    version: 1
                }))
            ));
            assert!(matches!(
                rt.block_on(hsm.hmac_sha256(2, vec![])),
                Err(Error::Hsm(HsmError::UnknownKey {
                    kind: KeyKind::Code,
                    version: 2
                }))
            ));
        },
    );
}

#[test]
fn ca_certificate_is_a_self_signed_ca_and_signs_appliance_certificates() {
    isolated(
        "ca_certificate_is_a_self_signed_ca_and_signs_appliance_certificates",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let certs = hsm.ca_certificates();
            assert_eq!(certs.len(), 1);
            assert_eq!(certs[0].version, 1);
            let der = &certs[0].der;
            let (_, cert) = X509Certificate::from_der(der).expect("parses");
            cert.verify_signature(None)
                .expect("self-signature verifies");
            let bc = cert
                .basic_constraints()
                .expect("one extension")
                .expect("present");
            assert!(bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, Some(0));
            let ku = cert
                .key_usage()
                .expect("one extension")
                .expect("present")
                .value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            assert!(!ku.digital_signature());
            let subject = cert.subject().to_string();
            assert!(
                subject.contains("CN=alga-license appliance CA v1"),
                "{subject}"
            );
            assert!(subject.contains("O=alga-license"), "{subject}");
            assert_eq!(cert.subject(), cert.issuer());
            let spki = hsm.keys(KeyKind::ApplianceCa)[0]
                .public_key_spki
                .clone()
                .expect("spki");
            assert_eq!(cert.public_key().raw, spki.as_slice());
            let serial = cert.raw_serial();
            assert_eq!(serial.len(), 16, "128-bit serial");
            assert!(serial[0] & 0x80 == 0, "positive serial");
            let lifetime =
                cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
            assert!(
                (3650 * 86400..=3653 * 86400).contains(&lifetime),
                "{lifetime}"
            );

            let text = openssl_text(der);
            assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
            assert!(text.contains("ecdsa-with-SHA256"), "{text}");

            // Another engineer's path: an appliance certificate signed through rcgen with
            // the HSM-backed CA signer, on a blocking thread.
            let rt = runtime();
            let leaf_der = rt
                .block_on(rt.spawn_blocking({
                    let hsm = hsm.clone();
                    move || {
                        let issuer = CaSigner::active(hsm)
                            .expect("signer")
                            .issuer()
                            .expect("issuer");
                        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
                        let mut params = rcgen::CertificateParams::default();
                        params
                            .distinguished_name
                            .push(rcgen::DnType::CommonName, "appliance");
                        params.subject_alt_names = vec![rcgen::SanType::URI(
                            "spiffe://alga.test/tenant/t/appliance/a"
                                .try_into()
                                .expect("ia5"),
                        )];
                        params.use_authority_key_identifier_extension = true;
                        params
                            .signed_by(&leaf_key, &issuer)
                            .expect("signed by the HSM CA")
                            .der()
                            .to_vec()
                    }
                }))
                .expect("blocking task");
            let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
            leaf.verify_signature(Some(cert.public_key()))
                .expect("leaf verifies under the CA key");
            assert_eq!(leaf.issuer(), cert.subject());
        },
    );
}

#[test]
fn rotation_adds_a_version_and_keeps_the_old_one() {
    isolated(
        "rotation_adds_a_version_and_keeps_the_old_one",
        Setup::Keys,
        |t| {
            let before = t.open();
            let rt = runtime();
            let mac_v1 = rt
                .block_on(before.hmac_sha256(1, b"same input".to_vec()))
                .expect("hmac v1");

            let license =
                admin::keys_rotate(&t.config, t.pin(), KeyKind::License, &t.policy, now())
                    .expect("rotate license");
            assert_eq!(license.kid, "alga-license-v2");
            let ca = admin::keys_rotate(&t.config, t.pin(), KeyKind::ApplianceCa, &t.policy, now())
                .expect("rotate ca");
            assert_eq!(ca.kid, "alga-ca-v2");
            let code = admin::keys_rotate(&t.config, t.pin(), KeyKind::Code, &t.policy, now())
                .expect("rotate code");
            assert_eq!(code.kid, "alga-code-v2");

            let kids: Vec<String> = admin::keys_list(&t.config, t.pin())
                .expect("list")
                .into_iter()
                .map(|k| k.kid)
                .collect();
            assert_eq!(
                kids,
                [
                    "alga-root-v1",
                    "alga-license-v1",
                    "alga-license-v2",
                    "alga-ca-v1",
                    "alga-ca-v2",
                    "alga-code-v1",
                    "alga-code-v2",
                    "alga-audit-v1",
                    "alga-log-v1"
                ]
            );

            // The running pool keeps serving what it opened with; a reopen sees v2.
            assert_eq!(before.active_version(KeyKind::License), 1);
            drop(before);
            let hsm = t.open();
            assert_eq!(hsm.active_version(KeyKind::License), 2);
            assert_eq!(hsm.active_version(KeyKind::ApplianceCa), 2);
            assert_eq!(hsm.active_version(KeyKind::Audit), 1);
            assert_eq!(hsm.keys(KeyKind::License).len(), 2);
            assert_ne!(
                hsm.keys(KeyKind::License)[0].fingerprint,
                hsm.keys(KeyKind::License)[1].fingerprint
            );
            assert_eq!(hsm.keys(KeyKind::License)[1], license);

            let certs = hsm.ca_certificates();
            assert_eq!(certs.iter().map(|c| c.version).collect::<Vec<_>>(), [1, 2]);
            let (_, cert) = X509Certificate::from_der(&certs[1].der).expect("parses");
            assert!(cert.subject().to_string().contains("appliance CA v2"));
            assert_eq!(Some(cert.public_key().raw.to_vec()), ca.public_key_spki);

            for version in [1, 2] {
                let digest = [version as u8; 32];
                let raw = rt
                    .block_on(hsm.sign_digest(KeyKind::License, version, digest))
                    .expect("sign");
                let spki = hsm.keys(KeyKind::License)[version as usize - 1]
                    .public_key_spki
                    .clone()
                    .expect("spki");
                let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).expect("spki");
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                vk.verify_prehash(
                    &digest,
                    &p256::ecdsa::Signature::from_slice(&raw).expect("r||s"),
                )
                .expect("old and new versions both sign");
            }
            let mac_v1_again = rt
                .block_on(hsm.hmac_sha256(1, b"same input".to_vec()))
                .expect("hmac v1");
            let mac_v2 = rt
                .block_on(hsm.hmac_sha256(2, b"same input".to_vec()))
                .expect("hmac v2");
            assert_eq!(mac_v1, mac_v1_again);
            assert_ne!(mac_v1, mac_v2, "code key versions differ");
        },
    );
}

#[test]
fn workers_recover_when_their_sessions_are_pulled_away() {
    isolated(
        "workers_recover_when_their_sessions_are_pulled_away",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = runtime();
            let sign_many = |n: usize| {
                rt.block_on(async {
                    let jobs: Vec<_> = (0..n)
                        .map(|i| {
                            let hsm = hsm.clone();
                            tokio::spawn(async move {
                                let license =
                                    hsm.sign_digest(KeyKind::License, 1, [i as u8; 32]).await?;
                                let mac = hsm.hmac_sha256(1, vec![i as u8]).await?;
                                Ok::<_, Error>((license, mac))
                            })
                        })
                        .collect();
                    for job in jobs {
                        job.await.expect("task").expect("HSM work succeeds");
                    }
                })
            };
            sign_many(8);
            assert_eq!(hsm.session_recoveries(), 0);

            hsm.invalidate_sessions_for_test().expect("test hook");
            sign_many(16);
            assert!(
                hsm.session_recoveries() >= 1,
                "the workers noticed and recovered"
            );

            // And again: recovery is not a one-off.
            hsm.invalidate_sessions_for_test().expect("test hook");
            let recovered = hsm.session_recoveries();
            sign_many(16);
            assert!(hsm.session_recoveries() > recovered);
        },
    );
}

#[test]
fn wrong_pin_and_unknown_token_are_reported_as_such() {
    isolated(
        "wrong_pin_and_unknown_token_are_reported_as_such",
        Setup::Keys,
        |t| {
            let err =
                Hsm::open(&t.config, SecretString::from("not-the-pin")).expect_err("wrong PIN");
            assert!(matches!(err, HsmError::PinIncorrect), "{err:?}");
            // Nested as it is, and "HSM unavailable" to a client.
            let err = Error::from(err);
            assert!(matches!(err, Error::Hsm(HsmError::PinIncorrect)), "{err:?}");
            assert_eq!(err.code(), IssuerErrorCode::HsmUnavailable);

            let mut other = t.config.clone();
            other.token_label = "alga-no-such-token".into();
            let err = Hsm::open(&other, t.pin()).expect_err("unknown token");
            assert!(
                matches!(&err, HsmError::TokenNotFound { label } if label == "alga-no-such-token"),
                "{err:?}"
            );
            let err = admin::keys_list(&other, t.pin()).expect_err("unknown token");
            assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err:?}");

            let mut bad_module = t.config.clone();
            bad_module.module = t.dir.join("no-such-module.so");
            let err = Hsm::open(&bad_module, t.pin()).expect_err("missing module");
            assert!(matches!(err, HsmError::ModuleLoad { .. }), "{err:?}");

            let mut no_workers = t.config.clone();
            no_workers.workers = 0;
            assert!(matches!(
                Hsm::open(&no_workers, t.pin()),
                Err(HsmError::Config { .. })
            ));

            // And the right PIN still works after a refusal.
            t.open();
        },
    );
}

#[test]
fn keys_init_is_refused_twice_unless_if_missing_and_the_set_is_complete() {
    isolated(
        "keys_init_is_refused_twice_unless_if_missing_and_the_set_is_complete",
        Setup::Keys,
        |t| {
            let err = admin::keys_init(&t.config, t.pin(), &t.policy, now(), false)
                .expect_err("second init");
            assert!(
                matches!(err, HsmError::AlreadyInitialized { .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("already initialized"), "{err}");

            let outcome =
                admin::keys_init(&t.config, t.pin(), &t.policy, now(), true).expect("if-missing");
            assert!(matches!(outcome, KeysInitOutcome::AlreadyComplete { .. }));
            assert!(
                outcome.to_string().contains("keys already initialized"),
                "{outcome}"
            );

            // Remove the audit key behind the tool's back: a partial set.
            let session = t.raw_session();
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let handle = find_one(&session, class, "alga-audit-v1");
                session.destroy_object(handle).expect("destroy");
            }
            drop(session);
            let err = admin::keys_init(&t.config, t.pin(), &t.policy, now(), true)
                .expect_err("partial set");
            assert!(
                matches!(&err, HsmError::PartialKeySet { missing, .. } if missing.contains("audit key")),
                "{err:?}"
            );
            let err = Hsm::open(&t.config, t.pin()).expect_err("serving never creates keys");
            assert!(matches!(err, HsmError::KeysMissing { .. }), "{err:?}");
            assert!(
                err.to_string().contains("run `alga-issuer keys init`"),
                "{err}"
            );
            let err = admin::keys_rotate(&t.config, t.pin(), KeyKind::Audit, &t.policy, now())
                .expect_err("rotate");
            assert!(matches!(err, HsmError::KeysMissing { .. }), "{err:?}");
        },
    );
}

#[test]
fn open_refuses_a_token_without_keys() {
    isolated("open_refuses_a_token_without_keys", Setup::TokenOnly, |t| {
        let err = Hsm::open(&t.config, t.pin()).expect_err("no keys");
        assert!(matches!(err, HsmError::KeysMissing { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("no keys on token {:?}", t.config.token_label)),
            "{text}"
        );
        assert!(text.contains("run `alga-issuer keys init`"), "{text}");
        assert!(
            admin::keys_list(&t.config, t.pin())
                .expect("list")
                .is_empty()
        );

        let again = admin::token_init(&t.config, t.so_pin(), t.pin()).expect("idempotent");
        assert_eq!(
            again.to_string(),
            format!("token {} already initialized", t.config.token_label)
        );
    });
}

#[test]
fn cli_initializes_lists_and_rotates_keys() {
    // The real binary, run the way an operator does: config file, PIN files.
    let sandbox = Sandbox::new();
    let config = sandbox.write_issuer_config();
    let run = |args: &[&str]| -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_alga-issuer"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("SOFTHSM2_CONF", sandbox.conf())
            .env("ALGA_LOG", "debug")
            .env_remove("ALGA_HSM_PIN")
            .env_remove("ALGA_HSM_SO_PIN")
            .env_remove("ALGA_ISSUER_CONFIG")
            .output()
            .expect("run alga-issuer");
        // Secrets never reach the output, whatever the log level.
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        let all = String::from_utf8_lossy(&all);
        for secret in [sandbox.user_pin(), sandbox.so_pin()] {
            assert!(
                !all.contains(&secret),
                "a PIN appeared in the output of {args:?}"
            );
        }
        out
    };
    let ok = |args: &[&str]| -> String {
        let out = run(args);
        assert!(
            out.status.success(),
            "alga-issuer {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let so_pin_file = sandbox.dir().join("so.pin");
    let so_pin_file = so_pin_file.to_str().expect("utf-8 path");
    let label = sandbox.label();

    let out = ok(&["token", "init", "--so-pin-file", so_pin_file]);
    assert_eq!(out.trim(), format!("token {label} initialized"));
    let out = ok(&["token", "init", "--so-pin-file", so_pin_file]);
    assert_eq!(out.trim(), format!("token {label} already initialized"));

    let out = ok(&["keys", "init"]);
    for kid in [
        "alga-license-v1",
        "alga-ca-v1",
        "alga-code-v1",
        "alga-audit-v1",
        "alga-log-v1",
    ] {
        assert!(out.contains(kid), "{out}");
    }
    let out = run(&["keys", "init"]);
    assert!(!out.status.success(), "a second keys init must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialized"));
    let out = ok(&["keys", "init", "--if-missing"]);
    assert!(out.contains("keys already initialized"), "{out}");

    let out = ok(&["keys", "rotate", "license"]);
    assert!(out.contains("alga-license-v2"), "{out}");
    let out = ok(&["keys", "rotate", "log"]);
    assert!(out.contains("created alga-log-v2 (log)"), "{out}");
    let out = run(&["keys", "rotate", "nonsense"]);
    assert!(!out.status.success());

    let list: serde_json::Value =
        serde_json::from_str(&ok(&["keys", "list", "--json"])).expect("JSON list");
    let rows = list.as_array().expect("array");
    let kids: Vec<&str> = rows
        .iter()
        .map(|r| r["kid"].as_str().expect("kid"))
        .collect();
    assert_eq!(
        kids,
        [
            "alga-root-v1",
            "alga-license-v1",
            "alga-license-v2",
            "alga-ca-v1",
            "alga-code-v1",
            "alga-audit-v1",
            "alga-log-v1",
            "alga-log-v2"
        ]
    );
    assert_eq!(rows[0]["kind"], "root");
    assert_eq!(rows[6]["kind"], "log");
    assert_eq!(rows[6]["type"], "ed25519");
    assert_eq!(rows[6]["active"], false);
    assert_eq!(rows[7]["active"], true);
    // The published form of an Ed25519 key: its RFC 8410 SubjectPublicKeyInfo.
    assert!(
        rows[7]["public_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("MCowBQYDK2VwAyEA")),
        "{}",
        rows[7]
    );
    assert_eq!(rows[1]["active"], false);
    assert_eq!(rows[2]["active"], true);
    assert_eq!(rows[4]["type"], "hmac-sha256");
    // The file appliances pin, and a re-endorsement of the active license key.
    let root = ok(&["keys", "trust-root"]);
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    let out_file = sandbox.dir().join("trust-root.pem");
    ok(&[
        "keys",
        "trust-root",
        "--out",
        out_file.to_str().expect("utf-8"),
    ]);
    assert_eq!(read(&out_file).trim_end(), root.trim_end());
    let certified = ok(&["keys", "certify"]);
    assert!(
        certified.contains("endorsed alga-license-v2"),
        "{certified}"
    );
    let out = run(&["keys", "rotate", "root"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not rotated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        rows.iter()
            .all(|r| r["fingerprint"].as_str().is_some_and(|f| f.len() == 64))
    );
    assert!(rows.iter().all(|r| {
        OffsetDateTime::parse(
            r["created"].as_str().expect("created"),
            &time::format_description::well_known::Rfc3339,
        )
        .is_ok()
    }));

    let table = ok(&["keys", "list"]);
    assert_eq!(table.lines().count(), 9, "{table}");
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("KID")),
        "{table}"
    );
    assert!(table.contains("alga-license-v2"), "{table}");
}

// ---------------------------------------------------------------------------------
// Harness: sandboxes and child processes
// ---------------------------------------------------------------------------------

/// What the child sets up on its fresh token before the body runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Setup {
    /// An initialized token with its user PIN, no keys.
    TokenOnly,
    /// And the complete v1 key set (through `admin::keys_init`).
    Keys,
}

/// Runs `body` in a child process with its own SoftHSM token directory.
fn isolated(name: &str, setup: Setup, body: impl FnOnce(&TestToken)) {
    isolated_in(module_path!(), name, setup, body)
}

/// [`isolated`] for a test defined in another module of this binary: pass the
/// caller's `module_path!()` and the test function's name.
pub(crate) fn isolated_in(module: &str, name: &str, setup: Setup, body: impl FnOnce(&TestToken)) {
    // "it::hsm" → "hsm": test names do not include the crate.
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    let test = format!("{module}::{name}");
    if let Ok(child) = std::env::var(CHILD_ENV) {
        assert_eq!(child, test, "a child process runs only its own test");
        let token = TestToken::set_up(setup);
        body(&token);
        return;
    }
    let sandbox = Sandbox::new();
    let out = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            test.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SOFTHSM2_CONF", sandbox.conf())
        .env(SANDBOX_ENV, sandbox.dir())
        .env(CHILD_ENV, &test)
        .env_remove("ALGA_HSM_PIN")
        .stdin(Stdio::null())
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child process for {test} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The child's figures (lines starting "finding "), for `--nocapture` runs.
    for line in stdout.lines() {
        if let Some(at) = line.find("finding ") {
            println!("{}", &line[at..]);
        }
    }
}

/// A throwaway SoftHSM world: tempdir, `softhsm2.conf`, token directory, PIN files,
/// token label. Deleted when dropped (in the parent).
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("alga-hsm-it-")
            .tempdir()
            .expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        write_secret(&dir.path().join("so.pin"), &random_hex(12));
        write_secret(&dir.path().join("user.pin"), &random_hex(12));
        std::fs::write(
            dir.path().join("label"),
            format!("alga-it-{}", random_hex(4)),
        )
        .expect("label");
        Sandbox { dir }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn conf(&self) -> PathBuf {
        self.dir().join("softhsm2.conf")
    }

    fn label(&self) -> String {
        read(&self.dir().join("label"))
    }

    fn user_pin(&self) -> String {
        read(&self.dir().join("user.pin"))
    }

    fn so_pin(&self) -> String {
        read(&self.dir().join("so.pin"))
    }

    /// An `issuer.toml` for the CLI (paths the key commands do not read are dummies).
    fn write_issuer_config(&self) -> PathBuf {
        let d = self.dir();
        let text = format!(
            r#"
[listen]
address = "127.0.0.1:0"

[tls]
certificate = "{d}/unused-cert.pem"
private_key = "{d}/unused-key.pem"
client_ca = "{d}/unused-ca.pem"

[hsm]
module = "{module}"
token_label = "{label}"
pin_file = "{d}/user.pin"
workers = 2

[policy]
path = "{policy}"

[log]
directory = "{d}/log"

[audit_log]
origin = "alga-license.test/audit-log"
"#,
            d = d.display(),
            module = module_path().display(),
            label = self.label(),
            policy = policy_path().display(),
        );
        let path = d.join("issuer.toml");
        std::fs::write(&path, text).expect("issuer.toml");
        path
    }
}

/// The child's view: its token, configuration and PINs.
pub(crate) struct TestToken {
    pub(crate) dir: PathBuf,
    /// `workers = 2`, the PIN in `user.pin` of the sandbox.
    pub(crate) config: HsmConfig,
    /// `config/policy.sample.toml`.
    pub(crate) policy: Policy,
}

impl TestToken {
    fn set_up(setup: Setup) -> TestToken {
        let dir = PathBuf::from(std::env::var(SANDBOX_ENV).expect("child without a sandbox"));
        let config = HsmConfig {
            module: module_path(),
            token_label: read(&dir.join("label")),
            pin_file: Some(dir.join("user.pin")),
            workers: 2,
        };
        let policy = Policy::load(&policy_path()).expect("sample policy loads");
        let token = TestToken {
            dir,
            config,
            policy,
        };
        let outcome =
            admin::token_init(&token.config, token.so_pin(), token.pin()).expect("token init");
        assert!(
            matches!(outcome, TokenInitOutcome::Initialized { .. }),
            "{outcome:?}"
        );
        if let Setup::Keys = setup {
            let outcome = admin::keys_init(&token.config, token.pin(), &token.policy, now(), false)
                .expect("keys init");
            assert!(
                matches!(&outcome, KeysInitOutcome::Created { keys, .. } if keys.len() == 6),
                "{outcome:?}"
            );
        }
        token
    }

    pub(crate) fn pin(&self) -> SecretString {
        self.config.pin().expect("user PIN file")
    }

    fn so_pin(&self) -> SecretString {
        SecretString::from(read(&self.dir.join("so.pin")))
    }

    pub(crate) fn open(&self) -> Hsm {
        Hsm::open(&self.config, self.pin()).expect("Hsm::open")
    }

    /// A logged-in session through plain cryptoki, independent of the module under test.
    pub(crate) fn raw_session(&self) -> Session {
        let pkcs11 = Pkcs11::new(&self.config.module).expect("load module");
        if let Err(e) = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            assert!(
                matches!(
                    e,
                    cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::CryptokiAlreadyInitialized,
                        _
                    )
                ),
                "{e}"
            );
        }
        let slot = pkcs11
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label() == self.config.token_label)
            })
            .expect("token present");
        let session = pkcs11.open_rw_session(slot).expect("session");
        match session.login(UserType::User, Some(&self.pin())) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => panic!("login: {e}"),
        }
        session
    }
}

fn find_one(session: &Session, class: ObjectClass, label: &str) -> cryptoki::object::ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find");
    assert_eq!(found.len(), 1, "exactly one {class} labelled {label}");
    found[0]
}

/// One object of `pkcs11-tool --list-objects`.
#[derive(Debug, Default)]
struct ListedObject {
    kind: String,
    label: String,
    usage: String,
    access: String,
}

fn parse_pkcs11_tool_objects(text: &str) -> Vec<ListedObject> {
    let mut objects: Vec<ListedObject> = Vec::new();
    for line in text.lines() {
        // Every object starts with an unindented line ("Private Key Object; EC",
        // "Data object 4", ...); its attributes follow, indented.
        if !line.is_empty() && !line.starts_with(' ') && !line.starts_with("warning:") {
            objects.push(ListedObject {
                kind: line.trim().to_owned(),
                ..Default::default()
            });
            continue;
        }
        let Some(current) = objects.last_mut() else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim().trim_matches('\'').to_owned();
        match key.trim() {
            "label" => current.label = value,
            "Usage" => current.usage = value,
            "Access" => current.access = value,
            _ => {}
        }
    }
    objects
}

fn openssl_text(der: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-text"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl must be installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(der)
        .expect("write DER");
    let out = child.wait_with_output().expect("openssl");
    assert!(
        out.status.success(),
        "openssl cannot parse it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The PKCS#11 module: `ALGA_HSM_MODULE`, or SoftHSM's Debian path if it exists.
fn module_path() -> PathBuf {
    let path = match std::env::var_os("ALGA_HSM_MODULE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(DEFAULT_MODULE),
    };
    assert!(
        path.is_file(),
        "PKCS#11 module {} not found: install softhsm2 or set ALGA_HSM_MODULE",
        path.display()
    );
    path
}

fn policy_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.sample.toml")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

fn write_secret(path: &Path, secret: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("secret file");
    writeln!(f, "{secret}").expect("write secret");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("sandbox file")
        .trim()
        .to_owned()
}
