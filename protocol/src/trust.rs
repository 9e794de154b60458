//! What an appliance trusts, and how it checks it: everything it accepts from the
//! service must chain to a **trust root** whose private key lives in the HSM and signs
//! only in key ceremonies. The root's certificate ships with the appliance (its
//! "trust root" file); nothing the service says at run time can add to it.
//!
//! ```text
//!   trust root (X.509, self-signed, HSM key `alga-root-v<R>`, pinned on the appliance)
//!    ├── appliance CA certificate (X.509, issued by the root)  ── appliance credentials
//!    └── license-key endorsement (JWS, signed by the root)      ── license JWTs
//! ```
//!
//! **License keys.** Each license key version gets an *endorsement*: a compact JWS,
//! ES256, signed by the root, whose payload ([`KeyEndorsement`]) names the license
//! key (as a JWK with its `kid`), the `iss` its licenses carry, the endorsement's
//! validity, and per edition the most a license may grant ([`EditionBounds`]: features,
//! seats, lifetime), taken from the policy at the ceremony. Its protected header is
//! `{"alg":"ES256","typ":"alga-license-key+jws","x5t#S256":<thumbprint of the root
//! certificate>}`. Every license JWT carries its key's endorsement in the header
//! parameter [`ENDORSEMENT_HEADER`], so a license verifies with nothing but the root:
//! online, offline (air-gapped sites), and years after its key was rotated.
//!
//! **Credentials.** The appliance CA's certificate as the root issued it travels as
//! the credential's chain; the appliance checks leaf → CA → pinned root.
//!
//! Everything here is pure (no I/O, time passed in). Errors say what failed without
//! echoing what was received.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use x509_parser::prelude::*;

use crate::issuer_api::{Jwk, LICENSE_AUDIENCE, LicenseClaims};

/// The license JWT header parameter that carries the signing key's endorsement.
pub const ENDORSEMENT_HEADER: &str = "alga_key_endorsement";

/// The `typ` of an endorsement's protected header.
pub const ENDORSEMENT_TYP: &str = "alga-license-key+jws";

/// Largest endorsement accepted (a policy with many editions stays far below).
const MAX_ENDORSEMENT: usize = 32 * 1024;

/// What the root says about one license key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEndorsement {
    /// The license key (EC P-256, ES256) and its `kid`.
    pub key: Jwk,
    /// The `iss` of every license this key signs.
    pub iss: String,
    /// From when (NumericDate) the endorsement is valid.
    pub nbf: i64,
    /// Until when (NumericDate): no license signed by the key may outlive it.
    pub exp: i64,
    /// Per paid edition, the most a license of it may grant.
    pub editions: BTreeMap<String, EditionBounds>,
}

