//! The certificates made in key ceremonies, through rcgen with HSM signers.
//!
//! **Appliance CA, self-signed** (the gateway's trust anchor). Profile: subject `CN=alga-license appliance CA v<v>, O=alga-license`, CA:TRUE with
//! pathlen 0 (it signs only end-entity appliance credentials), key usage keyCertSign
//! and cRLSign, subject key identifier from the SPKI, validity from the ceremony's
//! `now` to ten years later, and a random positive 128-bit serial. There are no name
//! constraints: rcgen cannot express URI subtrees, and the SPIFFE trust domain of
//! every credential is enforced by the issuer itself when it signs.
//!
//! **Trust root**: subject `CN=alga-license root v<v>, O=alga-license`, CA:TRUE with
//! pathlen 1, keyCertSign and cRLSign, twenty years from the ceremony, self-signed.
//!
//! **Appliance CA, certified by the root** (what appliances verify): the self-signed
//! CA certificate's subject (byte for byte, checked) and key, CA:TRUE pathlen 0,
//! keyCertSign and cRLSign, its validity clamped to the root's, issued by the root.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::HsmError;

/// The parameters of the CA certificate of key `version` (both forms share them).
fn ca_params(
    version: u32,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("alga-license appliance CA v{version}"),
    );
    name.push(DnType::OrganizationName, "alga-license");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params
}

/// Builds and self-signs the certificate of CA key `version`, then checks it.
pub(crate) fn self_signed(
    signer: &impl rcgen::SigningKey,
    spki: &[u8],
    version: u32,
    now: OffsetDateTime,
) -> Result<Vec<u8>, HsmError> {
    let fail = |reason: String| HsmError::Certificate { reason };
    let cert = ca_params(version, now, years_after(now, 10))
        .self_signed(signer)
        .map_err(|e| fail(format!("signing failed: {e}")))?;
    let der = cert.der().to_vec();
    check_certificate(&der, spki)?;
    Ok(der)
}

/// Builds and self-signs the trust root's certificate of key `version`, then checks it.
pub(crate) fn root_self_signed(
    signer: &impl rcgen::SigningKey,
    spki: &[u8],
    version: u32,
    now: OffsetDateTime,
) -> Result<Vec<u8>, HsmError> {
    let fail = |reason: String| HsmError::Certificate { reason };
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("alga-license root v{version}"));
    name.push(DnType::OrganizationName, "alga-license");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now;
    params.not_after = years_after(now, 20);
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(signer)
        .map_err(|e| fail(format!("signing failed: {e}")))?;
    let der = cert.der().to_vec();
    check_certificate(&der, spki)?;
    Ok(der)
}

/// A public key as rcgen needs it for a certificate's subject.
struct SubjectKey(Vec<u8>);

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The root's certificate of CA key `version` (whose self-signed certificate is
/// `ca_der`): same subject and key, validity clamped to the root's, issued and signed
/// by the root (`root_signer`, `root_der`). Checked before it is returned: the
/// subject is byte-identical and the root's signature verifies.
pub(crate) fn certify_ca(
    root_signer: &impl rcgen::SigningKey,
    root_der: &[u8],
    ca_der: &[u8],
    version: u32,
) -> Result<Vec<u8>, HsmError> {
    let fail = |reason: String| HsmError::Certificate { reason };
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|_| fail("the CA certificate does not parse".into()))?;
    let (_, root) = X509Certificate::from_der(root_der)
        .map_err(|_| fail("the root certificate does not parse".into()))?;
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|_| fail("a certificate time is out of range".into()))
    };
    let not_before = time(ca.validity().not_before)?;
    let not_after = time(ca.validity().not_after)?.min(time(root.validity().not_after)?);
    let mut params = ca_params(version, not_before, not_after);
    params.use_authority_key_identifier_extension = true;
    let issuer = rcgen::Issuer::from_ca_cert_der(
        &rustls_pki_types::CertificateDer::from(root_der.to_vec()),
        root_signer,
    )
    .map_err(|e| fail(format!("rcgen cannot use the root as an issuer: {e}")))?;
    let key = SubjectKey(ca.public_key().subject_public_key.data.to_vec());
    let der = params
        .signed_by(&key, &issuer)
        .map_err(|e| fail(format!("signing failed: {e}")))?
        .der()
        .to_vec();
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|_| fail("does not parse as X.509".into()))?;
    if cert.subject().as_raw() != ca.subject().as_raw() {
        return Err(fail(
            "its subject differs from the CA's own certificate".into(),
        ));
    }
    if cert.public_key().raw != ca.public_key().raw {
        return Err(fail("its key is not the CA's".into()));
    }
    cert.verify_signature(Some(root.public_key()))
        .map_err(|_| fail("the root's signature does not verify".into()))?;
    Ok(der)
}

/// `now` plus `years` calendar years (29 February becomes 28 February).
fn years_after(now: OffsetDateTime, years: i32) -> OffsetDateTime {
    let year = now.year() + years;
    now.replace_year(year)
        .or_else(|_| (now - Duration::days(1)).replace_year(year))
        .unwrap_or(now + Duration::days(i64::from(years) * 366))
}

/// 16 random octets with the top bit cleared (positive, DER needs no padding) and the
/// next bit set (always 16 octets long).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Checks that `der` is a self-signed CA certificate of the key `spki`: it parses,
/// its public key is the HSM key's, its signature verifies, and it says CA:TRUE.
pub(crate) fn check_certificate(der: &[u8], spki: &[u8]) -> Result<(), HsmError> {
    let fail = |reason: &str| HsmError::Certificate {
        reason: reason.to_owned(),
    };
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| fail("does not parse as X.509"))?;
    if !rest.is_empty() {
        return Err(fail("trailing bytes after the certificate"));
    }
    if cert.public_key().raw != spki {
        return Err(fail("its public key is not the HSM key's"));
    }
    cert.verify_signature(None)
        .map_err(|_| fail("its self-signature does not verify"))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        _ => Err(fail("it is not a CA certificate")),
    }
}

/// The DER subject name of a certificate (`CKA_SUBJECT` of its token object).
pub(crate) fn subject_der(der: &[u8]) -> Result<Vec<u8>, HsmError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| HsmError::Certificate {
        reason: "does not parse as X.509".into(),
    })?;
    Ok(cert.subject().as_raw().to_vec())
}
