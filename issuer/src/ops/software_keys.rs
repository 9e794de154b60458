//! Test-only [`KeyOps`] with keys in memory: P-256 signing keys (RustCrypto), Ed25519
//! log keys (ed25519-dalek), HMAC secrets, and an rcgen-made CA certificate per CA
//! version. Never compiled outside
//! `cfg(test)`: the issuer's keys live in the HSM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::Error;
use crate::hsm::HsmError;
use crate::keyring::{
    self, CaCertificate, KeyAlgorithm, KeyInfo, KeyKind, KeyOps, LicenseEndorsement,
    RootCertificate,
};

/// What a software key store that is down answers: an HSM that is unavailable.
fn down() -> Error {
    Error::Hsm(HsmError::unavailable("software keys are down"))
}

/// In-memory keys for unit tests. Clones share the keys.
#[derive(Clone)]
pub(crate) struct SoftwareKeys {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for SoftwareKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftwareKeys")
    }
}

#[derive(Default)]
struct Inner {
    ec: BTreeMap<(KeyKind, u32), SigningKey>,
    ed25519: BTreeMap<(KeyKind, u32), ed25519_dalek::SigningKey>,
    hmac: BTreeMap<u32, [u8; 32]>,
    info: Vec<KeyInfo>,
    certs: Vec<CaCertificate>,
    roots: Vec<RootCertificate>,
    endorsements: Vec<LicenseEndorsement>,
    /// When set, every operation fails as an unreachable HSM would.
    down: bool,
}

