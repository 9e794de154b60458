//! The CSR an appliance sends, checked here exactly as the issuer checks it
//! (`alga_issuer::ops::credential::csr_public_key`): at most [`MAX_CSR_PEM`] bytes,
//! exactly one PEM block, a `CERTIFICATE REQUEST`, a PKCS#10 request with nothing after
//! it, a key that is EC P-256 or Ed25519 (RSA of any size and other curves refused), and
//! a self-signature that verifies under that key. A CSR the issuer would refuse is
//! therefore refused (`csr_invalid`) before the code is even verified, and never after
//! a license was signed for it. The gateway keeps the key's fingerprint (the retry
//! rule compares them); the issuer parses the CSR again and takes nothing but the
//! verified key from it.
//!
//! The checks are a copy, not a call (the gateway does not link the issuer), and a test
//! (`agrees_with_the_issuer`) holds them to the issuer's on every kind of CSR the
//! issuer refuses.

use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

use crate::error::ApiError;

/// Largest CSR accepted (PEM text), as at the issuer.
pub const MAX_CSR_PEM: usize = 16 * 1024;

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
        let bad = |m: &str| ApiError::CsrInvalid(m.to_owned());
        if pem_text.len() > MAX_CSR_PEM {
            return Err(bad("the CSR is too large"));
        }
        let blocks = pem::parse_many(pem_text).map_err(|_| bad("the CSR is not PEM"))?;
        let [block] = blocks.as_slice() else {
            return Err(bad("the CSR must be exactly one PEM block"));
        };
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(bad("the PEM block is not a CERTIFICATE REQUEST"));
        }
        let (rest, csr) = X509CertificationRequest::from_der(block.contents())
            .map_err(|_| bad("the CSR is not a PKCS#10 request"))?;
        if !rest.is_empty() {
            return Err(bad("trailing data after the CSR"));
        }
        let spki = &csr.certification_request_info.subject_pki;
        if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            if curve.as_ref() != Some(&OID_EC_P256) {
                return Err(bad("EC keys must be on P-256"));
            }
        } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
            if spki.algorithm.parameters.is_some() {
                return Err(bad("Ed25519 keys take no parameters"));
            }
            if spki.subject_public_key.data.len() != 32 {
                return Err(bad("an Ed25519 key is 32 bytes"));
            }
        } else {
            return Err(bad("the key must be EC P-256 or Ed25519"));
        }
        // Verifying under the key also refuses a point that is not on its curve.
        csr.verify_signature()
            .map_err(|_| bad("the CSR's signature does not verify"))?;
        Ok(Csr {
            pem: pem_text.to_owned(),
            fingerprint: hex::encode(Sha256::digest(spki.raw)),
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

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        rcgen::CertificateParams::new(vec!["appliance.example".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    /// Finding 7: every CSR the issuer refuses is refused here, and every CSR it takes
    /// is taken, so no license is signed for a redeem whose credential would fail.
    #[test]
    fn agrees_with_the_issuer() {
        let good = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let ed = csr(&rcgen::PKCS_ED25519);
        let mut bad_sig = pem::parse(&good).expect("pem").contents().to_vec();
        let last = bad_sig.len() - 3;
        bad_sig[last] ^= 0x01;
        let bad_sig = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bad_sig));
        let mut trailing = pem::parse(&good).expect("pem").contents().to_vec();
        trailing.extend_from_slice(&[0, 0]);
        let trailing = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", trailing));
        let cases: Vec<(&str, String, bool)> = vec![
            ("P-256", good.clone(), true),
            ("Ed25519", ed.clone(), true),
            ("P-256, CRLF", good.replace('\n', "\r\n"), true),
            (
                "P-256, surrounding blank lines",
                format!("\n\n{good}\n"),
                true,
            ),
            (
                "NEW CERTIFICATE REQUEST",
                good.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"),
                true,
            ),
            (
                "RSA-2048",
                include_str!("../../../issuer/src/ops/testdata/rsa2048.csr.pem").to_owned(),
                false,
            ),
            ("P-384", csr(&rcgen::PKCS_ECDSA_P384_SHA384), false),
            ("two blocks", format!("{good}{good}"), false),
            ("P-256 then Ed25519", format!("{good}{ed}"), false),
            ("bad self-signature", bad_sig, false),
            ("trailing bytes", trailing, false),
            (
                "a certificate block",
                good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
                false,
            ),
            ("empty", String::new(), false),
            ("not PEM", "hello".to_owned(), false),
            ("huge", format!("{good}{}", " ".repeat(MAX_CSR_PEM)), false),
        ];
        for (what, text, want) in cases {
            let issuer = alga_issuer::ops::credential::csr_public_key(&text).is_ok();
            let gateway = Csr::parse(&text).is_ok();
            assert_eq!(issuer, want, "{what}: the issuer's verdict changed");
            assert_eq!(
                gateway, issuer,
                "{what}: gateway {gateway}, issuer {issuer}"
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
