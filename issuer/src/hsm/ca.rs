//! The appliance CA certificate: self-signed by its HSM key through rcgen.
//!
//! Profile: subject `CN=alga-license appliance CA v<v>, O=alga-license`, CA:TRUE with
//! pathlen 0 (it signs only end-entity appliance credentials), key usage keyCertSign
//! and cRLSign, subject key identifier from the SPKI, validity from the ceremony's
//! `now` to ten years later, and a random positive 128-bit serial. There are no name
//! constraints: rcgen cannot express URI subtrees, and the SPIFFE trust domain of
//! every credential is enforced by the issuer itself when it signs.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::HsmError;

/// Builds and self-signs the certificate of CA key `version`, then checks it.
pub(crate) fn self_signed(
    signer: &impl rcgen::SigningKey,
    spki: &[u8],
    version: u32,
    now: OffsetDateTime,
) -> Result<Vec<u8>, HsmError> {
    let fail = |reason: String| HsmError::Certificate { reason };
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
    params.not_before = now;
    params.not_after = ten_years_after(now);
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(signer)
        .map_err(|e| fail(format!("signing failed: {e}")))?;
    let der = cert.der().to_vec();
    check_certificate(&der, spki)?;
    Ok(der)
}

/// `now` plus ten calendar years (29 February becomes 28 February).
fn ten_years_after(now: OffsetDateTime) -> OffsetDateTime {
    let year = now.year() + 10;
    now.replace_year(year)
        .or_else(|_| (now - Duration::days(1)).replace_year(year))
        .unwrap_or(now + Duration::days(3652))
}

/// 16 random octets with the top bit cleared (positive, DER needs no padding) and the
/// next bit set (always 16 octets long).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
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
