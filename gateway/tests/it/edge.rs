//! The HTTP edge against hostile and slow clients: metric labels from a
//! fixed set whatever the method, the `[limits]` timeouts (TLS handshake, headers,
//! whole body, idle HTTP/1.1, HTTP/2 and TLS connections), the per-source connection
//! limit, and the operations listener (`[ops]`).
//!
//! Every server listens on 127.0.0.1. Each test starts a gateway of its own on the
//! stack's database and issuer through `alga_gateway::run_on`, with short timeouts.
//! [`figures`] is the bounded measurement of RELIABILITY.md: it prints figures
//! (`--nocapture`) and asserts only counts; `ALGA_EDGE_JUNK` and `ALGA_EDGE_SLOW` set
//! its sizes (defaults 2,000 and 200; the issue's figures are 10,000 and 1,000).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alga_gateway::config::LimitsConfig;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use crate::harness::{Opts, Stack, assert_error, dev, gateway_config_text, ring, send};

// ---------------------------------------------------------------------------------
// A gateway of the test's own
// ---------------------------------------------------------------------------------

/// A gateway on the stack's database and issuer with `limits`, and an operations
/// listener when asked; both on 127.0.0.1:0.
struct Edge {
    api: SocketAddr,
    ops: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Edge {
    async fn start(s: &Stack, limits: LimitsConfig, with_ops: bool) -> Edge {
        let mut config = s.gateway_config().clone();
        config.limits = limits;
        let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ops = with_ops.then(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
        let api_addr = api.local_addr().expect("addr");
        let ops_addr = ops.as_ref().map(|l| l.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let policy = s.policy.clone();
        let task = tokio::spawn(async move {
            alga_gateway::run_on(
                config,
                policy,
                alga_gateway::Listeners { api, ops },
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("gateway runs");
        });
        let e = Edge {
            api: api_addr,
            ops: ops_addr,
            stop: Some(tx),
            task: Some(task),
        };
        // Ready when /healthz answers (up to 30 s, as the harness waits); the client
        // (and its connection) is dropped.
        let c = s.anon();
        for _ in 0..600 {
            if let Ok(r) = c.get(e.url("/healthz")).send().await
                && r.status() == StatusCode::OK
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the edge gateway did not answer /healthz");
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    fn ops_url(&self, path: &str) -> String {
        let ops = self.ops.expect("this gateway has an ops listener");
        format!("http://{ops}{path}")
    }

    /// `/metrics` from the ops listener.
    async fn metrics(&self, s: &Stack) -> String {
        let (st, m, _) = send(s.anon().get(self.ops_url("/metrics"))).await;
        assert_eq!(st, 200);
        m.as_str().expect("text").to_owned()
    }

    /// Waits until `series` reads `want` on the ops listener's `/metrics`.
    async fn wait_metric(&self, s: &Stack, series: &str, want: f64) {
        let mut last = None;
        for _ in 0..100 {
            last = sample(&self.metrics(s).await, series);
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{series} is {last:?}, expected {want}");
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("the edge gateway stops")
                .expect("the edge gateway ends cleanly");
        }
    }
}

/// The value of one series (`name{labels}` exactly as exposed) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The series (everything but the value) of a scrape.
fn series(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_owned()))
        .collect()
}

fn timeout_series(phase: &str) -> String {
    format!("alga_gateway_connection_timeouts_total{{phase=\"{phase}\"}}")
}

const REFUSED: &str = "alga_gateway_connections_refused_total{reason=\"per_source_limit\"}";
const OPEN: &str = "alga_gateway_connections_open";

// ---------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------

fn connector(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dev().path("ALGA_CA_BUNDLE")).expect("CA bundle") {
        roots.add(c.expect("cert")).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection offering `alpn`, without a client certificate.
async fn tls(addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    connector(alpn)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// Reads (and discards) until the peer closes; how long that took, or `None` if the
/// connection is still open after `max`.
async fn closed_within<R: AsyncRead + Unpin>(r: &mut R, max: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = max.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// One HTTP/1.1 response: its status and body (by `content-length`).
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let len = head.lines().find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })?;
            while buf.len() < end + 4 + len {
                let n = r.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return Some((status, body));
        }
        let n = r.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An HTTP/2 connection (ALPN h2) that has served one `GET /healthz`; the connection
/// task ends when the server closes the connection. Keep the sender: dropping it
/// closes the connection from the client's side.
async fn h2_after_one_request(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<axum::body::Body>,
    tokio::task::JoinHandle<()>,
) {
    let io = TokioIo::new(tls(addr, &[b"h2"]).await);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(format!("https://localhost:{}/healthz", addr.port()))
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 16)
        .await
        .expect("h2 body");
    (sender, task)
}

fn short(idle: f64) -> LimitsConfig {
    LimitsConfig {
        tls_handshake_timeout_secs: 1.0,
        header_read_timeout_secs: 30.0,
        body_read_timeout_secs: 1.0,
        idle_timeout_secs: idle,
        ..LimitsConfig::default()
    }
}

/// Closed by a 1 s timeout: not before it, and well before today's 10 s defaults.
fn assert_cut_by_a_1s_timeout(what: &str, closed: Option<Duration>) {
    let d = closed.unwrap_or_else(|| panic!("{what}: still open"));
    assert!(
        d >= Duration::from_millis(800) && d < Duration::from_secs(6),
        "{what}: closed after {d:?}"
    );
}

// ---------------------------------------------------------------------------------
// Finding 1: metric labels
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_methods_add_no_metric_series() {
    let s = Stack::start().await;
    let c = s.anon();
    let scrape = || async {
        let (st, m, _) = send(s.anon().get(s.url("/metrics"))).await;
        assert_eq!(st, 200);
        m.as_str().expect("text").to_owned()
    };
    // The routes the junk goes to, once with a real method (and /metrics itself: a
    // scrape is counted after its response).
    send(c.get(s.url("/no/such/route"))).await;
    send(c.get(s.url("/healthz"))).await;
    scrape().await;
    let before = scrape().await;
    let mut statuses = BTreeSet::new();
    for i in 0..300 {
        let name = if i % 50 == 0 {
            format!("LONG{}", "X".repeat(8 * 1024))
        } else {
            format!("JUNK{i}")
        };
        let method = reqwest::Method::from_bytes(name.as_bytes()).expect("token");
        let path = if i % 2 == 0 {
            "/healthz".to_owned()
        } else {
            format!("/no/such/{i}")
        };
        let (st, _, _) = send(c.request(method, s.url(&path))).await;
        statuses.insert(st.as_u16());
    }
    let after = scrape().await;
    let added: Vec<_> = series(&after)
        .difference(&series(&before))
        .cloned()
        .collect();
    println!(
        "junk methods: 300 requests (statuses {statuses:?}) added {} series; /metrics {} -> {} bytes: {added:?}",
        added.len(),
        before.len(),
        after.len()
    );
    assert!(added.len() <= 2, "{added:?}");
    let allowed: BTreeSet<&str> = alga_gateway::metrics::METHODS
        .into_iter()
        .chain(["other"])
        .collect();
    for line in after
        .lines()
        .filter(|l| l.starts_with("alga_gateway_http_requests_total{"))
    {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("method label");
        assert!(allowed.contains(method), "{line:.200}");
    }
    assert!(
        after.contains(
            "alga_gateway_http_requests_total{route=\"/healthz\",method=\"other\",status=\"405\"} 150"
        ),
        "{after}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------
// Finding 5: slow clients
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_cut_at_its_deadline_and_its_connection_closed() {
    let s = Stack::start().await;
    let e = Edge::start(&s, short(30.0), true).await;
    let c = tls(e.api, &[b"http/1.1"]).await;
    let (mut r, mut w) = tokio::io::split(c);
    let started = Instant::now();
    w.write_all(
        b"POST /register HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{",
    )
    .await
    .expect("headers");
    // One byte every 200 ms: the whole body would take 200 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(b" ").await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
    });
    let response = tokio::time::timeout(Duration::from_secs(10), read_response(&mut r)).await;
    let answered = started.elapsed();
    let closed = closed_within(&mut r, Duration::from_secs(5)).await;
    trickle.abort();
    println!("trickling body: answered {response:?} after {answered:?}, closed {closed:?} later");
    let (status, body) = response.expect("answered before 10 s").expect("a response");
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("request_timeout"), "{body}");
    assert!(
        answered >= Duration::from_millis(800) && answered < Duration::from_secs(6),
        "answered after {answered:?}"
    );
    assert!(
        closed.is_some(),
        "the connection is closed after the response"
    );
    let m = e.metrics(&s).await;
    assert_eq!(sample(&m, &timeout_series("body")), Some(1.0), "{m}");
    e.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_stalled_handshakes_are_closed_by_their_timeouts() {
    let s = Stack::start().await;
    let limits = LimitsConfig {
        body_read_timeout_secs: 5.0,
        ..short(1.0)
    };
    let e = Edge::start(&s, limits, true).await;
    let api = e.api;
    // A TLS connection that never sends a request.
    let tls_idle = async {
        let mut c = tls(api, &[b"http/1.1"]).await;
        closed_within(&mut c, Duration::from_secs(8)).await
    };
    // An HTTP/1.1 keep-alive connection after one request.
    let keep_alive = async {
        let mut c = tls(api, &[b"http/1.1"]).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .expect("request");
        let (status, _) = read_response(&mut c).await.expect("response");
        assert_eq!(status, 200);
        closed_within(&mut c, Duration::from_secs(8)).await
    };
    // An HTTP/2 connection after one request.
    let h2_idle = async {
        let (_sender, conn) = h2_after_one_request(api).await;
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(8), conn)
            .await
            .ok()
            .map(|_| t.elapsed())
    };
    // A TCP connection that never starts TLS.
    let no_handshake = async {
        let mut c = TcpStream::connect(api).await.expect("connect");
        closed_within(&mut c, Duration::from_secs(8)).await
    };
    let (tls_idle, keep_alive, h2_idle, no_handshake) =
        tokio::join!(tls_idle, keep_alive, h2_idle, no_handshake);
    println!(
        "idle 1 s: TLS without a request {tls_idle:?}, HTTP/1.1 keep-alive {keep_alive:?}, \
         HTTP/2 {h2_idle:?}; handshake 1 s: TCP without TLS {no_handshake:?}"
    );
    assert_cut_by_a_1s_timeout("TLS connection without a request", tls_idle);
    assert_cut_by_a_1s_timeout("HTTP/1.1 keep-alive", keep_alive);
    assert_cut_by_a_1s_timeout("HTTP/2 connection", h2_idle);
    assert_cut_by_a_1s_timeout("TCP connection without a handshake", no_handshake);
    let m = e.metrics(&s).await;
    assert!(
        sample(&m, &timeout_series("idle")).is_some_and(|n| n >= 3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, &timeout_series("tls_handshake")),
        Some(1.0),
        "{m}"
    );
    // A request in progress is not idle: a body taking 2 s to arrive (within its 5 s)
    // on a connection with a 1 s idle timeout is answered.
    let mut c = tls(api, &[b"http/1.1"]).await;
    let body = br#"{"code": "x"}        "#;
    c.write_all(
        format!(
            "POST /register HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("headers");
    let started = Instant::now();
    for b in body {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.write_all(&[*b]).await.expect("the connection stays open");
    }
    let (status, v) = read_response(&mut c).await.expect("answered");
    println!(
        "a 2 s body on a 1 s idle connection: {status} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 400, "{v}");
    e.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_source_limit_refuses_the_next_connection_before_tls() {
    let s = Stack::start().await;
    let limits = LimitsConfig {
        max_connections_per_source: 3,
        tls_handshake_timeout_secs: 30.0,
        ..LimitsConfig::default()
    };
    let e = Edge::start(&s, limits, true).await;
    // The readiness probe's connection is gone (its client was dropped).
    e.wait_metric(&s, OPEN, 0.0).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(e.api).await.expect("connect"));
    }
    e.wait_metric(&s, OPEN, 3.0).await;
    let mut fourth = TcpStream::connect(e.api).await.expect("the kernel accepts");
    let refused = closed_within(&mut fourth, Duration::from_secs(5)).await;
    println!("per-source limit 3: the 4th connection was closed after {refused:?}");
    assert!(refused.is_some(), "the 4th connection is closed at once");
    for h in &mut held {
        assert_eq!(
            closed_within(h, Duration::from_millis(300)).await,
            None,
            "the first three stay open"
        );
    }
    let m = e.metrics(&s).await;
    assert_eq!(sample(&m, REFUSED), Some(1.0), "{m}");
    assert_eq!(sample(&m, OPEN), Some(3.0), "{m}");
    assert_eq!(
        sample(&m, &timeout_series("tls_handshake")),
        Some(0.0),
        "{m}"
    );
    // A slot freed is a slot for the next connection, which is served.
    drop(held.pop());
    e.wait_metric(&s, OPEN, 2.0).await;
    let mut c = tls(e.api, &[b"http/1.1"]).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let (status, _) = read_response(&mut c).await.expect("response");
    assert_eq!(status, 200);
    drop(held);
    e.stop().await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------
// Finding 8: the operations listener
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_serves_health_readiness_and_metrics_and_the_api_port_stops() {
    let s = Stack::start().await;
    let e = Edge::start(&s, LimitsConfig::default(), true).await;
    let c = s.anon();
    assert!(e.ops.is_some_and(|a| a.ip().is_loopback()));

    // The ops listener: plain HTTP, the four operational routes.
    let (st, v, _) = send(c.get(e.ops_url("/healthz"))).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (st, v, _) = send(c.get(e.ops_url("/readyz"))).await;
    assert_eq!(st, 200, "{v}");
    let (st, doc, _) = send(c.get(e.ops_url("/openapi.json"))).await;
    assert_eq!(
        (st, doc["openapi"].as_str()),
        (StatusCode::OK, Some("3.1.0"))
    );
    let m = e.metrics(&s).await;
    for needle in [
        "alga_gateway_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
        REFUSED,
        OPEN,
        &timeout_series("idle"),
    ] {
        assert!(m.contains(needle), "{needle} missing in\n{m}");
    }
    // ... and nothing else.
    for (method, path) in [
        ("POST", "/register"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/tenants/00000000-0000-0000-0000-000000000000"),
        ("GET", "/metrics/"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let (st, v, _) = send(c.request(m, e.ops_url(path))).await;
        assert_error(st, &v, 404, "not_found");
    }

    // The API port: /readyz and /metrics are gone, the rest as before.
    for path in ["/metrics", "/readyz"] {
        let (st, v, _) = send(c.get(e.url(path))).await;
        assert_error(st, &v, 404, "not_found");
    }
    for path in ["/healthz", "/openapi.json", "/.well-known/jwks.json"] {
        let (st, _, _) = send(c.get(e.url(path))).await;
        assert_eq!(st, 200, "{path} on the API port");
    }
    // The hidden routes were counted as unknown ones.
    let m = e.metrics(&s).await;
    assert!(
        m.contains(
            "alga_gateway_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"
        ),
        "{m}"
    );
    assert!(
        !m.contains("route=\"/metrics\",method=\"GET\",status=\"404\""),
        "{m}"
    );
    e.stop().await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------
// The measurement (RELIABILITY.md): a real gateway process
// ---------------------------------------------------------------------------------

/// The `alga-gateway serve` binary on the stack's database and issuer, both listeners
/// on 127.0.0.1:0 (their addresses read from its log), until dropped.
struct GatewayProcess {
    child: tokio::process::Child,
    api: SocketAddr,
    ops: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    async fn start(s: &Stack, limits: &str) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = gateway_config_text(
            &s.db,
            s.issuer_addr,
            &Opts {
                limits: Some(limits.to_owned()),
                extra: Some("[ops]\naddress = \"127.0.0.1:0\"\n".to_owned()),
                ..Opts::default()
            },
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).expect("config written");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_alga-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn,alga_gateway=info,alga_gateway::api=warn")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("alga-gateway starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<(bool, SocketAddr)>();
        for out in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn AsyncRead + Send + Unpin>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let (log, addr_tx) = (log.clone(), addr_tx.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    for (needle, is_ops) in [("gateway listening", false), ("ops listening", true)]
                    {
                        if line.contains(needle)
                            && let Some(a) = line
                                .split("address=")
                                .nth(1)
                                .and_then(|a| a.split_whitespace().next())
                                .and_then(|a| a.parse().ok())
                        {
                            let _ = addr_tx.send((is_ops, a));
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let (mut api, mut ops) = (None, None);
        while api.is_none() || ops.is_none() {
            match tokio::time::timeout(Duration::from_secs(30), addr_rx.recv()).await {
                Ok(Some((true, a))) => ops = Some(a),
                Ok(Some((false, a))) => api = Some(a),
                _ => panic!(
                    "alga-gateway did not log its addresses:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                ),
            }
        }
        GatewayProcess {
            child,
            api: api.expect("api"),
            ops: ops.expect("ops"),
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// The process's resident set and its peak, in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn env_count(var: &str, default: usize, max: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// The kinds of slow client, and the `[limits]` timeout that should close each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slow {
    /// TCP only: never starts TLS (tls_handshake_timeout_secs).
    NoHandshake,
    /// TLS, then nothing (idle_timeout_secs).
    TlsIdle,
    /// Headers at one byte a second (header_read_timeout_secs).
    HeaderTrickle,
    /// A body at one byte a second (body_read_timeout_secs).
    BodyTrickle,
    /// HTTP/2 after one request, then nothing (idle_timeout_secs).
    H2Idle,
}

const SLOW_KINDS: [Slow; 5] = [
    Slow::NoHandshake,
    Slow::TlsIdle,
    Slow::HeaderTrickle,
    Slow::BodyTrickle,
    Slow::H2Idle,
];

/// A slow connection, established.
enum SlowConn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Trickling(
        tokio::io::ReadHalf<TlsStream<TcpStream>>,
        tokio::task::JoinHandle<()>,
    ),
    H2(
        hyper::client::conn::http2::SendRequest<axum::body::Body>,
        tokio::task::JoinHandle<()>,
    ),
}

impl SlowConn {
    /// Opens a slow connection of `kind` (TCP, TLS, the first bytes of its request).
    async fn open(kind: Slow, addr: SocketAddr) -> SlowConn {
        // Writes one byte of `bytes` a second, until the gateway closes the connection.
        let trickle = |mut w: tokio::io::WriteHalf<TlsStream<TcpStream>>, bytes: &'static [u8]| {
            tokio::spawn(async move {
                for b in bytes.iter().cycle().take(600) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
                        break;
                    }
                }
            })
        };
        match kind {
            Slow::NoHandshake => SlowConn::Tcp(TcpStream::connect(addr).await.expect("connect")),
            Slow::TlsIdle => SlowConn::Tls(Box::new(tls(addr, &[b"http/1.1"]).await)),
            Slow::HeaderTrickle => {
                let (r, mut w) = tokio::io::split(tls(addr, &[b"http/1.1"]).await);
                w.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
                    .await
                    .expect("first bytes");
                SlowConn::Trickling(r, trickle(w, b"abcdefgh"))
            }
            Slow::BodyTrickle => {
                let (r, mut w) = tokio::io::split(tls(addr, &[b"http/1.1"]).await);
                w.write_all(
                    b"POST /register HTTP/1.1\r\nhost: localhost\r\n\
                      content-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
                )
                .await
                .expect("headers");
                SlowConn::Trickling(r, trickle(w, b" "))
            }
            Slow::H2Idle => {
                let (sender, conn) = h2_after_one_request(addr).await;
                SlowConn::H2(sender, conn)
            }
        }
    }

    /// How long until the gateway closes it (`None`: still open after `max`).
    async fn hold(self, max: Duration) -> Option<Duration> {
        match self {
            SlowConn::Tcp(mut c) => closed_within(&mut c, max).await,
            SlowConn::Tls(mut c) => closed_within(&mut c, max).await,
            SlowConn::Trickling(mut r, writer) => {
                let closed = closed_within(&mut r, max).await;
                writer.abort();
                closed
            }
            SlowConn::H2(_sender, conn) => {
                let t = Instant::now();
                tokio::time::timeout(max, conn)
                    .await
                    .ok()
                    .map(|_| t.elapsed())
            }
        }
    }
}

/// The figures of RELIABILITY.md for the HTTP edge: metric series added by junk methods,
/// and normal requests' latency, the gateway's memory and the slow connections'
/// fate while `ALGA_EDGE_SLOW` slow connections are held. Prints; asserts counts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures() {
    let junk = env_count("ALGA_EDGE_JUNK", 2_000, 100_000);
    let slow = env_count("ALGA_EDGE_SLOW", 200, 5_000);
    let s = Stack::start().await;
    // The per-source limit off: every client here is 127.0.0.1.
    let limits = "tls_handshake_timeout_secs = 10.0\nheader_read_timeout_secs = 10.0\n\
                  body_read_timeout_secs = 10.0\nidle_timeout_secs = 12.0\n\
                  max_connections_per_source = 0";
    let gw = GatewayProcess::start(&s, limits).await;
    let anon = s.anon();
    let store = s.store();
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = anon.get(gw.ops_url("/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "the gateway process did not become ready within 30 s"
    );
    let (tenant, _, _) = s.tenant_with_code("essentials").await;
    let normal_url = gw.url(&format!("/tenants/{tenant}"));
    let normal = |store: reqwest::Client, url: String| async move {
        let t = Instant::now();
        let r = store.get(url).send().await.expect("normal request");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        t.elapsed()
    };
    let scrape = || async {
        let r = anon
            .get(gw.ops_url("/metrics"))
            .send()
            .await
            .expect("scrape");
        r.text().await.expect("text")
    };

    // Unloaded.
    for _ in 0..20 {
        normal(store.clone(), normal_url.clone()).await;
    }
    let mut unloaded = Vec::new();
    for _ in 0..300 {
        unloaded.push(normal(store.clone(), normal_url.clone()).await);
    }
    unloaded.sort();
    let (rss_idle, _) = gw.rss_kib();

    // Junk methods: distinct names, 16 at a time over keep-alive connections; the
    // routes they reach (and /metrics) seen once before.
    anon.get(gw.url("/healthz")).send().await.expect("healthz");
    anon.get(gw.url("/x/0"))
        .send()
        .await
        .expect("unknown route");
    scrape().await;
    let before = scrape().await;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (anon, next, base) = (anon.clone(), next.clone(), gw.url("/"));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= junk {
                        break;
                    }
                    let m =
                        reqwest::Method::from_bytes(format!("JUNK{i}").as_bytes()).expect("token");
                    let path = if i % 2 == 0 {
                        "healthz".to_owned()
                    } else {
                        format!("x/{i}")
                    };
                    let r = anon.request(m, format!("{base}{path}")).send().await;
                    assert!(r.is_ok_and(|r| r.status().is_client_error()));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("junk worker");
    }
    let junk_time = started.elapsed();
    let after = scrape().await;
    let added = series(&after).difference(&series(&before)).count();
    println!(
        "FIGURE junk methods: {junk} requests with distinct methods in {junk_time:.1?} added \
         {added} series (goal <= 10); /metrics {} -> {} bytes",
        before.len(),
        after.len()
    );
    assert!(added <= 10, "{added} series added");

    // Slow connections while normal traffic is served.
    let t0 = Instant::now();
    let max_hold = Duration::from_secs(40);
    let opening = Arc::new(tokio::sync::Semaphore::new(64));
    // Each task: (kind, up since t0, held from up until the gateway closed it).
    let slow_tasks: Vec<_> = (0..slow)
        .map(|i| {
            let (kind, addr, opening) = (SLOW_KINDS[i % SLOW_KINDS.len()], gw.api, opening.clone());
            tokio::spawn(async move {
                let conn = {
                    let _permit = opening.acquire_owned().await.expect("semaphore");
                    SlowConn::open(kind, addr).await
                };
                let up = t0.elapsed();
                (kind, (up, conn.hold(max_hold).await))
            })
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, pid) = (done.clone(), gw.child.id().expect("pid"));
        let (anon, ops) = (anon.clone(), gw.ops_url("/metrics"));
        tokio::spawn(async move {
            let (mut peak_rss, mut peak_open) = (0u64, 0f64);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak_rss = peak_rss.max(kib);
                }
                if let Ok(r) = anon.get(&ops).send().await
                    && let Ok(m) = r.text().await
                {
                    peak_open = peak_open.max(sample(&m, OPEN).unwrap_or(0.0));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (peak_rss, peak_open)
        })
    };
    let traffic = {
        let (done, store, url) = (done.clone(), store.clone(), normal_url.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let at = t0.elapsed();
                lat.push((at, normal(store.clone(), url.clone()).await));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            lat
        })
    };
    let mut results = Vec::new();
    for t in slow_tasks {
        results.push(t.await.expect("slow client"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = traffic.await.expect("traffic");
    let (peak_rss, peak_open) = sampler.await.expect("sampler");
    let (_, hwm) = gw.rss_kib();

    // Phases: opening (until the last slow connection is up), holding (until the first
    // is closed), closing.
    let last_up = results
        .iter()
        .map(|(_, (up, _))| *up)
        .max()
        .unwrap_or_default();
    let first_closed = results
        .iter()
        .filter_map(|(_, (up, held))| held.map(|h| *up + h))
        .min()
        .unwrap_or_default();
    let phase = |from: Duration, to: Duration| {
        let mut v: Vec<Duration> = lat
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        v
    };
    let all = phase(Duration::ZERO, Duration::MAX);
    let holding = phase(last_up, first_closed.max(last_up));
    let u99 = percentile(&unloaded, 0.99);
    println!(
        "FIGURE normal requests (GET /tenants/{{id}}, store): unloaded p50 {:.1?} p99 {:.1?} (n={}); \
         under {slow} slow connections p50 {:.1?} p99 {:.1?} (n={}, {:.2}x unloaded p99); \
         while all were held p50 {:.1?} p99 {:.1?} (n={})",
        percentile(&unloaded, 0.5),
        u99,
        unloaded.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.len(),
        percentile(&all, 0.99).as_secs_f64() / u99.as_secs_f64().max(1e-9),
        percentile(&holding, 0.5),
        percentile(&holding, 0.99),
        holding.len(),
    );
    println!(
        "FIGURE gateway RSS: {:.1} MiB before, peak {:.1} MiB sampled / {:.1} MiB VmHWM with \
         {peak_open} connections open at most (goal <= 64 MiB); slow connections all up after \
         {last_up:.1?}",
        rss_idle as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    let mut open_left = 0;
    for kind in SLOW_KINDS {
        let mut held: Vec<Duration> = results
            .iter()
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, (_, h))| *h)
            .collect();
        let n = results.iter().filter(|(k, _)| *k == kind).count();
        open_left += n - held.len();
        held.sort();
        println!(
            "FIGURE slow {kind:?}: {} of {n} closed by the gateway, held min {:.1?} median {:.1?} max {:.1?}",
            held.len(),
            held.first().copied().unwrap_or_default(),
            percentile(&held, 0.5),
            held.last().copied().unwrap_or_default(),
        );
    }
    let m = scrape().await;
    println!(
        "FIGURE timeouts counted: {}",
        [
            "tls_handshake",
            "header",
            "body",
            "idle",
            "http2_keep_alive"
        ]
        .map(|p| format!("{p}={}", sample(&m, &timeout_series(p)).unwrap_or(-1.0)))
        .join(" ")
    );
    assert_eq!(
        open_left,
        0,
        "every slow connection is closed by the gateway; log:\n{}",
        gw.log.lock().map(|l| l.clone()).unwrap_or_default()
    );
    drop(gw);
    s.stop().await;
}
