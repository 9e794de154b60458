//! Air-gapped installs and offline refresh: the files an appliance without a network
//! hands to a relay (a connected machine), and the relayed check-in's wire type.
//!
//! Four files, each versioned JSON with a `format` field checked first:
//!
//! | format | written by | holds |
//! |---|---|---|
//! | [`REDEEM_REQUEST_FORMAT`] | `redeem --offline-request` | nonce, the `POST /register` body (the install code: a secret) |
//! | [`REDEEM_RESPONSE_FORMAT`] | `relay` | nonce, SHA-256 of the request file, the `/register` answer |
//! | [`CHECK_IN_REQUEST_FORMAT`] | `check-in --offline-request` | a [`RelayedCheckIn`]: signed payload and signature |
//! | [`CHECK_IN_RESPONSE_FORMAT`] | `relay` | nonce, SHA-256 of the request file, the check-in answer |
//!
//! The relayed check-in is authenticated by the appliance's own key, not by a TLS
//! client certificate: the payload carries the appliance's certificate chain, a nonce
//! and the time it was made, and is signed (ECDSA P-256, SHA-256, `r‖s`) under
//! [`CHECK_IN_SIGNING_CONTEXT`] with the key of that certificate. The payload travels
//! as base64url of its exact bytes, so nothing is re-serialized before verification.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::api::{CheckInRequest, CheckInResponse, RedeemRequest, RedeemResponse};

/// `POST` path of a relayed check-in (no client certificate).
pub const RELAYED_CHECK_IN: &str = "/check-in/relayed";

/// The format of an offline redeem request file.
pub const REDEEM_REQUEST_FORMAT: &str = "alga-offline-redeem-request/v1";
/// The format of an offline redeem response file.
pub const REDEEM_RESPONSE_FORMAT: &str = "alga-offline-redeem-response/v1";
/// The format of an offline check-in request file (and of the relayed check-in body).
pub const CHECK_IN_REQUEST_FORMAT: &str = "alga-offline-check-in-request/v1";
/// The format of an offline check-in response file.
pub const CHECK_IN_RESPONSE_FORMAT: &str = "alga-offline-check-in-response/v1";

/// Prefixed to the payload's bytes before signing: a signature made for a relayed
/// check-in cannot be taken for anything else the appliance key signs (its CSRs, its
/// TLS handshakes).
pub const CHECK_IN_SIGNING_CONTEXT: &[u8] = b"alga-relayed-check-in/v1\n";

/// How old a relayed check-in may be when the service receives it, in seconds (7
/// days: a request carried on removable media). Older ones are refused.
pub const CHECK_IN_MAX_AGE_SECONDS: i64 = 7 * 24 * 3600;
/// How far in the future a relayed check-in's time may be (the appliance's clock).
pub const CHECK_IN_MAX_SKEW_SECONDS: i64 = 300;

/// Just the `format` field, read first so that another version is told as such.
#[derive(Debug, Clone, Deserialize)]
pub struct FormatOnly {
    pub format: String,
}

/// `redeem --offline-request`'s file. Holds the install code: a secret in transit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRedeemRequest {
    /// [`REDEEM_REQUEST_FORMAT`].
    pub format: String,
    /// Random; the response must repeat it.
    pub nonce: Uuid,
    /// When the appliance wrote it (RFC 3339), for the operator.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// Exactly the body `POST /register` takes (code, CSR, appliance information).
    pub redeem: RedeemRequest,
}

/// `relay`'s answer to an [`OfflineRedeemRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRedeemResponse {
    /// [`REDEEM_RESPONSE_FORMAT`].
    pub format: String,
    /// The request's nonce.
    pub nonce: Uuid,
    /// Lower-case hex SHA-256 of the request file's bytes.
    pub request_sha256: String,
    /// The service's answer, as `POST /register` returned it.
    pub response: RedeemResponse,
}

/// `check-in --offline-request`'s file, and the body of `POST /check-in/relayed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayedCheckIn {
    /// [`CHECK_IN_REQUEST_FORMAT`].
    pub format: String,
    /// base64url (no padding) of a [`RelayedCheckInPayload`]'s JSON bytes.
    pub payload: String,
    /// base64url of the ECDSA P-256 signature (`r‖s`, 64 bytes) over
    /// [`CHECK_IN_SIGNING_CONTEXT`] ‖ the payload's bytes, by the appliance's key.
    pub signature: String,
}

/// What a relayed check-in says, signed by the appliance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayedCheckInPayload {
    /// Random: a request is accepted once.
    pub nonce: Uuid,
    /// When the appliance made it, Unix seconds.
    pub issued_at: i64,
    /// The appliance's certificate, then its CA chain (PEM): the credential an mTLS
    /// check-in would present.
    pub certificate_chain: String,
    /// Exactly the body `POST /check-in` takes.
    pub check_in: CheckInRequest,
}