impl SoftwareKeys {
    /// Version 1 of every kind, created at `now`.
    pub(crate) fn new(now: OffsetDateTime) -> SoftwareKeys {
        let keys = SoftwareKeys {
            inner: Arc::new(Mutex::new(Inner::default())),
        };
        for kind in KeyKind::ALL {
            keys.rotate(kind, now);
        }
        keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Test code: a poisoned lock means another test thread already failed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the next version of `kind`; returns it.
    pub(crate) fn rotate(&self, kind: KeyKind, now: OffsetDateTime) -> u32 {
        let mut inner = self.lock();
        let version = inner.info.iter().filter(|k| k.kind == kind).count() as u32 + 1;
        let kid = format!("alga-{}-v{version}", kind.as_str());
        let (spki, fingerprint) = if kind.algorithm() == KeyAlgorithm::Ed25519 {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let spki = keyring::ed25519_spki(&key.verifying_key().to_bytes());
            inner.ed25519.insert((kind, version), key);
            let fp = super::sha256_hex(&spki);
            (Some(spki), Some(fp))
        } else if kind.algorithm() == KeyAlgorithm::EcP256 {
            let key = SigningKey::random(&mut rand::rngs::OsRng);
            let spki = key
                .verifying_key()
                .to_public_key_der()
                .expect("P-256 SPKI encodes")
                .as_bytes()
                .to_vec();
            if kind == KeyKind::Root {
                let der = certificate(&key, None, "test root", version, 1, now);
                inner.roots.push(RootCertificate { version, der });
            }
            if kind == KeyKind::ApplianceCa {
                let der = certificate(&key, None, "test appliance CA", version, 0, now);
                let certified = inner.newest_root().map(|(root_key, root_der)| {
                    certificate(
                        &key,
                        Some((root_key, root_der)),
                        "test appliance CA",
                        version,
                        0,
                        now,
                    )
                });
                inner.certs.push(CaCertificate {
                    version,
                    der,
                    certified,
                });
            }
            if kind == KeyKind::License
                && let Some((root_key, root_der)) = inner.newest_root()
            {
                let info = KeyInfo {
                    kind,
                    version,
                    kid: kid.clone(),
                    public_key_spki: Some(spki.clone()),
                    fingerprint: None,
                    created: now,
                };
                let endorsement = crate::endorse::endorsement(
                    &test_policy(),
                    super::jwks::jwk(&info).expect("a P-256 JWK"),
                    now.unix_timestamp(),
                    (now + time::Duration::days(3650)).unix_timestamp(),
                );
                let input = endorsement.signing_input(root_der);
                let digest: [u8; 32] = <Sha256 as sha2::Digest>::digest(input.as_bytes()).into();
                let sig: Signature = root_key.sign_prehash(&digest).expect("signs");
                let jws = alga_protocol::trust::compact_jws(&input, &sig.to_bytes().into());
                let e = LicenseEndorsement {
                    version,
                    jws,
                    endorsement,
                };
                inner.endorsements.push(e);
            }
            inner.ec.insert((kind, version), key);
            let fp = super::sha256_hex(&spki);
            (Some(spki), Some(fp))
        } else {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            inner.hmac.insert(version, secret);
            (None, None)
        };
        inner.info.push(KeyInfo {
            kind,
            version,
            kid,
            public_key_spki: spki,
            fingerprint,
            created: now,
        });
        version
    }

    /// Replaces the Ed25519 key of (`kind`, `version`) by the one of `seed` (a known
    /// test vector).
    pub(crate) fn set_ed25519_key(&self, kind: KeyKind, version: u32, seed: [u8; 32]) {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let spki = keyring::ed25519_spki(&key.verifying_key().to_bytes());
        let mut inner = self.lock();
        inner.ed25519.insert((kind, version), key);
        for info in inner
            .info
            .iter_mut()
            .filter(|k| k.kind == kind && k.version == version)
        {
            info.fingerprint = Some(super::sha256_hex(&spki));
            info.public_key_spki = Some(spki.clone());
        }
    }

    /// Makes every later operation fail as an unavailable HSM would
    /// ([`HsmError::Unavailable`]), or not.
    pub(crate) fn set_down(&self, down: bool) {
        self.lock().down = down;
    }
}

impl Inner {
    /// The newest root's key and certificate.
    fn newest_root(&self) -> Option<(&SigningKey, &[u8])> {
        let root = self.roots.last()?;
        let key = self.ec.get(&(KeyKind::Root, root.version))?;
        Some((key, &root.der))
    }
}

fn rcgen_pair(key: &SigningKey) -> rcgen::KeyPair {
    let pkcs8 = key.to_pkcs8_der().expect("P-256 PKCS#8 encodes");
    rcgen::KeyPair::try_from(pkcs8.as_bytes()).expect("rcgen takes P-256 PKCS#8")
}

/// A CA certificate for `key` (profile like the HSM's), self-signed or issued by
/// `issuer` (its key and certificate), valid from a day before `now` for ten years.
fn certificate(
    key: &SigningKey,
    issuer: Option<(&SigningKey, &[u8])>,
    name: &str,
    version: u32,
    pathlen: u8,
    now: OffsetDateTime,
) -> Vec<u8> {
    let from = now - time::Duration::days(1);
    certificate_valid(
        key,
        issuer,
        name,
        version,
        pathlen,
        from,
        from + time::Duration::days(3651),
    )
}

/// [`certificate`] with the validity given.
fn certificate_valid(
    key: &SigningKey,
    issuer: Option<(&SigningKey, &[u8])>,
    name: &str,
    version: u32,
    pathlen: u8,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Vec<u8> {
    let pair = rcgen_pair(key);
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("{name} v{version}"));
    dn.push(rcgen::DnType::OrganizationName, "alga-license tests");
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(pathlen));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = match issuer {
        None => params.self_signed(&pair),
        Some((issuer_key, issuer_der)) => {
            let issuer = rcgen::Issuer::from_ca_cert_der(
                &rustls_pki_types::CertificateDer::from(issuer_der.to_vec()),
                rcgen_pair(issuer_key),
            )
            .expect("an issuer");
            params.signed_by(&pair, &issuer)
        }
    };
    cert.expect("certificate").der().to_vec()
}

impl SoftwareKeys {
    /// Shortens the active CA's certificates to end at `not_after` (to test what
    /// happens as the CA nears its expiry).
    pub(crate) fn expire_ca_at(&self, not_after: OffsetDateTime) {
        let mut inner = self.lock();
        let Some(version) = inner.certs.last().map(|c| c.version) else {
            return;
        };
        let key = inner.ec[&(KeyKind::ApplianceCa, version)].clone();
        let (root_key, root_der) = inner
            .newest_root()
            .map(|(k, d)| (k.clone(), d.to_vec()))
            .expect("a root");
        let not_before = not_after - time::Duration::days(3650);
        let at = |issuer: Option<(&SigningKey, &[u8])>| {
            let name = "test appliance CA";
            certificate_valid(&key, issuer, name, version, 0, not_before, not_after)
        };
        let der = at(None);
        let certified = Some(at(Some((&root_key, &root_der))));
        if let Some(c) = inner.certs.last_mut() {
            c.der = der;
            c.certified = certified;
        }
    }
}

