//! The harness: the stack's environment, child processes that die with the test, a
//! private issuer + gateway(s) + database per test, the mailbox, and the binaries.
//!
//! Every wait is bounded; every server listens on 127.0.0.1.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use tempfile::TempDir;

/// How long a server may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mail may take to reach the sink after registration.
pub const MAIL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on every one-shot command the tests run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------- environment

/// The stack's `.dev/env`, as exported by `make test`; falls back to reading the
/// workspace's `.dev/env` so `cargo test -p softhsm-tests` works after `make up`.
pub fn env(name: &str) -> String {
    if let Ok(v) = std::env::var(name)
        && !v.is_empty()
    {
        return v;
    }
    if let Some(v) = dev_env_file().get(name) {
        return v.clone();
    }
    panic!(
        "{name} is not set: start the local stack (`make up`) and run the tests with `make test`, \
         or export .dev/env (`set -a; . .dev/env; set +a`)"
    )
}

fn dev_env_file() -> &'static HashMap<String, String> {
    static FILE: OnceLock<HashMap<String, String>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dev/env");
        let Ok(text) = fs::read_to_string(path) else {
            return HashMap::new();
        };
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let v = v.trim();
                let v = v
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .unwrap_or(v);
                (k.to_owned(), v.replace("'\\''", "'"))
            })
            .collect()
    })
}

pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(&env("ALGA_BIN_DIR")).join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (make test does)",
        p.display()
    );
    p
}

/// A short unique suffix for names (databases, addresses): Unix seconds (so stale
/// databases can be recognized), then process id and a counter.
pub fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{:x}_{:x}",
        unix_now(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Drops test databases left behind by runs that were killed (no test runs an hour);
/// once per test process.
fn drop_stale_databases() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(names) = psql(
            &env("DATABASE_URL"),
            "SELECT datname FROM pg_database WHERE datname ~ '^e2e_(appliance_)?[0-9]+_'",
        ) else {
            return;
        };
        let cutoff = unix_now().saturating_sub(3600);
        for name in names.lines() {
            let secs = name
                .trim_start_matches("e2e_")
                .trim_start_matches("appliance_")
                .split('_')
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            if secs.is_some_and(|t| t < cutoff) {
                let _ = psql(
                    &env("DATABASE_URL"),
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                );
            }
        }
    });
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

// ------------------------------------------------------------------------- commands

/// Runs a command to completion with a time bound (killing it past the bound).
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    run_within(cmd, stdin, COMMAND_TIMEOUT)
}

/// `out` when its command exited 0; otherwise an error naming `what`, with the exit
/// status, standard error and standard output.
pub fn succeeded(what: impl std::fmt::Display, out: Output) -> Result<Output> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    Ok(out)
}

/// [`run`] with another bound than [`COMMAND_TIMEOUT`].
pub fn run_within(cmd: &mut Command, stdin: Option<&[u8]>, bound: Duration) -> Result<Output> {
    // Program and arguments only: `Command`'s Debug would print the environment we
    // set, passwords included.
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input)
            .with_context(|| format!("writing stdin of {what}"))?;
    }
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().context("stdout piped")?;
    let mut err = child.stderr.take().context("stderr piped")?;
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).map(|_| v)
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).map(|_| v)
    });
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = t_out.join().map_err(|_| anyhow!("stdout reader"))??;
    let stderr = t_err.join().map_err(|_| anyhow!("stderr reader"))??;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A database URL with its password moved out of argv: (URL without password, password).
pub fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return (url.to_owned(), None);
    };
    match userinfo.split_once(':') {
        Some((user, pw)) => (format!("{scheme}://{user}@{host}"), Some(pw.to_owned())),
        None => (url.to_owned(), None),
    }
}

/// `url` pointing at database `db` instead (same role, host and port).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rsplit_once('/') {
        Some((prefix, _)) if prefix.contains("://") && prefix.len() > "postgres://".len() => prefix,
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Runs SQL through `psql` against `url` (a superuser URL by default), returning the
/// unaligned, tuples-only output.
pub fn psql(url: &str, sql: &str) -> Result<String> {
    let (url, pw) = split_password(url);
    let psql = Path::new(&env("ALGA_PG_BIN")).join("psql");
    let psql = if psql.is_file() {
        psql
    } else {
        PathBuf::from("psql")
    };
    let mut cmd = Command::new(psql);
    cmd.args(["-qAtX", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql]);
    if let Some(pw) = pw {
        cmd.env("PGPASSWORD", pw);
    }
    let out = succeeded(format_args!("psql on `{sql}`"), run(&mut cmd, None)?)?;
    Ok(text(&out.stdout).trim().to_owned())
}

