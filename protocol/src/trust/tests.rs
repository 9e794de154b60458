//! The trust chain against forgeries: each test builds a root, an endorsed license key
//! and an appliance CA in software, then changes one thing.

use ::time::OffsetDateTime;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::*;
use crate::issuer_api::Entitlements;

const NOW: i64 = 1_900_000_000;
const SKEW: i64 = 300;
const ISS: &str = "https://license.alga.test";

fn at(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).expect("time")
}

fn rcgen_key(k: &SigningKey) -> KeyPair {
    let der = k.to_pkcs8_der().expect("pkcs8");
    KeyPair::try_from(der.as_bytes()).expect("rcgen key")
}

fn jwk_of(k: &SigningKey, kid: &str) -> Jwk {
    let point = k.verifying_key().to_encoded_point(false);
    Jwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x: B64URL.encode(point.x().expect("x")),
        y: B64URL.encode(point.y().expect("y")),
        kid: kid.into(),
        alg: "ES256".into(),
        use_: "sig".into(),
    }
}

struct Root {
    key: SigningKey,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn root(cn: &str) -> Root {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(NOW - 86_400);
    p.not_after = at(NOW + 20 * 365 * 86_400);
    let kp = rcgen_key(&key);
    let der = p.self_signed(&kp).expect("root").der().to_vec();
    Root {
        key,
        der,
        issuer: Issuer::new(p, kp),
    }
}

fn bounds() -> BTreeMap<String, EditionBounds> {
    BTreeMap::from([(
        "pro".to_owned(),
        EditionBounds {
            features: vec!["core".into(), "sso".into()],
            seats: 100,
            license_lifetime_seconds: 7 * 86_400,
        },
    )])
}

fn endorse(root: &Root, e: &KeyEndorsement) -> String {
    let input = e.signing_input(&root.der);
    let sig: Signature = root.key.sign(input.as_bytes());
    compact_jws(&input, &sig.to_bytes().into())
}

fn endorsement(key: &SigningKey) -> KeyEndorsement {
    KeyEndorsement {
        key: jwk_of(key, "alga-license-v1"),
        iss: ISS.into(),
        nbf: NOW - 3600,
        exp: NOW + 10 * 365 * 86_400,
        editions: bounds(),
    }
}

fn expected() -> LicenseExpectation {
    LicenseExpectation {
        tenant_id: Uuid::from_u128(1),
        appliance_id: Uuid::from_u128(2),
        edition: "pro".into(),
    }
}

fn claims() -> LicenseClaims {
    LicenseClaims {
        iss: ISS.into(),
        sub: Uuid::from_u128(1).to_string(),
        aud: LICENSE_AUDIENCE.into(),
        jti: "j".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 7 * 86_400,
        edition: "pro".into(),
        entitlements: Entitlements {
            features: vec!["core".into()],
            seats: 100,
            check_in_interval_seconds: 86_400,
        },
        appliance_id: Uuid::from_u128(2).to_string(),
        check_in_by: None,
    }
}

fn sign_license(
    key: &SigningKey,
    kid: &str,
    endorsement: Option<&str>,
    c: &LicenseClaims,
) -> String {
    let mut header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    if let Some(e) = endorsement {
        header[ENDORSEMENT_HEADER] = e.into();
    }
    let input = format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(&header).expect("json")),
        B64URL.encode(serde_json::to_vec(c).expect("json"))
    );
    let sig: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig.to_bytes()))
}

fn roots(r: &Root) -> TrustRoots {
    TrustRoots::from_pem(pem_of(&r.der).as_bytes()).expect("roots")
}

#[test]
fn an_endorsed_license_verifies() {
    let r = root("alga-license root v1");
    let k = SigningKey::random(&mut rand::rngs::OsRng);
    let e = endorse(&r, &endorsement(&k));
    let t = sign_license(&k, "alga-license-v1", Some(&e), &claims());
    let got = roots(&r)
        .verify_license(&t, &expected(), NOW, SKEW)
        .expect("verifies");
    assert_eq!(got, claims());
}

