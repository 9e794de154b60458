//! A small fake license service over real TLS (rustls, ring), for what the real stack
//! cannot show on demand: every error answer's exit code (expired codes, busy), a
//! forged license or certificate, a credential near expiry (rotation), a revoked or
//! suspended appliance. Same wire types as the gateway (alga-protocol), real
//! signatures (ES256 license, X.509 from the CSR's key), mTLS on check-in, and a trust
//! root of its own that certifies its appliance CA and endorses its license key, as the
//! HSM's root does (`Fake::trust_root_pem` is the file an appliance pins).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use alga_protocol::ApplianceIdentity;
use alga_protocol::api::{
    CheckInRequest, CheckInResponse, Credential, ErrorBody, ErrorDetail, License, RedeemRequest,
    RedeemResponse,
};
use alga_protocol::issuer_api::{Entitlements, Jwk, LicenseClaims};
use alga_protocol::trust::{self, EditionBounds, KeyEndorsement};
use alga_protocol::{InstallCode, SecretText};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, SanType,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub const TRUST_DOMAIN: &str = "fake.test";
const KID: &str = "fake-license-1";
/// The `iss` the fake's license key is endorsed for.
pub const ISS: &str = "https://license.fake.test";

/// What the fake does wrong (or answers) on purpose.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// `/register` answers this error (status, code) instead of redeeming.
    pub redeem_error: Option<(u16, &'static str)>,
    /// The license is signed by another key than the endorsed one (same kid).
    pub forge_license: bool,
    /// The review's experiment: a random key endorsed by a root the appliance does not
    /// pin, another `iss`, ten years, a million seats.
    pub rogue_root: bool,
    /// The license header carries no endorsement.
    pub no_endorsement: bool,
    /// The license's `iss` (default: the endorsed one).
    pub license_iss: Option<&'static str>,
    /// The license's lifetime in days (default 7; the root allows 7).
    pub license_days: Option<i64>,
    /// The license's seats (default 100; the root allows 100).
    pub license_seats: Option<u32>,
    /// The license lists a feature the root did not endorse.
    pub license_extra_feature: bool,
    /// The credential's chain is a self-signed CA of the same name, not the one the
    /// root certified.
    pub ca_not_certified: bool,
    /// The license names another appliance.
    pub license_other_appliance: bool,
    /// The certificate names another appliance.
    pub cert_other_identity: bool,
    /// The certificate is for another key than the CSR's.
    pub cert_other_key: bool,
    /// Issued certificates have only this much lifetime left (of 30 days).
    pub cert_left: Option<Duration>,
    /// `/check-in` answers this error (status, code).
    pub check_in_error: Option<(u16, &'static str)>,
    /// Edition of redeemed codes.
    pub edition: &'static str,
    /// The tenant's edition at check-in (the store changed it); default `edition`.
    pub check_in_edition: Option<&'static str>,
    /// The `edition` claim of check-in licenses; default the tenant's edition.
    pub license_edition: Option<&'static str>,
    /// `/check-in` answers `"license": null` (the tenant's edition has no license).
    pub unlicensed: bool,
    /// `/check-in` answers without `edition`, as gateways older than edition changes.
    pub old_gateway: bool,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Every request, whatever its path (a TLS handshake alone does not count).
    pub requests: usize,
    pub redeems: usize,
    pub check_ins: usize,
    pub check_in_csrs: usize,
    /// The identity of the client certificate of the last check-in.
    pub check_in_identity: Option<ApplianceIdentity>,
}

pub struct Fake {
    pub url: String,
    pub ca_pem: String,
    /// The fake's trust root (PEM): what an appliance installed for it pins.
    pub trust_root_pem: String,
    pub tenant_id: Uuid,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub seen: Arc<Mutex<Seen>>,
}

struct Pki {
    check_in_url: String,
    appliance_ca: Issuer<'static, KeyPair>,
    /// The appliance CA as the root certified it (the chain sent).
    appliance_ca_pem: String,
    /// A self-signed CA of the same name and key (what a rogue service could make).
    uncertified_ca_pem: String,
    license_key: p256::ecdsa::SigningKey,
    endorsement: String,
    forged_key: p256::ecdsa::SigningKey,
    rogue_key: p256::ecdsa::SigningKey,
    rogue_endorsement: String,
}

/// An rcgen key pair of a p256 signing key.
fn rcgen_key(k: &p256::ecdsa::SigningKey) -> KeyPair {
    let der = k.to_pkcs8_der().expect("pkcs8");
    KeyPair::try_from(der.as_bytes()).expect("rcgen key")
}

/// A root (self-signed, pathlen 1) and its key.
fn root(
    cn: &str,
) -> (
    p256::ecdsa::SigningKey,
    rcgen::Certificate,
    Issuer<'static, KeyPair>,
) {
    let key = p256::ecdsa::SigningKey::random(&mut rand_core());
    let mut p = ca_params(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let kp = rcgen_key(&key);
    let cert = p.self_signed(&kp).expect("root");
    (key, cert, Issuer::new(p, kp))
}

fn rand_core() -> p256::elliptic_curve::rand_core::OsRng {
    p256::elliptic_curve::rand_core::OsRng
}

/// `root`'s endorsement of `key` for the fake's edition bounds.
fn endorse(
    root_key: &p256::ecdsa::SigningKey,
    root_der: &[u8],
    key: &p256::ecdsa::SigningKey,
    iss: &str,
    bounds: EditionBounds,
) -> String {
    let point = key.verifying_key().to_encoded_point(false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let e = KeyEndorsement {
        key: Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64.encode(point.x().expect("x")),
            y: b64.encode(point.y().expect("y")),
            kid: KID.into(),
            alg: "ES256".into(),
            use_: "sig".into(),
        },
        iss: iss.into(),
        nbf: now - 3600,
        exp: now + 3650 * 86_400,
        editions: ["pro", "enterprise"]
            .into_iter()
            .map(|e| (e.to_owned(), bounds.clone()))
            .collect(),
    };
    let input = e.signing_input(root_der);
    let sig: p256::ecdsa::Signature = root_key.sign(input.as_bytes());
    trust::compact_jws(&input, &sig.to_bytes().into())
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p
}

impl Fake {
    /// Starts the fake on 127.0.0.1 (a thread serving connections one at a time).
    pub fn start(behaviour: Behaviour) -> Fake {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Server PKI.
        let server_ca_key = KeyPair::generate().expect("key");
        let server_ca_params = ca_params("fake service CA");
        let server_ca_cert = server_ca_params.self_signed(&server_ca_key).expect("ca");
        let server_ca = Issuer::new(server_ca_params, server_ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        let server_cert = server_params
            .signed_by(&server_key, &server_ca)
            .expect("server cert");
        // Appliance CA.
        // The trust root, and the appliance CA it certifies.
        let (root_key, root_cert, root_issuer) = root("fake trust root");
        let app_ca_key = KeyPair::generate().expect("key");
        let app_ca_params = ca_params("fake appliance CA");
        let uncertified = app_ca_params.self_signed(&app_ca_key).expect("ca");
        let app_ca_cert = app_ca_params
            .signed_by(&app_ca_key, &root_issuer)
            .expect("certified ca");
        let mut client_roots = RootCertStore::empty();
        client_roots.add(app_ca_cert.der().clone()).expect("root");
        // License keys: the endorsed one, a forger's, and the review's rogue key with
        // its own root.
        let license_key = p256::ecdsa::SigningKey::random(&mut rand_core());
        let bounds = EditionBounds {
            features: vec!["core".into(), "sso".into()],
            seats: 100,
            license_lifetime_seconds: 7 * 86_400,
        };
        let endorsement = endorse(&root_key, root_cert.der(), &license_key, ISS, bounds);
        let forged_key = p256::ecdsa::SigningKey::random(&mut rand_core());
        let rogue_key = p256::ecdsa::SigningKey::random(&mut rand_core());
        let (rogue_root_key, rogue_root_cert, _) = root("fake trust root");
        let rogue_endorsement = endorse(
            &rogue_root_key,
            rogue_root_cert.der(),
            &rogue_key,
            "https://rogue.example",
            EditionBounds {
                features: vec!["core".into()],
                seats: u32::MAX,
                license_lifetime_seconds: u64::MAX,
            },
        );

        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .expect("verifier");
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server config");

        let behaviour = Arc::new(Mutex::new(behaviour));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tenant_id = Uuid::new_v4();
        let pki = Arc::new(Pki {
            check_in_url: format!("https://127.0.0.1:{port}/check-in"),
            appliance_ca: Issuer::new(app_ca_params, app_ca_key),
            appliance_ca_pem: app_ca_cert.pem(),
            uncertified_ca_pem: uncertified.pem(),
            license_key,
            endorsement,
            forged_key,
            rogue_key,
            rogue_endorsement,
        });
        let config = Arc::new(server_config);
        {
            let (behaviour, seen) = (behaviour.clone(), seen.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(tcp) = stream else { continue };
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    // A failed handshake (the client does not trust us) just ends here.
                    let _ = serve(&mut tls, &pki, tenant_id, &behaviour, &seen);
                }
            });
        }
        Fake {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: server_ca_cert.pem(),
            trust_root_pem: root_cert.pem(),
            tenant_id,
            behaviour,
            seen,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().expect("lock"));
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

fn serve(
    tls: &mut Tls,
    pki: &Pki,
    tenant_id: Uuid,
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *tls);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    drop(reader);
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .map(|c: CertificateDer<'static>| c.to_vec());
    let b = behaviour.lock().expect("lock").clone();
    seen.lock().expect("lock").requests += 1;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, json) = match (method, path) {
        ("POST", "/register") => {
            seen.lock().expect("lock").redeems += 1;
            redeem(&body, pki, tenant_id, &b)
        }
        ("POST", "/check-in") => {
            let mut s = seen.lock().expect("lock");
            s.check_ins += 1;
            drop(s);
            check_in(&body, peer, pki, &b, seen)
        }
        _ => error(404, "not_found"),
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    );
    tls.write_all(resp.as_bytes())?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

fn error(status: u16, code: &str) -> (u16, String) {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: format!("fake: {code}"),
            request_id: "fake".into(),
            fields: None,
            tenant_id: None,
        },
    };
    (status, serde_json::to_string(&body).unwrap_or_default())
}

fn license(pki: &Pki, b: &Behaviour, id: ApplianceIdentity, edition: &str) -> License {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let appliance = if b.license_other_appliance {
        Uuid::new_v4()
    } else {
        id.appliance_id
    };
    let mut claims = LicenseClaims {
        iss: b.license_iss.unwrap_or(ISS).into(),
        sub: id.tenant_id.to_string(),
        aud: "alga-appliance".into(),
        jti: Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp: now + b.license_days.unwrap_or(7) * 86_400,
        edition: edition.into(),
        check_in_by: Some(now + 4 * 86_400),
        entitlements: Entitlements {
            features: vec!["core".into()],
            seats: b.license_seats.unwrap_or(100),
            check_in_interval_seconds: 86_400,
        },
        appliance_id: appliance.to_string(),
    };
    if b.license_extra_feature {
        claims.entitlements.features.push("multi-site".into());
    }
    let (key, endorsement) = if b.rogue_root {
        claims.iss = "https://rogue.example".into();
        claims.exp = now + 3650 * 86_400;
        claims.entitlements.seats = 1_000_000;
        (&pki.rogue_key, Some(&pki.rogue_endorsement))
    } else if b.forge_license {
        (&pki.forged_key, Some(&pki.endorsement))
    } else {
        (&pki.license_key, Some(&pki.endorsement))
    };
    let mut header = serde_json::json!({"alg": "ES256", "kid": KID, "typ": "JWT"});
    if let Some(e) = endorsement.filter(|_| !b.no_endorsement) {
        header[trust::ENDORSEMENT_HEADER] = e.as_str().into();
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(serde_json::to_vec(&header).expect("json")),
        b64.encode(serde_json::to_vec(&claims).expect("json"))
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let token = format!("{input}.{}", b64.encode(sig.to_bytes()));
    License {
        token: SecretText::new(token),
        expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).expect("t"),
    }
}

fn credential(
    pki: &Pki,
    b: &Behaviour,
    id: ApplianceIdentity,
    csr_pem: &str,
) -> Option<Credential> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).ok()?;
    let named = if b.cert_other_identity {
        ApplianceIdentity {
            tenant_id: id.tenant_id,
            appliance_id: Uuid::new_v4(),
        }
    } else {
        id
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).ok()?;
    p.subject_alt_names = vec![SanType::URI(named.uri(TRUST_DOMAIN).try_into().ok()?)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    let lifetime = Duration::days(30);
    let left = b.cert_left.unwrap_or(lifetime);
    p.not_after = now + left;
    p.not_before = p.not_after - lifetime;
    let cert = if b.cert_other_key {
        let other = KeyPair::generate().ok()?;
        p.signed_by(&other, &pki.appliance_ca).ok()?
    } else {
        p.signed_by(&csr.public_key, &pki.appliance_ca).ok()?
    };
    Some(Credential {
        certificate: cert.pem(),
        chain: if b.ca_not_certified {
            pki.uncertified_ca_pem.clone()
        } else {
            pki.appliance_ca_pem.clone()
        },
        expires_at: p.not_after,
    })
}