impl KeyOps for SoftwareKeys {
    fn sign_digest(
        &self,
        kind: KeyKind,
        version: u32,
        digest: [u8; 32],
    ) -> impl Future<Output = Result<[u8; 64], Error>> + Send {
        let result = (|| {
            let inner = self.lock();
            if inner.down {
                return Err(down());
            }
            // As the HSM: the root signs in ceremonies only, never for an operation.
            let key = inner
                .ec
                .get(&(kind, version))
                .filter(|_| kind != KeyKind::Root)
                .ok_or(Error::Hsm(HsmError::UnknownKey { kind, version }))?;
            let sig: Signature = key.sign_prehash(&digest).map_err(|_| down())?;
            let bytes: [u8; 64] = sig.to_bytes().into();
            Ok(bytes)
        })();
        std::future::ready(result)
    }

    fn sign_ed25519(
        &self,
        kind: KeyKind,
        version: u32,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<[u8; 64], Error>> + Send {
        let result = (|| {
            let inner = self.lock();
            if inner.down {
                return Err(down());
            }
            let key = inner
                .ed25519
                .get(&(kind, version))
                .ok_or(Error::Hsm(HsmError::UnknownKey { kind, version }))?;
            Ok(ed25519_dalek::Signer::sign(key, &message).to_bytes())
        })();
        std::future::ready(result)
    }

    fn hmac_sha256(
        &self,
        version: u32,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<keyring::Mac, Error>> + Send {
        let result = (|| {
            let inner = self.lock();
            if inner.down {
                return Err(down());
            }
            let secret = inner
                .hmac
                .get(&version)
                .ok_or(Error::Hsm(HsmError::UnknownKey {
                    kind: KeyKind::Code,
                    version,
                }))?;
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| down())?;
            mac.update(&data);
            // Test-only keys: the tag's stack copy is not wiped here (the HSM path
            // keeps its MAC in wiping buffers throughout).
            let mut out = keyring::new_mac();
            out.copy_from_slice(&mac.finalize().into_bytes());
            Ok(out)
        })();
        std::future::ready(result)
    }

    fn active_version(&self, kind: KeyKind) -> u32 {
        self.lock()
            .info
            .iter()
            .filter(|k| k.kind == kind)
            .map(|k| k.version)
            .max()
            .unwrap_or(0)
    }

    fn keys(&self, kind: KeyKind) -> Vec<KeyInfo> {
        self.lock()
            .info
            .iter()
            .filter(|k| k.kind == kind)
            .cloned()
            .collect()
    }

    fn ca_certificates(&self) -> Vec<CaCertificate> {
        self.lock().certs.clone()
    }

    fn root_certificates(&self) -> Vec<RootCertificate> {
        self.lock().roots.clone()
    }

    fn license_endorsement(&self, version: u32) -> Option<LicenseEndorsement> {
        self.lock()
            .endorsements
            .iter()
            .find(|e| e.version == version)
            .cloned()
    }
}

/// The policy of the unit tests: `essentials` (unpaid) and `pro` (paid, 7 d licenses,
/// 30 d credentials, 14 d codes).
pub(crate) fn test_policy() -> alga_policies::Policy {
    alga_policies::Policy::from_toml(TEST_POLICY).expect("the test policy is valid")
}

pub(crate) const TEST_POLICY: &str = r#"
trust_domain = "alga.test"
[license]
issuer = "https://license.alga.test"
[install_codes]
ttl = "14d"
[download_links]
ttl = "72h"
[credentials]
lifetime = "30d"
[editions.essentials]
features = ["core"]
seats = 5
max_appliances = 1
paid = false
[editions.pro]
features = ["core", "sso"]
seats = 100
max_appliances = 3
paid = true
license_lifetime = "7d"
check_in_interval = "24h"
check_in_grace_days = 3
[rate_limits.redeem_per_source]
per_minute = 10
burst = 10
[rate_limits.redeem_per_code]
per_minute = 5
burst = 5
[audit]
checkpoint_every_records = 1000
checkpoint_interval = "60s"
unchained_alarm_after = "30s"
[[clients]]
uri = "spiffe://alga.test/service/gateway"
role = "gateway"
[[clients]]
uri = "spiffe://alga.test/service/nm-store"
role = "store"
"#;