#[test]
fn forgeries_are_refused_each_for_its_reason() {
    let r = root("alga-license root v1");
    let k = SigningKey::random(&mut rand::rngs::OsRng);
    let e = endorse(&r, &endorsement(&k));
    let trust = roots(&r);
    let check = |t: &str| trust.verify_license(t, &expected(), NOW, SKEW).err();

    // The experiment of the review: a random key with its own one-key "endorsement"
    // by a root the appliance does not pin, another iss, ten years and a million seats.
    let rogue_root = root("alga-license root v1");
    let rogue = SigningKey::random(&mut rand::rngs::OsRng);
    let mut big = claims();
    big.iss = "https://evil.example".into();
    big.exp = NOW + 3650 * 86_400;
    big.entitlements.seats = 1_000_000;
    let rogue_e = endorse(
        &rogue_root,
        &KeyEndorsement {
            iss: big.iss.clone(),
            editions: BTreeMap::from([(
                "pro".into(),
                EditionBounds {
                    features: vec!["core".into()],
                    seats: u32::MAX,
                    license_lifetime_seconds: u64::MAX,
                },
            )]),
            ..endorsement(&rogue)
        },
    );
    assert_eq!(
        check(&sign_license(
            &rogue,
            "alga-license-v1",
            Some(&rogue_e),
            &big
        )),
        Some(TrustError::NotEndorsed)
    );
    // No endorsement at all.
    assert_eq!(
        check(&sign_license(&k, "alga-license-v1", None, &claims())),
        Some(TrustError::NoEndorsement)
    );
    // A real endorsement, but another key signed the token.
    assert_eq!(
        check(&sign_license(
            &rogue,
            "alga-license-v1",
            Some(&e),
            &claims()
        )),
        Some(TrustError::BadSignature)
    );
    // The kid is not the endorsed key's.
    assert_eq!(
        check(&sign_license(&k, "alga-license-v9", Some(&e), &claims())),
        Some(TrustError::KeyMismatch)
    );
    // Each claim beyond what the root allows.
    let mut c = claims();
    c.iss = "https://evil.example".into();
    assert_eq!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::WrongIssuer)
    );
    let mut c = claims();
    c.exp = NOW + 3650 * 86_400;
    assert!(matches!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::BeyondBounds(_))
    ));
    let mut c = claims();
    c.entitlements.seats = 1_000_000;
    assert!(matches!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::BeyondBounds(_))
    ));
    let mut c = claims();
    c.entitlements.features.push("multi-site".into());
    assert!(matches!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::BeyondBounds(_))
    ));
    let mut c = claims();
    c.aud = "someone-else".into();
    assert_eq!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::WrongAudience)
    );
    let mut c = claims();
    c.sub = Uuid::from_u128(9).to_string();
    assert_eq!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::WrongTenant)
    );
    let mut c = claims();
    c.appliance_id = Uuid::from_u128(9).to_string();
    assert_eq!(
        check(&sign_license(&k, "alga-license-v1", Some(&e), &c)),
        Some(TrustError::WrongAppliance)
    );
    // An edition the root did not endorse (the license and the answer agree on it).
    let mut c = claims();
    c.edition = "enterprise".into();
    let mut exp = expected();
    exp.edition = "enterprise".into();
    assert!(matches!(
        trust.verify_license(
            &sign_license(&k, "alga-license-v1", Some(&e), &c),
            &exp,
            NOW,
            SKEW
        ),
        Err(TrustError::BeyondBounds(_))
    ));
    // Time.
    let t = sign_license(&k, "alga-license-v1", Some(&e), &claims());
    assert_eq!(
        trust
            .verify_license(&t, &expected(), NOW + 7 * 86_400, SKEW)
            .err(),
        Some(TrustError::Expired)
    );
    assert_eq!(
        trust
            .verify_license(&t, &expected(), NOW - SKEW - 1, SKEW)
            .err(),
        Some(TrustError::NotYetValid)
    );
    assert!(
        trust
            .verify_license(&t, &expected(), NOW - SKEW, SKEW)
            .is_ok()
    );
    // An endorsement that expires before the license does.
    let short = endorse(
        &r,
        &KeyEndorsement {
            exp: NOW + 86_400,
            ..endorsement(&k)
        },
    );
    assert!(matches!(
        check(&sign_license(
            &k,
            "alga-license-v1",
            Some(&short),
            &claims()
        )),
        Some(TrustError::BeyondBounds(_))
    ));
    // An endorsement not valid yet.
    let later = endorse(
        &r,
        &KeyEndorsement {
            nbf: NOW + 3600,
            ..endorsement(&k)
        },
    );
    assert_eq!(
        check(&sign_license(
            &k,
            "alga-license-v1",
            Some(&later),
            &claims()
        )),
        Some(TrustError::EndorsementNotValid)
    );
}

#[test]
fn one_changed_byte_anywhere_is_refused() {
    let r = root("alga-license root v1");
    let k = SigningKey::random(&mut rand::rngs::OsRng);
    let e = endorse(&r, &endorsement(&k));
    let t = sign_license(&k, "alga-license-v1", Some(&e), &claims());
    let trust = roots(&r);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = t.as_bytes();
    let mut refused = 0;
    for i in (0..bytes.len()).step_by(7) {
        if bytes[i] == b'.' {
            continue;
        }
        let mut changed = bytes.to_vec();
        changed[i] = *alphabet
            .iter()
            .find(|c| **c != bytes[i])
            .expect("another symbol");
        let changed = String::from_utf8(changed).expect("ascii");
        // The last symbol of a part may only change unused bits: then the bytes, and
        // the token, are the same and verifying is right.
        let same = B64URL
            .decode(
                changed
                    .split('.')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .join(""),
            )
            .ok()
            == B64URL
                .decode(t.split('.').collect::<Vec<_>>().join(""))
                .ok();
        if same {
            continue;
        }
        assert!(
            trust
                .verify_license(&changed, &expected(), NOW, SKEW)
                .is_err(),
            "byte {i} changed and accepted"
        );
        refused += 1;
    }
    assert!(refused > 100, "{refused}");
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(NOW - 86_400);
    p.not_after = at(NOW + 5 * 365 * 86_400);
    p
}

