//! R3 (RELIABILITY.md): the connection is cut after the redeem committed and before
//! the response reached the client; the client retries with the same code and the
//! same key and recovers its tenant and appliance (CONTRACT.md §4's retry rule), and no
//! second appliance ever appears.
//!
//! The cut is made by [`CutAfterCommitProxy`], a test-only TCP relay between the client
//! and the in-process gateway. It never parses TLS: in cut mode it forwards
//! client→gateway bytes as they come, and before forwarding each gateway→client chunk
//! it asks Postgres whether the redeem of the armed code has committed (the code row
//! `consumed` and the appliance row for it, both visible to another session). Chunks
//! read before the commit (the handshake, TLS 1.3 session tickets) are forwarded; the
//! first chunk read once the commit is visible is held and both connections are closed
//! without it. The gateway writes its response only after `COMMIT` returned, so the
//! response can never be forwarded in cut mode, and the cut is by construction after
//! the commit — which each trial asserts from what the proxy saw at the moment of the
//! cut, together with the client's transport error.
//!
//! `ALGA_R3_TRIALS` sets the number of trials (default 25; the figure is 100).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::harness::{Appliance, Stack, redeem_body, send};

/// Every wait of this test is bounded by one of these.
const REQUEST_BOUND: Duration = Duration::from_secs(60);
const CONNECTION_BOUND: Duration = Duration::from_secs(90);
const DB_CHECK_BOUND: Duration = Duration::from_secs(10);

fn trials() -> usize {
    std::env::var("ALGA_R3_TRIALS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, 100_000)
}

/// What the proxy does with a new connection.
#[derive(Clone, Debug)]
enum Mode {
    /// Relay both ways, untouched.
    PassThrough,
    /// Relay, but cut before the first gateway→client chunk read once the redeem of
    /// this code has committed.
    CutAfterCommit { code_id: String },
}

/// How one proxied connection ended.
#[derive(Clone, Debug)]
enum Outcome {
    /// Cut: the appliance the database showed committed for the armed code at the
    /// moment of the cut, the bytes held back (never forwarded) and the gateway→client
    /// chunks forwarded before (handshake, session tickets).
    Cut {
        committed_appliance: Uuid,
        held_bytes: usize,
        forwarded_chunks: usize,
    },
    /// Ended without a cut (either side closed); bytes forwarded gateway→client.
    Relayed { to_client_bytes: usize },
    /// The proxy itself failed (connect, I/O, database check, bound).
    Failed(String),
}

/// A test-only TCP proxy in front of the gateway that can cut a connection after the
/// redeem it carries committed and before the gateway's response reaches the client.
struct CutAfterCommitProxy {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    /// Outcomes of the connections accepted in cut mode, and in pass-through mode.
    cut_outcomes: Arc<Mutex<Vec<Outcome>>>,
    pass_outcomes: Arc<Mutex<Vec<Outcome>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl CutAfterCommitProxy {
    /// Listens on `127.0.0.1:0` and relays to `127.0.0.1:upstream_port`; `db` answers
    /// the commit checks (a session of its own, so it sees only committed data).
    async fn start(upstream_port: u16, db: Arc<tokio_postgres::Client>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(Mutex::new(Mode::PassThrough));
        let cut_outcomes = Arc::new(Mutex::new(Vec::new()));
        let pass_outcomes = Arc::new(Mutex::new(Vec::new()));
        let (m, co, po) = (mode.clone(), cut_outcomes.clone(), pass_outcomes.clone());
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mode = m.lock().expect("mode").clone();
                let o = match mode {
                    Mode::PassThrough => po.clone(),
                    Mode::CutAfterCommit { .. } => co.clone(),
                };
                let db = db.clone();
                tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(
                        CONNECTION_BOUND,
                        relay(client, upstream_port, mode, &db),
                    )
                    .await
                    {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(e)) => Outcome::Failed(e),
                        Err(_) => Outcome::Failed("connection bound passed".into()),
                    };
                    o.lock().expect("outcomes").push(outcome);
                });
            }
        });
        CutAfterCommitProxy {
            port,
            mode,
            cut_outcomes,
            pass_outcomes,
            accept_task,
        }
    }

    fn url(&self, path: &str) -> String {
        // `localhost`: the gateway's certificate names it.
        format!("https://localhost:{}{path}", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    /// The outcomes of the connections accepted in cut mode that ended since the last
    /// call.
    fn take_cut_outcomes(&self) -> Vec<Outcome> {
        std::mem::take(&mut *self.cut_outcomes.lock().expect("outcomes"))
    }

    /// The same for pass-through connections.
    fn take_pass_outcomes(&self) -> Vec<Outcome> {
        std::mem::take(&mut *self.pass_outcomes.lock().expect("outcomes"))
    }

    /// Waits (bounded) until a connection accepted in cut mode has ended; returns the
    /// outcomes of all that ended by then and within a short grace period after (a
    /// second one would be a transparent client retry).
    async fn wait_cut_outcomes(&self) -> Vec<Outcome> {
        let mut got = Vec::new();
        let deadline = Instant::now() + CONNECTION_BOUND;
        while got.is_empty() && Instant::now() < deadline {
            got.extend(self.take_cut_outcomes());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        got.extend(self.take_cut_outcomes());
        got
    }
}

impl Drop for CutAfterCommitProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// The appliance committed for `code_id`, if its redeem has committed.
async fn committed_appliance(
    db: &tokio_postgres::Client,
    code_id: &str,
) -> Result<Option<Uuid>, String> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&code_id];
    let q = db.query_opt(
        "SELECT a.appliance_id FROM install_codes c JOIN appliances a ON a.code_id = c.code_id \
         WHERE c.code_id = $1 AND c.state = 'consumed' AND c.appliance_id = a.appliance_id",
        &params,
    );
    match tokio::time::timeout(DB_CHECK_BOUND, q).await {
        Ok(Ok(row)) => Ok(row.map(|r| r.get(0))),
        Ok(Err(e)) => Err(format!("commit check: {e}")),
        Err(_) => Err("commit check bound passed".into()),
    }
}

