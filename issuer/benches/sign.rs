//! Signing throughput: the raw HSM against the whole issuer over mTLS.
//!
//! `cargo bench -p alga-issuer --bench sign` (with `ALGA_HSM_MODULE` set, as for the
//! tests). It makes a throwaway SoftHSM2 token in a tempdir (re-running itself with
//! `SOFTHSM2_CONF` pointing there, since SoftHSM reads it once per process), then
//! measures, for 1, 2, 8 and 32 client threads:
//!
//! - `hsm`: ECDSA P-256 signatures per second through `Hsm::sign_digest` (the token
//!   key, the worker pool), in process;
//! - `mtls`: license JWTs per second through the real server (`server::run` on
//!   127.0.0.1, TLS 1.3 with client certificates, keep-alive connections, one per
//!   client thread), each one written and fsynced to the signing log before the reply
//!   — once with the log on tmpfs (`/dev/shm`: what the issuer itself costs), once on
//!   the disk of the temp directory (what durability costs here);
//!
//! - `mtls, no signature`: `GET /healthz` through the same server and clients: a
//!   request that signs and logs nothing;
//!
//! and prints a table with the ratio `mtls / hsm` (the goal is ≥ 0.85), then the
//! spread of the per-window rates at 32 threads, then what each operation costs the
//! machine (core-µs per operation, from `/proc/stat` over each path's windows) and the
//! bound that follows: a license over mTLS costs at least a raw signature plus a
//! request that does nothing, so the two cores allow at most `cores / (raw + null)`
//! licenses per second, whatever the issuer does between them. For each thread count the paths take
//! turns in 1 s windows, `ALGA_BENCH_SECONDS` rounds (default 5, so each path gets that
//! many seconds), ops and time summed per path; clients connect (one warm-up license
//! each, logged but not counted) before the first window.
//! The interleaving is there because this machine's speed drifts by up to 2× within a
//! minute: a ceiling measured 30 s away from its figure compares the drift, not the
//! issuer. Without `--bench` (as under `cargo test --all-targets`) it does nothing.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "benchmarks set up real state directly and read the clock; anyhow is for binaries"
)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_issuer::config::{
    AuditLogConfig, HsmConfig, IssuerConfig, ListenConfig, LogConfig, LogOrigin, PolicyConfig,
    TlsConfig,
};
use alga_issuer::hsm::{Hsm, admin};
use alga_issuer::keyring::{KeyKind, KeyOps};
use alga_policies::Policy;
use anyhow::{Context, Result, bail, ensure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;

#[path = "support/cpu.rs"]
mod cpu;

const SANDBOX_ENV: &str = "ALGA_BENCH_SANDBOX";
const GATEWAY: &str = "spiffe://alga.test/service/gateway";
/// Client threads of each measurement: 1 and 2, then 8 and 32 to show what concurrency
/// (group commit of the signing log: one fdatasync for every record waiting) does. A
/// gateway under load is the 32 case: its requests to the issuer are concurrent.
const THREADS: [usize; 4] = [1, 2, 8, 32];

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sign: a benchmark; run it with `cargo bench -p alga-issuer --bench sign`");
        return Ok(());
    }
    match std::env::var_os(SANDBOX_ENV) {
        Some(dir) => child(Path::new(&dir)),
        None => parent(),
    }
}

/// Makes the SoftHSM sandbox and re-runs this binary inside it.
fn parent() -> Result<()> {
    module()?;
    let sandbox = tempfile::Builder::new().prefix("alga-bench-").tempdir()?;
    let dir = sandbox.path();
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens)?;
    std::fs::write(
        dir.join("softhsm2.conf"),
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    write_secret(&dir.join("so.pin"), &random_hex(12))?;
    write_secret(&dir.join("user.pin"), &random_hex(12))?;
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .env(SANDBOX_ENV, dir)
        .env_remove("ALGA_HSM_PIN")
        .status()
        .context("re-running the benchmark in its sandbox")?;
    ensure!(status.success(), "benchmark failed ({status})");
    Ok(())
}

