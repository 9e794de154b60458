//! The appliance's CSR, checked once for both processes: the gateway refuses what the
//! issuer would refuse before anything is verified or signed, and the issuer takes
//! nothing from a CSR but the key this check returns.
//!
//! Accepted: at most [`MAX_CSR_PEM`] bytes of PEM, exactly one `CERTIFICATE REQUEST`
//! (or `NEW CERTIFICATE REQUEST`) block, a PKCS#10 request with nothing after it, a key
//! that is an EC P-256 point on the curve or a 32-byte Ed25519 key without parameters,
//! and a self-signature that verifies under that key. RSA of any size, other curves and
//! everything else are refused.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

/// Largest CSR accepted (PEM text). A P-256 or Ed25519 CSR is well under 2 KiB.
pub const MAX_CSR_PEM: usize = 16 * 1024;

/// Why a CSR is refused, in a sentence (never the CSR itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CsrError(pub &'static str);

/// The kind of key a CSR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKeyType {
    EcP256,
    Ed25519,
}

/// A CSR that passed [`check_csr`]: its verified key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The SubjectPublicKeyInfo (DER), as it was signed.
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey bits (SEC1 point or Ed25519 key).
    pub key: Vec<u8>,
    pub key_type: CsrKeyType,
}

/// Parses a PEM CSR, checks its key type and its self-signature; returns its key.
pub fn check_csr(csr_pem: &str) -> Result<CheckedCsr, CsrError> {
    if csr_pem.len() > MAX_CSR_PEM {
        return Err(CsrError("the CSR is too large"));
    }
    let blocks = pem::parse_many(csr_pem).map_err(|_| CsrError("the CSR is not PEM"))?;
    let [block] = blocks.as_slice() else {
        return Err(CsrError("the CSR must be exactly one PEM block"));
    };
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(CsrError("the PEM block is not a CERTIFICATE REQUEST"));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|_| CsrError("the CSR is not a PKCS#10 request"))?;
    if !rest.is_empty() {
        return Err(CsrError("trailing bytes after the CSR"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key = spki.subject_public_key.data.to_vec();
    let key_type = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(CsrError("EC keys must be on P-256"));
        }
        if p256::PublicKey::from_sec1_bytes(&key).is_err() {
            return Err(CsrError("the P-256 point is not on the curve"));
        }
        CsrKeyType::EcP256
    } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() {
            return Err(CsrError("Ed25519 keys take no parameters"));
        }
        let bytes: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| CsrError("an Ed25519 key is 32 bytes"))?;
        if ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err() {
            return Err(CsrError("not an Ed25519 public key"));
        }
        CsrKeyType::Ed25519
    } else {
        return Err(CsrError("the key must be EC P-256 or Ed25519"));
    };
    csr.verify_signature()
        .map_err(|_| CsrError("the CSR's self-signature does not verify"))?;
    Ok(CheckedCsr {
        spki_der: spki.raw.to_vec(),
        key,
        key_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        rcgen::CertificateParams::new(vec!["appliance.example".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    /// What is accepted and what is refused, by kind of CSR.
    #[test]
    fn accepted_and_refused() {
        let good = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let ed = csr(&rcgen::PKCS_ED25519);
        let der = |t: &str| pem::parse(t).expect("pem").contents().to_vec();
        let mut bad_sig = der(&good);
        let last = bad_sig.len() - 3;
        bad_sig[last] ^= 0x01;
        let bad_sig = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bad_sig));
        let mut trailing = der(&good);
        trailing.extend_from_slice(&[0, 0]);
        let trailing = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", trailing));
        let cases: Vec<(&str, String, Option<CsrKeyType>)> =
            vec![
            ("P-256", good.clone(), Some(CsrKeyType::EcP256)),
            ("Ed25519", ed.clone(), Some(CsrKeyType::Ed25519)),
            ("P-256, CRLF", good.replace('\n', "\r\n"), Some(CsrKeyType::EcP256)),
            ("surrounding blank lines", format!("\n\n{good}\n"), Some(CsrKeyType::EcP256)),
            (
                "NEW CERTIFICATE REQUEST",
                good.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"),
                Some(CsrKeyType::EcP256),
            ),
            ("RSA-2048", include_str!("../testdata/rsa2048.csr.pem").to_owned(), None),
            ("P-384", csr(&rcgen::PKCS_ECDSA_P384_SHA384), None),
            ("two blocks", format!("{good}{good}"), None),
            ("P-256 then Ed25519", format!("{good}{ed}"), None),
            ("bad self-signature", bad_sig, None),
            ("trailing bytes", trailing, None),
            ("a certificate block", good.replace("CERTIFICATE REQUEST", "CERTIFICATE"), None),
            (
                "garbage",
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .to_owned(),
                None,
            ),
            ("empty", String::new(), None),
            ("not PEM", "hello".to_owned(), None),
            ("huge", format!("{good}{}", " ".repeat(MAX_CSR_PEM)), None),
        ];
        for (what, text, want) in cases {
            let got = check_csr(&text);
            assert_eq!(
                got.as_ref().ok().map(|c| c.key_type),
                want,
                "{what}: {got:?}"
            );
            if let Ok(c) = got {
                assert!(c.spki_der.len() > c.key.len(), "{what}");
            }
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
            let _ = check_csr(&text);
            let wrapped = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
            prop_assert!(check_csr(&wrapped).is_err());
        }
    }
}