/// `curl` over the dev CA, optionally with a client identity; returns (status, body).
pub fn curl(
    url: &str,
    identity: Option<(&str, &str)>,
    out_file: Option<&Path>,
) -> Result<(u16, Vec<u8>)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(env("ALGA_CA_BUNDLE"));
    if let Some((cert, key)) = identity {
        cmd.args(["--cert", cert, "--key", key]);
    }
    if let Some(f) = out_file {
        cmd.arg("-o").arg(f);
    }
    cmd.arg(url);
    let out = run(&mut cmd, None)?;
    let mut body = out.stdout;
    let pos = body
        .iter()
        .rposition(|&b| b == b'\n')
        .context("curl printed no status")?;
    let status = text(&body[pos + 1..]).trim().parse().unwrap_or(0);
    body.truncate(pos);
    Ok((status, body))
}

// ------------------------------------------------------------------------ processes

/// A child process that is killed when the guard drops; its output goes to a log file,
/// whose tail is printed if the test is failing.
#[derive(Debug)]
pub struct Proc {
    name: String,
    /// Behind a lock so a test can stop a server through a shared `&Stack`.
    child: Mutex<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let f = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| {
                format!("spawning {name} ({})", cmd.get_program().to_string_lossy())
            })?;
        Ok(Proc {
            name: name.to_owned(),
            child: Mutex::new(child),
            log,
        })
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// Waits until `url` answers 200, failing early when the process exits.
    pub fn wait_healthy(&self, url: &str, identity: Option<(&str, &str)>) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait()? {
                bail!(
                    "{} exited during start-up ({s}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            match curl(url, identity, None) {
                Ok((200, _)) => return Ok(()),
                Ok((code, _)) => last = format!("HTTP {code}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{}: {url} did not answer 200 within {START_TIMEOUT:?} (last: {last}):\n{}",
            self.name,
            self.log_tail()
        )
    }

    fn try_wait(&self) -> Result<Option<std::process::ExitStatus>> {
        let mut child = self.child.lock().map_err(|_| anyhow!("poisoned"))?;
        Ok(child.try_wait()?)
    }

    /// True once the process has exited.
    pub fn exited(&self) -> bool {
        matches!(self.try_wait(), Ok(Some(_)))
    }

    /// Stops the process (SIGKILL) and reaps it.
    pub fn kill(&self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}\n---- end ----",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

// ---------------------------------------------------------------------- the stack

/// A fresh database on the stack's cluster, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create(prefix: &str, owner: Option<&str>) -> Result<TestDb> {
        drop_stale_databases();
        let name = format!("{prefix}_{}", unique());
        let owner = owner.map(|o| format!(" OWNER {o}")).unwrap_or_default();
        psql(
            &env("DATABASE_URL"),
            &format!("CREATE DATABASE {name}{owner}"),
        )?;
        Ok(TestDb { name })
    }

    /// The superuser URL of this database (operators' tools, test queries).
    pub fn admin_url(&self) -> String {
        with_database(&env("DATABASE_URL"), &self.name)
    }

    pub fn query(&self, sql: &str) -> Result<String> {
        psql(&self.admin_url(), sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &env("DATABASE_URL"),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// One gateway process of a [`Stack`].
#[derive(Debug)]
pub struct Gateway {
    pub url: String,
    /// The issuer this gateway signs with (gateway `i` talks to issuer `i % issuers`).
    pub issuer_url: String,
    /// The guard that keeps the process alive until the stack drops.
    _proc: Proc,
}

/// An issuer process of a [`Stack`] after the first ([`Stack::start_with`]): same token
/// and keys, its own port and its own signing log.
#[derive(Debug)]
pub struct Issuer {
    pub url: String,
    /// Its signing-log directory.
    pub log_dir: PathBuf,
    /// The guard that keeps the process alive until the stack drops.
    _proc: Proc,
}

/// A private issuer and gateway(s) over a fresh database; the rest (PKI, token,
/// cluster, SMTP, S3) is the local stack's. Fields drop in order: gateways, issuers,
/// database, files.
#[derive(Debug)]
pub struct Stack {
    pub gateways: Vec<Gateway>,
    pub issuer: Proc,
    pub issuer_url: String,
    /// Further issuer processes on the same token ([`Stack::start_with`]); empty for
    /// [`Stack::start`].
    pub more_issuers: Vec<Issuer>,
    pub db: TestDb,
    pub dir: TempDir,
}

fn load_toml(path: &str) -> Result<toml::Table> {
    let t = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    t.parse::<toml::Table>()
        .with_context(|| format!("parsing {path}"))
}

fn set(t: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) -> Result<()> {
    t.get_mut(section)
        .and_then(|s| s.as_table_mut())
        .with_context(|| format!("[{section}] missing"))?
        .insert(key.to_owned(), value.into());
    Ok(())
}

fn get_str(t: &toml::Table, section: &str, key: &str) -> Result<String> {
    t.get(section)
        .and_then(|s| s.get(key))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{section}.{key} missing"))
}

fn write_toml(path: &Path, t: &toml::Table) -> Result<()> {
    fs::write(path, toml::to_string(t)?).with_context(|| format!("writing {}", path.display()))
}

pub fn gateway_client_identity() -> (String, String) {
    (
        env("ALGA_GATEWAY_CLIENT_CERT"),
        env("ALGA_GATEWAY_CLIENT_KEY"),
    )
}

impl Stack {
    /// Starts an issuer and `gateways` gateways on free loopback ports over a fresh,
    /// migrated database.
    pub fn start(gateways: usize) -> Result<Stack> {
        Stack::start_with(gateways, 1, |_| Ok(()))
    }

    /// Starts `issuers` issuer processes on the stack's token (one after the other, each
    /// healthy before the next starts; each with its own port and signing log) and
    /// `gateways` gateways, gateway `i` talking to issuer `i % issuers`, over a fresh,
    /// migrated database. `edit_policy` changes the test's policy file (both kinds of
    /// process load it) after the checkpoint settings every stack uses.
    pub fn start_with(
        gateways: usize,
        issuers: usize,
        edit_policy: impl FnOnce(&mut toml::Table) -> Result<()>,
    ) -> Result<Stack> {
        let dir = tempfile::Builder::new().prefix("alga-e2e-").tempdir()?;

        // The stack's policy, with audit checkpoints every second so a short test sees them.
        let mut policy = load_toml(&env("ALGA_POLICY"))?;
        set(&mut policy, "audit", "checkpoint_interval", "1s")?;
        set(&mut policy, "audit", "checkpoint_every_records", 20)?;
        edit_policy(&mut policy)?;
        let policy_path = dir.path().join("policy.toml");
        write_toml(&policy_path, &policy)?;
        let policy_str = policy_path.display().to_string();

        let db = TestDb::create("e2e", Some("alga_migrator"))?;

        // Issuers: the stack's config (same token, PKI) on other ports, each with its own
        // log; started one after the other (see `start_retrying`).
        let (issuer, issuer_url) = start_issuer(dir.path(), &policy_str, 0)?;
        let mut more_issuers = Vec::new();
        for i in 1..issuers.max(1) {
            let (proc, url) = start_issuer(dir.path(), &policy_str, i)?;
            more_issuers.push(Issuer {
                url,
                log_dir: issuer_log_dir(dir.path(), i),
                _proc: proc,
            });
        }
        let issuer_urls: Vec<String> = std::iter::once(issuer_url.clone())
            .chain(more_issuers.iter().map(|i| i.url.clone()))
            .collect();

        // Gateways: the stack's config on other ports, against the fresh database.
        let mut gc = load_toml(&env("ALGA_GATEWAY_CONFIG"))?;
        let runtime_url = with_database(&get_str(&gc, "database", "url")?, &db.name);
        let migrator_url = with_database(&get_str(&gc, "database", "migrator_url")?, &db.name);
        set(&mut gc, "database", "url", runtime_url)?;
        set(&mut gc, "database", "migrator_url", migrator_url)?;
        set(&mut gc, "database", "pool_size", 4)?;
        set(&mut gc, "issuer", "url", issuer_url.clone())?;
        set(&mut gc, "policy", "path", policy_str.clone())?;
        let migrate_conf = dir.path().join("gateway-migrate.toml");
        write_toml(&migrate_conf, &gc)?;
        let out = run(
            Command::new(bin("alga-gateway"))
                .args(["migrate", "--config"])
                .arg(&migrate_conf),
            None,
        )?;
        succeeded("alga-gateway migrate", out)?;
        let mut started = Vec::new();
        for i in 0..gateways.max(1) {
            let gw_issuer = issuer_urls[i % issuer_urls.len()].clone();
            let (proc, url) = start_retrying(|attempt| {
                let port = free_port()?;
                let url = format!("https://localhost:{port}");
                let mut c = gc.clone();
                set(&mut c, "listen", "address", format!("127.0.0.1:{port}"))?;
                set(&mut c, "listen", "public_url", url.clone())?;
                set(&mut c, "issuer", "url", gw_issuer.clone())?;
                let path = dir.path().join(format!("gateway-{i}.toml"));
                write_toml(&path, &c)?;
                let proc = Proc::spawn(
                    &format!("alga-gateway-{i}"),
                    Command::new(bin("alga-gateway"))
                        .args(["serve", "--config"])
                        .arg(&path)
                        .env("RUST_LOG", "info"),
                    dir.path().join(format!("gateway-{i}-{attempt}.log")),
                )?;
                Ok((proc, url, None))
            })?;
            started.push(Gateway {
                url,
                issuer_url: gw_issuer,
                _proc: proc,
            });
        }
        Ok(Stack {
            gateways: started,
            issuer,
            issuer_url,
            more_issuers,
            db,
            dir,
        })
    }

    /// Runs a test's body; when it fails, prints the tail of every server log of this
    /// stack first (the processes are gone once the stack drops).
    pub fn check(&self, body: impl FnOnce(&Stack) -> Result<()>) -> Result<()> {
        let result = body(self);
        if result.is_err() {
            print_log_tails(
                self.dir.path(),
                |p| p.extension().is_some_and(|x| x == "log"),
                40,
            );
        }
        result
    }

    pub fn gw(&self, i: usize) -> &str {
        &self.gateways[i].url
    }

    /// Every issuer's (base URL, signing-log directory), the first issuer first.
    pub fn issuers(&self) -> Vec<(String, PathBuf)> {
        std::iter::once((self.issuer_url.clone(), issuer_log_dir(self.dir.path(), 0)))
            .chain(
                self.more_issuers
                    .iter()
                    .map(|i| (i.url.clone(), i.log_dir.clone())),
            )
            .collect()
    }

    /// A fresh directory inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Fails if any of `secrets` appears in the servers' logs, the issuer's signing log
    /// or a data dump of the database (CONTRACT.md §3.3: no code, token or key is stored or logged).
    pub fn assert_no_secrets_leaked(&self, secrets: &[&str]) -> Result<()> {
        // The servers' logs (top level of the test directory) and the issuer's signing
        // log; not the appliance Secret directories, which hold the secrets by design.
        let mut haystacks: Vec<(String, String)> = Vec::new();
        let dirs = [
            (self.dir.path().to_owned(), false),
            (self.path("issuer-log"), true),
        ]
        .into_iter()
        .chain(self.more_issuers.iter().map(|i| (i.log_dir.clone(), true)));
        for (dir, all) in dirs {
            for e in fs::read_dir(&dir)? {
                let p = e?.path();
                if p.is_file() && (all || p.extension().is_some_and(|x| x == "log")) {
                    haystacks.push((p.display().to_string(), fs::read_to_string(&p)?));
                }
            }
        }
        let (url, pw) = split_password(&self.db.admin_url());
        let dump = Path::new(&env("ALGA_PG_BIN")).join("pg_dump");
        let mut cmd = Command::new(if dump.is_file() {
            dump
        } else {
            PathBuf::from("pg_dump")
        });
        cmd.args(["--data-only", "--no-owner", "-d", &url]);
        if let Some(pw) = pw {
            cmd.env("PGPASSWORD", pw);
        }
        let out = succeeded("pg_dump", run(&mut cmd, None)?)?;
        let dump = text(&out.stdout);
        ensure!(
            dump.contains("COPY public.install_codes") && dump.contains("COPY public.audit_events"),
            "the dump does not cover the registry and the audit log"
        );
        haystacks.push(("pg_dump of the registry".into(), dump));
        // Audit records are bytea: look at their text too.
        haystacks.push((
            "audit records".into(),
            self.db.query(
                "SELECT coalesce(string_agg(convert_from(record, 'UTF8'), E'\\n'), '') FROM audit_events",
            )?,
        ));
        ensure!(haystacks.len() >= 3, "nothing to scan: {haystacks:?}");
        for secret in secrets.iter().filter(|s| s.len() >= 16) {
            for (name, hay) in &haystacks {
                ensure!(
                    !hay.contains(secret),
                    "a secret ({}…) appears in {name}",
                    &secret[..8]
                );
            }
        }
        Ok(())
    }

    /// A JSON `POST` to this stack's issuer as the gateway (the dev PKI's identity):
    /// for tests that need a registry row the gateway would not write, such as a code
    /// that expires within seconds.
    pub fn issuer_post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let (cert, key) = gateway_client_identity();
        let out = run(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "--max-time", "10"])
                .args([
                    "-H",
                    "content-type: application/json",
                    "--data-binary",
                    "@-",
                ])
                .arg("--cacert")
                .arg(env("ALGA_CA_BUNDLE"))
                .args(["--cert", &cert, "--key", &key])
                .arg(format!("{}{path}", self.issuer_url)),
            Some(body.to_string().as_bytes()),
        )?;
        let out = succeeded(format_args!("issuer POST {path}"), out)?;
        serde_json::from_slice(&out.stdout).context("the issuer answered no JSON")
    }

    /// `alga-audit reconcile --json` of every issuer's signing log against this stack's
    /// audit records, up to `until` (RFC 3339); the parsed report, whatever its verdict.
    pub fn reconcile_issuer_logs(&self, until: &str) -> Result<serde_json::Value> {
        let (url, pw) = split_password(&self.db.admin_url());
        let mut cmd = Command::new(bin("alga-audit"));
        cmd.args(["reconcile", "--json", "--until", until])
            .env("DATABASE_URL", &url);
        for (_, dir) in self.issuers() {
            cmd.arg("--issuer-log").arg(dir);
        }
        if let Some(pw) = &pw {
            let f = self.path("audit-db.pw");
            fs::write(&f, pw)?;
            cmd.arg("--password-file").arg(&f);
        }
        let out = run(&mut cmd, None)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "alga-audit reconcile printed no JSON ({}): {}",
                out.status,
                text(&out.stderr)
            )
        })
    }

    /// `alga-audit verify` over this stack's database with the issuer's published audit
    /// keys, once every committed record is chained and `min_checkpoints` are signed.
    pub fn verify_audit(&self, min_checkpoints: u64) -> Result<serde_json::Value> {
        self.verify_audit_with_keys_of(&self.issuer_url, min_checkpoints)
    }

    /// [`Stack::verify_audit`] with the audit keys as published by the issuer at
    /// `issuer_url` (one of this stack's).
    pub fn verify_audit_with_keys_of(
        &self,
        issuer_url: &str,
        min_checkpoints: u64,
    ) -> Result<serde_json::Value> {
        let keys = self.path("audit-keys.json");
        let (cert, key) = gateway_client_identity();
        let (status, _) = curl(
            &format!("{issuer_url}/v1/keys"),
            Some((&cert, &key)),
            Some(&keys),
        )?;
        ensure!(status == 200, "issuer GET /v1/keys answered {status}");
        let (url, pw) = split_password(&self.db.admin_url());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let total: u64 = self
                .db
                .query("SELECT count(*) FROM audit_events")?
                .parse()?;
            let mut cmd = Command::new(bin("alga-audit"));
            cmd.args(["verify", "--json", "--audit-keys"])
                .arg(&keys)
                .env("DATABASE_URL", &url);
            if let Some(pw) = &pw {
                let f = self.path("audit-db.pw");
                fs::write(&f, pw)?;
                cmd.arg("--password-file").arg(&f);
            }
            let out = run(&mut cmd, None)?;
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "alga-audit verify printed no JSON ({}): {}",
                        out.status,
                        text(&out.stderr)
                    )
                })?;
            ensure!(
                out.status.success() && report["intact"] == true,
                "alga-audit verify says the chain is damaged: {report}\n{}",
                text(&out.stderr)
            );
            let records = report["report"]["records"].as_u64().unwrap_or(0);
            let cps = report["report"]["checkpoints_valid"].as_u64().unwrap_or(0);
            if records == total && cps >= min_checkpoints {
                return Ok(report);
            }
            if Instant::now() > deadline {
                bail!(
                    "after 30 s the verified chain has {records} of {total} records and {cps} signed \
                     checkpoints (wanted {min_checkpoints}): {report}"
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The signing-log directory of issuer `i` of a stack in `dir` (the first issuer's is
/// `issuer-log`).
fn issuer_log_dir(dir: &Path, i: usize) -> PathBuf {
    if i == 0 {
        dir.join("issuer-log")
    } else {
        dir.join(format!("issuer-log-{i}"))
    }
}

/// Starts issuer `i` of a stack in `dir`: the stack's config (same token, PKI) on a free
/// port, `policy`, and its own signing log; returns once it is healthy. The first
/// issuer's files keep their historical names (`issuer.toml`, `issuer-<attempt>.log`).
fn start_issuer(dir: &Path, policy: &str, i: usize) -> Result<(Proc, String)> {
    let signlog = issuer_log_dir(dir, i);
    fs::create_dir_all(&signlog)?;
    let (cert, key) = gateway_client_identity();
    let (name, conf) = if i == 0 {
        ("alga-issuer".to_owned(), "issuer".to_owned())
    } else {
        (format!("alga-issuer-{i}"), format!("issuer-{i}"))
    };
    start_retrying(|attempt| {
        let port = free_port()?;
        let mut ic = load_toml(&env("ALGA_ISSUER_CONFIG"))?;
        set(&mut ic, "listen", "address", format!("127.0.0.1:{port}"))?;
        set(&mut ic, "policy", "path", policy.to_owned())?;
        set(&mut ic, "log", "directory", signlog.display().to_string())?;
        let path = dir.join(format!("{conf}.toml"));
        write_toml(&path, &ic)?;
        let proc = Proc::spawn(
            &name,
            Command::new(bin("alga-issuer"))
                .args(["serve", "--config"])
                .arg(&path)
                .env("SOFTHSM2_CONF", env("SOFTHSM2_CONF"))
                .env("RUST_LOG", "info"),
            dir.join(format!("{conf}-{attempt}.log")),
        )?;
        Ok((
            proc,
            format!("https://localhost:{port}"),
            Some((cert.clone(), key.clone())),
        ))
    })
}

/// Starts a server with `start(attempt)` (process, base URL, client identity for
/// `/healthz`) and waits until it is healthy. A server that exits during start-up is
/// started again, at most three times: its free port may have been taken meanwhile,
/// and SoftHSM2's file store can answer CKR_GeneralError while another process
/// rewrites the shared token's files.
fn start_retrying(
    mut start: impl FnMut(u32) -> Result<(Proc, String, Option<(String, String)>)>,
) -> Result<(Proc, String)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (proc, url, identity) = start(attempt)?;
        let identity = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        match proc.wait_healthy(&format!("{url}/healthz"), identity) {
            Ok(()) => return Ok((proc, url)),
            Err(e) if attempt < 3 && proc.exited() => {
                eprintln!(
                    "{} start-up attempt {attempt} failed, retrying: {e}",
                    proc.name
                );
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(e),
        }
    }
}

// -------------------------------------------------------------------- store (algactl)

/// `algactl --json <args>` as the store against `gateway`; Ok(answer) or Err(stderr).
pub fn algactl(gateway: &str, args: &[&str]) -> Result<serde_json::Value> {
    algactl_with(gateway, "ALGA_STORE_CERT", "ALGA_STORE_KEY", args)
}

/// `algactl --json <args>` as the auditor against `gateway`.
pub fn algactl_as_auditor(gateway: &str, args: &[&str]) -> Result<serde_json::Value> {
    algactl_with(gateway, "ALGA_AUDITOR_CERT", "ALGA_AUDITOR_KEY", args)
}

fn algactl_with(gateway: &str, cert: &str, key: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = run(
        Command::new(bin("algactl"))
            .args(["--gateway-url", gateway, "--ca-bundle"])
            .arg(env("ALGA_CA_BUNDLE"))
            .arg("--cert")
            .arg(env(cert))
            .arg("--key")
            .arg(env(key))
            .arg("--json")
            .args(args),
        None,
    )?;
    let out = succeeded(format_args!("algactl {args:?}"), out)?;
    serde_json::from_slice(&out.stdout).context("algactl printed no JSON")
}

/// A customer with a unique contact address (so its mail is told apart from others').
#[derive(Debug, Clone)]
pub struct Customer {
    pub company: String,
    pub email: String,
}

impl Customer {
    pub fn new(label: &str) -> Customer {
        let u = unique();
        Customer {
            company: format!("E2E {label} {u}"),
            email: format!("e2e-{label}-{u}@e2e.test"),
        }
    }
}

/// The store's `register` answer, checked against CONTRACT.md §5.
#[derive(Debug)]
pub struct Registration {
    pub tenant_id: String,
    pub code_id: String,
    pub json: serde_json::Value,
}

pub fn register(gateway: &str, c: &Customer, edition: &str) -> Result<Registration> {
    let json = algactl(
        gateway,
        &[
            "register",
            "--company",
            &c.company,
            "--contact-name",
            "E2E Tester",
            "--contact-email",
            &c.email,
            "--edition",
            edition,
        ],
    )?;
    registration(json)
}

pub fn reissue_by_email(gateway: &str, email: &str) -> Result<Registration> {
    registration(algactl(gateway, &["reissue", "--contact-email", email])?)
}

fn registration(json: serde_json::Value) -> Result<Registration> {
    let s = |p: &str| {
        json.pointer(p)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("{p} missing in {json}"))
    };
    let tenant_id = s("/tenant_id")?;
    let code_id = s("/install_code/code_id")?;
    let status = s("/email/status")?;
    ensure!(
        status == "sent" || status == "queued",
        "email.status {status}"
    );
    // Only the code's public id goes to the store (the seed test also checks that the
    // mailed code appears nowhere in the answer).
    ensure!(
        json["install_code"]
            .as_object()
            .is_some_and(|o| { o.keys().all(|k| k == "code_id" || k == "expires_at") }),
        "the store's answer carries more than the code's id and expiry: {json}"
    );
    Ok(Registration {
        tenant_id,
        code_id,
        json,
    })
}

// -------------------------------------------------------------------------- mailbox

/// One message as the SMTP sink stored it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub headers: String,
    pub text: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        let lname = format!("{}:", name.to_ascii_lowercase());
        let mut found: Option<String> = None;
        for line in self.headers.lines() {
            if let Some(v) = found.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                break;
            }
            if line.to_ascii_lowercase().starts_with(&lname) {
                found = Some(line[lname.len()..].trim().to_owned());
            }
        }
        found
    }

    /// The install code as printed in the text part.
    pub fn code(&self) -> Option<String> {
        let rest = &self.text[self.text.find("Install code:")? + "Install code:".len()..];
        let code: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        (!code.is_empty()).then_some(code)
    }

    /// The presigned ISO link in the text part.
    pub fn link(&self) -> Option<String> {
        let start = self.text.find("http")?;
        Some(self.text[start..].split_whitespace().next()?.to_owned())
    }

    fn parse(file: &Path) -> Result<Mail> {
        let raw = fs::read_to_string(file)?.replace("\r\n", "\n");
        let (headers, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
        let mut mail = Mail {
            headers: headers.to_owned(),
            text: String::new(),
        };
        let ctype = mail
            .header("Content-Type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        mail.text = if ctype.starts_with("multipart/") {
            text_part(body).unwrap_or_default()
        } else {
            decode(
                &mail.header("Content-Transfer-Encoding").unwrap_or_default(),
                body,
            )
        };
        Ok(mail)
    }
}