/// The most a license of one edition may grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditionBounds {
    /// Every feature a license may list.
    pub features: Vec<String>,
    /// The most seats.
    pub seats: u32,
    /// The longest lifetime (`exp − nbf`), seconds.
    pub license_lifetime_seconds: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndorsementHeader {
    alg: String,
    typ: String,
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

impl KeyEndorsement {
    /// The JWS signing input (`header.payload`) of this endorsement by the root whose
    /// certificate is `root_der`: the ceremony signs its SHA-256 with the root key.
    pub fn signing_input(&self, root_der: &[u8]) -> String {
        let header = EndorsementHeader {
            alg: "ES256".into(),
            typ: ENDORSEMENT_TYP.into(),
            x5t_s256: B64URL.encode(Sha256::digest(root_der)),
        };
        // Serializing these plain structs cannot fail.
        let h = serde_json::to_vec(&header).unwrap_or_default();
        let p = serde_json::to_vec(self).unwrap_or_default();
        format!("{}.{}", B64URL.encode(h), B64URL.encode(p))
    }

    /// The payload of an endorsement JWS, **without** checking its signature: for the
    /// issuer reading back what its own ceremony stored on the token.
    pub fn from_jws_unverified(jws: &str) -> Option<KeyEndorsement> {
        let (_, p, _) = three_parts(jws)?;
        decode_json(p)
    }

    /// Whether this endorsement lets the key sign every license `wanted` describes
    /// (the issuer checks its policy against the active key's endorsement at start).
    /// Returns what is not covered, empty when everything is.
    pub fn uncovered(&self, iss: &str, wanted: &BTreeMap<String, EditionBounds>) -> Vec<String> {
        let mut out = Vec::new();
        if self.iss != iss {
            out.push(format!(
                "the license issuer is {iss:?}, the endorsement's {:?}",
                self.iss
            ));
        }
        for (name, want) in wanted {
            let Some(have) = self.editions.get(name) else {
                out.push(format!("edition {name} is not endorsed"));
                continue;
            };
            for f in &want.features {
                if !have.features.contains(f) {
                    out.push(format!("edition {name}: feature {f} is not endorsed"));
                }
            }
            if want.seats > have.seats {
                out.push(format!(
                    "edition {name}: {} seats, the endorsement allows {}",
                    want.seats, have.seats
                ));
            }
            if want.license_lifetime_seconds > have.license_lifetime_seconds {
                out.push(format!(
                    "edition {name}: a license lifetime of {} s, the endorsement allows {} s",
                    want.license_lifetime_seconds, have.license_lifetime_seconds
                ));
            }
        }
        out
    }
}

/// The compact JWS of a signing input and its raw `r‖s` ES256 signature.
pub fn compact_jws(signing_input: &str, signature: &[u8; 64]) -> String {
    format!("{signing_input}.{}", B64URL.encode(signature))
}

/// Why something the service sent does not chain to the trust root, or says more than
/// the root allows. The messages are shown to the person installing the appliance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The pinned trust root bundle is unusable (not PEM, something else than
    /// certificates, none, or a certificate that is not a self-signed P-256 CA); the
    /// text says why.
    #[error("the trust root file is unusable: {0}")]
    Roots(&'static str),
    /// Not three base64url JSON parts, or a header without `alg: ES256` and a `kid`.
    #[error("the license is not a well-formed ES256 JWT")]
    LicenseMalformed,
    /// The header has no endorsement of the signing key.
    #[error("the license carries no endorsement of its signing key")]
    NoEndorsement,
    /// The endorsement does not verify against any pinned root.
    #[error("the license's signing key is not endorsed by the pinned trust root")]
    NotEndorsed,
    /// The endorsement is too long, not an ES256 JWS of its type, or carries an
    /// unusable key.
    #[error("the endorsement of the license's signing key is malformed")]
    EndorsementMalformed,
    /// The endorsement is outside its validity, or outside its root's.
    #[error("the endorsement of the license's signing key is not valid now")]
    EndorsementNotValid,
    /// The token's `kid` is not the endorsed key's.
    #[error("the license names another key than its endorsement")]
    KeyMismatch,
    /// The ES256 signature does not verify with the endorsed key.
    #[error("the license signature does not verify")]
    BadSignature,
    /// `iss` is not the issuer the key is endorsed for.
    #[error("the license is from another issuer than its key is endorsed for")]
    WrongIssuer,
    /// `aud` is not the appliance audience.
    #[error("the license is not for an appliance")]
    WrongAudience,
    /// `sub` is not the expected tenant.
    #[error("the license is for another tenant")]
    WrongTenant,
    /// `appliance_id` is not the expected appliance.
    #[error("the license is for another appliance")]
    WrongAppliance,
    /// `edition` is not the expected edition.
    #[error("the license is for another edition")]
    WrongEdition,
    /// The license grants more than the endorsement allows its edition (features,
    /// seats, lifetime, expiry); the text names which.
    #[error("the license grants more than its key is endorsed for: {0}")]
    BeyondBounds(String),
    /// `nbf` is after now (beyond the allowed clock skew).
    #[error("the license is not valid yet (check this appliance's clock)")]
    NotYetValid,
    /// `exp` is not after now.
    #[error("the license has already expired")]
    Expired,
    /// The leaf or the CA certificate is not a DER X.509 certificate.
    #[error("the certificate chain is malformed")]
    ChainMalformed,
    /// The appliance CA is not signed by any pinned root.
    #[error("the credential's CA is not certified by the pinned trust root")]
    CaNotCertified,
    /// The appliance CA certificate is not a CA that signs certificates, or is outside
    /// its validity.
    #[error("the credential's CA certificate is not a CA, or not valid now")]
    CaNotValid,
    /// The leaf is not signed by the appliance CA.
    #[error("the certificate is not signed by its CA")]
    LeafNotSigned,
    /// The leaf's validity ends after its CA's.
    #[error("the certificate outlives its CA")]
    LeafOutlivesCa,
}

/// One pinned root.
#[derive(Debug, Clone)]
struct Root {
    der: Vec<u8>,
    thumbprint: String,
    subject: Vec<u8>,
    spki: Vec<u8>,
    key: VerifyingKey,
    not_before: i64,
    not_after: i64,
}

/// The appliance's pinned trust roots (usually one; a second during a planned root
/// change).
#[derive(Debug, Clone)]
pub struct TrustRoots {
    roots: Vec<Root>,
}

/// What a license must name besides being validly signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseExpectation {
    pub tenant_id: Uuid,
    pub appliance_id: Uuid,
    pub edition: String,
}

