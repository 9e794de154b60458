//! The rustls server configuration of the issuer's API.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;
use crate::config::TlsConfig;

/// The rustls server configuration: ring provider, TLS 1.3, client certificates
/// required and verified against the client CA bundle.
pub fn tls_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read_certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, Error> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::Tls(format!("{}: no certificate", path.display())));
        }
        Ok(certs)
    };
    let chain = read_certs(&tls.certificate)?;
    // The error of a key file names the file and the PEM problem, never its content.
    let key = PrivateKeyDer::from_pem_file(&tls.private_key)
        .map_err(|e| Error::Tls(format!("{}: {e}", tls.private_key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&tls.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| Error::Tls(format!("{}: {e}", tls.client_ca.display())))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
