//! License JWTs (CONTRACT.md §5): ES256, built by hand, signed through the HSM.
//!
//! jsonwebtoken signs only with in-memory keys, so the JWS is assembled here: the
//! header `{"alg":"ES256","kid":…,"typ":"JWT"}`, the claims of [`LicenseClaims`], the
//! signing input hashed with SHA-256 locally and the digest signed with the active
//! license key (`CKM_ECDSA`, raw `r‖s` = the JWS signature).
//!
//! The issuer derives everything from its policy: lifetime, features, seats and
//! check-in interval come from the edition; the request may only ask for a shorter
//! lifetime. **Limit:** the issuer has no database, so it trusts the gateway's claim of
//! which edition a tenant has. What it guarantees is that no license exceeds what the
//! named edition allows, and that an unpaid edition never gets one; a compromised
//! gateway can still name `pro` for an essentials tenant. The signing log records
//! every license (tenant, appliance, edition, `jti`) so that reconciling it against
//! the gateway's records finds such a lie afterwards.
//!
//! Verifying a license is not the issuer's business: appliances verify with
//! `alga_protocol::trust::TrustRoots::verify_license`, from the pinned trust root.
//! The issuer's tests have a strict JWKS-based verifier of their own
//! (`tests/it/license_verify.rs`).

use alga_policies::Policy;
use alga_protocol::SecretText;
use alga_protocol::issuer_api::{
    Entitlements, LICENSE_AUDIENCE, LicenseClaims, SignLicenseRequest, SignedLicense,
};
use alga_protocol::signlog::{SignEvent, SignIds, SignOp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::{Signed, active_key, edition, whole_seconds};
use crate::Error;
use crate::keyring::{KeyKind, KeyOps};

/// The JOSE header of every license: with the trust root's endorsement of the key,
/// so that an appliance verifies the license with nothing but its pinned root.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
    #[serde(rename = "alga_key_endorsement")]
    endorsement: String,
}

/// Signs a license for `req.appliance_id` of `req.tenant_id`, valid from `now`.
pub async fn sign<K: KeyOps>(
    keys: &K,
    policy: &Policy,
    req: &SignLicenseRequest,
    now: OffsetDateTime,
) -> Result<Signed<SignedLicense>, Error> {
    let edition = edition(policy, &req.edition)?;
    let terms = edition.paid.ok_or_else(|| Error::EditionNotPaid {
        edition: req.edition.clone(),
    })?;
    let lifetime = bounded_lifetime(terms.license_lifetime, req.lifetime_seconds, "license")?;
    let issued_at = whole_seconds(now);
    let expires_at = issued_at + lifetime;
    let key = active_key(keys, KeyKind::License)?;
    let jti = Uuid::new_v4();
    let claims = LicenseClaims {
        iss: policy.license_issuer.clone(),
        sub: req.tenant_id.hyphenated().to_string(),
        aud: LICENSE_AUDIENCE.to_owned(),
        jti: jti.hyphenated().to_string(),
        iat: issued_at.unix_timestamp(),
        nbf: issued_at.unix_timestamp(),
        exp: expires_at.unix_timestamp(),
        edition: edition.name.clone(),
        entitlements: Entitlements {
            features: edition.features.clone(),
            seats: edition.seats,
            check_in_interval_seconds: seconds(terms.check_in_interval),
        },
        appliance_id: req.appliance_id.hyphenated().to_string(),
        check_in_by: Some(
            (issued_at + terms.overdue_after())
                .min(expires_at)
                .unix_timestamp(),
        ),
    };
    let endorsement = keys
        .license_endorsement(key.version)
        .ok_or_else(|| Error::internal(format!("{} has no endorsement by the root", key.kid)))?;
    let header = Header {
        alg: "ES256".into(),
        kid: key.kid.clone(),
        typ: "JWT".into(),
        endorsement: endorsement.jws,
    };
    let signing_input = format!("{}.{}", b64_json(&header)?, b64_json(&claims)?);
    let digest: [u8; 32] = Sha256::digest(signing_input.as_bytes()).into();
    let signature = keys
        .sign_digest(KeyKind::License, key.version, digest)
        .await?;
    let token = format!("{signing_input}.{}", B64.encode(signature));
    Ok(Signed {
        value: SignedLicense {
            token: SecretText::new(token),
            kid: key.kid.clone(),
            jti,
            issued_at,
            expires_at,
        },
        event: SignEvent {
            time: now,
            op: SignOp::License,
            ids: SignIds {
                tenant_id: Some(req.tenant_id),
                appliance_id: Some(req.appliance_id),
                edition: Some(edition.name.clone()),
                jti: Some(jti),
                expires_at: Some(expires_at),
                ..SignIds::default()
            },
            kid: key.kid,
        },
    })
}

/// The policy's `max` lifetime, or the shorter one the request asks for.
pub(crate) fn bounded_lifetime(
    max: Duration,
    requested: Option<u64>,
    what: &str,
) -> Result<Duration, Error> {
    let Some(asked) = requested else {
        return Ok(max);
    };
    if asked == 0 {
        return Err(Error::BadRequest {
            reason: "lifetime_seconds must be positive".into(),
        });
    }
    match i64::try_from(asked).ok().map(Duration::seconds) {
        Some(asked) if asked <= max => Ok(asked),
        _ => Err(Error::beyond(format!(
            "a {what} may live at most {} ({} s)",
            alga_policies::format_duration(max),
            seconds(max)
        ))),
    }
}