fn leaf(issuer: &Issuer<'_, KeyPair>, until: i64) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://alga.test/tenant/a/appliance/b"
            .try_into()
            .expect("uri"),
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = at(NOW - 300);
    p.not_after = at(until);
    p.signed_by(&key, issuer).expect("leaf").der().to_vec()
}

#[test]
fn credentials_chain_through_the_certified_ca_to_the_root() {
    let r = root("alga-license root v1");
    let trust = roots(&r);
    let ca_key = KeyPair::generate().expect("key");
    let ca_der = ca_params("alga-license appliance CA v1")
        .signed_by(&ca_key, &r.issuer)
        .expect("ca")
        .der()
        .to_vec();
    let ca = Issuer::new(ca_params("alga-license appliance CA v1"), ca_key);
    let good = leaf(&ca, NOW + 30 * 86_400);
    trust
        .verify_credential_chain(&good, &ca_der, NOW, SKEW)
        .expect("chains");

    // The same CA, self-signed (what a compromised gateway could make up): refused.
    let fake_ca_key = KeyPair::generate().expect("key");
    let fake_params = ca_params("alga-license appliance CA v1");
    let fake_der = fake_params
        .self_signed(&fake_ca_key)
        .expect("ca")
        .der()
        .to_vec();
    let fake = Issuer::new(fake_params, fake_ca_key);
    assert_eq!(
        trust
            .verify_credential_chain(&leaf(&fake, NOW + 86_400), &fake_der, NOW, SKEW)
            .err(),
        Some(TrustError::CaNotCertified)
    );
    // A leaf from another CA of the same name, shown with the certified CA.
    assert_eq!(
        trust
            .verify_credential_chain(&leaf(&fake, NOW + 86_400), &ca_der, NOW, SKEW)
            .err(),
        Some(TrustError::LeafNotSigned)
    );
    // A leaf outliving its CA.
    assert_eq!(
        trust
            .verify_credential_chain(&leaf(&ca, NOW + 6 * 365 * 86_400), &ca_der, NOW, SKEW)
            .err(),
        Some(TrustError::LeafOutlivesCa)
    );
    // The CA expired.
    assert_eq!(
        trust
            .verify_credential_chain(&good, &ca_der, NOW + 5 * 365 * 86_400, SKEW)
            .err(),
        Some(TrustError::CaNotValid)
    );
    // Garbage.
    assert_eq!(
        trust
            .verify_credential_chain(b"x", &ca_der, NOW, SKEW)
            .err(),
        Some(TrustError::ChainMalformed)
    );
}

#[test]
fn trust_root_files_are_checked() {
    assert!(TrustRoots::from_pem(b"").is_err());
    assert!(TrustRoots::from_pem(b"not pem").is_err());
    let r = root("alga-license root v1");
    // A non-CA certificate is no root.
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "leaf");
    let leaf = p.self_signed(&key).expect("leaf").der().to_vec();
    assert_eq!(
        TrustRoots::from_pem(pem_of(&leaf).as_bytes()).err(),
        Some(TrustError::Roots("a certificate is not a CA"))
    );
    // A certificate issued by another is no root either.
    let ca = ca_params("x")
        .signed_by(&key, &r.issuer)
        .expect("ca")
        .der()
        .to_vec();
    assert!(TrustRoots::from_pem(pem_of(&ca).as_bytes()).is_err());
    let two = format!("{}{}", pem_of(&r.der), pem_of(&root("second").der));
    assert_eq!(
        TrustRoots::from_pem(two.as_bytes()).expect("two").to_pem(),
        two
    );
}

#[test]
fn the_policy_check_names_what_the_endorsement_lacks() {
    let k = SigningKey::random(&mut rand::rngs::OsRng);
    let e = endorsement(&k);
    assert!(e.uncovered(ISS, &bounds()).is_empty());
    let mut more = bounds();
    more.get_mut("pro").expect("pro").seats = 101;
    more.insert(
        "enterprise".into(),
        EditionBounds {
            features: vec![],
            seats: 1,
            license_lifetime_seconds: 1,
        },
    );
    let missing = e.uncovered("https://other", &more).join("; ");
    assert!(
        missing.contains("issuer")
            && missing.contains("enterprise")
            && missing.contains("101 seats"),
        "{missing}"
    );
}