impl TrustRoots {
    /// The roots of a PEM bundle: each a self-signed CA certificate (signature
    /// checked) with an EC P-256 key. A bundle with no certificate, or with anything
    /// else in it, is refused.
    pub fn from_pem(pem: &[u8]) -> Result<TrustRoots, TrustError> {
        let mut roots = Vec::new();
        for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let p = p.map_err(|_| TrustError::Roots("it is not PEM"))?;
            if p.label != "CERTIFICATE" {
                return Err(TrustError::Roots(
                    "it holds something else than certificates",
                ));
            }
            roots.push(root(&p.contents)?);
        }
        if roots.is_empty() {
            return Err(TrustError::Roots("it holds no certificate"));
        }
        Ok(TrustRoots { roots })
    }

    /// The roots' certificates as PEM (what the appliance keeps in its license seed).
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| pem_of(&r.der)).collect()
    }

    /// Verifies an endorsement JWS against the roots, valid at `now` (± `skew`).
    pub fn verify_endorsement(
        &self,
        jws: &str,
        now: i64,
        skew: i64,
    ) -> Result<KeyEndorsement, TrustError> {
        if jws.len() > MAX_ENDORSEMENT {
            return Err(TrustError::EndorsementMalformed);
        }
        let (h, p, s) = three_parts(jws).ok_or(TrustError::EndorsementMalformed)?;
        let header: EndorsementHeader = decode_json(h).ok_or(TrustError::EndorsementMalformed)?;
        if header.alg != "ES256" || header.typ != ENDORSEMENT_TYP {
            return Err(TrustError::EndorsementMalformed);
        }
        let root = self
            .roots
            .iter()
            .find(|r| r.thumbprint == header.x5t_s256)
            .ok_or(TrustError::NotEndorsed)?;
        let signature = B64URL
            .decode(s)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(TrustError::NotEndorsed)?;
        root.key
            .verify(&jws.as_bytes()[..h.len() + 1 + p.len()], &signature)
            .map_err(|_| TrustError::NotEndorsed)?;
        let e: KeyEndorsement = decode_json(p).ok_or(TrustError::EndorsementMalformed)?;
        if e.key.kty != "EC" || e.key.crv != "P-256" || e.key.alg != "ES256" {
            return Err(TrustError::EndorsementMalformed);
        }
        if now + skew < e.nbf || now >= e.exp || e.exp > root.not_after || e.nbf < root.not_before {
            return Err(TrustError::EndorsementNotValid);
        }
        Ok(e)
    }

    /// Verifies a license JWT: its header's endorsement chains to a root, the `kid`
    /// is the endorsed key's, the ES256 signature verifies with that key (the
    /// algorithm is fixed, never taken from the token), `iss` is the endorsed issuer,
    /// `aud` the appliance audience, `sub`, `appliance_id` and `edition` are the
    /// expected ones, it is valid at `now` (`nbf` with `skew`), and it grants no more
    /// than the endorsement allows its edition (features, seats, lifetime, and no
    /// later expiry than the endorsement's).
    pub fn verify_license(
        &self,
        token: &str,
        expected: &LicenseExpectation,
        now: i64,
        skew: i64,
    ) -> Result<LicenseClaims, TrustError> {
        let (h, c, s) = three_parts(token).ok_or(TrustError::LicenseMalformed)?;
        let header: serde_json::Map<String, serde_json::Value> =
            decode_json(h).ok_or(TrustError::LicenseMalformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err(TrustError::LicenseMalformed);
        }
        let kid = header
            .get("kid")
            .and_then(|k| k.as_str())
            .ok_or(TrustError::LicenseMalformed)?;
        let endorsement = header
            .get(ENDORSEMENT_HEADER)
            .and_then(|e| e.as_str())
            .ok_or(TrustError::NoEndorsement)?;
        let e = self.verify_endorsement(endorsement, now, skew)?;
        if e.key.kid != kid {
            return Err(TrustError::KeyMismatch);
        }
        let key = verifying_key(&e.key).ok_or(TrustError::EndorsementMalformed)?;
        let signature = B64URL
            .decode(s)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(TrustError::BadSignature)?;
        key.verify(&token.as_bytes()[..h.len() + 1 + c.len()], &signature)
            .map_err(|_| TrustError::BadSignature)?;
        let claims: LicenseClaims = decode_json(c).ok_or(TrustError::LicenseMalformed)?;
        if claims.iss != e.iss {
            return Err(TrustError::WrongIssuer);
        }
        if claims.aud != LICENSE_AUDIENCE {
            return Err(TrustError::WrongAudience);
        }
        if Uuid::try_parse(&claims.sub).ok() != Some(expected.tenant_id) {
            return Err(TrustError::WrongTenant);
        }
        if Uuid::try_parse(&claims.appliance_id).ok() != Some(expected.appliance_id) {
            return Err(TrustError::WrongAppliance);
        }
        if claims.edition != expected.edition {
            return Err(TrustError::WrongEdition);
        }
        let bounds = e.editions.get(&claims.edition).ok_or_else(|| {
            TrustError::BeyondBounds(format!("edition {} is not endorsed", claims.edition))
        })?;
        within_bounds(&claims, bounds, e.exp)?;
        if claims.nbf > now + skew {
            return Err(TrustError::NotYetValid);
        }
        if claims.exp <= now {
            return Err(TrustError::Expired);
        }
        Ok(claims)
    }

    /// Checks that `ca_der` is an appliance CA certificate issued by one of the roots
    /// and valid at `now`, that it signed `leaf_der`, and that the leaf does not outlive
    /// it. (What the leaf must say about the appliance is the caller's check.)
    pub fn verify_credential_chain(
        &self,
        leaf_der: &[u8],
        ca_der: &[u8],
        now: i64,
        skew: i64,
    ) -> Result<(), TrustError> {
        let (_, ca) = X509Certificate::from_der(ca_der).map_err(|_| TrustError::ChainMalformed)?;
        let (_, leaf) =
            X509Certificate::from_der(leaf_der).map_err(|_| TrustError::ChainMalformed)?;
        let root = self
            .roots
            .iter()
            .find(|r| r.subject == ca.issuer().as_raw())
            .ok_or(TrustError::CaNotCertified)?;
        let root_spki = SubjectPublicKeyInfo::from_der(&root.spki)
            .map_err(|_| TrustError::CaNotCertified)?
            .1;
        ca.verify_signature(Some(&root_spki))
            .map_err(|_| TrustError::CaNotCertified)?;
        let is_ca = matches!(ca.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        let signs_certs = matches!(ca.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign());
        let ca_from = ca.validity().not_before.timestamp();
        let ca_until = ca.validity().not_after.timestamp();
        if !is_ca || !signs_certs || now + skew < ca_from || now >= ca_until {
            return Err(TrustError::CaNotValid);
        }
        if leaf.issuer().as_raw() != ca.subject().as_raw() {
            return Err(TrustError::LeafNotSigned);
        }
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| TrustError::LeafNotSigned)?;
        if leaf.validity().not_after.timestamp() > ca_until {
            return Err(TrustError::LeafOutlivesCa);
        }
        Ok(())
    }
}

