//! Appliance credentials (CONTRACT.md §5): an X.509 client certificate for the appliance's
//! own key, signed by the active appliance CA key in the HSM.
//!
//! From the CSR the issuer takes **only the public key**, after checking the CSR's
//! self-signature (proof that the requester holds the private key) and the key type:
//! EC P-256 or Ed25519; RSA of any size and other curves are refused. Everything else
//! the CSR asks for (subject, SANs, CA:TRUE, other extensions) is ignored. The issuer
//! sets the profile itself:
//!
//! - subject `CN=<appliance_id>, O=<tenant_id>`; issuer = the active CA's subject;
//! - exactly one URI SAN, `spiffe://<trust domain>/tenant/<T>/appliance/<A>`;
//! - EKU clientAuth only, KU digitalSignature, CA:FALSE, AKI of the CA, SKI;
//! - a random positive 127-bit serial;
//! - not before `now − 5 min` (clock skew), not after `now + lifetime`, the lifetime
//!   being the policy's or a shorter one the request asks for, and never after the
//!   CA's own `notAfter` (a leaf must not outlive its CA);
//! - the chain returned is the CA certificate the trust root issued, so the appliance
//!   checks leaf → CA → its pinned root (`alga_protocol::trust`).
//!
//! Under a CA that has expired, or has less than [`CA_MIN_REMAINING_FRACTION`] of a
//! credential lifetime left, nothing is signed ([`Error::CaExpiring`]): such a
//! credential would be due for renewal as it is issued, and renewal would be refused
//! too. The issuer warns in its log long before (see `server`), and the gateway
//! exports the CA's remaining lifetime as a metric.
//!
//! Signing: rcgen builds the TBS certificate itself and calls a synchronous
//! [`rcgen::SigningKey::sign`]. The HSM engineer's [`CaSigner`] adapts any
//! [`KeyOps`] to it by waiting for `sign_digest`'s future on the calling thread, so the
//! whole build runs in `spawn_blocking`; with the HSM the signature itself is made on
//! the HSM worker pool, so the blocking thread only parks. (The alternative, building
//! the TBS twice — once to capture it, once to insert a signature obtained
//! asynchronously — relies on rcgen serializing identically twice and buys nothing.)
//!
//! After signing, the certificate is parsed back and checked against the CA (issuer
//! name, signature) before it is returned: a wrong key on the token must not produce
//! a certificate that fails later in the field.

use alga_policies::Policy;
use alga_protocol::ApplianceIdentity;
use alga_protocol::csr::{CsrKeyType, check_csr};
use alga_protocol::issuer_api::{SignCredentialRequest, SignedCredential};
use alga_protocol::signlog::{SignEvent, SignIds, SignOp};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::license::bounded_lifetime;
use super::public_keys::certificate_pem;
use super::{Signed, edition, sha256_hex, whole_seconds};
use crate::Error;
use crate::hsm::CaSigner;
use crate::hsm::HsmError;
use crate::keyring::{KeyKind, KeyOps};

/// How far `not_before` is back-dated, for appliances whose clock runs a little slow.
pub const BACKDATE: Duration = Duration::minutes(5);

/// The least a CA must have left, as a fraction (1/n) of the policy's credential
/// lifetime, to issue under it: the appliance renews a credential when less than a
/// third of its lifetime is left.
pub const CA_MIN_REMAINING_FRACTION: i32 = 3;

/// The active appliance CA as credentials are issued under it: its version, the
/// certificate the root issued (the chain appliances verify), and when it ends (the
/// earlier of its two certificates' `notAfter`).
#[derive(Debug, Clone)]
pub struct ActiveCa {
    pub version: u32,
    pub certified_der: Vec<u8>,
    pub not_after: OffsetDateTime,
}

