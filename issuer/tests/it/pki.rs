//! A throwaway PKI for the server tests, made with rcgen: a CA, leaf certificates with
//! the URI SANs and EKUs a test wants, and the files an `IssuerConfig` points at.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test certificate authority.
pub(crate) struct TestCa {
    pub(crate) cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key (PEM).
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// What a leaf is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Eku {
    ClientAuth,
    ServerAuth,
    /// No EKU extension at all.
    None,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA self-signs");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf with these URI SANs (and `127.0.0.1` for server certificates).
    pub(crate) fn leaf(&self, cn: &str, uris: &[&str], eku: Eku) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("IA5 URI")))
            .collect();
        params.extended_key_usages = match eku {
            Eku::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::ServerAuth => {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
                vec![ExtendedKeyUsagePurpose::ServerAuth]
            }
            Eku::None => vec![],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// An HTTPS client (ring provider, TLS 1.3) trusting `server_ca_pem` and presenting
/// `identity` (if any), with keep-alive connections.
pub(crate) fn client(server_ca_pem: &str, identity: Option<&Leaf>) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert PEM");
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .pool_max_idle_per_host(8)
        .build()
        .expect("reqwest client")
}
