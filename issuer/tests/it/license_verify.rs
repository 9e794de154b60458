//! A strict JWKS-based license verifier, test support only: it checks licenses the
//! issuer signed against the JWK Set it publishes, and refuses forgeries. The
//! product's verifier is `alga_protocol::trust::TrustRoots::verify_license` (what
//! appliances run, from the pinned trust root); this one is independent of it.
//!
//! Strict: the algorithm is fixed per key (ES256 only, whatever the header says), the
//! `kid` must name a key of the set, and `iss`, `aud`, `exp`, `nbf` are checked.

use alga_protocol::issuer_api::{Jwks, LICENSE_AUDIENCE, LicenseClaims};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Verifier;
use time::OffsetDateTime;

/// Why a license token was rejected by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    /// Not three base64url parts, or a part is not the JSON it should be.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not ES256 (`none`, HS256, RS256…): refused before any key is used.
    #[error("algorithm {alg:?} is not accepted (ES256 only)")]
    AlgorithmRefused { alg: String },
    /// The header has no `kid`, or one that is not in the key set.
    #[error("unknown key id")]
    UnknownKid,
    /// The key set entry for the `kid` is not an ES256 P-256 key.
    #[error("key {kid} is not an ES256 P-256 key")]
    UnusableKey { kid: String },
    /// The signature does not verify with the named key.
    #[error("bad signature")]
    BadSignature,
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is not `alga-appliance`.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp` is not after `now`.
    #[error("expired")]
    Expired,
    /// `nbf` is after `now`.
    #[error("not valid yet")]
    NotYetValid,
}

/// Verifies `token` against `jwks` at `now` for issuer `iss`; returns its claims.
///
/// No clock leeway: callers with skewed clocks pass an adjusted `now`.
pub fn verify(
    token: &str,
    jwks: &Jwks,
    now: OffsetDateTime,
    iss: &str,
) -> Result<LicenseClaims, LicenseError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(LicenseError::Malformed);
    };
    let header_json = B64.decode(h).map_err(|_| LicenseError::Malformed)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|_| LicenseError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(LicenseError::Malformed)?;
    if alg != "ES256" {
        return Err(LicenseError::AlgorithmRefused {
            alg: alg.to_owned(),
        });
    }
    let kid = header
        .get("kid")
        .and_then(|k| k.as_str())
        .ok_or(LicenseError::UnknownKid)?;
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or(LicenseError::UnknownKid)?;
    let unusable = || LicenseError::UnusableKey {
        kid: kid.to_owned(),
    };
    if jwk.kty != "EC" || jwk.crv != "P-256" || jwk.alg != "ES256" || jwk.use_ != "sig" {
        return Err(unusable());
    }
    let key = alga_protocol::trust::verifying_key(jwk).ok_or_else(unusable)?;
    let sig_bytes = B64.decode(s).map_err(|_| LicenseError::Malformed)?;
    let signature =
        p256::ecdsa::Signature::from_slice(&sig_bytes).map_err(|_| LicenseError::BadSignature)?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    key.verify(signing_input.as_bytes(), &signature)
        .map_err(|_| LicenseError::BadSignature)?;
    let claims_json = B64.decode(c).map_err(|_| LicenseError::Malformed)?;
    let claims: LicenseClaims =
        serde_json::from_slice(&claims_json).map_err(|_| LicenseError::Malformed)?;
    if claims.iss != iss {
        return Err(LicenseError::WrongIssuer);
    }
    if claims.aud != LICENSE_AUDIENCE {
        return Err(LicenseError::WrongAudience);
    }
    let now = now.unix_timestamp();
    if claims.exp <= now {
        return Err(LicenseError::Expired);
    }
    if claims.nbf > now {
        return Err(LicenseError::NotYetValid);
    }
    Ok(claims)
}