/// The first text/plain part of a multipart body, decoded.
fn text_part(body: &str) -> Option<String> {
    let lower = body.to_ascii_lowercase();
    let at = lower.find("content-type: text/plain")?;
    let part = &body[at..];
    let (part_headers, rest) = part.split_once("\n\n")?;
    let end = rest.find("\n--").unwrap_or(rest.len());
    let cte = part_headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-transfer-encoding:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some(decode(&cte, &rest[..end]))
}

fn decode(cte: &str, body: &str) -> String {
    match cte.trim().to_ascii_lowercase().as_str() {
        "quoted-printable" => quoted_printable(body),
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map(|b| text(&b))
                .unwrap_or_default()
        }
        _ => body.to_owned(),
    }
}

fn quoted_printable(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let Some(h) = b.get(i + 1..i + 3)
                && let Ok(v) = u8::from_str_radix(&text(h), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    text(&out)
}

/// Every mail the sink stored for `rcpt` since shortly before this test process
/// started (the sink keeps every mail of every run; older ones cannot be ours).
pub fn mails_to(rcpt: &str) -> Result<Vec<Mail>> {
    static SINCE: OnceLock<SystemTime> = OnceLock::new();
    let since = *SINCE.get_or_init(|| SystemTime::now() - Duration::from_secs(60));
    let dir = env("ALGA_MAIL_DIR");
    let needle = format!("X-Alga-Sink-Rcpt-To: <{rcpt}>");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("reading the mail sink {dir}"))? {
        let e = e?;
        let p = e.path();
        let recent = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if recent
            && p.extension().is_some_and(|x| x == "eml")
            && fs::read_to_string(&p).is_ok_and(|t| t.contains(&needle))
        {
            out.push(Mail::parse(&p)?);
        }
    }
    Ok(out)
}

