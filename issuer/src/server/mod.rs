//! The issuer's API: JSON over HTTP/1.1 on mutual TLS, to the gateway's identity only.
//!
//! - TLS: rustls with the **ring** provider (never aws-lc-rs), TLS 1.3 only (both ends
//!   are ours), client certificates required and verified against `tls.client_ca`.
//! - Who may call: after the handshake, the verified leaf must carry exactly one URI
//!   SAN and the clientAuth EKU, and the policy must map that URI to the `gateway`
//!   role. Any other client (a store or auditor identity from the same CA, a
//!   certificate without EKU) gets `403 forbidden` on every request of its
//!   connection, and its identity is logged once. A certificate from another CA never
//!   completes the handshake.
//! - Every signing route writes the signing log (fsynced) before it replies; if the
//!   log cannot be written the request fails with 503 and the signature is dropped.
//! - `POST /v1/licenses/batch` ([`api::SIGN_LICENSES`](alga_protocol::issuer_api::SIGN_LICENSES)) signs and logs 1 to
//!   [`api::MAX_LICENSE_BATCH`](alga_protocol::issuer_api::MAX_LICENSE_BATCH) licenses concurrently, each exactly as the single route
//!   would: one result per license in request order, a refused license carrying the
//!   single route's error code and message. If the log fails for any of them the whole
//!   request is 503 and no license is released (those of the batch already logged stay
//!   in the log undelivered, like a single request whose reply was lost:
//!   reconciliation reports them as signed but not recorded).
//! - Errors are [`IssuerErrorBody`](alga_protocol::issuer_api::IssuerErrorBody); a
//!   5xx never carries internal detail (the log does). Bodies are limited to [`MAX_BODY_BYTES`]; requests refuse unknown fields.
//! - The issuer never talks to Postgres, SMTP or S3: there is no code for it here.
//!
//! A hand-written accept loop (tokio-rustls + hyper) rather than axum-server, because
//! the identity is decided once per connection from the verified peer certificate and
//! attached to each request as a [`Client`] extension.
//!
//! Layout: `tls` builds the rustls configuration, `auth` decides from the verified
//! peer certificate whether a connection is the gateway's, `routes` is the router and
//! its request span, `handlers` the routes' handlers, `extract` the JSON extractor
//! whose rejections are the issuer's error body, and `error` the start-up error and
//! the private API error that maps to the stable error codes. This file has [`run`]
//! and the accept loop.

mod auth;
mod error;
mod extract;
mod handlers;
mod routes;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alga_policies::Policy;
use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

pub use auth::Client;
pub use error::status_of;
pub use tls::tls_config;

use crate::Error;
use crate::config::IssuerConfig;
use crate::keyring::KeyOps;
use crate::signlog::{SignLog, SignlogOptions};
use auth::authorize;
use routes::{App, router};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A client has this long to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client has this long to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, connections get this long to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the issuer API on `listener` until `shutdown` resolves, then lets open
/// connections finish (up to [`SHUTDOWN_GRACE`]).
///
/// Generic over the key store so that tests can run the real server over software
/// keys too; production passes `hsm::Hsm`.
pub async fn run<K: KeyOps + Clone>(
    config: IssuerConfig,
    policy: Policy,
    keys: K,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let tls = Arc::new(tls_config(&config.tls)?);
    let log_dir = config.log.directory.clone();
    let signlog =
        tokio::task::spawn_blocking(move || SignLog::open(&log_dir, SignlogOptions::default()))
            .await
            .map_err(|e| Error::Startup(e.to_string()))??;
    listener.set_nonblocking(true).map_err(Error::Listener)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(Error::Listener)?;
    // Never sign a license the appliances would refuse: the policy must be within
    // what the trust root endorsed the active license key for.
    crate::endorse::check_policy_covered(&keys, &policy).map_err(Error::Startup)?;
    let policy = Arc::new(policy);
    let watcher = tokio::spawn(watch_ca(keys.clone(), policy.clone()));
    let app = App {
        keys,
        policy: policy.clone(),
        signlog,
        origin: Arc::new(config.audit_log.origin),
    };
    serve(listener, TlsAcceptor::from(tls), policy, app, shutdown).await;
    watcher.abort();
    Ok(())
}

/// How long before the active appliance CA ends the issuer starts warning.
pub const CA_WARN_BEFORE: time::Duration = time::Duration::days(90);

/// How often the CA's remaining lifetime is logged once it is within
/// [`CA_WARN_BEFORE`].
const CA_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Logs, at start and every few hours, how long the active appliance CA has left:
/// a warning within [`CA_WARN_BEFORE`], an error once credentials are refused.
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
async fn watch_ca<K: KeyOps>(keys: K, policy: Arc<Policy>) {
    let mut tick = tokio::time::interval(CA_WATCH_EVERY);
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc();
        match crate::ops::credential::active_ca(&keys) {
            Ok(ca) => {
                let left = ca.not_after - now;
                if crate::ops::credential::check_ca_usable(&ca, &policy, now).is_err() {
                    tracing::error!(
                        ca.version = ca.version,
                        ca.not_after = %ca.not_after,
                        "the appliance CA expires too soon: credentials are refused until it is rotated (`alga-issuer keys rotate ca`)"
                    );
                } else if left < CA_WARN_BEFORE {
                    tracing::warn!(
                        ca.version = ca.version,
                        ca.not_after = %ca.not_after,
                        ca.days_left = left.whole_days(),
                        "the appliance CA expires soon: rotate it (`alga-issuer keys rotate ca`)"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "the appliance CA cannot be read"),
        }
    }
}

/// The accept loop.
async fn serve<K: KeyOps + Clone>(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    policy: Arc<Policy>,
    app: App<K>,
    shutdown: impl Future<Output = ()>,
) {
    let authorized = router(app);
    let forbidden = Router::new().fallback(handlers::forbidden);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen.address = %addr, "issuer API listening");
    }
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let policy = policy.clone();
        let authorized = authorized.clone();
        let forbidden = forbidden.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                };
                let service = match authorize(&policy, tls.get_ref().1.peer_certificates()) {
                    Ok(client) => {
                        tracing::debug!(client.uri = %client.uri, "gateway connected");
                        authorized
                            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                                req.extensions_mut().insert(client.clone());
                                req
                            })
                            .boxed_clone()
                    }
                    Err(refusal) => {
                        tracing::warn!(
                            client.uri = refusal.uri.as_deref().unwrap_or("-"),
                            reason = refusal.reason,
                            "client refused: not the gateway"
                        );
                        forbidden
                            .map_request(|req: Request<hyper::body::Incoming>| req)
                            .boxed_clone()
                    }
                };
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(true);
                let conn =
                    http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::info_span!("connection", net.peer = %peer)),
        );
    }
    drop(listener);
    tracing::info!("issuer API shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}
