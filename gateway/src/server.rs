//! The listeners. The API port: rustls (ring provider only) with client certificates
//! optional at the handshake and required per route; one accept loop feeding hyper with
//! the axum router, each request carrying its connection's [`ConnInfo`]. The optional
//! operations port ([`serve_ops`]): plain HTTP/1.1, the operational routes only
//! (`api::Surface::Ops`).
//!
//! The client verifier trusts the service CA *and* every appliance CA the issuer
//! publishes; which one a certificate chains to is decided afterwards in `auth`. The
//! server configuration is rebuilt when the issuer's appliance CA chain changes.
//!
//! # Slow clients (`[limits]`)
//! No client holds a connection longer than a timeout it does not control:
//! - at accept, a source (IPv4 address, IPv6 /64) holding
//!   `max_connections_per_source` connections gets its new one closed at once, before
//!   any TLS work ([`SourceLimiter`]);
//! - the TLS handshake is bounded (`tls_handshake_timeout_secs`);
//! - HTTP/1.1 headers are bounded by hyper (`header_read_timeout_secs`, counted from
//!   the connection's start or the previous response: it closes an idle HTTP/1.1
//!   keep-alive too);
//! - a request's whole body must arrive within `body_read_timeout_secs` of its headers
//!   ([`DeadlineBody`]; the handler then sees an error and the HTTP/1.1 connection is
//!   closed after the response);
//! - a connection without a request in progress (no handler running) for
//!   `idle_timeout_secs` is shut down: HTTP/1.1 keep-alive, HTTP/2 without an open
//!   request, a TLS connection that never sends one, a response a client does not read;
//! - HTTP/2 pings find dead peers (`http2_keep_alive_*`).
//!
//! Each cut is counted in `alga_gateway_connection_timeouts_total{phase}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use alga_policies::Policy;
use axum::Router;
use axum::body::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::{ClientIdentity, ConnInfo, TrustSets};
use crate::config::{LimitsConfig, TlsConfig};
use crate::error::Error;
use crate::metrics::{Metrics, REFUSED_PER_SOURCE_LIMIT, TimeoutPhase};

/// Certificates and key of the server, and the service CA; loaded once.
#[derive(Debug)]
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    service_cas: Vec<CertificateDer<'static>>,
}

impl TlsMaterial {
    /// Loads the PEM files of `[tls]`.
    pub fn load(c: &TlsConfig) -> Result<TlsMaterial, Error> {
        let file_err = |p: &std::path::Path, e: &dyn std::fmt::Display| Error::TlsFile {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, Error> {
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
    ) -> Result<(Arc<ServerConfig>, TrustSets), Error> {
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
                .map_err(|e| Error::TlsConfig(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::TlsConfig(e.to_string()))?;
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

/// How long open connections may finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a connection shut down for idleness may take to close (an HTTP/2 GOAWAY
/// exchange) before it is dropped.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------
// Connections per source
// ---------------------------------------------------------------------------------

/// Counts open connections per source (an IPv4 address or an IPv6 /64, as the redeem
/// rate limit counts them: [`crate::ratelimit::source_key`]) and refuses those beyond
/// the limit.
#[derive(Debug)]
pub struct SourceLimiter {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceLimiter {
    /// `max` concurrent connections per source; `0`: no limit.
    pub fn new(max: usize) -> Arc<SourceLimiter> {
        Arc::new(SourceLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, held until dropped; `None` when the
    /// source already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        if self.max == 0 {
            return Some(SourceSlot(None));
        }
        let key = crate::ratelimit::source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(Some((self.clone(), key))))
    }

    /// Connections `ip`'s source holds.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&crate::ratelimit::source_key(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// One connection counted by a [`SourceLimiter`], released when dropped.
#[derive(Debug)]
pub struct SourceSlot(Option<(Arc<SourceLimiter>, IpAddr)>);

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.0.take() {
            let mut open = limiter.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------------

/// A connection's requests in progress, and since when it has had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<tokio::time::Instant>,
    became_idle: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(tokio::time::Instant::now()),
            became_idle: Notify::new(),
        })
    }

    /// A request's handler starts; it ends when the guard drops.
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in progress for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let notified = self.became_idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                let deadline = since + limit;
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = notified => {}
                }
            } else {
                notified.await;
            }
        }
    }
}

