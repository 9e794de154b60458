//! The TLS listener: rustls (ring provider only) with client certificates optional at
//! the handshake and required per route; one accept loop feeding hyper with the axum
//! router, each request carrying its connection's [`ConnInfo`].
//!
//! The client verifier trusts the service CA *and* every appliance CA the issuer
//! publishes; which one a certificate chains to is decided afterwards in `auth`. The
//! server configuration is rebuilt when the issuer's appliance CA chain changes.

use std::sync::{Arc, RwLock};

use alga_policies::Policy;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::{ClientIdentity, ConnInfo, TrustSets};
use crate::config::TlsConfig;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Certificates and key of the server, and the service CA; loaded once.
#[derive(Debug)]
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    service_cas: Vec<CertificateDer<'static>>,
}

impl TlsMaterial {
    /// Loads the PEM files of `[tls]`.
    pub fn load(c: &TlsConfig) -> Result<TlsMaterial, TlsError> {
        let file_err = |p: &std::path::Path, e: &dyn std::fmt::Display| TlsError::File {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let v: Vec<_> = CertificateDer::pem_file_iter(p)
                .map_err(|e| file_err(p, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(p, &e))?;
            if v.is_empty() {
                return Err(file_err(p, &"no certificate"));
            }
            Ok(v)
        };
        Ok(TlsMaterial {
            chain: certs(&c.certificate)?,
            key: PrivateKeyDer::from_pem_file(&c.private_key)
                .map_err(|e| file_err(&c.private_key, &e))?,
            service_cas: certs(&c.client_ca)?,
        })
    }

    /// A server configuration trusting the service CA and `appliance_cas` for clients.
    pub fn server_config(
        &self,
        appliance_cas: &[CertificateDer<'static>],
    ) -> Result<(Arc<ServerConfig>, TrustSets), TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in self.service_cas.iter().chain(appliance_cas) {
            if let Err(e) = roots.add(c.clone()) {
                tracing::warn!(error = %e, "skipping a CA certificate rustls refuses");
            }
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let trust = TrustSets {
            service: TrustSets::anchors(&self.service_cas),
            appliance: TrustSets::anchors(appliance_cas),
        };
        Ok((Arc::new(cfg), trust))
    }
}

/// The live TLS state: swapped when the appliance CA chain rotates.
#[derive(Debug)]
pub struct LiveTls {
    current: RwLock<(Arc<ServerConfig>, Arc<TrustSets>)>,
}

impl LiveTls {
    pub fn new(cfg: Arc<ServerConfig>, trust: TrustSets) -> LiveTls {
        LiveTls {
            current: RwLock::new((cfg, Arc::new(trust))),
        }
    }

    pub fn replace(&self, cfg: Arc<ServerConfig>, trust: TrustSets) {
        if let Ok(mut g) = self.current.write() {
            *g = (cfg, Arc::new(trust));
        }
    }

    fn get(&self) -> Option<(Arc<ServerConfig>, Arc<TrustSets>)> {
        self.current.read().ok().map(|g| g.clone())
    }
}

/// Longest wait for a request's headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long open connections may finish after shutdown begins.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<LiveTls>,
    policy: Arc<Policy>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow clients cannot hold a connection open by trickling headers.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it, Nagle's algorithm holds the response's last TLS record until the
        // client's delayed ACK (about 40 ms on Linux): every request paid that.
        let _ = stream.set_nodelay(true);
        let Some((cfg, trust)) = tls.get() else {
            continue;
        };
        let policy = policy.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                TlsAcceptor::from(cfg).accept(stream),
            )
            .await;
            let tls_stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let identity = {
                let (_, conn) = tls_stream.get_ref();
                ClientIdentity::classify(conn.peer_certificates(), &trust, &policy, UnixTime::now())
            };
            if let ClientIdentity::Refused(reason) = &identity {
                tracing::info!(peer = %remote, reason = %reason, "client certificate identifies no known client");
            }
            let info = ConnInfo {
                remote,
                identity: Arc::new(identity),
            };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    router.clone().oneshot(req)
                },
            );
            let conn = builder
                .serve_connection(TokioIo::new(tls_stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting; let open connections finish their requests, for a while.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after the shutdown grace period");
        }
    }
}