fn seconds(d: Duration) -> u64 {
    u64::try_from(d.whole_seconds()).unwrap_or(0)
}

/// base64url (no padding) of the compact JSON of `value`.
fn b64_json<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_vec(value)
        .map(|bytes| B64.encode(bytes))
        .map_err(|e| Error::internal(format!("JWT encoding: {e}")))
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier;
    use time::macros::datetime;

    use super::*;
    use crate::ops::jwks::jwks;
    use crate::ops::software_keys::{SoftwareKeys, test_policy};

    const NOW: OffsetDateTime = datetime!(2030-06-01 12:00:00.5 UTC);
    const ISS: &str = "https://license.alga.test";

    fn request(edition: &str, lifetime: Option<u64>) -> SignLicenseRequest {
        SignLicenseRequest {
            tenant_id: Uuid::from_u128(0xaaaa),
            appliance_id: Uuid::from_u128(0xbbbb),
            edition: edition.into(),
            lifetime_seconds: lifetime,
        }
    }

    #[tokio::test]
    async fn a_license_carries_the_policy_terms_and_verifies() {
        let keys = SoftwareKeys::new(NOW);
        let signed = sign(&keys, &test_policy(), &request("pro", None), NOW)
            .await
            .expect("signs");
        let token = signed.value.token.expose();
        // The published JWK Set verifies it: ES256 over the signing input.
        let set = jwks(&keys).expect("jwks");
        assert_eq!(set.keys[0].kid, "alga-license-v1");
        let (signing_input, signature) = token.rsplit_once('.').expect("a JWS");
        let signature = p256::ecdsa::Signature::from_slice(&B64.decode(signature).expect("b64"))
            .expect("raw r||s");
        alga_protocol::trust::verifying_key(&set.keys[0])
            .expect("a P-256 key")
            .verify(signing_input.as_bytes(), &signature)
            .expect("the published key verifies the license");
        // What an appliance checks: nothing but the root. It returns the claims.
        let roots = alga_protocol::trust::TrustRoots::from_pem(
            alga_protocol::trust::pem_of(&keys.root_certificates()[0].der).as_bytes(),
        )
        .expect("root");
        let expected = alga_protocol::trust::LicenseExpectation {
            tenant_id: Uuid::from_u128(0xaaaa),
            appliance_id: Uuid::from_u128(0xbbbb),
            edition: "pro".into(),
        };
        let claims = roots
            .verify_license(token, &expected, NOW.unix_timestamp(), 0)
            .expect("verifies against the root");
        assert_eq!(claims.iss, ISS);
        assert_eq!(claims.sub, "00000000-0000-0000-0000-00000000aaaa");
        assert_eq!(claims.appliance_id, "00000000-0000-0000-0000-00000000bbbb");
        assert_eq!(claims.aud, "alga-appliance");
        assert_eq!(
            claims.iat,
            datetime!(2030-06-01 12:00:00 UTC).unix_timestamp()
        );
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.exp - claims.iat, 7 * 86_400);
        assert_eq!(claims.edition, "pro");
        assert_eq!(claims.entitlements.features, ["core", "sso"]);
        assert_eq!(claims.entitlements.seats, 100);
        assert_eq!(claims.entitlements.check_in_interval_seconds, 86_400);
        // The interval (1 day) plus the grace (3 days): overdue after that.
        assert_eq!(claims.check_in_by, Some(claims.iat + 4 * 86_400));
        assert_eq!(claims.jti, signed.value.jti.to_string());
        assert_eq!(signed.value.kid, "alga-license-v1");
        assert_eq!(signed.value.expires_at.unix_timestamp(), claims.exp);
        assert_eq!(signed.event.ids.jti, Some(signed.value.jti));

        let header = signed
            .value
            .token
            .expose()
            .split('.')
            .next()
            .expect("header");
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(header).expect("b64")).expect("json");
        let endorsement = keys.license_endorsement(1).expect("endorsed").jws;
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": "alga-license-v1", "typ": "JWT",
                "alga_key_endorsement": endorsement})
        );
        let shorter = sign(&keys, &test_policy(), &request("pro", Some(3600)), NOW)
            .await
            .expect("signs");
        assert_eq!(
            shorter.value.expires_at - shorter.value.issued_at,
            Duration::hours(1)
        );
    }

    #[tokio::test]
    async fn refusals_table() {
        let keys = SoftwareKeys::new(NOW);
        let policy = test_policy();
        let cases: Vec<(SignLicenseRequest, crate::ops::ErrCheck)> = vec![
            (request("essentials", None), |e| {
                matches!(e, Error::EditionNotPaid { .. })
            }),
            (request("gold", None), |e| {
                matches!(e, Error::UnknownEdition { .. })
            }),
            (request("pro", Some(7 * 86_400 + 1)), |e| {
                matches!(e, Error::BeyondPolicy { .. })
            }),
            (request("pro", Some(10 * 365 * 86_400)), |e| {
                matches!(e, Error::BeyondPolicy { .. })
            }),
            (request("pro", Some(u64::MAX)), |e| {
                matches!(e, Error::BeyondPolicy { .. })
            }),
            (request("pro", Some(0)), |e| {
                matches!(e, Error::BadRequest { .. })
            }),
        ];
        for (req, check) in cases {
            let e = sign(&keys, &policy, &req, NOW).await.expect_err("refused");
            assert!(check(&e), "{req:?}: {e}");
        }
    }
}