/// The paths, in the order of the table.
const RAW: &str = "hsm sign_digest";
const TMPFS: &str = "mtls, log on tmpfs";
const DISK: &str = "mtls, log on disk";
const NULL: &str = "mtls, no signature";
const PATHS: [&str; 4] = [RAW, TMPFS, DISK, NULL];
/// One window of one path; the paths of a thread count take turns, window by window.
const WINDOW: Duration = Duration::from_secs(1);
/// The thread count whose per-window spread is printed after the table.
const SPREAD_THREADS: usize = 32;

/// One path at one thread count: the sum of its windows.
struct Row {
    what: &'static str,
    threads: usize,
    ops: u64,
    elapsed: Duration,
    /// ops/s of each window, one per round.
    windows: Vec<f64>,
    /// Core-seconds the machine was busy over the windows.
    busy: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn core_us(&self) -> f64 {
        cpu::core_us_per_op(self.busy, self.ops)
    }
}

fn child(dir: &Path) -> Result<()> {
    let rounds: usize = std::env::var("ALGA_BENCH_SECONDS")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("ALGA_BENCH_SECONDS")?
        .unwrap_or(5);
    ensure!(rounds > 0, "ALGA_BENCH_SECONDS must be at least 1");
    let config = HsmConfig {
        module: module()?,
        token_label: format!("alga-bench-{}", random_hex(4)),
        pin_file: Some(dir.join("user.pin")),
        workers: 2,
    };
    let pin = config.pin()?;
    let so_pin = SecretString::from(
        std::fs::read_to_string(dir.join("so.pin"))?
            .trim()
            .to_owned(),
    );
    let policy = Policy::load(&policy_path())?;
    admin::token_init(&config, so_pin, pin.clone())?;
    admin::keys_init(
        &config,
        pin.clone(),
        &policy,
        time::OffsetDateTime::now_utc(),
        false,
    )?;
    let hsm = Hsm::open(&config, pin)?;
    let pki = Pki::new(dir)?;

    let shm = Path::new("/dev/shm");
    let tmpfs_log = if shm.is_dir() {
        Some(
            tempfile::Builder::new()
                .prefix("alga-bench-log-")
                .tempdir_in(shm)?,
        )
    } else {
        println!("(no /dev/shm: skipping the tmpfs signing-log runs)");
        None
    };

    let mut rows = Vec::new();
    for threads in THREADS {
        let mut paths = vec![Runner::raw(&hsm, threads)?];
        if let Some(log) = &tmpfs_log {
            let log = log.path().join(format!("t{threads}"));
            paths.push(Runner::mtls(
                &hsm, &config, &policy, &pki, &log, TMPFS, threads,
            )?);
        }
        let log = dir.join(format!("log-disk-{threads}"));
        paths.push(Runner::mtls(
            &hsm, &config, &policy, &pki, &log, DISK, threads,
        )?);
        let log = dir.join(format!("log-null-{threads}"));
        paths.push(Runner::mtls(
            &hsm, &config, &policy, &pki, &log, NULL, threads,
        )?);
        for round in 0..rounds {
            // Rotate the order, so that no path always follows the same one.
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                paths[i].window(WINDOW)?;
            }
        }
        for path in paths {
            rows.push(path.finish()?);
        }
    }
    rows.sort_by_key(|r| PATHS.iter().position(|p| *p == r.what));
    let raw_of = |threads: usize| rows.iter().find(|r| r.what == RAW && r.threads == threads);

    println!();
    println!(
        "{:<22} {:>7} {:>9} {:>8} {:>10} {:>8}",
        "path", "threads", "ops", "seconds", "ops/s", "ratio"
    );
    for row in &rows {
        let base = raw_of(row.threads).map(Row::rate).unwrap_or(f64::NAN);
        println!(
            "{:<22} {:>7} {:>9} {:>8.2} {:>10.0} {:>8.2}",
            row.what,
            row.threads,
            row.ops,
            row.elapsed.as_secs_f64(),
            row.rate(),
            row.rate() / base
        );
    }
    println!(
        "ratio = ops/s of the row / raw hsm sign_digest ops/s at the same thread count, \
         measured in alternating {} s windows (goal >= 0.85)",
        WINDOW.as_secs()
    );
    // The drift the interleaving is there for: each line starts with "spread", so that
    // scripts/bench.sh, which reads the rows by their first word, does not take it for one.
    for row in rows.iter().filter(|r| r.threads == SPREAD_THREADS) {
        let (min, max) = min_max(row.windows.iter().copied());
        print!(
            "spread at {SPREAD_THREADS} threads, {:<22} per-window ops/s min {min:>8.0} max {max:>8.0}",
            row.what
        );
        match raw_of(row.threads).filter(|_| row.what != RAW) {
            Some(raw) => {
                let ratios = row.windows.iter().zip(&raw.windows).map(|(w, r)| w / r);
                let (min, max) = min_max(ratios);
                println!("; ratio to the same round's raw window min {min:.2} max {max:.2}");
            }
            None => println!(),
        }
    }
    print_costs(&rows)
}