/// Relays one connection; in cut mode, cuts at the first gateway→client chunk read
/// once the commit is visible.
async fn relay(
    mut client: TcpStream,
    upstream_port: u16,
    mode: Mode,
    db: &tokio_postgres::Client,
) -> Result<Outcome, String> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream_port))
        .await
        .map_err(|e| format!("connect to the gateway: {e}"))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    let mut client_open = true;
    let mut forwarded_chunks = 0usize;
    let mut to_client_bytes = 0usize;
    loop {
        tokio::select! {
            r = cr.read(&mut cbuf), if client_open => {
                match r {
                    Ok(0) | Err(_) => {
                        client_open = false;
                        let _ = sw.shutdown().await;
                    }
                    Ok(n) => {
                        if sw.write_all(&cbuf[..n]).await.is_err() {
                            return Ok(Outcome::Relayed { to_client_bytes });
                        }
                    }
                }
            }
            r = sr.read(&mut sbuf) => {
                let n = match r {
                    Ok(0) | Err(_) => return Ok(Outcome::Relayed { to_client_bytes }),
                    Ok(n) => n,
                };
                if let Mode::CutAfterCommit { code_id } = &mode
                    && let Some(appliance) = committed_appliance(db, code_id).await?
                {
                    // Hold this chunk (and everything after it): dropping both
                    // streams on return closes both connections.
                    return Ok(Outcome::Cut {
                        committed_appliance: appliance,
                        held_bytes: n,
                        forwarded_chunks,
                    });
                }
                if cw.write_all(&sbuf[..n]).await.is_err() {
                    return Ok(Outcome::Relayed { to_client_bytes });
                }
                forwarded_chunks += 1;
                to_client_bytes += n;
            }
        }
    }
}