/// A license's grant against its edition's bounds and its endorsement's expiry.
fn within_bounds(
    c: &LicenseClaims,
    b: &EditionBounds,
    endorsement_exp: i64,
) -> Result<(), TrustError> {
    let beyond = |what: String| Err(TrustError::BeyondBounds(what));
    if let Some(f) = c
        .entitlements
        .features
        .iter()
        .find(|f| !b.features.contains(f))
    {
        return beyond(format!("feature {f}"));
    }
    if c.entitlements.seats > b.seats {
        return beyond(format!(
            "{} seats (at most {})",
            c.entitlements.seats, b.seats
        ));
    }
    let lifetime = c.exp.saturating_sub(c.nbf.min(c.iat));
    if lifetime < 0 || lifetime as u64 > b.license_lifetime_seconds {
        return beyond(format!(
            "a lifetime of {lifetime} s (at most {} s)",
            b.license_lifetime_seconds
        ));
    }
    if c.exp > endorsement_exp {
        return beyond("an expiry after its key's endorsement".into());
    }
    Ok(())
}

fn root(der: &[u8]) -> Result<Root, TrustError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|_| TrustError::Roots("a certificate is not X.509"))?;
    if !rest.is_empty() {
        return Err(TrustError::Roots("a certificate has trailing bytes"));
    }
    if cert.subject().as_raw() != cert.issuer().as_raw() || cert.verify_signature(None).is_err() {
        return Err(TrustError::Roots("a certificate is not self-signed"));
    }
    if !matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(TrustError::Roots("a certificate is not a CA"));
    }
    let key = VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data)
        .map_err(|_| TrustError::Roots("a root key is not EC P-256"))?;
    Ok(Root {
        der: der.to_vec(),
        thumbprint: B64URL.encode(Sha256::digest(der)),
        subject: cert.subject().as_raw().to_vec(),
        spki: cert.public_key().raw.to_vec(),
        key,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The P-256 key of a JWK (point on the curve), if it is one.
pub fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    let x = B64URL.decode(&jwk.x).ok()?;
    let y = B64URL.decode(&jwk.y).ok()?;
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    VerifyingKey::from_sec1_bytes(&sec1).ok()
}

fn three_parts(token: &str) -> Option<(&str, &str, &str)> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Some((h, p, s)),
        _ => None,
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&B64URL.decode(part).ok()?).ok()
}

/// PEM of a DER certificate (LF line endings).
pub fn pem_of(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

#[cfg(test)]
mod tests;
