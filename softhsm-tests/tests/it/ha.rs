//! R23: the HA topology of `make ha-up` (scripts/ha.sh: three etcd members, Patroni
//! with synchronous replication, two issuers on one token and two gateways behind
//! HAProxy) under faults, with mixed load from clients that retry the way real ones
//! do: the store re-sends a registration with the same `Idempotency-Key` after a 5xx
//! or a lost connection, appliances re-run `redeem` with the same output directory
//! (same key: the idempotent redeem retry) and re-run `check-in`.
//!
//! The faults (`ALGA_R23_FAULTS`, comma-separated; default `primary_kill`, the one
//! `make test` runs; `all` is what `make soak` runs):
//! - `primary_kill`: SIGKILL of the Postgres primary's postmaster (Patroni promotes
//!   the synchronous standby; the old primary rejoins as a standby);
//! - `gateway_kill`: SIGKILL of one gateway (HAProxy takes it out), restarted after;
//! - `issuer_kill`: SIGKILL of one issuer (HAProxy takes it out), restarted after;
//! - `sequencer_kill`: SIGKILL of the gateway that leads the audit sequencer (the
//!   other takes the advisory lock over), restarted after;
//! - `etcd_partition`: etcd's leader cut off from the other two (SIGSTOP) for 8 s;
//! - `primary_node_kill`: SIGKILL of the primary's Patroni and postmaster together (the
//!   node is lost: its leader key must expire, `ttl`, before the standby is promoted),
//!   the node restarted after.
//!
//! For each: the time to the first acknowledged operation after the fault, the 5xx
//! answers and lost connections during it. Then the reconciliation: every
//! acknowledged registration, reissue, redeem and check-in is in the database exactly
//! once, no code has two appliances, every audit record is chained once in one chain,
//! `alga-audit verify` and `reconcile` are clean. Figures are printed, not asserted;
//! counts and outcomes decide. Every process the topology started is stopped when the
//! test ends, however it ends (the guard runs `scripts/ha.sh down`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::support::{
    appliance_output, bin, env, gateway_client_identity, jwt_claims, mails_to, print_log_tails,
    psql, run, run_within, secret_value, split_password, text, unique,
};

const SEED: &str = "appliance-license-seed.yaml";
/// Bound on `ha.sh up` (a cold Patroni bootstrap with three nodes takes about 30 s).
const UP_BOUND: Duration = Duration::from_secs(300);
/// Bound on every retry loop of one operation, and on waiting for recovery.
const OP_BOUND: Duration = Duration::from_secs(120);
/// Load before the first fault and after each recovery.
const SETTLE: Duration = Duration::from_secs(4);
/// Concurrent clients.
const WORKERS: usize = 4;

// ------------------------------------------------------------------------ topology

/// The topology, brought up by `scripts/ha.sh up` in a private directory on private
/// ports; `scripts/ha.sh down` when dropped.
struct Ha {
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
    vars: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ha.sh")
}