/// What each operation cost the machine, and the bound on licenses over mTLS that
/// follows from the raw and the no-signature costs. Every line starts with "cost" or
/// "bound" (`scripts/bench.sh` reads the bound at 32 threads).
fn print_costs(rows: &[Row]) -> Result<()> {
    let cores = cpu::CpuSample::now()?.cores();
    println!();
    println!(
        "cost per operation: machine core-µs busy per op over the path's windows (from /proc/stat; \
         {cores} cores, so a fully busy machine has {cores} core-s per s)"
    );
    for row in rows {
        println!(
            "cost {:<22} {:>3} threads {:>8.1} core-µs/op, machine {:>3.0} % busy",
            row.what,
            row.threads,
            row.core_us(),
            row.busy / (row.elapsed.as_secs_f64() * f64::from(cores)) * 100.0
        );
    }
    // P2's ceiling: the best raw rate at any thread count.
    let ceiling = rows
        .iter()
        .filter(|r| r.what == RAW)
        .map(Row::rate)
        .fold(f64::NAN, f64::max);
    for threads in THREADS {
        let of = |what| rows.iter().find(|r| r.what == what && r.threads == threads);
        let (Some(raw), Some(null)) = (of(RAW), of(NULL)) else {
            continue;
        };
        let best = f64::from(cores) * 1e6 / (raw.core_us() + null.core_us());
        println!(
            "bound {threads} threads: at most {best:.0} licenses/s = {:.2} of the raw rate at {threads} threads, \
             {:.2} of the best raw rate ({cores} cores / (a raw sign {:.1} + a request that does nothing {:.1} core-µs))",
            best / raw.rate(),
            best / ceiling,
            raw.core_us(),
            null.core_us()
        );
    }
    Ok(())
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// One path at one thread count, ready to measure: its client threads (and, for mTLS,
/// its server) stay up across all its windows, so a window counts no setup.
struct Runner {
    what: &'static str,
    threads: usize,
    workers: Vec<Worker>,
    server: Option<Server>,
    ops: u64,
    elapsed: Duration,
    windows: Vec<f64>,
    busy: f64,
}

/// A server under measurement and what its signing log must hold afterwards.
struct Server {
    runtime: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<Result<(), alga_issuer::Error>>,
    stop: tokio::sync::oneshot::Sender<()>,
    log_dir: PathBuf,
    /// Licenses signed before the first window (one warm-up request per client).
    warmups: u64,
    /// Whether the windows' requests sign licenses (each then in the log).
    signs: bool,
}

/// A client thread: it sets up (reporting the operations that took), then runs one
/// window for each deadline it is sent, reporting the operations of each.
struct Worker {
    go: std::sync::mpsc::Sender<Instant>,
    done: std::sync::mpsc::Receiver<Result<u64>>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn spawn<S, F>(setup: S) -> Worker
    where
        S: FnOnce() -> Result<(u64, F)> + Send + 'static,
        F: FnMut(Instant) -> Result<u64>,
    {
        let (go, deadlines) = std::sync::mpsc::channel::<Instant>();
        let (report, done) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut run = match setup() {
                Ok((n, run)) => {
                    if report.send(Ok(n)).is_err() {
                        return;
                    }
                    run
                }
                Err(e) => {
                    let _ = report.send(Err(e));
                    return;
                }
            };
            for deadline in deadlines {
                if report.send(run(deadline)).is_err() {
                    return;
                }
            }
        });
        Worker { go, done, thread }
    }

    fn report(&self) -> Result<u64> {
        self.done
            .recv()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
    }
}

