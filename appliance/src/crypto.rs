//! The appliance's key, its CSR, and the checks on what the service returns, each
//! against the pinned trust root (`alga_protocol::trust`), never against anything the
//! service itself hands over: the license JWT (its key's endorsement by the root, the
//! ES256 signature, `iss`, `aud`, subject, edition, and the bounds the root set) and
//! the certificate (URI SAN, EKU, public key, signed by a CA the root certified, not
//! outliving it).

use std::path::Path;

use ::time::OffsetDateTime;
use alga_protocol::issuer_api::LicenseClaims;
pub use alga_protocol::trust::{LicenseExpectation, TrustRoots};
use alga_protocol::{ApplianceIdentity, SecretText};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::prelude::*;

use crate::error::{Error, Result};
use crate::fsio;

/// File name of the appliance's private key in the output directory of `redeem`.
pub const KEY_FILE: &str = "appliance.key";

/// Allowed clock difference between the appliance and the service for `nbf`.
pub const CLOCK_SKEW_SECONDS: i64 = 300;

/// The appliance's EC P-256 key. No `Debug` that prints the key.
pub struct ApplianceKey(KeyPair);

impl std::fmt::Debug for ApplianceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplianceKey([redacted])")
    }
}

impl ApplianceKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<ApplianceKey> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(ApplianceKey)
            .map_err(|e| Error::Internal(format!("key generation failed: {e}")))
    }

    /// Parses a PKCS#8 PEM key; it must be EC P-256.
    pub fn from_pem(pem: &str) -> Result<ApplianceKey> {
        let kp = KeyPair::from_pem(pem)
            .map_err(|_| Error::input("the appliance key", "it is not a PKCS#8 PEM private key"))?;
        if kp.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(Error::input(
                "the appliance key",
                "it is not an EC P-256 key",
            ));
        }
        Ok(ApplianceKey(kp))
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> SecretText {
        SecretText::new(self.0.serialize_pem())
    }

    /// The SEC1 uncompressed public point (as in a certificate's SPKI).
    pub fn public_point(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    /// A PEM CSR signed with this key. The service takes only the public key from it.
    pub fn csr_pem(&self) -> Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| Error::Internal(format!("CSR parameters: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "alga-appliance");
        params.distinguished_name = dn;
        params
            .serialize_request(&self.0)
            .and_then(|csr| csr.pem())
            .map_err(|e| Error::Internal(format!("CSR: {e}")))
    }
}

/// Loads `<dir>/appliance.key`, or generates it and writes it (mode 0600 from the
/// start, atomically) when missing. Returns the key and whether it is new.
///
/// The key is written *before* the network call: a retried redeem must present the
/// same key, so that the service's retry window returns the same tenant.
pub fn load_or_create_key(dir: &Path) -> Result<(ApplianceKey, bool)> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| Error::input(path.display().to_string(), "it is not PEM text"))?;
            let key = ApplianceKey::from_pem(text)?;
            // Tighten a key file that someone loosened; never leave it readable by others.
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| Error::io("inspect", &path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(fsio::SECRET_MODE))
                    .map_err(|e| Error::io("restrict the mode of", &path, e))?;
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ApplianceKey::generate()?;
            let staged =
                fsio::Staged::write(&path, key.to_pem().expose().as_bytes(), fsio::SECRET_MODE)?;
            if staged.commit_new()? {
                Ok((key, true))
            } else {
                // Another run created it meanwhile: use that one, so both present one key.
                load_or_create_key(dir)
            }
        }
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// What a verified appliance certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertFacts {
    pub identity: ApplianceIdentity,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertFacts {
    /// True when less than a third of the certificate's lifetime is left at `now`.
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.not_before;
        self.not_after - now < lifetime / 3
    }
}

/// All certificates of a PEM bundle, as DER.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.map_err(|_| Error::bad("a certificate is not valid PEM"))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    Ok(out)
}

/// Reads the facts of the leaf of `chain_pem` (leaf first) without checking anything
/// but its form: used on the appliance's own stored certificate.
pub fn cert_facts(chain_pem: &str) -> Result<CertFacts> {
    let ders = pem_certs(chain_pem.as_bytes())?;
    let leaf = ders
        .first()
        .ok_or_else(|| Error::input("the appliance certificate", "no certificate in it"))?;
    let (_, cert) = parse_x509_certificate(leaf)
        .map_err(|_| Error::input("the appliance certificate", "it is not X.509"))?;
    let identity = identity_of(&cert)?;
    Ok(CertFacts {
        identity,
        not_before: asn1_time(cert.validity().not_before)?,
        not_after: asn1_time(cert.validity().not_after)?,
    })
}

/// Reads the pinned trust root file (PEM, one or more root certificates).
pub fn load_trust_roots(path: &Path) -> Result<TrustRoots> {
    let pem = fsio::read(path)?;
    TrustRoots::from_pem(&pem).map_err(|e| Error::input(path.display().to_string(), e))
}

