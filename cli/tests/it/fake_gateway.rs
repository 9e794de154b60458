//! A stand-in for the gateway that answers every request with one fixed JSON body, over
//! TLS under a CA of its own: what a man in the middle, or a compromised gateway, could
//! serve `algactl`. Its CA is written to a file for `--ca-bundle`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A running fake gateway; its thread serves until the test process ends.
#[derive(Debug)]
pub struct FakeGateway {
    pub url: String,
    /// The CA that issued its server certificate (PEM).
    pub ca_bundle: PathBuf,
    /// The request lines it answered (`GET /path HTTP/1.1`).
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeGateway {
    /// Serves `body` (with status 200) at every path, on a free loopback port, as
    /// `localhost`; writes its CA certificate into `dir`.
    pub fn serve(dir: &Path, body: String) -> FakeGateway {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "algactl tests: not the service's CA");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
        let ca_bundle = dir.join("fake-gateway-ca.pem");
        std::fs::write(&ca_bundle, ca_cert.pem()).expect("writing the fake CA");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("a server key");
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server parameters")
            .signed_by(&key, &issuer)
            .expect("the server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("the server's TLS configuration");
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("its address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // The request line, then the headers up to the blank line (GET: no body).
                let mut reader = BufReader::new(&mut tls);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let request = line.trim_end().to_owned();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" || line == "\n" => break,
                        Ok(_) => {}
                    }
                }
                if let Ok(mut r) = seen.lock() {
                    r.push(request);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        FakeGateway {
            url: format!("https://localhost:{port}"),
            ca_bundle,
            requests,
        }
    }

    /// The request lines answered so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