/// `relay`'s answer to a [`RelayedCheckIn`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineCheckInResponse {
    /// [`CHECK_IN_RESPONSE_FORMAT`].
    pub format: String,
    /// The request payload's nonce.
    pub nonce: Uuid,
    /// Lower-case hex SHA-256 of the request file's bytes.
    pub request_sha256: String,
    /// The service's answer, as `POST /check-in/relayed` returned it.
    pub response: CheckInResponse,
}

/// Why a relayed check-in's signature or payload is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayedError {
    /// The `format` is not [`CHECK_IN_REQUEST_FORMAT`].
    #[error("the request's format is not {CHECK_IN_REQUEST_FORMAT}")]
    Format,
    /// The payload or signature is not base64url, or the payload not the JSON expected.
    #[error("the request is malformed")]
    Malformed,
    /// The key is not a P-256 point, or the signature does not verify with it.
    #[error("the request's signature does not verify with the appliance's key")]
    BadSignature,
}

impl RelayedCheckIn {
    /// The signed payload's bytes (still unverified).
    pub fn payload_bytes(&self) -> Result<Vec<u8>, RelayedError> {
        if self.format != CHECK_IN_REQUEST_FORMAT {
            return Err(RelayedError::Format);
        }
        B64URL
            .decode(&self.payload)
            .map_err(|_| RelayedError::Malformed)
    }

    /// Verifies the signature with `public_point` (a SEC1 P-256 point, as in the
    /// certificate's SPKI) and returns the payload it covers.
    pub fn verify(&self, public_point: &[u8]) -> Result<RelayedCheckInPayload, RelayedError> {
        let bytes = self.payload_bytes()?;
        let key =
            VerifyingKey::from_sec1_bytes(public_point).map_err(|_| RelayedError::BadSignature)?;
        let sig = B64URL
            .decode(&self.signature)
            .map_err(|_| RelayedError::Malformed)?;
        let sig = Signature::from_slice(&sig).map_err(|_| RelayedError::BadSignature)?;
        key.verify(&signing_input(&bytes), &sig)
            .map_err(|_| RelayedError::BadSignature)?;
        serde_json::from_slice(&bytes).map_err(|_| RelayedError::Malformed)
    }

    /// The payload without checking the signature: only for the appliance's own
    /// request, or to find the certificate the signature must then be checked with.
    pub fn payload_unverified(&self) -> Result<RelayedCheckInPayload, RelayedError> {
        serde_json::from_slice(&self.payload_bytes()?).map_err(|_| RelayedError::Malformed)
    }

    /// SHA-256 of the signed payload: what the service stores so that a request is
    /// accepted once.
    pub fn payload_sha256(&self) -> Result<[u8; 32], RelayedError> {
        Ok(Sha256::digest(self.payload_bytes()?).into())
    }
}

/// The bytes the appliance signs: [`CHECK_IN_SIGNING_CONTEXT`] ‖ `payload`.
pub fn signing_input(payload: &[u8]) -> Vec<u8> {
    let mut v = CHECK_IN_SIGNING_CONTEXT.to_vec();
    v.extend_from_slice(payload);
    v
}

/// base64url without padding, as the files use it.
pub fn b64url(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// Lower-case hex SHA-256 of a file's bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CheckInAppliance;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;

    fn signed(key: &SigningKey) -> RelayedCheckIn {
        let payload = RelayedCheckInPayload {
            nonce: Uuid::new_v4(),
            issued_at: 1_700_000_000,
            certificate_chain: "-----BEGIN CERTIFICATE-----\n".into(),
            check_in: CheckInRequest {
                appliance: CheckInAppliance {
                    version: "1".into(),
                },
                csr: None,
            },
        };
        let bytes = serde_json::to_vec(&payload).expect("json");
        let sig: Signature = key.sign(&signing_input(&bytes));
        RelayedCheckIn {
            format: CHECK_IN_REQUEST_FORMAT.into(),
            payload: b64url(&bytes),
            signature: b64url(&sig.to_bytes()),
        }
    }

    #[test]
    fn a_signature_verifies_with_its_key_only_and_covers_every_byte() {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let other = SigningKey::random(&mut rand::rngs::OsRng);
        let other_point = other.verifying_key().to_encoded_point(false);
        let r = signed(&key);
        assert!(r.verify(point.as_bytes()).is_ok());
        assert_eq!(
            r.verify(other_point.as_bytes()).err(),
            Some(RelayedError::BadSignature)
        );
        // One payload byte changed.
        let mut bytes = r.payload_bytes().expect("bytes");
        bytes[10] ^= 1;
        let tampered = RelayedCheckIn {
            payload: b64url(&bytes),
            ..r.clone()
        };
        assert!(tampered.verify(point.as_bytes()).is_err());
        // Another version.
        let v2 = RelayedCheckIn {
            format: "alga-offline-check-in-request/v2".into(),
            ..r
        };
        assert_eq!(
            v2.verify(point.as_bytes()).err(),
            Some(RelayedError::Format)
        );
    }

    #[test]
    fn file_digest_is_lower_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
