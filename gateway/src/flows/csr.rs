//! The CSR an appliance sends: parsed and self-signature-checked here only to learn its
//! public key (the retry rule compares key fingerprints). The issuer parses it again and
//! takes nothing but the verified key from it.

use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::error::ApiError;

/// Largest CSR accepted (PEM text).
pub const MAX_CSR_PEM: usize = 16 * 1024;

/// A CSR whose self-signature verified.
#[derive(Debug, Clone)]
pub struct Csr {
    pem: String,
    /// Hex SHA-256 of the DER SubjectPublicKeyInfo.
    fingerprint: String,
}

impl Csr {
    /// Parses a PEM `CERTIFICATE REQUEST` and checks its self-signature.
    pub fn parse(pem_text: &str) -> Result<Csr, ApiError> {
        let bad = |m: &str| ApiError::CsrInvalid(m.to_owned());
        if pem_text.len() > MAX_CSR_PEM {
            return Err(bad("the CSR is too large"));
        }
        let block = pem::parse(pem_text.trim()).map_err(|_| bad("the CSR is not PEM"))?;
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(bad("the PEM block is not a CERTIFICATE REQUEST"));
        }
        let (rest, csr) = X509CertificationRequest::from_der(block.contents())
            .map_err(|_| bad("the CSR is not a PKCS#10 request"))?;
        if !rest.is_empty() {
            return Err(bad("trailing data after the CSR"));
        }
        csr.verify_signature()
            .map_err(|_| bad("the CSR's signature does not verify"))?;
        let spki = csr.certification_request_info.subject_pki.raw;
        Ok(Csr {
            pem: pem_text.to_owned(),
            fingerprint: hex::encode(Sha256::digest(spki)),
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
    fn garbage_refused() {
        for bad in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(
                matches!(Csr::parse(bad), Err(ApiError::CsrInvalid(_))),
                "{bad:?}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary text, and arbitrary bytes wrapped as a PEM CSR: refused, never a panic.
        #[test]
        fn garbage_never_panics(text in any::<String>(), der in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Csr::parse(&text);
            let wrapped = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
            prop_assert!(Csr::parse(&wrapped).is_err());
        }
    }
}