/// The active CA of `keys`.
pub fn active_ca<K: KeyOps>(keys: &K) -> Result<ActiveCa, Error> {
    let version = keys.active_version(KeyKind::ApplianceCa);
    let ca = keys
        .ca_certificates()
        .into_iter()
        .find(|c| c.version == version)
        .ok_or_else(|| Error::internal(format!("no certificate for CA key version {version}")))?;
    let certified = ca.certified.ok_or_else(|| {
        Error::internal(format!(
            "CA key version {version} has no certificate by the root"
        ))
    })?;
    let not_after = |der: &[u8]| {
        X509Certificate::from_der(der)
            .ok()
            .and_then(|(_, c)| {
                OffsetDateTime::from_unix_timestamp(c.validity().not_after.timestamp()).ok()
            })
            .ok_or_else(|| Error::internal("a CA certificate does not parse"))
    };
    Ok(ActiveCa {
        version,
        not_after: not_after(&ca.der)?.min(not_after(&certified)?),
        certified_der: certified,
    })
}

/// Refuses to issue under `ca` at `now` when it has less left than a credential
/// needs (see [`CA_MIN_REMAINING_FRACTION`]).
pub fn check_ca_usable(ca: &ActiveCa, policy: &Policy, now: OffsetDateTime) -> Result<(), Error> {
    if ca.not_after - now < policy.credential_lifetime / CA_MIN_REMAINING_FRACTION {
        return Err(Error::CaExpiring {
            version: ca.version,
            not_after: ca.not_after,
        });
    }
    Ok(())
}

pub use alga_protocol::csr::MAX_CSR_PEM;

/// Signs a credential for the key in `req.csr_pem`.
pub async fn sign<K: KeyOps + Clone>(
    keys: &K,
    policy: &Policy,
    req: &SignCredentialRequest,
    now: OffsetDateTime,
) -> Result<Signed<SignedCredential>, Error> {
    let edition = edition(policy, &req.edition)?;
    if !edition.is_paid() {
        return Err(Error::EditionNotPaid {
            edition: req.edition.clone(),
        });
    }
    let lifetime = bounded_lifetime(
        policy.credential_lifetime,
        req.lifetime_seconds,
        "credential",
    )?;
    let key = csr_public_key(&req.csr_pem)?;
    let now = whole_seconds(now);
    let ca = active_ca(keys)?;
    check_ca_usable(&ca, policy, now)?;
    let not_before = now - BACKDATE;
    let not_after = (now + lifetime).min(ca.not_after);
    let identity = ApplianceIdentity {
        tenant_id: req.tenant_id,
        appliance_id: req.appliance_id,
    };
    let uri = identity.uri(&policy.trust_domain);
    let serial = random_serial();

    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        req.appliance_id.hyphenated().to_string(),
    );
    name.push(
        DnType::OrganizationName,
        req.tenant_id.hyphenated().to_string(),
    );
    params.distinguished_name = name;
    let uri_san = uri
        .clone()
        .try_into()
        .map_err(|_| Error::internal("the SPIFFE URI is not IA5"))?;
    params.subject_alt_names = vec![SanType::URI(uri_san)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;

    let signer_keys = keys.clone();
    let spki_sha256 = sha256_hex(&key.spki);
    let ca_version = ca.version;
    let (cert_der, ca_der, ca_version) = tokio::task::spawn_blocking(move || {
        let signer = CaSigner::new(signer_keys, ca_version)
            .map_err(|e| Error::internal(format!("CA signer: {e}")))?;
        let ca_version = signer.version();
        let ca_der = signer
            .certificate_der()
            .map_err(|e| Error::internal(format!("CA certificate: {e}")))?;
        let issuer = signer
            .issuer()
            .map_err(|e| Error::internal(format!("CA issuer: {e}")))?;
        let cert = params.signed_by(&key, &issuer).map_err(|e| match e {
            // The signer logged the HSM's answer; rcgen keeps none of it.
            rcgen::Error::RemoteKeyError => {
                Error::Hsm(HsmError::unavailable("the appliance CA signer failed"))
            }
            other => Error::internal(format!("building the certificate: {other}")),
        })?;
        Ok::<_, Error>((cert.der().to_vec(), ca_der, ca_version))
    })
    .await
    .map_err(|e| Error::internal(format!("certificate task: {e}")))??;

    check_issued(&cert_der, &ca_der)?;
    let serial_hex = hex::encode(serial);
    let kid = crate::hsm::kid(KeyKind::ApplianceCa, ca_version);
    Ok(Signed {
        value: SignedCredential {
            certificate_pem: certificate_pem(&cert_der),
            chain_pem: certificate_pem(&ca.certified_der),
            serial: serial_hex.clone(),
            not_before,
            expires_at: not_after,
        },
        event: SignEvent {
            time: now,
            op: SignOp::Credential,
            ids: SignIds {
                tenant_id: Some(req.tenant_id),
                appliance_id: Some(req.appliance_id),
                edition: Some(edition.name.clone()),
                serial: Some(serial_hex),
                public_key_sha256: Some(spki_sha256),
                expires_at: Some(not_after),
                ..SignIds::default()
            },
            kid,
        },
    })
}