/// R3: `ALGA_R3_TRIALS` (default 25; `make soak` 100) redeems whose connection is cut after the commit
/// and before the response; each is retried with the same code and key. Every retry
/// recovers the same tenant and appliance, no code ever gets a second appliance, and
/// another key still gets `code_already_used`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_connection_cut_after_commit_then_same_key_retry_recovers_without_duplicates() {
    let s = Stack::start().await;
    let gw_port: u16 =
        s.gw.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("gateway port");
    let proxy = CutAfterCommitProxy::start(gw_port, Arc::new(s.another_admin().await)).await;

    // The proxy is transparent when not cutting.
    let (st, _, _) = send(s.anon().get(proxy.url("/readyz"))).await;
    assert_eq!(st, 200, "readyz through the pass-through proxy");

    let n = trials();
    let started = Instant::now();
    let mut cut_confirmed = 0usize; // cut with the commit visible, nothing after it forwarded
    let mut transport_errors = 0usize; // the client saw a transport error, no response
    let mut recovered = 0usize; // retry: 200, same tenant, same appliance, a credential
    let mut refused_other_key = 0usize; // another key: 409 code_already_used
    let mut duplicates = 0i64; // appliance rows beyond one per code
    let mut held = (usize::MAX, 0usize); // bytes held back at the cut, min and max
    let mut before = (usize::MAX, 0usize); // chunks forwarded before the cut, min and max
    let mut failures: Vec<String> = Vec::new();
    for trial in 0..n {
        let (tenant, code_id, code) = s.tenant_with_code("pro").await;
        let a = Appliance::new();

        // The cut redeem: a fresh client, so a fresh connection through the proxy.
        proxy.set_mode(Mode::CutAfterCommit {
            code_id: code_id.clone(),
        });
        let sent = tokio::time::timeout(
            REQUEST_BOUND,
            s.anon()
                .post(proxy.url("/register"))
                .json(&redeem_body(&a, &code))
                .send(),
        )
        .await;
        proxy.set_mode(Mode::PassThrough);
        match sent {
            Err(_) => failures.push(format!("trial {trial}: the cut redeem passed its bound")),
            Ok(Ok(resp)) => failures.push(format!(
                "trial {trial}: the client got a response ({}) through the cut",
                resp.status()
            )),
            Ok(Err(e)) if e.is_timeout() => {
                failures.push(format!("trial {trial}: client timeout, not a cut"));
            }
            Ok(Err(_)) => transport_errors += 1,
        }
        // Exactly one connection in cut mode (no transparent client retry), cut with
        // the commit visible, after the handshake was relayed.
        let committed = match proxy.wait_cut_outcomes().await.as_slice() {
            [
                Outcome::Cut {
                    committed_appliance,
                    held_bytes,
                    forwarded_chunks,
                },
            ] if *held_bytes > 0 && *forwarded_chunks > 0 => {
                cut_confirmed += 1;
                held = (held.0.min(*held_bytes), held.1.max(*held_bytes));
                before = (
                    before.0.min(*forwarded_chunks),
                    before.1.max(*forwarded_chunks),
                );
                Some(*committed_appliance)
            }
            [Outcome::Failed(e)] => {
                failures.push(format!("trial {trial}: the proxy failed: {e}"));
                None
            }
            other => {
                failures.push(format!("trial {trial}: cut-mode outcomes {other:?}"));
                None
            }
        };

        // The retry: same code, same key (same CSR), through the proxy passing through.
        let (st, v, _) = send(
            s.anon()
                .post(proxy.url("/register"))
                .json(&redeem_body(&a, &code)),
        )
        .await;
        let appliance_in_db: Option<Uuid> = s
            .admin
            .query_opt(
                "SELECT appliance_id FROM appliances WHERE code_id = $1",
                &[&code_id],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        let same = st == 200
            && v["tenant_id"] == tenant.to_string()
            && committed.is_some_and(|c| v["appliance_id"] == c.to_string())
            && appliance_in_db.is_some_and(|c| v["appliance_id"] == c.to_string())
            && v["credential"]["certificate"]
                .as_str()
                .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
            && v["license"]["token"].is_string();
        if same {
            recovered += 1;
        } else {
            // Only the error object: a 200 body holds a license and a credential.
            failures.push(format!("trial {trial}: retry answered {st} {}", v["error"]));
        }

        // Another key: the code is used.
        let (st, e) = s.redeem_as(&code, &Appliance::new()).await;
        if st == 409 && e["error"]["code"] == "code_already_used" {
            refused_other_key += 1;
        } else {
            failures.push(format!(
                "trial {trial}: other key answered {st} {}",
                e["error"]
            ));
        }

        let rows = s
            .count(&format!(
                "SELECT count(*) FROM appliances WHERE code_id = '{code_id}' OR tenant_id = '{tenant}'"
            ))
            .await;
        duplicates += (rows - 1).max(0);
        if rows != 1 {
            failures.push(format!("trial {trial}: {rows} appliance rows for the code"));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Pass-through connections (readyz, then one retry per trial) all relayed a
    // response, none failed (bounded wait for the clients' pooled connections to end).
    let mut passed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while passed.len() < n + 1 && Instant::now() < deadline {
        passed.extend(proxy.take_pass_outcomes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for o in &passed {
        if !matches!(o, Outcome::Relayed { to_client_bytes } if *to_client_bytes > 0) {
            failures.push(format!("pass-through connection: {o:?}"));
        }
    }
    if passed.len() != n + 1 {
        failures.push(format!(
            "{} pass-through connections ended, {} expected",
            passed.len(),
            n + 1
        ));
    }
    let total_appliances = s.count("SELECT count(*) FROM appliances").await;
    let retry_licenses = s
        .count("SELECT count(*) FROM licenses WHERE reason = 'redeem_retry'")
        .await;
    println!(
        "R3: {n} trials in {elapsed:.1} s: cut after commit confirmed {cut_confirmed}, \
         client transport errors {transport_errors}, recovered {recovered}, \
         other key refused {refused_other_key}, duplicate appliances {duplicates}; \
         {total_appliances} appliance rows, {retry_licenses} retry licenses; \
         held at the cut {}..{} bytes after {}..{} relayed chunks",
        held.0, held.1, before.0, before.1
    );
    for f in failures.iter().take(10) {
        eprintln!("R3 failure: {f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
    assert_eq!(cut_confirmed, n, "every cut came after the commit");
    assert_eq!(
        transport_errors, n,
        "every cut redeem saw a transport error"
    );
    assert_eq!(recovered, n, "every retry recovered");
    assert_eq!(refused_other_key, n);
    assert_eq!(duplicates, 0, "no duplicate appliance");
    assert_eq!(total_appliances, i64::try_from(n).expect("n"));
    assert_eq!(retry_licenses, i64::try_from(n).expect("n"));
    drop(proxy);
    s.stop().await;
}
