//! The CSR an appliance sends, checked by `alga_protocol::csr::check_csr`, the very
//! check the issuer makes before it signs: a CSR the issuer would refuse is refused
//! here (`csr_invalid`) before the code is even verified, and never after a license
//! was signed for it. The gateway keeps the key's fingerprint (the retry rule compares
//! them); the issuer checks the CSR again and takes nothing but its key from it.

use alga_protocol::csr::check_csr;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

pub use alga_protocol::csr::MAX_CSR_PEM;

/// A CSR whose key type and self-signature the issuer accepts.
#[derive(Debug, Clone)]
pub struct Csr {
    pem: String,
    /// Hex SHA-256 of the DER SubjectPublicKeyInfo.
    fingerprint: String,
}

impl Csr {
    /// Parses a PEM `CERTIFICATE REQUEST`, checks its key type and its self-signature.
    pub fn parse(pem_text: &str) -> Result<Csr, ApiError> {
        let c = check_csr(pem_text).map_err(|e| ApiError::CsrInvalid(e.to_string()))?;
        Ok(Csr {
            pem: pem_text.to_owned(),
            fingerprint: hex::encode(Sha256::digest(&c.spki_der)),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_csr_invalid_and_the_fingerprint_is_the_spki_hash() {
        assert!(matches!(Csr::parse("hello"), Err(ApiError::CsrInvalid(_))));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let pem = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let c = Csr::parse(&pem).expect("a P-256 CSR");
        let spki = check_csr(&pem).expect("checked").spki_der;
        assert_eq!(c.fingerprint(), hex::encode(Sha256::digest(&spki)));
        // The key's own SubjectPublicKeyInfo: the same key, the same fingerprint.
        assert_eq!(
            c.fingerprint(),
            hex::encode(Sha256::digest(
                rcgen::PublicKeyData::subject_public_key_info(&key)
            ))
        );
    }
}