impl Runner {
    fn new(
        what: &'static str,
        threads: usize,
        workers: Vec<Worker>,
        server: Option<Server>,
    ) -> Runner {
        Runner {
            what,
            threads,
            workers,
            server,
            ops: 0,
            elapsed: Duration::ZERO,
            windows: Vec::new(),
            busy: 0.0,
        }
    }

    /// Waits for every client's setup; returns the operations they made.
    fn ready(&self) -> Result<u64> {
        self.workers.iter().map(Worker::report).sum()
    }

    /// Signatures through `Hsm::sign_digest`, from `threads` client threads.
    fn raw(hsm: &Hsm, threads: usize) -> Result<Runner> {
        let version = hsm.active_version(KeyKind::License);
        let workers = (0..threads)
            .map(|i| {
                let hsm = hsm.clone();
                Worker::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let mut digest = [i as u8; 32];
                    Ok((0, move |deadline: Instant| -> Result<u64> {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            digest[31] = digest[31].wrapping_add(1);
                            rt.block_on(hsm.sign_digest(KeyKind::License, version, digest))?;
                            n += 1;
                        }
                        Ok(n)
                    }))
                })
            })
            .collect();
        let runner = Runner::new(RAW, threads, workers, None);
        runner.ready()?;
        Ok(runner)
    }

    /// Licenses through the real server (or, for [`NULL`], health requests), from
    /// `threads` keep-alive clients, each connected (one warm-up request) before the
    /// first window.
    #[allow(clippy::too_many_arguments)]
    fn mtls(
        hsm: &Hsm,
        hsm_config: &HsmConfig,
        policy: &Policy,
        pki: &Pki,
        log_dir: &Path,
        what: &'static str,
        threads: usize,
    ) -> Result<Runner> {
        let config = IssuerConfig {
            listen: ListenConfig {
                address: "127.0.0.1:0".parse()?,
            },
            tls: TlsConfig {
                certificate: pki.server_cert.clone(),
                private_key: pki.server_key.clone(),
                client_ca: pki.ca_cert.clone(),
            },
            hsm: hsm_config.clone(),
            policy: PolicyConfig {
                path: policy_path(),
            },
            log: LogConfig {
                directory: log_dir.to_owned(),
            },
            audit_log: AuditLogConfig {
                origin: LogOrigin::new("alga-license.bench/audit-log")?,
            },
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let signs = what != NULL;
        let url = format!(
            "https://{}{}",
            listener.local_addr()?,
            if signs {
                alga_protocol::issuer_api::SIGN_LICENSE
            } else {
                alga_protocol::issuer_api::HEALTH
            }
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let task = runtime.spawn(alga_issuer::server::run(
            config,
            policy.clone(),
            hsm.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));

        let body = serde_json::json!({
            "tenant_id": uuid::Uuid::new_v4(),
            "appliance_id": uuid::Uuid::new_v4(),
            "edition": "pro",
        });
        let workers = (0..threads)
            .map(|_| {
                let client = pki.client()?;
                let url = url.clone();
                let body = body.clone();
                Ok(Worker::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(request(&client, &url, signs.then_some(&body)))?;
                    Ok((u64::from(signs), move |deadline: Instant| -> Result<u64> {
                        rt.block_on(async {
                            let mut n = 0u64;
                            while Instant::now() < deadline {
                                request(&client, &url, signs.then_some(&body)).await?;
                                n += 1;
                            }
                            Ok(n)
                        })
                    }))
                }))
            })
            .collect::<Result<_>>()?;
        let mut runner = Runner::new(what, threads, workers, None);
        let warmups = runner.ready()?;
        runner.server = Some(Server {
            runtime,
            task,
            stop,
            log_dir: log_dir.to_owned(),
            warmups,
            signs,
        });
        Ok(runner)
    }

    /// Runs every client for one window.
    fn window(&mut self, length: Duration) -> Result<()> {
        let cpu = cpu::CpuSample::now()?;
        let start = Instant::now();
        let deadline = start + length;
        for w in &self.workers {
            w.go.send(deadline)
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        }
        let mut ops = 0;
        for w in &self.workers {
            ops += w.report()?;
        }
        let elapsed = start.elapsed();
        self.busy += cpu.busy_until(&cpu::CpuSample::now()?);
        self.ops += ops;
        self.elapsed += elapsed;
        self.windows.push(ops as f64 / elapsed.as_secs_f64());
        Ok(())
    }

    /// Ends the clients and the server; checks that every license is in the signing log.
    fn finish(self) -> Result<Row> {
        for Worker { go, thread, .. } in self.workers {
            drop(go);
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        }
        if let Some(server) = self.server {
            let _ = server.stop.send(());
            server.runtime.block_on(server.task)??;
            let logged = alga_issuer::signlog::read_dir(&server.log_dir)?
                .records
                .len() as u64;
            let signed = if server.signs { self.ops } else { 0 } + server.warmups;
            ensure!(
                logged == signed,
                "{}, {} threads: {signed} licenses ({} of them warm-ups) but {logged} signing-log records",
                self.what,
                self.threads,
                server.warmups
            );
        }
        Ok(Row {
            what: self.what,
            threads: self.threads,
            ops: self.ops,
            elapsed: self.elapsed,
            windows: self.windows,
            busy: self.busy,
        })
    }
}