/// A request in progress on its connection.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) =
                tokio::time::Instant::now();
            self.0.became_idle.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------

/// The error a request body yields when it has not fully arrived by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that must be complete by a deadline (the whole body, however it
/// trickles in); after it, reading yields [`BodyTimeout`]. The timer only starts
/// when a read finds no data ready.
#[derive(Debug)]
pub struct DeadlineBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
    metrics: Arc<Metrics>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration, metrics: Arc<Metrics>) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: tokio::time::Instant::now() + limit,
            limit,
            timer: None,
            expired: false,
            metrics,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            this.expired = true;
            this.metrics.connection_timeout(TimeoutPhase::Body);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        !self.expired && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------
// Serving one connection
// ---------------------------------------------------------------------------------

/// What every connection of a listener shares.
#[derive(Debug, Clone)]
struct Edge {
    router: Router,
    limits: Arc<LimitsConfig>,
    metrics: Arc<Metrics>,
}

impl Edge {
    /// The hyper service of one connection: marks each request busy until its handler
    /// returns, bounds the body, attaches the
    /// connection's facts.
    fn service(
        &self,
        info: ConnInfo,
        activity: Arc<Activity>,
    ) -> impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>>
                 + Send
                 + 'static,
    > + Clone
    + Send
    + 'static {
        let edge = self.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let busy = activity.begin();
            req.extensions_mut().insert(info.clone());
            let (limit, metrics) = (edge.limits.body_read_timeout(), edge.metrics.clone());
            let req = req.map(|b| axum::body::Body::new(DeadlineBody::new(b, limit, metrics)));
            let response = edge.router.clone().oneshot(req);
            async move {
                let r = response.await;
                drop(busy);
                r
            }
        })
    }

    /// Drives a connection to its end: shut down gracefully when the connection has
    /// been idle for `limits.idle_timeout_secs` (dropped [`IDLE_CLOSE_GRACE`] later
    /// at most) or when the server stops (dropped [`SHUTDOWN_GRACE`] later at most).
    async fn drive<C>(
        &self,
        conn: C,
        activity: &Activity,
        mut stop: watch::Receiver<bool>,
        remote: SocketAddr,
        h2: bool,
    ) where
        C: GracefulConnection,
        C::Error: Into<BoxError>,
    {
        tokio::pin!(conn);
        let mut closing: Option<tokio::time::Instant> = None;
        let idle = self.limits.idle_timeout();
        loop {
            let hard_stop = async {
                match closing {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        let e: BoxError = e.into();
                        let timed_out = e
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(hyper::Error::is_timeout);
                        if timed_out {
                            self.metrics.connection_timeout(if h2 {
                                TimeoutPhase::Http2KeepAlive
                            } else {
                                TimeoutPhase::Header
                            });
                        }
                        tracing::debug!(peer = %remote, error = %e, timed_out, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                }
                _ = activity.idle_for(idle), if closing.is_none() => {
                    self.metrics.connection_timeout(TimeoutPhase::Idle);
                    tracing::debug!(peer = %remote, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                }
                _ = hard_stop => {
                    tracing::debug!(peer = %remote, "connection dropped after its close grace");
                    return;
                }
            }
        }
    }
}

/// Stops accepting when `shutdown` resolves, then gives open connections
/// [`SHUTDOWN_GRACE`] to finish their requests.
async fn drain(stop: watch::Sender<bool>, what: &str) {
    stop.send_replace(true);
    tokio::select! {
        _ = stop.closed() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(listener = what, "connections still open after the shutdown grace period");
        }
    }
}

/// Accepts with a short pause after a failure (e.g. out of file descriptors).
async fn accept(listener: &TcpListener) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// The API port's settings besides the listener.
#[derive(Debug)]
pub struct ApiEdge {
    pub tls: Arc<LiveTls>,
    pub policy: Arc<Policy>,
    pub router: Router,
    pub limits: LimitsConfig,
    pub metrics: Arc<Metrics>,
}