/// Checks a certificate the service issued to this appliance:
/// exactly one URI SAN naming `expected` (any trust domain), EKU clientAuth, the
/// public key is `key`'s, it is valid at `now`, and the first certificate of `chain_pem`
/// is a CA the pinned `roots` certified, which signed it and which it does not outlive.
pub fn verify_certificate(
    cert_pem: &str,
    chain_pem: &str,
    key: &ApplianceKey,
    expected: ApplianceIdentity,
    roots: &TrustRoots,
    now: OffsetDateTime,
) -> Result<CertFacts> {
    let leaf_der = pem_certs(cert_pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| Error::bad("the credential has no certificate"))?;
    let (_, leaf) = parse_x509_certificate(&leaf_der)
        .map_err(|_| Error::bad("the certificate is not X.509"))?;
    let identity = identity_of(&leaf)
        .map_err(|_| Error::bad("the certificate does not carry exactly one appliance URI SAN"))?;
    if identity != expected {
        return Err(Error::bad(
            "the certificate names another tenant or appliance than the response",
        ));
    }
    let client_auth = leaf
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|e| e.value.client_auth);
    if !client_auth {
        return Err(Error::bad(
            "the certificate is not for client authentication",
        ));
    }
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_point() {
        return Err(Error::bad(
            "the certificate is not for this appliance's key",
        ));
    }
    let facts = CertFacts {
        identity,
        not_before: asn1_time(leaf.validity().not_before)?,
        not_after: asn1_time(leaf.validity().not_after)?,
    };
    if now + ::time::Duration::seconds(CLOCK_SKEW_SECONDS) < facts.not_before
        || now >= facts.not_after
    {
        return Err(Error::bad(
            "the certificate is not valid now (check this appliance's clock)",
        ));
    }
    let chain = pem_certs(chain_pem.as_bytes())?;
    let ca_der = chain
        .first()
        .ok_or_else(|| Error::bad("the credential has no CA chain"))?;
    roots
        .verify_credential_chain(&leaf_der, ca_der, now.unix_timestamp(), CLOCK_SKEW_SECONDS)
        .map_err(Error::trust)?;
    Ok(facts)
}

fn asn1_time(t: ASN1Time) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|_| Error::bad("a certificate time is out of range"))
}

/// The appliance identity of the certificate's single URI SAN.
fn identity_of(cert: &X509Certificate<'_>) -> Result<ApplianceIdentity> {
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| Error::bad("no subject alternative name"))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(Error::bad("not exactly one URI SAN"));
    };
    let trust_domain = uri
        .strip_prefix("spiffe://")
        .and_then(|r| r.split('/').next())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| Error::bad("the URI SAN is not a SPIFFE id"))?;
    ApplianceIdentity::parse(uri, trust_domain)
        .ok_or_else(|| Error::bad("the URI SAN is not an appliance id"))
}

/// Verifies a license JWT against the pinned trust root (`TrustRoots::verify_license`:
/// the key's endorsement, the ES256 signature, `iss`, `aud`, `sub`, `appliance_id`,
/// `edition`, the endorsed bounds, and validity at `now` with [`CLOCK_SKEW_SECONDS`]).
pub fn verify_license(
    token: &SecretText,
    roots: &TrustRoots,
    expected: &LicenseExpectation,
    now: OffsetDateTime,
) -> Result<LicenseClaims> {
    roots
        .verify_license(
            token.expose(),
            expected,
            now.unix_timestamp(),
            CLOCK_SKEW_SECONDS,
        )
        .map_err(Error::trust)
}

/// The times of a license the operator acts on (nothing secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LicenseTimes {
    /// After it the service counts the appliance `overdue`; absent from licenses
    /// signed before the claim existed.
    pub check_in_by: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
}

impl LicenseTimes {
    /// From a license's claims; `None` when `exp` is out of range (a `check_in_by`
    /// out of range is treated as absent: the warning it feeds is advisory).
    pub fn of(claims: &LicenseClaims) -> Option<LicenseTimes> {
        Some(LicenseTimes {
            check_in_by: claims
                .check_in_by
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).ok()?,
        })
    }
}

/// The claims of a token *without* checking its signature. Only for a token this
/// program verified before writing it to the local license seed.
pub fn claims_of_verified_token(token: &SecretText) -> Result<LicenseClaims> {
    let payload = token
        .expose()
        .split('.')
        .nth(1)
        .ok_or_else(|| Error::input("the license token", "it is not a JWT"))?;
    let json = B64URL
        .decode(payload)
        .map_err(|_| Error::input("the license token", "it is not a JWT"))?;
    serde_json::from_slice(&json)
        .map_err(|_| Error::input("the license token", "its claims are malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pem_round_trip_and_csr() {
        let k = ApplianceKey::generate().expect("key");
        let again = ApplianceKey::from_pem(k.to_pem().expose()).expect("parses");
        assert_eq!(k.public_point(), again.public_point());
        assert_eq!(k.public_point().len(), 65);
        let csr = k.csr_pem().expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }

    #[test]
    fn renewal_at_a_third() {
        let nb = OffsetDateTime::from_unix_timestamp(0).expect("t");
        let facts = CertFacts {
            identity: ApplianceIdentity {
                tenant_id: uuid::Uuid::nil(),
                appliance_id: uuid::Uuid::nil(),
            },
            not_before: nb,
            not_after: nb + ::time::Duration::days(30),
        };
        assert!(!facts.needs_renewal(nb + ::time::Duration::days(19)));
        assert!(facts.needs_renewal(nb + ::time::Duration::days(21)));
    }
}