/// The verified public key of a CSR, in the form rcgen writes into a certificate.
#[derive(Debug, Clone)]
pub struct CsrKey {
    /// The CSR's SubjectPublicKeyInfo (DER), as it was signed.
    spki: Vec<u8>,
    /// The subjectPublicKey bits (SEC1 point or Ed25519 key).
    key: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl CsrKey {
    /// The CSR's SubjectPublicKeyInfo (DER).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Checks a PEM CSR (`alga_protocol::csr::check_csr`, the check the gateway makes
/// too) and returns its verified key.
pub fn csr_public_key(csr_pem: &str) -> Result<CsrKey, Error> {
    let c = check_csr(csr_pem).map_err(|e| Error::CsrInvalid {
        reason: e.to_string(),
    })?;
    Ok(CsrKey {
        spki: c.spki_der,
        key: c.key,
        alg: match c.key_type {
            CsrKeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            CsrKeyType::Ed25519 => &rcgen::PKCS_ED25519,
        },
    })
}

/// 16 random bytes, positive, without a leading zero byte: a 127-bit serial whose
/// DER encoding is always 16 bytes.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

/// The new certificate names the CA as its issuer and its signature verifies with
/// the CA's key.
fn check_issued(cert_der: &[u8], ca_der: &[u8]) -> Result<(), Error> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| Error::internal(format!("the new certificate does not parse: {e}")))?;
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| Error::internal(format!("the CA certificate does not parse: {e}")))?;
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(Error::internal(
            "the new certificate's issuer is not the CA's subject",
        ));
    }
    cert.verify_signature(Some(ca.public_key())).map_err(|e| {
        Error::internal(format!(
            "the new certificate does not verify with the CA key: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;
    use crate::ops::software_keys::{SoftwareKeys, test_policy};

    const NOW: OffsetDateTime = datetime!(2030-06-01 12:00:00 UTC);

    /// A CSR for a fresh key of `alg` that asks for much more than it gets.
    fn greedy_csr(alg: &'static SignatureAlgorithm) -> String {
        let key = rcgen::KeyPair::generate_for(alg).expect("keygen");
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "root of everything");
        params.subject_alt_names.push(SanType::URI(
            "spiffe://alga.test/service/gateway"
                .try_into()
                .expect("ia5"),
        ));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn request(csr_pem: String) -> SignCredentialRequest {
        SignCredentialRequest {
            tenant_id: Uuid::from_u128(0x7e7e),
            appliance_id: Uuid::from_u128(0xa11a),
            edition: "pro".into(),
            csr_pem,
            lifetime_seconds: None,
        }
    }

    /// RSA-2048 CSR made with `openssl req -newkey rsa:2048 -nodes -subj /CN=rsa` (rcgen
    /// with ring cannot generate RSA keys).
    const RSA_CSR: &str = include_str!("../../../protocol/testdata/rsa2048.csr.pem");

    #[tokio::test]
    async fn the_certificate_has_the_issuers_profile_not_the_csrs() {
        let keys = SoftwareKeys::new(NOW);
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let csr = greedy_csr(alg);
            let csr_key = csr_public_key(&csr).expect("valid CSR");
            let signed = sign(&keys, &test_policy(), &request(csr), NOW)
                .await
                .expect("signs");
            let pem = pem::parse(&signed.value.certificate_pem).expect("PEM");
            let (_, cert) = X509Certificate::from_der(pem.contents()).expect("parses");
            assert_eq!(
                cert.public_key().raw,
                csr_key.spki_der(),
                "the CSR's key, nothing else"
            );
            assert_eq!(
                cert.subject().to_string(),
                "CN=00000000-0000-0000-0000-00000000a11a, O=00000000-0000-0000-0000-000000007e7e"
            );
            let mut uris = Vec::new();
            let mut saw = (false, false, false);
            for ext in cert.extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::SubjectAlternativeName(san) => {
                        for n in &san.general_names {
                            match n {
                                GeneralName::URI(u) => uris.push(u.to_string()),
                                other => panic!("unexpected SAN {other:?}"),
                            }
                        }
                    }
                    ParsedExtension::BasicConstraints(bc) => {
                        assert!(!bc.ca, "CA:FALSE");
                        saw.0 = true;
                    }
                    ParsedExtension::ExtendedKeyUsage(eku) => {
                        assert!(
                            eku.client_auth && !eku.server_auth && eku.other.is_empty() && !eku.any
                        );
                        saw.1 = true;
                    }
                    ParsedExtension::KeyUsage(ku) => {
                        assert!(ku.digital_signature() && !ku.key_cert_sign());
                        saw.2 = true;
                    }
                    _ => {}
                }
            }
            assert_eq!(saw, (true, true, true));
            assert_eq!(
                uris,
                [
                    "spiffe://alga.test/tenant/00000000-0000-0000-0000-000000007e7e/appliance/00000000-0000-0000-0000-00000000a11a"
                ]
            );
            assert_eq!(cert.validity().not_before.to_datetime(), NOW - BACKDATE);
            assert_eq!(
                cert.validity().not_after.to_datetime(),
                NOW + Duration::days(30)
            );
            assert_eq!(signed.value.expires_at, NOW + Duration::days(30));
            assert_eq!(hex::encode(cert.raw_serial()), signed.value.serial);
            assert_eq!(signed.value.serial.len(), 32);
            assert_eq!(
                signed.event.ids.serial.as_deref(),
                Some(signed.value.serial.as_str())
            );
            assert_eq!(signed.event.kid, "alga-ca-v1");
            // The chain is the CA as the root certified it: leaf → CA → root verifies.
            let chain = pem::parse(&signed.value.chain_pem).expect("chain PEM");
            assert_eq!(
                Some(chain.contents()),
                keys.ca_certificates()[0].certified.as_deref()
            );
            let roots = alga_protocol::trust::TrustRoots::from_pem(
                alga_protocol::trust::pem_of(&keys.root_certificates()[0].der).as_bytes(),
            )
            .expect("root");
            roots
                .verify_credential_chain(pem.contents(), chain.contents(), NOW.unix_timestamp(), 0)
                .expect("chains to the root");
        }
    }

    #[tokio::test]
    async fn credentials_never_outlive_their_ca_and_a_dying_ca_issues_none() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let csr = || request(greedy_csr(&rcgen::PKCS_ECDSA_P256_SHA256));
        // 20 days left of a 30-day credential lifetime: clamped to the CA's end.
        let ca_end = NOW + Duration::days(20);
        keys.expire_ca_at(ca_end);
        let signed = sign(&keys, &policy, &csr(), NOW).await.expect("signs");
        assert_eq!(signed.value.expires_at, ca_end);
        let leaf = pem::parse(&signed.value.certificate_pem).expect("PEM");
        let (_, cert) = X509Certificate::from_der(leaf.contents()).expect("x509");
        assert_eq!(
            cert.validity().not_after.timestamp(),
            ca_end.unix_timestamp()
        );
        // Exactly a third of the lifetime (10 days) left: still issued; one second
        // less: refused, with the CA's version and end.
        let third = NOW + Duration::days(10);
        keys.expire_ca_at(third);
        let at_a_third = sign(&keys, &policy, &csr(), NOW)
            .await
            .expect("a third left");
        assert_eq!(at_a_third.value.expires_at, third);
        let e = sign(&keys, &policy, &csr(), NOW + Duration::seconds(1))
            .await
            .expect_err("less than a third left");
        assert!(
            matches!(e, Error::CaExpiring { version: 1, not_after } if not_after == third),
            "{e}"
        );
        assert_eq!(
            e.code(),
            alga_protocol::issuer_api::IssuerErrorCode::CaExpiring
        );
        // Past its end: refused too.
        let e = sign(&keys, &policy, &csr(), third + Duration::days(1))
            .await
            .expect_err("expired");
        assert!(matches!(e, Error::CaExpiring { .. }), "{e}");
    }

    #[tokio::test]
    async fn refusals_table() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let good = greedy_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut bad_sig = pem::parse(&good).expect("pem");
        let der = {
            let mut d = bad_sig.contents().to_vec();
            let last = d.len() - 3;
            d[last] ^= 0x01;
            d
        };
        bad_sig = pem::Pem::new("CERTIFICATE REQUEST", der);
        let p384 = greedy_csr(&rcgen::PKCS_ECDSA_P384_SHA384);
        let cert_block = good.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        let csr_cases: Vec<(&str, String)> = vec![
            ("bad self-signature", pem::encode(&bad_sig)),
            ("RSA", RSA_CSR.to_owned()),
            ("P-384", p384),
            (
                "garbage",
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            ),
            ("not PEM", "hello".into()),
            ("empty", String::new()),
            ("wrong block", cert_block),
            ("two blocks", format!("{good}{good}")),
            ("huge", "A".repeat(MAX_CSR_PEM + 1)),
        ];
        for (what, csr) in csr_cases {
            let e = sign(&keys, &policy, &request(csr), NOW)
                .await
                .expect_err(what);
            assert!(matches!(e, Error::CsrInvalid { .. }), "{what}: {e}");
        }
        let policy_cases: Vec<(SignCredentialRequest, crate::ops::ErrCheck)> = vec![
            (
                SignCredentialRequest {
                    edition: "essentials".into(),
                    ..request(good.clone())
                },
                |e| matches!(e, Error::EditionNotPaid { .. }),
            ),
            (
                SignCredentialRequest {
                    edition: "gold".into(),
                    ..request(good.clone())
                },
                |e| matches!(e, Error::UnknownEdition { .. }),
            ),
            (
                SignCredentialRequest {
                    lifetime_seconds: Some(31 * 86_400),
                    ..request(good.clone())
                },
                |e| matches!(e, Error::BeyondPolicy { .. }),
            ),
        ];
        for (req, check) in policy_cases {
            let e = sign(&keys, &policy, &req, NOW).await.expect_err("refused");
            assert!(check(&e), "{e}");
        }
        let shorter = SignCredentialRequest {
            lifetime_seconds: Some(2 * 86_400),
            ..request(good)
        };
        let signed = sign(&keys, &policy, &shorter, NOW)
            .await
            .expect("a shorter lifetime is fine");
        assert_eq!(signed.value.expires_at, NOW + Duration::days(2));
    }

    #[tokio::test]
    async fn a_down_hsm_is_unavailable_not_internal() {
        let keys = SoftwareKeys::new(NOW);
        keys.set_down(true);
        let e = sign(
            &keys,
            &test_policy(),
            &request(greedy_csr(&rcgen::PKCS_ED25519)),
            NOW,
        )
        .await
        .expect_err("down");
        assert!(matches!(e, Error::Hsm(HsmError::Unavailable { .. })), "{e}");
    }

    #[tokio::test]
    async fn signing_with_a_rotated_ca_uses_the_new_version() {
        let keys = SoftwareKeys::new(NOW);
        keys.rotate(KeyKind::ApplianceCa, NOW);
        let signed = sign(
            &keys,
            &test_policy(),
            &request(greedy_csr(&rcgen::PKCS_ECDSA_P256_SHA256)),
            NOW,
        )
        .await
        .expect("signs");
        assert_eq!(signed.event.kid, "alga-ca-v2");
        let chain = pem::parse(&signed.value.chain_pem).expect("PEM");
        assert_eq!(
            Some(chain.contents()),
            keys.ca_certificates()[1].certified.as_deref()
        );
    }
}
