//! The signing operations against a real SoftHSM2 token (through `hsm::Hsm`), checked
//! with independent verifiers: jsonwebtoken for licenses, rustls-webpki and the
//! `openssl verify` command for credentials.
//!
//! Each test runs in its own child process with its own token (the HSM tests'
//! harness, [`isolated_in`]).

use std::process::Command;

use alga_issuer::Error;
use alga_issuer::keyring::{KeyKind, KeyOps};
use alga_issuer::ops;
use alga_protocol::issuer_api::{
    LICENSE_AUDIENCE, LicenseClaims, MintCodeRequest, SignCredentialRequest, SignLicenseRequest,
};
use alga_protocol::{CodeBinding, SecretText};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rustls::pki_types::{CertificateDer, UnixTime};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::hsm::{Setup, isolated_in};
use crate::license_verify::verify;

const ISS: &str = "https://license.alga.test";

/// What a refusal test expects of an error.
type ErrCheck = fn(&Error) -> bool;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn license_request(edition: &str, lifetime_seconds: Option<u64>) -> SignLicenseRequest {
    SignLicenseRequest {
        tenant_id: Uuid::new_v4(),
        appliance_id: Uuid::new_v4(),
        edition: edition.into(),
        lifetime_seconds,
    }
}

/// A PEM CSR for a fresh key of `alg` (rcgen).
pub(crate) fn csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).expect("keygen");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "appliance");
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// A PEM CSR made by `openssl req` for a key made by `openssl genpkey` with `args`.
pub(crate) fn openssl_csr(dir: &std::path::Path, name: &str, genpkey_args: &[&str]) -> String {
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(genpkey_args)
        .arg("-out")
        .arg(&key)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=appliance", "-key"])
        .arg(&key)
        .output()
        .expect("openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("PEM")
}

/// A CSR whose self-signature is broken (one bit of the signature flipped).
pub(crate) fn csr_with_bad_signature() -> String {
    let good = pem::parse(csr(&rcgen::PKCS_ECDSA_P256_SHA256)).expect("pem");
    let mut der = good.contents().to_vec();
    let i = der.len() - 4;
    der[i] ^= 0x01;
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

#[test]
fn a_license_verifies_with_jsonwebtoken_and_forgeries_do_not_verify() {
    isolated_in(
        module_path!(),
        "a_license_verifies_with_jsonwebtoken_and_forgeries_do_not_verify",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = rt();
            let now = OffsetDateTime::now_utc();
            let req = license_request("pro", None);
            let signed = rt
                .block_on(ops::license::sign(&hsm, &t.policy, &req, now))
                .expect("signs")
                .value;
            let jwks = ops::jwks::jwks(&hsm).expect("jwks");
            let token = signed.token.expose();

            // jsonwebtoken, with the key from our JWKS and the algorithm fixed.
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(serde_json::to_value(&jwks.keys[0]).expect("json"))
                    .expect("a JWK");
            let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            validation.set_audience(&[LICENSE_AUDIENCE]);
            validation.set_issuer(&[ISS]);
            validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
            let data = jsonwebtoken::decode::<LicenseClaims>(token, &key, &validation)
                .expect("jsonwebtoken verifies");
            assert_eq!(data.header.kid.as_deref(), Some("alga-license-v1"));
            assert_eq!(data.header.typ.as_deref(), Some("JWT"));
            let claims = data.claims;
            assert_eq!(claims.sub, req.tenant_id.to_string());
            assert_eq!(claims.appliance_id, req.appliance_id.to_string());
            assert_eq!(claims.edition, "pro");
            assert_eq!(
                claims.exp - claims.iat,
                7 * 86_400,
                "the sample policy's pro lifetime"
            );
            assert_eq!(claims.entitlements.check_in_interval_seconds, 86_400);
            let mut wrong_aud = validation.clone();
            wrong_aud.set_audience(&["someone-else"]);
            assert!(jsonwebtoken::decode::<LicenseClaims>(token, &key, &wrong_aud).is_err());

            // Our verifier agrees, and refuses every forgery.
            assert_eq!(verify(token, &jwks, now, ISS).expect("verifies"), claims);
            let [h, c, s]: [&str; 3] = token
                .split('.')
                .collect::<Vec<_>>()
                .try_into()
                .expect("JWS");
            let claims_json = String::from_utf8(B64.decode(c).expect("b64")).expect("utf8");
            use crate::license_verify::LicenseError as E;

            let none = format!("{}.{c}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
            assert_eq!(
                verify(&none, &jwks, now, ISS),
                Err(E::AlgorithmRefused { alg: "none".into() })
            );

            // HS256 keyed with the public key bytes (the classic key-confusion attack).
            let spki = hsm.keys(KeyKind::License)[0]
                .public_key_spki
                .clone()
                .expect("spki");
            for secret in [spki.clone(), jwks.keys[0].x.as_bytes().to_vec()] {
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                header.kid = Some("alga-license-v1".into());
                let forged = jsonwebtoken::encode(
                    &header,
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(&secret),
                )
                .expect("HS256 forgery");
                assert_eq!(
                    verify(&forged, &jwks, now, ISS),
                    Err(E::AlgorithmRefused {
                        alg: "HS256".into()
                    })
                );
                assert!(jsonwebtoken::decode::<LicenseClaims>(&forged, &key, &validation).is_err());
            }

            let wrong_kid = format!(
                "{}.{c}.{s}",
                B64.encode(r#"{"alg":"ES256","kid":"alga-license-v2","typ":"JWT"}"#)
            );
            assert_eq!(verify(&wrong_kid, &jwks, now, ISS), Err(E::UnknownKid));
            let no_kid = format!("{}.{c}.{s}", B64.encode(r#"{"alg":"ES256","typ":"JWT"}"#));
            assert_eq!(verify(&no_kid, &jwks, now, ISS), Err(E::UnknownKid));

            assert_eq!(
                verify(token, &jwks, now + Duration::days(8), ISS),
                Err(E::Expired)
            );
            let mut expired_validation = validation.clone();
            expired_validation.leeway = 0;
            let expired = rt
                .block_on(ops::license::sign(
                    &hsm,
                    &t.policy,
                    &license_request("pro", Some(1)),
                    now - Duration::hours(1),
                ))
                .expect("signs")
                .value
                .token;
            assert_eq!(verify(expired.expose(), &jwks, now, ISS), Err(E::Expired));
            assert!(
                jsonwebtoken::decode::<LicenseClaims>(expired.expose(), &key, &expired_validation)
                    .is_err()
            );

            let tampered_claims = claims_json.replace(r#""seats":100"#, r#""seats":100000"#);
            assert_ne!(
                tampered_claims, claims_json,
                "the sample policy gives pro 100 seats"
            );
            let tampered = format!("{h}.{}.{s}", B64.encode(tampered_claims));
            assert_eq!(verify(&tampered, &jwks, now, ISS), Err(E::BadSignature));
            assert!(jsonwebtoken::decode::<LicenseClaims>(&tampered, &key, &validation).is_err());

            // The verifier's other verdicts: not yet valid, another issuer, not a JWS.
            assert_eq!(
                verify(token, &jwks, now - Duration::hours(1), ISS),
                Err(E::NotYetValid)
            );
            assert_eq!(
                verify(token, &jwks, now, "https://evil.test"),
                Err(E::WrongIssuer)
            );
            assert_eq!(verify("a.b", &jwks, now, ISS), Err(E::Malformed));
            assert_eq!(
                verify(&format!("{token}.x"), &jwks, now, ISS),
                Err(E::Malformed)
            );
            // Another key under the same kid (the token's audit key, also P-256).
            let mut other = ops::jwks::jwk(&hsm.keys(KeyKind::Audit)[0]).expect("a P-256 JWK");
            other.kid = jwks.keys[0].kid.clone();
            let other = alga_protocol::issuer_api::Jwks { keys: vec![other] };
            assert_eq!(verify(token, &other, now, ISS), Err(E::BadSignature));
        },
    );
}

#[test]
fn license_requests_beyond_the_policy_are_refused() {
    isolated_in(
        module_path!(),
        "license_requests_beyond_the_policy_are_refused",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = rt();
            let now = OffsetDateTime::now_utc();
            let cases: Vec<(SignLicenseRequest, ErrCheck)> = vec![
                (license_request("pro", Some(10 * 365 * 86_400)), |e| {
                    matches!(e, Error::BeyondPolicy { .. })
                }),
                (license_request("pro", Some(7 * 86_400 + 1)), |e| {
                    matches!(e, Error::BeyondPolicy { .. })
                }),
                (license_request("enterprise-plus", None), |e| {
                    matches!(e, Error::UnknownEdition { .. })
                }),
                (license_request("essentials", None), |e| {
                    matches!(e, Error::EditionNotPaid { .. })
                }),
            ];
            for (req, check) in cases {
                let e = rt
                    .block_on(ops::license::sign(&hsm, &t.policy, &req, now))
                    .expect_err("refused");
                assert!(check(&e), "{req:?}: {e}");
            }
            let ok = rt
                .block_on(ops::license::sign(
                    &hsm,
                    &t.policy,
                    &license_request("pro", Some(3600)),
                    now,
                ))
                .expect("a shorter license is fine");
            assert_eq!(ok.value.expires_at - ok.value.issued_at, Duration::hours(1));
        },
    );
}

#[test]
fn a_credential_chains_to_the_hsm_ca_for_webpki_and_openssl() {
    isolated_in(
        module_path!(),
        "a_credential_chains_to_the_hsm_ca_for_webpki_and_openssl",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = rt();
            let now = OffsetDateTime::now_utc();
            for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
                let req = SignCredentialRequest {
                    tenant_id: Uuid::new_v4(),
                    appliance_id: Uuid::new_v4(),
                    edition: "pro".into(),
                    csr_pem: csr(alg),
                    lifetime_seconds: None,
                };
                let signed = rt
                    .block_on(ops::credential::sign(&hsm, &t.policy, &req, now))
                    .expect("signs")
                    .value;
                let cert_der = pem::parse(&signed.certificate_pem)
                    .expect("PEM")
                    .into_contents();
                let ca_der = pem::parse(&signed.chain_pem).expect("PEM").into_contents();
                assert_eq!(
                    Some(&ca_der),
                    hsm.ca_certificates()[0].certified.as_ref(),
                    "the chain is the HSM's CA as the root certified it"
                );

                // rustls-webpki, for client authentication: as the gateway sees it
                // (the self-signed CA its trust anchor, the certified one sent along)…
                let cert = CertificateDer::from(cert_der.clone());
                let ee = webpki::EndEntityCert::try_from(&cert).expect("end entity");
                let ca = CertificateDer::from(ca_der.clone());
                let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    now.unix_timestamp() as u64,
                ));
                // One anchor, the certified CA sent along as intermediate.
                let verify = |anchor: &[u8], usage| {
                    let anchor = CertificateDer::from(anchor.to_vec());
                    let anchors = [webpki::anchor_from_trusted_cert(&anchor)
                        .expect("anchor")
                        .to_owned()];
                    ee.verify_for_usage(
                        webpki::ALL_VERIFICATION_ALGS,
                        &anchors,
                        std::slice::from_ref(&ca),
                        at,
                        usage,
                        None,
                        None,
                    )
                    .map(|_| ())
                };
                verify(
                    &hsm.ca_certificates()[0].der,
                    webpki::KeyUsage::client_auth(),
                )
                .expect("webpki: chains to the self-signed CA");
                // …and as an appliance sees it: the root its only anchor.
                let root = &hsm.root_certificates()[0].der;
                verify(root, webpki::KeyUsage::client_auth())
                    .expect("webpki: chains through the certified CA to the root");
                assert!(
                    verify(root, webpki::KeyUsage::server_auth()).is_err(),
                    "not a server certificate"
                );
                let uri = format!(
                    "spiffe://alga.test/tenant/{}/appliance/{}",
                    req.tenant_id, req.appliance_id
                );
                // (webpki checks URI names only through name constraints, so the SAN is
                // checked with x509-parser below.)

                // openssl verify -purpose sslclient.
                let dir = tempfile::tempdir().expect("tempdir");
                std::fs::write(dir.path().join("ca.pem"), &signed.chain_pem).expect("write");
                std::fs::write(
                    dir.path().join("root.pem"),
                    alga_protocol::trust::pem_of(&hsm.root_certificates()[0].der),
                )
                .expect("write");
                std::fs::write(dir.path().join("cert.pem"), &signed.certificate_pem)
                    .expect("write");
                let out = Command::new("openssl")
                    .args([
                        "verify",
                        "-CAfile",
                        "root.pem",
                        "-untrusted",
                        "ca.pem",
                        "-purpose",
                        "sslclient",
                        "cert.pem",
                    ])
                    .current_dir(dir.path())
                    .output()
                    .expect("openssl must be installed");
                assert!(
                    out.status.success(),
                    "openssl verify: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let out = Command::new("openssl")
                    .args([
                        "verify",
                        "-CAfile",
                        "root.pem",
                        "-untrusted",
                        "ca.pem",
                        "-purpose",
                        "sslserver",
                        "cert.pem",
                    ])
                    .current_dir(dir.path())
                    .output()
                    .expect("openssl");
                assert!(!out.status.success(), "openssl: not for servers");

                // Exactly one URI SAN, clientAuth only, lifetime = policy.
                let (_, x) = X509Certificate::from_der(&cert_der).expect("parses");
                let mut sans = Vec::new();
                let mut eku_ok = false;
                for ext in x.extensions() {
                    match ext.parsed_extension() {
                        ParsedExtension::SubjectAlternativeName(san) => {
                            sans.extend(san.general_names.iter().map(|n| match n {
                                GeneralName::URI(u) => (*u).to_owned(),
                                other => format!("{other:?}"),
                            }))
                        }
                        ParsedExtension::ExtendedKeyUsage(eku) => {
                            eku_ok = eku.client_auth
                                && !eku.server_auth
                                && !eku.any
                                && eku.other.is_empty()
                        }
                        _ => {}
                    }
                }
                assert_eq!(sans, [uri]);
                assert!(eku_ok, "EKU is clientAuth only");
                let validity = x.validity();
                assert_eq!(
                    validity.not_after.to_datetime() - validity.not_before.to_datetime(),
                    t.policy.credential_lifetime + Duration::minutes(5)
                );
                assert_eq!(validity.not_after.to_datetime(), signed.expires_at);
                assert!(
                    (signed.expires_at - (now + t.policy.credential_lifetime)).abs()
                        < Duration::seconds(2)
                );
            }
        },
    );
}

#[test]
fn bad_csrs_are_refused_and_nothing_is_signed() {
    isolated_in(
        module_path!(),
        "bad_csrs_are_refused_and_nothing_is_signed",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = rt();
            let now = OffsetDateTime::now_utc();
            let dir = tempfile::tempdir().expect("tempdir");
            let cases = [
                ("bad self-signature", csr_with_bad_signature()),
                ("RSA-512", openssl_csr(dir.path(), "rsa512", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"])),
                ("RSA-3072", openssl_csr(dir.path(), "rsa3072", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"])),
                ("P-384", openssl_csr(dir.path(), "p384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"])),
                ("secp256k1", openssl_csr(dir.path(), "k1", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"])),
                ("Ed448", openssl_csr(dir.path(), "ed448", &["-algorithm", "ED448"])),
                ("garbage PEM", "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n".into()),
                ("not PEM", "garbage".into()),
            ];
            for (what, csr_pem) in cases {
                let req = SignCredentialRequest {
                    tenant_id: Uuid::new_v4(),
                    appliance_id: Uuid::new_v4(),
                    edition: "pro".into(),
                    csr_pem,
                    lifetime_seconds: None,
                };
                match rt.block_on(ops::credential::sign(&hsm, &t.policy, &req, now)) {
                    Err(Error::CsrInvalid { .. }) => {}
                    Err(e) => panic!("{what}: refused for another reason: {e}"),
                    Ok(_) => panic!("{what}: signed"),
                }
            }
            // openssl's own P-256 CSR is fine (and nothing about it is taken but the key).
            let req = SignCredentialRequest {
                tenant_id: Uuid::new_v4(),
                appliance_id: Uuid::new_v4(),
                edition: "pro".into(),
                csr_pem: openssl_csr(
                    dir.path(),
                    "p256",
                    &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                ),
                lifetime_seconds: None,
            };
            let signed = rt
                .block_on(ops::credential::sign(&hsm, &t.policy, &req, now))
                .expect("openssl P-256 CSR");
            assert!(
                signed
                    .value
                    .certificate_pem
                    .starts_with("-----BEGIN CERTIFICATE-----")
            );
            let essentials = SignCredentialRequest {
                edition: "essentials".into(),
                ..req
            };
            let e = rt
                .block_on(ops::credential::sign(&hsm, &t.policy, &essentials, now))
                .expect_err("essentials get no credential");
            assert!(matches!(e, Error::EditionNotPaid { .. }), "{e}");
        },
    );
}

#[test]
fn a_minted_code_verifies_only_against_its_own_binding() {
    isolated_in(
        module_path!(),
        "a_minted_code_verifies_only_against_its_own_binding",
        Setup::Keys,
        |t| {
            let hsm = t.open();
            let rt = rt();
            let now = OffsetDateTime::now_utc();
            let req = MintCodeRequest {
                tenant_id: Uuid::new_v4(),
                edition: "pro".into(),
                expires_at: now + Duration::days(14),
                replaces_appliance_id: None,
            };
            let minted = rt
                .block_on(ops::codes::mint(&hsm, &t.policy, &req, now))
                .expect("mints")
                .value;
            let b = minted.binding.clone();
            let code = minted.code.clone();
            let verify = |binding: &CodeBinding, code: &SecretText| {
                rt.block_on(ops::codes::verify(&hsm, binding, code))
            };
            assert!(verify(&b, &code).expect("answers").valid);
            let derived = rt
                .block_on(ops::codes::derive(&hsm, &t.policy, &b, now))
                .expect("derives")
                .value;
            assert_eq!(derived.code, code, "the HMAC is deterministic");

            let changed = [
                (
                    "tenant",
                    CodeBinding {
                        tenant_id: Uuid::new_v4(),
                        ..b.clone()
                    },
                ),
                (
                    "expiry",
                    CodeBinding {
                        expires_at: b.expires_at + Duration::seconds(1),
                        ..b.clone()
                    },
                ),
                (
                    "edition",
                    CodeBinding {
                        edition: "essentials".into(),
                        ..b.clone()
                    },
                ),
                (
                    "key version",
                    CodeBinding {
                        key_version: 2,
                        ..b.clone()
                    },
                ),
            ];
            for (what, binding) in changed {
                assert!(!verify(&binding, &code).expect("answers").valid, "{what}");
            }

            // A typo is a malformed code, found offline by the check symbols.
            let text = code.expose();
            let i = text.len() - 8;
            let c = if text.as_bytes()[i] == b'A' { 'B' } else { 'A' };
            let typo = SecretText::new(format!("{}{c}{}", &text[..i], &text[i + 1..]));
            assert!(matches!(verify(&b, &typo), Err(Error::CodeMalformed(_))));
            // The same code typed loosely is the same code.
            let loose = SecretText::new(format!("  {}  ", text.to_lowercase().replace('-', " ")));
            assert!(verify(&b, &loose).expect("answers").valid);

            // After a rotation the old code still verifies with its own key version,
            // and not with the new one.
            alga_issuer::hsm::admin::keys_rotate(&t.config, t.pin(), KeyKind::Code, &t.policy, now)
                .expect("rotates");
            let hsm = t.open();
            assert_eq!(hsm.active_version(KeyKind::Code), 2);
            let verify =
                |binding: &CodeBinding| rt.block_on(ops::codes::verify(&hsm, binding, &code));
            assert!(verify(&b).expect("answers").valid);
            assert!(
                !verify(&CodeBinding {
                    key_version: 2,
                    ..b.clone()
                })
                .expect("answers")
                .valid
            );
        },
    );
}
