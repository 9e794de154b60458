//! A small fake license service over real TLS (rustls, ring), for what the real stack
//! cannot show on demand: every error answer's exit code (expired codes, busy), a
//! forged license or certificate, a credential near expiry (rotation), a revoked or
//! suspended appliance. Same wire types as the gateway (alga-protocol), real
//! signatures (ES256 license, X.509 from the CSR's key), mTLS on check-in.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use alga_protocol::ApplianceIdentity;
use alga_protocol::api::{
    CheckInRequest, CheckInResponse, Credential, ErrorBody, ErrorDetail, License, RedeemRequest,
    RedeemResponse,
};
use alga_protocol::issuer_api::{Entitlements, Jwk, Jwks, LicenseClaims};
use alga_protocol::{InstallCode, SecretText};
use base64::Engine as _;
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

/// What the fake does wrong (or answers) on purpose.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// `/register` answers this error (status, code) instead of redeeming.
    pub redeem_error: Option<(u16, &'static str)>,
    /// The license is signed by a key that is not in the JWKS (same kid).
    pub forge_license: bool,
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
    pub tenant_id: Uuid,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub seen: Arc<Mutex<Seen>>,
}

struct Pki {
    check_in_url: String,
    appliance_ca: Issuer<'static, KeyPair>,
    appliance_ca_pem: String,
    license_key: jsonwebtoken::EncodingKey,
    forged_key: jsonwebtoken::EncodingKey,
    jwks: Jwks,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
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
        let app_ca_key = KeyPair::generate().expect("key");
        let app_ca_params = ca_params("fake appliance CA");
        let app_ca_cert = app_ca_params.self_signed(&app_ca_key).expect("ca");
        let mut client_roots = RootCertStore::empty();
        client_roots.add(app_ca_cert.der().clone()).expect("root");
        // License keys.
        let lic = KeyPair::generate().expect("key");
        let point = lic.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = Jwks {
            keys: vec![Jwk {
                kty: "EC".into(),
                crv: "P-256".into(),
                x: b64.encode(&point[1..33]),
                y: b64.encode(&point[33..65]),
                kid: KID.into(),
                alg: "ES256".into(),
                use_: "sig".into(),
            }],
        };
        let license_key =
            jsonwebtoken::EncodingKey::from_ec_pem(lic.serialize_pem().as_bytes()).expect("key");
        let forged = KeyPair::generate().expect("key");
        let forged_key =
            jsonwebtoken::EncodingKey::from_ec_pem(forged.serialize_pem().as_bytes()).expect("key");

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
            license_key,
            forged_key,
            jwks,
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
        ("GET", "/.well-known/jwks.json") => (200, serde_json::to_string(&pki.jwks)?),
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
    let claims = LicenseClaims {
        iss: "https://license.fake.test".into(),
        sub: id.tenant_id.to_string(),
        aud: "alga-appliance".into(),
        jti: Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp: now + 7 * 86_400,
        edition: edition.into(),
        check_in_by: Some(now + 4 * 86_400),
        entitlements: Entitlements {
            features: vec!["core".into()],
            seats: 100,
            check_in_interval_seconds: 86_400,
        },
        appliance_id: appliance.to_string(),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KID.into());
    let key = if b.forge_license {
        &pki.forged_key
    } else {
        &pki.license_key
    };
    let token = jsonwebtoken::encode(&header, &claims, key).expect("sign");
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
        chain: pki.appliance_ca_pem.clone(),
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