/// A base port with its 62 ports above free on loopback.
fn free_base() -> Result<u16> {
    let start = 20_000 + (std::process::id() % 300) as u16 * 100;
    for k in 0..300u16 {
        let base = 20_000 + (start - 20_000 + k * 100) % 30_000;
        if (1..=62).all(|p| std::net::TcpListener::bind(("127.0.0.1", base + p)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no free range of 62 loopback ports")
}

impl Ha {
    fn up(policy: &toml::Table) -> Result<Ha> {
        let dir = tempfile::Builder::new().prefix("alga-ha-").tempdir()?;
        let policy_path = dir.path().join("policy.toml");
        fs::write(&policy_path, toml::to_string(policy)?)?;
        let envs = vec![
            ("ALGA_HA_DIR".to_owned(), dir.path().display().to_string()),
            ("ALGA_HA_PORT_BASE".to_owned(), free_base()?.to_string()),
            (
                "ALGA_HA_POLICY".to_owned(),
                policy_path.display().to_string(),
            ),
            ("ALGA_HA_BIN_DIR".to_owned(), env("ALGA_BIN_DIR")),
        ];
        let mut ha = Ha {
            dir,
            envs,
            vars: HashMap::new(),
        };
        let mut out = ha.sh(&["up"], UP_BOUND)?;
        // A port of the range taken between the check and the start: once more, on
        // another range.
        if !out.status.success() && text(&out.stderr).contains("already taken") {
            eprintln!("R23: a port was taken meanwhile; again on another range");
            let _ = ha.sh(&["down"], UP_BOUND);
            let base = free_base()?.to_string();
            if let Some(e) = ha.envs.iter_mut().find(|(k, _)| k == "ALGA_HA_PORT_BASE") {
                e.1 = base;
            }
            out = ha.sh(&["up"], UP_BOUND)?;
        }
        if !out.status.success() {
            ha.print_logs();
            bail!(
                "scripts/ha.sh up failed ({}):\n{}{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        let env_text = fs::read_to_string(ha.dir.path().join("env"))?;
        ha.vars = env_text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        Ok(ha)
    }

    fn sh(&self, args: &[&str], bound: Duration) -> Result<std::process::Output> {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        run_within(&mut cmd, None, bound)
    }

    /// `ha.sh ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.sh(args, OP_BOUND)?;
        ensure!(
            out.status.success(),
            "scripts/ha.sh {args:?} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        Ok(text(&out.stdout).trim().to_owned())
    }

    fn var(&self, k: &str) -> Result<String> {
        self.vars
            .get(k)
            .cloned()
            .with_context(|| format!("{k} not in the HA env"))
    }

    fn db(&self, sql: &str) -> Result<String> {
        psql(&self.var("ALGA_HA_DATABASE_URL")?, sql)
    }

    /// The last lines of every log of the topology, to stderr.
    fn print_logs(&self) {
        print_log_tails(&self.dir.path().join("logs"), |_| true, 25);
    }

    /// The pid of a named process of the topology (its pid file).
    fn pid(&self, name: &str) -> Result<u32> {
        let p = self.dir.path().join("run").join(format!("{name}.pid"));
        Ok(fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .parse()?)
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        match self.sh(&["down"], Duration::from_secs(180)) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "scripts/ha.sh down failed ({}): {}{}",
                o.status,
                text(&o.stdout),
                text(&o.stderr)
            ),
            Err(e) => eprintln!("scripts/ha.sh down: {e}"),
        }
    }
}

// ----------------------------------------------------------------------------- load

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Register,
    Reissue,
    Redeem,
    CheckIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A 5xx answer (the appliance: exit 1 or 21).
    Server,
    /// No answer: connection refused or cut, or a timeout (curl 000, appliance exit 20).
    Unreachable,
    /// Anything else (a 4xx): not retried, and a failure of the test.
    Other,
}

#[derive(Debug, Clone)]
struct Attempt {
    kind: Kind,
    started: Instant,
    ended: Instant,
    outcome: Outcome,
}

/// What the clients were told succeeded.
#[derive(Debug, Default)]
struct Acked {
    /// (idempotency key's company, tenant_id, code_id)
    registrations: Vec<(String, String, String)>,
    /// code_id of each acknowledged reissue
    reissues: Vec<String>,
    /// (code_id, appliance_id, license jti or "")
    redeems: Vec<(String, String, String)>,
    /// license jti of each acknowledged check-in
    check_ins: Vec<String>,
    /// Journeys given up (an operation failed past its retries), with why.
    abandoned: Vec<String>,
    /// Secrets seen (codes), to look for in the logs.
    codes: Vec<String>,
}

struct Load {
    url: String,
    run_id: String,
    stop: AtomicBool,
    attempts: Mutex<Vec<Attempt>>,
    acked: Mutex<Acked>,
    journeys: AtomicUsize,
    work: PathBuf,
}

impl Load {
    fn record(&self, kind: Kind, started: Instant, outcome: Outcome) {
        if let Ok(mut a) = self.attempts.lock() {
            a.push(Attempt {
                kind,
                started,
                ended: Instant::now(),
                outcome,
            });
        }
    }

    /// Retries `op` (each try recorded) while it fails with a 5xx or no answer, a
    /// quarter of a second apart, within [`OP_BOUND`].
    fn retrying<T>(
        &self,
        kind: Kind,
        mut op: impl FnMut() -> Result<(Outcome, Option<T>)>,
    ) -> Result<T> {
        let deadline = Instant::now() + OP_BOUND;
        loop {
            let started = Instant::now();
            let (outcome, value) = op()?;
            self.record(kind, started, outcome);
            match (outcome, value) {
                (Outcome::Ok, Some(v)) => return Ok(v),
                (Outcome::Other, _) => bail!("{kind:?}: refused"),
                _ if Instant::now() > deadline => bail!("{kind:?}: no success within {OP_BOUND:?}"),
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

/// A store call through curl: (status, body); status 0 when there was no answer.
fn store_post(
    url: &str,
    path: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(env("ALGA_CA_BUNDLE"))
        .arg("--cert")
        .arg(env("ALGA_STORE_CERT"))
        .arg("--key")
        .arg(env("ALGA_STORE_KEY"))
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Idempotency-Key: {k}")]);
    }
    cmd.arg(format!("{url}{path}"));
    let out = run(&mut cmd, Some(body.to_string().as_bytes()))?;
    let mut b = out.stdout;
    let pos = b.iter().rposition(|&c| c == b'\n').unwrap_or(0);
    let status = text(&b[pos..]).trim().parse().unwrap_or(0);
    b.truncate(pos);
    Ok((status, b))
}

fn http_outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Ok,
        0 => Outcome::Unreachable,
        500..=599 => Outcome::Server,
        _ => Outcome::Other,
    }
}

fn appliance_outcome(exit: Option<i32>) -> Outcome {
    match exit {
        Some(0) => Outcome::Ok,
        Some(20) | None => Outcome::Unreachable,
        Some(1 | 21) => Outcome::Server,
        _ => Outcome::Other,
    }
}

/// Waits (bounded) for the mailed code whose id is `code_id`; the outbox may deliver it
/// only after its retry delay when the first attempt fell into the fault.
fn wait_code(rcpt: &str, code_id: &str) -> Result<String> {
    let deadline = Instant::now() + OP_BOUND;
    loop {
        for m in mails_to(rcpt)? {
            if let Some(c) = m.code()
                && c.replace('-', "").to_ascii_uppercase().starts_with(code_id)
            {
                return Ok(c);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no mail with code {code_id} within {OP_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One customer's journey: register (pro or essentials), maybe reissue, redeem, and
/// (pro) check in twice.
fn journey(load: &Load, w: usize, n: usize) -> Result<()> {
    let label = format!("{}-{w}-{n}", load.run_id);
    let company = format!("R23 {label}");
    let email = format!("r23-{label}@e2e.test");
    let pro = n % 3 != 2;
    let body = serde_json::json!({
        "company": company,
        "contact": {"name": "R23", "email": email},
        "edition": if pro { "pro" } else { "essentials" },
    });
    let key = format!("r23-{label}");
    let (tenant_id, mut code_id) = load.retrying(Kind::Register, || {
        let (st, b) = store_post(&load.url, "/register-tenant", &body, Some(&key))?;
        if st == 201 || st == 200 {
            let j: serde_json::Value = serde_json::from_slice(&b)?;
            let t = j["tenant_id"].as_str().context("tenant_id")?.to_owned();
            let c = j["install_code"]["code_id"]
                .as_str()
                .context("code_id")?
                .to_owned();
            return Ok((Outcome::Ok, Some((t, c))));
        }
        Ok((http_outcome(st), None))
    })?;
    if let Ok(mut a) = load.acked.lock() {
        a.registrations
            .push((company.clone(), tenant_id.clone(), code_id.clone()));
    }
    let mut code = wait_code(&email, &code_id)?;
    if n % 4 == 1 {
        let body = serde_json::json!({"contact_email": email});
        code_id = load.retrying(Kind::Reissue, || {
            let (st, b) = store_post(&load.url, "/install-codes/reissue", &body, None)?;
            if (200..300).contains(&st) {
                let j: serde_json::Value = serde_json::from_slice(&b)?;
                return Ok((
                    Outcome::Ok,
                    Some(
                        j["install_code"]["code_id"]
                            .as_str()
                            .context("code_id")?
                            .to_owned(),
                    ),
                ));
            }
            Ok((http_outcome(st), None))
        })?;
        if let Ok(mut a) = load.acked.lock() {
            a.reissues.push(code_id.clone());
        }
        code = wait_code(&email, &code_id)?;
    }
    if let Ok(mut a) = load.acked.lock() {
        a.codes.push(code.clone());
    }
    let out = load.work.join(&label);
    let (appliance_id, jti) = load.retrying(Kind::Redeem, || {
        let o = run(
            Command::new(bin("alga-appliance"))
                .args([
                    "redeem",
                    "--service-url",
                    &load.url,
                    "--hostname",
                    "r23-appliance",
                ])
                .arg("--ca-bundle")
                .arg(env("ALGA_CA_BUNDLE"))
                .arg("--trust-root")
                .arg(env("ALGA_TRUST_ROOT"))
                .arg("--out")
                .arg(&out),
            Some(format!("{code}\n").as_bytes()),
        )?;
        let outcome = appliance_outcome(o.status.code());
        if outcome == Outcome::Other {
            eprintln!(
                "R23 redeem {label}: exit {:?}: {}",
                o.status.code(),
                text(&o.stderr)
            );
        }
        if outcome != Outcome::Ok {
            return Ok((outcome, None));
        }
        let token = secret_value(&out, SEED, "LICENSE_TOKEN")?;
        let (aid, jti) = match token {
            Some(t) => {
                let c = jwt_claims(&t)?;
                (
                    c["appliance_id"].as_str().unwrap_or_default().to_owned(),
                    c["jti"].as_str().unwrap_or_default().to_owned(),
                )
            }
            None => (String::new(), String::new()),
        };
        Ok((Outcome::Ok, Some((aid, jti))))
    })?;
    if let Ok(mut a) = load.acked.lock() {
        a.redeems.push((code_id.clone(), appliance_id, jti));
    }
    if pro {
        for _ in 0..2 {
            let seed = out.display().to_string();
            let jti = load.retrying(Kind::CheckIn, || {
                let o = appliance_output(&["check-in", "--seed", &seed], &[])?;
                let outcome = appliance_outcome(o.status.code());
                if outcome == Outcome::Other {
                    eprintln!(
                        "R23 check-in {label}: exit {:?}: {}",
                        o.status.code(),
                        text(&o.stderr)
                    );
                }
                if outcome != Outcome::Ok {
                    return Ok((outcome, None));
                }
                let t = secret_value(&out, SEED, "LICENSE_TOKEN")?
                    .context("no license after check-in")?;
                Ok((
                    Outcome::Ok,
                    Some(
                        jwt_claims(&t)?["jti"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                ))
            })?;
            if let Ok(mut a) = load.acked.lock() {
                a.check_ins.push(jti);
            }
        }
    }
    Ok(())
}

fn worker(load: Arc<Load>, w: usize) {
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        if let Err(e) = journey(&load, w, n)
            && let Ok(mut a) = load.acked.lock()
        {
            a.abandoned.push(format!("journey {w}-{n}: {e:#}"));
        }
        load.journeys.fetch_add(1, Ordering::SeqCst);
        n += 1;
    }
}

// --------------------------------------------------------------------------- faults

fn faults() -> Vec<String> {
    let v = std::env::var("ALGA_R23_FAULTS").unwrap_or_default();
    let all = [
        "primary_kill",
        "gateway_kill",
        "issuer_kill",
        "sequencer_kill",
        "etcd_partition",
        "primary_node_kill",
    ];
    match v.trim() {
        "" => vec!["primary_kill".to_owned()],
        "all" => all.iter().map(|s| (*s).to_owned()).collect(),
        list => list.split(',').map(|s| s.trim().to_owned()).collect(),
    }
}

/// The gateway (1 or 2) whose database session holds the sequencer's advisory lock:
/// the lock holder's client port, found among the gateways' sockets.
fn sequencer_leader(ha: &Ha) -> Result<usize> {
    let port = ha.db(
        "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objid = 1635083380 \
         AND l.classid = 1634494305",
    )?;
    let port: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("no sequencer leader (client port {port:?})"))?;
    // The socket inode of 127.0.0.1:port, then the gateway holding it.
    let tcp = fs::read_to_string("/proc/net/tcp")?;
    let inode = tcp
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            (p == port).then(|| f.get(9).map(|s| (*s).to_owned()))?
        })
        .context("the leader's socket is not in /proc/net/tcp")?;
    for g in 1..=2 {
        let pid = ha.pid(&format!("gateway{g}"))?;
        for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
            if fs::read_link(fd?.path())
                .is_ok_and(|l| l.display().to_string() == format!("socket:[{inode}]"))
            {
                return Ok(g);
            }
        }
    }
    bail!("no gateway holds the sequencer's connection (port {port})")
}

/// Waits until Patroni shows a primary with a synchronous standby and every node runs.
fn wait_cluster(ha: &Ha) -> Result<String> {
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let mut primary = None;
        let mut sync = false;
        let mut running = 0;
        let base: u16 = ha.var("ALGA_HA_PORT_BASE")?.parse()?;
        let nodes: u16 = ha.var("ALGA_HA_PG_NODES")?.parse()?;
        for i in 1..=nodes {
            let code = |path: &str| -> u16 {
                run(
                    Command::new("curl").args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "2",
                        &format!("http://127.0.0.1:{}{path}", base + 30 + i),
                    ]),
                    None,
                )
                .map(|o| text(&o.stdout).trim().parse().unwrap_or(0))
                .unwrap_or(0)
            };
            if code("/primary") == 200 {
                primary = Some(format!("pg{i}"));
            }
            sync |= code("/sync") == 200;
            running += usize::from(code("/health") == 200);
        }
        if let Some(p) = primary
            && sync
            && running == usize::from(nodes)
        {
            return Ok(p);
        }
        ensure!(
            Instant::now() < deadline,
            "the Postgres cluster did not heal within {OP_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[derive(Debug)]
struct FaultRun {
    name: String,
    what: String,
    first_ok: Option<Duration>,
    longest_gap: Duration,
    five_xx: usize,
    unreachable: usize,
    ok: usize,
}

/// Injects one fault; returns what was done, and the cleanup to run after recovery.
fn inject(ha: &Ha, fault: &str) -> Result<(String, Vec<Vec<String>>)> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    Ok(match fault {
        "primary_kill" => {
            let p = ha.ok(&["kill-pg-primary"])?;
            (format!("SIGKILL of {p}'s postmaster (the primary)"), vec![])
        }
        "primary_node_kill" => {
            let p = ha.ok(&["primary"])?;
            ha.ok(&["kill", &p])?;
            // The node stays down until another has taken over, as a lost host does
            // (back within the leader key's ttl, its Patroni would keep the lock).
            (
                format!("SIGKILL of {p}'s Patroni and postmaster (the primary's node lost)"),
                vec![s(&["wait-other-primary", &p]), s(&["start", &p])],
            )
        }
        "gateway_kill" => {
            ha.ok(&["kill", "gateway2"])?;
            (
                "SIGKILL of gateway2".into(),
                vec![s(&["start", "gateway2"])],
            )
        }
        "issuer_kill" => {
            ha.ok(&["kill", "issuer1"])?;
            ("SIGKILL of issuer1".into(), vec![s(&["start", "issuer1"])])
        }
        "sequencer_kill" => {
            let g = sequencer_leader(ha)?;
            ha.ok(&["kill", &format!("gateway{g}")])?;
            (
                format!("SIGKILL of gateway{g}, the sequencer's leader"),
                vec![s(&["start", &format!("gateway{g}")])],
            )
        }
        "etcd_partition" => {
            let l = ha.ok(&["etcd-leader"])?;
            ha.ok(&["pause", &l])?;
            std::thread::sleep(Duration::from_secs(8));
            ha.ok(&["resume", &l])?;
            (
                format!("{l} (etcd's leader) cut off for 8 s (SIGSTOP)"),
                vec![],
            )
        }
        other => bail!("unknown fault {other:?}"),
    })
}

// ------------------------------------------------------------------------------ test

#[test]
fn r23_ha_topology_faults_under_mixed_load_lose_and_duplicate_nothing() -> Result<()> {
    let started = Instant::now();
    let faults = faults();
    let mut policy: toml::Table = fs::read_to_string(env("ALGA_POLICY"))?.parse()?;
    {
        let t = |p: &mut toml::Table, s: &str| -> Result<toml::Table> {
            p.get(s)
                .and_then(|v| v.as_table())
                .cloned()
                .with_context(|| format!("[{s}] missing"))
        };
        let mut audit = t(&mut policy, "audit")?;
        audit.insert("checkpoint_interval".into(), "1s".into());
        audit.insert("checkpoint_every_records".into(), 20.into());
        policy.insert("audit".into(), audit.into());
        // Every client comes from 127.0.0.1 (through HAProxy): lift the per-source
        // brakes (R8's business), keep the per-code ones.
        let mut rl = t(&mut policy, "rate_limits")?;
        for (k, v) in rl.iter_mut() {
            if k.ends_with("_per_source")
                && let Some(q) = v.as_table_mut()
            {
                q.insert("per_minute".into(), 100_000.into());
                q.insert("burst".into(), 100_000.into());
            }
        }
        policy.insert("rate_limits".into(), rl.into());
    }
    let ha = Ha::up(&policy)?;
    let up_took = started.elapsed();
    let result = (|| -> Result<()> {
        let work = ha.dir.path().join("work");
        fs::create_dir_all(&work)?;
        let load = Arc::new(Load {
            url: ha.var("ALGA_HA_GATEWAY_URL")?,
            run_id: unique(),
            stop: AtomicBool::new(false),
            attempts: Mutex::new(Vec::new()),
            acked: Mutex::new(Acked::default()),
            journeys: AtomicUsize::new(0),
            work,
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let l = Arc::clone(&load);
                std::thread::spawn(move || worker(l, w))
            })
            .collect();

        let mut runs = Vec::new();
        let faulted = (|| -> Result<()> {
            std::thread::sleep(SETTLE);
            for f in &faults {
                let at = Instant::now();
                let (what, cleanup) = inject(&ha, f)?;
                // Recovery: the first acknowledged operation begun after the fault.
                let deadline = at + OP_BOUND;
                let first_ok = loop {
                    let first = load
                        .attempts
                        .lock()
                        .map_err(|_| anyhow!("poisoned"))?
                        .iter()
                        .filter(|a| a.started > at && a.outcome == Outcome::Ok)
                        .map(|a| a.ended - at)
                        .min();
                    if first.is_some() || Instant::now() > deadline {
                        break first;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                for c in &cleanup {
                    let args: Vec<&str> = c.iter().map(String::as_str).collect();
                    if let ["wait-other-primary", old] = args.as_slice() {
                        let deadline = Instant::now() + OP_BOUND;
                        while ha.ok(&["primary"]).unwrap_or_default() == *old
                            || ha.ok(&["primary"]).is_err()
                        {
                            ensure!(
                                Instant::now() < deadline,
                                "no primary but {old} within {OP_BOUND:?}"
                            );
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        continue;
                    }
                    ha.ok(&args)?;
                }
                let primary = wait_cluster(&ha)?;
                std::thread::sleep(SETTLE);
                let attempts = load.attempts.lock().map_err(|_| anyhow!("poisoned"))?;
                let during: Vec<&Attempt> = attempts.iter().filter(|a| a.ended > at).collect();
                // The longest time without an acknowledged operation, from the fault on.
                let mut oks: Vec<Instant> = during
                    .iter()
                    .filter(|a| a.outcome == Outcome::Ok)
                    .map(|a| a.ended)
                    .collect();
                oks.sort();
                let longest_gap = std::iter::once(at)
                    .chain(oks.iter().copied())
                    .zip(oks.iter().copied())
                    .map(|(a, b)| b - a)
                    .max()
                    .unwrap_or_default();
                let run = FaultRun {
                    name: f.clone(),
                    what: format!("{what}; primary now {primary}"),
                    first_ok,
                    longest_gap,
                    five_xx: during
                        .iter()
                        .filter(|a| a.outcome == Outcome::Server)
                        .count(),
                    unreachable: during
                        .iter()
                        .filter(|a| a.outcome == Outcome::Unreachable)
                        .count(),
                    ok: during.iter().filter(|a| a.outcome == Outcome::Ok).count(),
                };
                drop(attempts);
                println!(
                    "R23 {}: {}: first success of an operation begun after it {:?}, longest time without a success {:.2?}; {} × 5xx, {} × no answer, {} successes until healed + {SETTLE:?}",
                    run.name,
                    run.what,
                    run.first_ok,
                    run.longest_gap,
                    run.five_xx,
                    run.unreachable,
                    run.ok
                );
                runs.push(run);
            }
            Ok(())
        })();
        load.stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().map_err(|_| anyhow!("a load worker panicked"))?;
        }
        faulted?;
        let attempts = load
            .attempts
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .clone();
        ensure!(
            runs.iter().all(|r| r.first_ok.is_some()),
            "no success after a fault: {runs:?}"
        );

        // ------------------------------------------------------------ reconciliation
        let acked = load.acked.lock().map_err(|_| anyhow!("poisoned"))?;
        ensure!(
            acked.abandoned.is_empty(),
            "{} journeys gave up: {:?}",
            acked.abandoned.len(),
            acked.abandoned
        );
        ensure!(
            attempts.iter().all(|a| a.outcome != Outcome::Other),
            "a client was refused (4xx): {:?}",
            count(
                attempts
                    .iter()
                    .filter(|a| a.outcome == Outcome::Other)
                    .map(|a| a.kind)
            )
        );
        let list = |ids: &mut dyn Iterator<Item = &String>| {
            ids.map(|s| format!("'{s}'")).collect::<Vec<_>>().join(",")
        };
        let n_reg = acked.registrations.len();
        ensure!(n_reg > 0, "no registration was acknowledged");
        // Registrations: each acknowledged tenant once, with its code and its mail; one
        // tenant per idempotency key (company) of this run.
        let tenants = list(&mut acked.registrations.iter().map(|r| &r.1));
        let got = ha.db(&format!(
            "SELECT (SELECT count(*) FROM tenants WHERE tenant_id IN ({tenants})) || ' ' || \
             (SELECT count(DISTINCT code_id) FROM install_codes WHERE code_id IN ({})) || ' ' || \
             (SELECT count(*) FROM mail_outbox WHERE code_id IN ({}))",
            list(&mut acked.registrations.iter().map(|r| &r.2)),
            list(&mut acked.registrations.iter().map(|r| &r.2)),
        ))?;
        ensure!(
            got == format!("{n_reg} {n_reg} {n_reg}"),
            "registrations: tenants, codes, mails {got} of {n_reg}"
        );
        let dup = ha.db(&format!(
            "SELECT count(*) FROM (SELECT company FROM tenants WHERE company LIKE 'R23 {}-%' \
             GROUP BY company HAVING count(*) > 1) d",
            load.run_id
        ))?;
        ensure!(dup == "0", "{dup} registrations stored twice");
        let run_tenants: usize = ha
            .db(&format!(
                "SELECT count(*) FROM tenants WHERE company LIKE 'R23 {}-%'",
                load.run_id
            ))?
            .parse()?;
        // Reissues: each acknowledged code once.
        let n_re = acked.reissues.len();
        if n_re > 0 {
            let got = ha.db(&format!(
                "SELECT count(*) FROM install_codes WHERE code_id IN ({})",
                list(&mut acked.reissues.iter())
            ))?;
            ensure!(
                got == n_re.to_string(),
                "reissues: {got} of {n_re} codes stored"
            );
        }
        // Redeems: each acknowledged appliance once, on its code; no code redeemed twice.
        let n_red = acked.redeems.len();
        let got = ha.db(&format!(
            "SELECT count(*) FROM appliances a JOIN install_codes c USING (code_id) \
             WHERE c.state = 'consumed' AND c.appliance_id = a.appliance_id AND a.code_id IN ({})",
            list(&mut acked.redeems.iter().map(|r| &r.0))
        ))?;
        ensure!(
            got == n_red.to_string(),
            "redeems: {got} of {n_red} appliances on their codes"
        );
        let twice = ha.db(&format!(
            "SELECT count(*) FROM (SELECT c.tenant_id FROM appliances a JOIN install_codes c USING (code_id) \
             JOIN tenants t ON t.tenant_id = c.tenant_id WHERE t.company LIKE 'R23 {}-%' \
             GROUP BY c.code_id, c.tenant_id HAVING count(*) > 1) d",
            load.run_id
        ))?;
        ensure!(twice == "0", "{twice} codes redeemed twice");
        let per_tenant = ha.db(&format!(
            "SELECT count(*) FROM (SELECT a.tenant_id FROM appliances a JOIN tenants t USING (tenant_id) \
             WHERE t.company LIKE 'R23 {}-%' GROUP BY a.tenant_id HAVING count(*) > 1) d",
            load.run_id
        ))?;
        ensure!(
            per_tenant == "0",
            "{per_tenant} tenants with two appliances"
        );
        // Licenses: every acknowledged redeem's and check-in's license stored once.
        let jtis: Vec<&String> = acked
            .redeems
            .iter()
            .map(|r| &r.2)
            .filter(|j| !j.is_empty())
            .chain(acked.check_ins.iter())
            .collect();
        let n_jti = jtis.len();
        if n_jti > 0 {
            let got = ha.db(&format!(
                "SELECT count(*) FROM licenses WHERE jti::text IN ({})",
                list(&mut jtis.iter().copied())
            ))?;
            ensure!(
                got == n_jti.to_string(),
                "licenses: {got} of {n_jti} acknowledged ones stored"
            );
        }

        // One audit chain: every event chained once, seq 1..n, no fork.
        let deadline = Instant::now() + OP_BOUND;
        let chained = loop {
            let c = ha.db(
                "SELECT (SELECT count(*) FROM audit_events) || ' ' || count(*) || ' ' || \
                 count(DISTINCT event_id) || ' ' || coalesce(max(seq), 0) FROM audit_chain",
            )?;
            let v: Vec<&str> = c.split(' ').collect();
            if v.iter().all(|x| *x == v[0]) {
                break c;
            }
            ensure!(
                Instant::now() < deadline,
                "the audit chain did not catch up: {c}"
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        let forks = ha.db(
            "SELECT count(*) FROM (SELECT seq, prev_hash, lag(hash) OVER (ORDER BY seq) AS h, \
             lag(seq) OVER (ORDER BY seq) AS p FROM audit_chain) c \
             WHERE (p IS NULL AND seq <> 1) OR (p IS NOT NULL AND (p <> seq - 1 OR h <> prev_hash))",
        )?;
        ensure!(forks == "0", "{forks} gaps or forks in the audit chain");
        let records: u64 = chained.split(' ').next().unwrap_or("0").parse()?;

        // alga-audit verify (with the issuers' published keys) and reconcile.
        let (url, pw) = split_password(&ha.var("ALGA_HA_DATABASE_URL")?);
        let pwf = ha.dir.path().join("audit-db.pw");
        fs::write(&pwf, pw.unwrap_or_default())?;
        let keys = ha.dir.path().join("audit-keys.json");
        let issuer = ha
            .var("ALGA_HA_ISSUERS")?
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let (cert, key) = gateway_client_identity();
        let st = run(
            Command::new("curl")
                .args(["-sS", "--max-time", "10", "-o"])
                .arg(&keys)
                .args([
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    &env("ALGA_CA_BUNDLE"),
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                ])
                .arg(format!("{issuer}/v1/keys")),
            None,
        )?;
        ensure!(
            text(&st.stdout).trim() == "200",
            "GET {issuer}/v1/keys: {}",
            text(&st.stdout)
        );
        let verify = run(
            Command::new(bin("alga-audit"))
                .args(["verify", "--json", "--audit-keys"])
                .arg(&keys)
                .arg("--password-file")
                .arg(&pwf)
                .env("DATABASE_URL", &url),
            None,
        )?;
        let report: serde_json::Value = serde_json::from_slice(&verify.stdout)
            .with_context(|| format!("alga-audit verify: {}", text(&verify.stderr)))?;
        ensure!(
            verify.status.success() && report["intact"] == true,
            "alga-audit verify: {report}"
        );
        let mut rec = Command::new(bin("alga-audit"));
        rec.args(["reconcile", "--json", "--until", &rfc3339_in(60)?])
            .arg("--password-file")
            .arg(&pwf)
            .env("DATABASE_URL", &url);
        for d in ha.var("ALGA_HA_ISSUER_LOGS")?.split_whitespace() {
            rec.arg("--issuer-log").arg(d);
        }
        let rec = run(&mut rec, None)?;
        let rec_report: serde_json::Value = serde_json::from_slice(&rec.stdout)
            .with_context(|| format!("alga-audit reconcile: {}", text(&rec.stderr)))?;
        ensure!(
            rec_report["reconciled"] == true && rec_report["counts"]["broken_logs"] == 0,
            "alga-audit reconcile: {}",
            rec_report["counts"]
        );

        // The outbox resumed: every client got its codes by mail (the journeys waited
        // for them). A mail the SMTP server took just before the primary died, whose
        // `sent` mark died with it, is sent again by the worker, unless its code has
        // been used or reissued by then: it is then marked failed as moot. No other
        // failure.
        let outbox = ha
            .db("SELECT state || ':' || count(*) FROM mail_outbox GROUP BY state ORDER BY state")?;
        let failed = ha.db("SELECT count(*) FROM mail_outbox WHERE state = 'failed' \
             AND last_error NOT LIKE 'the code is no longer redeemable%'")?;
        ensure!(
            failed == "0",
            "mail outbox: {failed} failed deliveries ({outbox})"
        );
        // No code in the topology's logs.
        let mut leaked = 0;
        for e in fs::read_dir(ha.dir.path().join("logs"))? {
            let t = fs::read_to_string(e?.path()).unwrap_or_default();
            leaked += acked
                .codes
                .iter()
                .filter(|c| t.contains(c.as_str()))
                .count();
        }
        ensure!(leaked == 0, "{leaked} install codes in the topology's logs");

        let by_kind = count(attempts.iter().map(|a| (a.kind, a.outcome == Outcome::Ok)));
        println!(
            "R23 (HA topology, {} faults, {WORKERS} clients, up in {up_took:.1?}, whole test {:.1?}): \
             {} journeys; acknowledged {n_reg} registrations ({run_tenants} tenants of this run), \
             {n_re} reissues, {n_red} redeems, {} check-ins: 0 lost, 0 duplicated, 0 codes redeemed \
             twice; attempts by (kind, ok) {by_kind:?}; audit: {records} events in one chain, 0 forks, \
             verify intact ({} checkpoints), reconcile {}; outbox {outbox}",
            faults.len(),
            started.elapsed(),
            load.journeys.load(Ordering::SeqCst),
            acked.check_ins.len(),
            report["report"]["checkpoints_valid"],
            rec_report["counts"],
        );
        for r in &runs {
            println!(
                "R23 {}: first success {:.2} s after the fault (longest time without one {:.2} s), {} × 5xx, {} × no answer",
                r.name,
                r.first_ok.map_or(f64::NAN, |d| d.as_secs_f64()),
                r.longest_gap.as_secs_f64(),
                r.five_xx,
                r.unreachable
            );
        }
        Ok(())
    })();
    if result.is_err() {
        ha.print_logs();
    }
    result
}

fn count<K: Ord>(items: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_default() += 1;
    }
    m
}

fn rfc3339_in(secs: u64) -> Result<String> {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + secs;
    let out = run(
        Command::new("date").args(["-u", "-d", &format!("@{at}"), "+%Y-%m-%dT%H:%M:%SZ"]),
        None,
    )?;
    ensure!(out.status.success(), "date failed");
    Ok(text(&out.stdout).trim().to_owned())
}