/// Waits (bounded) for the mail to `rcpt` carrying the code whose id is `code_id`.
pub fn wait_mail(rcpt: &str, code_id: &str) -> Result<Mail> {
    let deadline = Instant::now() + MAIL_TIMEOUT;
    loop {
        for m in mails_to(rcpt)? {
            if m.code()
                .is_some_and(|c| c.replace('-', "").to_ascii_uppercase().starts_with(code_id))
            {
                return Ok(m);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no mail to {rcpt} with code {code_id} reached {} within {MAIL_TIMEOUT:?}: is the mail \
                 outbox worker delivering to the stack's SMTP sink?",
                env("ALGA_MAIL_DIR")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------------ appliance

/// What `alga-appliance redeem` did.
#[derive(Debug)]
pub struct Redeem {
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub out: PathBuf,
}

impl Redeem {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }

    pub fn wrote_secrets(&self) -> bool {
        self.out.join("appliance-initial-tenant.yaml").exists()
            || self.out.join("appliance-license-seed.yaml").exists()
    }

    pub fn secret(&self, file: &str, key: &str) -> Result<Option<String>> {
        secret_value(&self.out, file, key)
    }

    pub fn tenant_id(&self) -> Result<String> {
        self.secret("appliance-initial-tenant.yaml", "INITIAL_TENANT_ID")?
            .context("INITIAL_TENANT_ID missing")
    }

    pub fn expect_ok(&self) -> Result<&Redeem> {
        ensure!(
            self.ok(),
            "redeem failed (exit {:?}): {}{}",
            self.exit,
            self.stderr,
            self.stdout
        );
        Ok(self)
    }
}

/// The real `alga-appliance redeem`, the code on stdin, Secrets into `out`.
pub fn redeem(service_url: &str, code: &str, out: &Path) -> Result<Redeem> {
    redeem_pinned(service_url, Path::new(&env("ALGA_TRUST_ROOT")), code, out)
}

/// [`redeem`] pinning `trust_root` instead of the stack's (a test's own token).
pub fn redeem_pinned(
    service_url: &str,
    trust_root: &Path,
    code: &str,
    out: &Path,
) -> Result<Redeem> {
    let o = run(
        Command::new(bin("alga-appliance"))
            .args([
                "redeem",
                "--service-url",
                service_url,
                "--hostname",
                "e2e-appliance",
            ])
            .arg("--ca-bundle")
            .arg(env("ALGA_CA_BUNDLE"))
            .arg("--trust-root")
            .arg(trust_root)
            .arg("--out")
            .arg(out),
        Some(format!("{code}\n").as_bytes()),
    )?;
    Ok(Redeem {
        exit: o.status.code(),
        stdout: text(&o.stdout),
        stderr: text(&o.stderr),
        out: out.to_owned(),
    })
}

/// `alga-appliance <args>` with extra environment; Ok(stdout) on exit 0.
pub fn appliance(args: &[&str], envs: &[(&str, &str)]) -> Result<String> {
    let o = succeeded(
        format_args!("alga-appliance {args:?}"),
        appliance_output(args, envs)?,
    )?;
    Ok(text(&o.stdout))
}

/// `alga-appliance <args>` with extra environment, whatever its exit status.
pub fn appliance_output(args: &[&str], envs: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = Command::new(bin("alga-appliance"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run(&mut cmd, None)
}

/// A value of a Secret manifest written by `redeem`, base64-decoded.
pub fn secret_value(dir: &Path, file: &str, key: &str) -> Result<Option<String>> {
    let path = dir.join(file);
    let t = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let prefix = format!("  {key}:");
    for line in t.lines() {
        if let Some(v) = line.strip_prefix(&prefix) {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .with_context(|| format!("{key} in {file} is not base64"))?;
            return Ok(Some(text(&b)));
        }
    }
    Ok(None)
}

/// The claims of a JWT (signature checked by the appliance, not here).
pub fn jwt_claims(token: &str) -> Result<serde_json::Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&b)?)
}

/// The last `n` lines of the file at `path` (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let t = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints to stderr the last `n` lines of every file of `dir` that `keep` selects, in
/// name order: what a failed test shows of the processes it ran.
pub fn print_log_tails(dir: &Path, keep: impl Fn(&Path) -> bool, n: usize) {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    logs.retain(|p| keep(p));
    logs.sort();
    for log in logs {
        eprintln!(
            "---- last lines of {} ----\n{}\n---- end ----",
            log.display(),
            tail(&log, n)
        );
    }
}