/// One license request (`POST` of `body`), or with no body a `GET`; fails unless the
/// issuer answers 2xx.
async fn request(
    client: &reqwest::Client,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<()> {
    let r = match body {
        Some(body) => client.post(url).json(body),
        None => client.get(url),
    }
    .send()
    .await?;
    if !r.status().is_success() {
        bail!(
            "the issuer answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    r.bytes().await?;
    Ok(())
}

/// Server and gateway certificates from a throwaway CA.
struct Pki {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(dir: &Path) -> Result<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, SanType,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |san: SanType, eku: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![san];
            p.extended_key_usages = vec![eku];
            Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf(
            SanType::IpAddress("127.0.0.1".parse()?),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            SanType::URI(GATEWAY.try_into()?),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        Ok(Pki {
            ca_cert: write("bench-ca.pem", &ca_pem)?,
            server_cert: write("bench-server.pem", &server_pem)?,
            server_key: write("bench-server.key", &server_key_pem)?,
            ca_pem,
            client_cert,
            client_key,
        })
    }

    /// The gateway's client: ring provider, keep-alive.
    fn client(&self) -> Result<reqwest::Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_slice_iter(self.client_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.client_key.as_bytes())?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()?)
    }
}

/// `ALGA_HSM_MODULE`, which must name an existing file.
fn module() -> Result<PathBuf> {
    let Some(path) = std::env::var_os("ALGA_HSM_MODULE") else {
        bail!(
            "ALGA_HSM_MODULE is not set (e.g. /usr/lib/softhsm/libsofthsm2.so; `make infra` writes it to .dev/env)"
        );
    };
    let path = PathBuf::from(path);
    ensure!(
        path.is_file(),
        "ALGA_HSM_MODULE {} does not exist",
        path.display()
    );
    Ok(path)
}

fn policy_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.sample.toml")
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")?;
    Ok(())
}