fn redeem(body: &[u8], pki: &Pki, tenant_id: Uuid, b: &Behaviour) -> (u16, String) {
    if let Some((status, code)) = b.redeem_error {
        return error(status, code);
    }
    let Ok(req) = serde_json::from_slice::<RedeemRequest>(body) else {
        return error(400, "validation_failed");
    };
    if InstallCode::parse(req.install_code.expose()).is_err() {
        return error(400, "code_malformed");
    }
    let id = ApplianceIdentity {
        tenant_id,
        appliance_id: Uuid::new_v4(),
    };
    let paid = b.edition != "essentials";
    let resp = RedeemResponse {
        tenant_id,
        edition: b.edition.into(),
        appliance_id: id.appliance_id,
        license: paid.then(|| license(pki, b, id, b.edition)),
        credential: if paid {
            match credential(pki, b, id, &req.csr) {
                Some(c) => Some(c),
                None => return error(400, "csr_invalid"),
            }
        } else {
            None
        },
        check_in_url: paid.then(|| pki.check_in_url.clone()),
    };
    (200, serde_json::to_string(&resp).unwrap_or_default())
}

fn check_in(
    body: &[u8],
    peer: Option<Vec<u8>>,
    pki: &Pki,
    b: &Behaviour,
    seen: &Mutex<Seen>,
) -> (u16, String) {
    let Some(peer) = peer else {
        return error(401, "credential_required");
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&peer) else {
        return error(401, "credential_required");
    };
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|s| {
            s.value.general_names.iter().find_map(|g| match g {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        })
        .unwrap_or_default();
    let Some(id) = ApplianceIdentity::parse(&uri, TRUST_DOMAIN) else {
        return error(403, "forbidden");
    };
    seen.lock().expect("lock").check_in_identity = Some(id);
    if let Some((status, code)) = b.check_in_error {
        return error(status, code);
    }
    let Ok(req) = serde_json::from_slice::<CheckInRequest>(body) else {
        return error(400, "validation_failed");
    };
    let credential = match &req.csr {
        Some(csr) => {
            seen.lock().expect("lock").check_in_csrs += 1;
            credential(pki, b, id, csr)
        }
        None => None,
    };
    let edition = b.check_in_edition.unwrap_or(b.edition);
    let resp = CheckInResponse {
        edition: (!b.old_gateway).then(|| edition.to_owned()),
        license: (!b.unlicensed).then(|| license(pki, b, id, b.license_edition.unwrap_or(edition))),
        // As the gateway: no credential for an edition without a license.
        credential: credential.filter(|_| !b.unlicensed),
        next_check_in_after: OffsetDateTime::now_utc() + Duration::days(1),
    };
    (200, serde_json::to_string(&resp).unwrap_or_default())
}