/// Serves the TLS API on `listener` until `shutdown` resolves, then drains open
/// connections.
pub async fn serve(
    listener: TcpListener,
    api: ApiEdge,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let limits = Arc::new(api.limits);
    let edge = Edge {
        router: api.router,
        limits: limits.clone(),
        metrics: api.metrics.clone(),
    };
    let sources = SourceLimiter::new(limits.max_connections_per_source);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow clients cannot hold a connection open by trickling headers.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval())
        .keep_alive_timeout(limits.http2_keep_alive_timeout());
    let (stop, _) = watch::channel(false);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Some(a) => a,
                None => continue,
            },
        };
        // Before any TLS work: a source over its limit costs one accept and one close.
        let Some(slot) = sources.try_acquire(remote.ip()) else {
            drop(stream);
            api.metrics.connection_refused(REFUSED_PER_SOURCE_LIMIT);
            tracing::debug!(peer = %remote, "connection refused: per-source limit");
            continue;
        };
        let open = api.metrics.connection_opened();
        // Without it, Nagle's algorithm holds the response's last TLS record until the
        // client's delayed ACK (about 40 ms on Linux): every request paid that.
        let _ = stream.set_nodelay(true);
        let Some((cfg, trust)) = api.tls.get() else {
            continue;
        };
        let policy = api.policy.clone();
        let edge = edge.clone();
        let builder = builder.clone();
        let stop = stop.subscribe();
        tokio::spawn(async move {
            let _held = (slot, open);
            let handshake = tokio::time::timeout(
                edge.limits.tls_handshake_timeout(),
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
                    edge.metrics.connection_timeout(TimeoutPhase::TlsHandshake);
                    tracing::debug!(peer = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let (identity, alpn) = {
                let (_, conn) = tls_stream.get_ref();
                (
                    ClientIdentity::classify(
                        conn.peer_certificates(),
                        &trust,
                        &policy,
                        UnixTime::now(),
                    ),
                    conn.alpn_protocol().map(<[u8]>::to_vec),
                )
            };
            if let ClientIdentity::Refused(reason) = &identity {
                tracing::info!(peer = %remote, reason = %reason, "client certificate identifies no known client");
            }
            let info = ConnInfo {
                remote,
                identity: Arc::new(identity),
            };
            // The protocol ALPN agreed on; without ALPN, hyper tells from the preface.
            let (builder, h2) = match alpn.as_deref() {
                Some(b"h2") => (builder.http2_only(), true),
                Some(b"http/1.1") => (builder.http1_only(), false),
                _ => (builder, false),
            };
            let activity = Activity::new();
            let svc = edge.service(info, activity.clone());
            let conn = builder
                .serve_connection(TokioIo::new(tls_stream), svc)
                .into_owned();
            edge.drive(conn, &activity, stop, remote, h2).await;
        });
    }
    drain(stop, "api").await;
}

/// Serves the operations routes (`api::Surface::Ops`) over plain HTTP/1.1 on `listener`
/// until `shutdown` resolves. Every caller is anonymous; the `[limits]` timeouts
/// apply, the per-source limit does not (the listener is meant for loopback or a
/// management network).
pub async fn serve_ops(
    listener: TcpListener,
    router: Router,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let edge = Edge {
        router,
        limits: Arc::new(limits),
        metrics,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.limits.header_read_timeout());
    let (stop, _) = watch::channel(false);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Some(a) => a,
                None => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        let builder = builder.clone();
        let stop = stop.subscribe();
        tokio::spawn(async move {
            let info = ConnInfo {
                remote,
                identity: Arc::new(ClientIdentity::Anonymous),
            };
            let activity = Activity::new();
            let svc = edge.service(info, activity.clone());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            edge.drive(conn, &activity, stop, remote, false).await;
        });
    }
    drain(stop, "ops").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_beyond_max_and_releases_on_drop() {
        let l = SourceLimiter::new(2);
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::2".parse().expect("same /64");
        let c: IpAddr = "2001:db8:0:1::1".parse().expect("another /64");
        let s1 = l.try_acquire(a).expect("first");
        let _s2 = l.try_acquire(b).expect("second");
        assert!(l.try_acquire(a).is_none(), "third from the /64");
        let _other = l.try_acquire(c).expect("another source");
        drop(s1);
        assert_eq!(l.open(a), 1);
        let _s3 = l.try_acquire(a).expect("a slot again");
        let unlimited = SourceLimiter::new(0);
        let held: Vec<_> = (0..1000).map(|_| unlimited.try_acquire(a)).collect();
        assert!(held.iter().all(Option::is_some));
        assert_eq!(unlimited.open(a), 0, "no limit: nothing counted");
    }
}
