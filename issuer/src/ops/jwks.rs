//! License verification keys as a JWK Set (RFC 7517): every version of the license
//! key, each with its `kid` and its algorithm fixed to ES256, so verifiers never take
//! the algorithm from a token.

use alga_protocol::issuer_api::{Jwk, Jwks};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePublicKey;

use crate::Error;
use crate::keyring::{KeyInfo, KeyKind, KeyOps};

/// The JWK of one license key version (x, y from the SPKI's SEC1 point).
pub fn jwk(info: &KeyInfo) -> Result<Jwk, Error> {
    let bad = || Error::internal(format!("{} has no P-256 public key", info.kid));
    let spki = info.public_key_spki.as_deref().ok_or_else(bad)?;
    let key = p256::PublicKey::from_public_key_der(spki).map_err(|_| bad())?;
    let point = key.to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(bad());
    };
    Ok(Jwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x: B64.encode(x),
        y: B64.encode(y),
        kid: info.kid.clone(),
        alg: "ES256".into(),
        use_: "sig".into(),
    })
}

/// Every license key version, oldest first.
pub fn jwks<K: KeyOps>(keys: &K) -> Result<Jwks, Error> {
    let keys = keys
        .keys(KeyKind::License)
        .iter()
        .map(jwk)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Jwks { keys })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    // The P-256 verifying key of a JWK, if it is one (point on the curve): the check
    // appliances make.
    use alga_protocol::trust::verifying_key;

    use super::*;
    use crate::ops::software_keys::SoftwareKeys;

    #[test]
    fn every_version_is_published_and_round_trips() {
        let now = datetime!(2030-01-01 00:00 UTC);
        let keys = SoftwareKeys::new(now);
        keys.rotate(KeyKind::License, now);
        let set = jwks(&keys).expect("jwks");
        let kids: Vec<&str> = set.keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["alga-license-v1", "alga-license-v2"]);
        for (jwk, info) in set.keys.iter().zip(keys.keys(KeyKind::License)) {
            assert_eq!(
                (
                    jwk.kty.as_str(),
                    jwk.crv.as_str(),
                    jwk.alg.as_str(),
                    jwk.use_.as_str()
                ),
                ("EC", "P-256", "ES256", "sig")
            );
            let vk = verifying_key(jwk).expect("on the curve");
            let spki = p256::pkcs8::EncodePublicKey::to_public_key_der(&vk).expect("encodes");
            assert_eq!(Some(spki.as_bytes()), info.public_key_spki.as_deref());
        }
        let mut broken = set.keys[0].clone();
        broken.y = broken.x.clone();
        assert!(
            verifying_key(&broken).is_none(),
            "a point off the curve is no key"
        );
    }
}
