//! The test stack: a database cloned from a migrated template, the real issuer on the
//! `.dev` SoftHSM2 token in-process, and the real gateway through `alga_gateway::run`,
//! both on `127.0.0.1:0`. Clients use the dev PKI; appliances get their credentials by
//! redeeming.
//!
//! Environment: the `.dev` stack of `make infra` (Postgres, PKI, token with keys),
//! read from `.dev/env`. SoftHSM reads `SOFTHSM2_CONF` at `C_Initialize` and this
//! crate forbids `unsafe` (so no `set_var`): run the tests with `.dev/env` exported
//! (`set -a; . .dev/env; set +a`, as `make test` does). Missing pieces fail loudly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alga_issuer::hsm::Hsm;
use alga_policies::{Policy, Quota};
use alga_protocol::CodeBinding;
use alga_protocol::issuer_api::{
    self as ia, DeriveCodeRequest, DeriveCodeResponse, MintCodeRequest, MintCodeResponse,
};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio_postgres::NoTls;
use uuid::Uuid;

// ---------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------

/// `.dev/env`, parsed; process environment wins.
pub struct DevEnv {
    vars: HashMap<String, String>,
}

pub fn dev() -> &'static DevEnv {
    static ENV: OnceLock<DevEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("ALGA_DEV_DIR")
            .map(|d| PathBuf::from(d).join("env"))
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.dev/env"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the gateway tests need the dev stack: {} is unreadable ({e}); run `make infra`",
                path.display()
            )
        });
        let mut vars = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("export ") else {
                continue;
            };
            let Some((k, v)) = rest.split_once('=') else {
                continue;
            };
            vars.insert(k.to_owned(), v.trim_matches('\'').to_owned());
        }
        DevEnv { vars }
    })
}

impl DevEnv {
    pub fn var(&self, k: &str) -> String {
        std::env::var(k)
            .ok()
            .or_else(|| self.vars.get(k).cloned())
            .unwrap_or_else(|| {
                panic!("{k} is not set in the environment nor in .dev/env (run `make infra`)")
            })
    }

    pub fn path(&self, k: &str) -> String {
        self.var(k)
    }

    fn secrets(&self) -> String {
        format!("{}/secrets", self.var("ALGA_DEV_DIR"))
    }
}

/// The one HSM session pool of this process (C_Initialize once).
fn hsm() -> Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let d = dev();
        let conf = std::env::var("SOFTHSM2_CONF").unwrap_or_default();
        assert!(
            !conf.is_empty() && conf == d.var("SOFTHSM2_CONF"),
            "SOFTHSM2_CONF must be exported from .dev/env before the tests start \
             (set -a; . .dev/env; set +a): SoftHSM reads it once, at C_Initialize"
        );
        let cfg = alga_issuer::config::HsmConfig {
            module: d.path("ALGA_HSM_MODULE").into(),
            token_label: d.var("ALGA_HSM_TOKEN_LABEL"),
            pin_file: Some(d.path("ALGA_HSM_PIN_FILE").into()),
            workers: 2,
        };
        let pin = cfg.pin().expect("HSM PIN file readable");
        Hsm::open(&cfg, pin).expect("the .dev token opens with its keys (alga-issuer keys init)")
    })
    .clone()
}

/// The process's HSM pool, shared by every issuer of this process (R6 pulls its
/// sessions with `Hsm::invalidate_sessions_for_test`; only in a process of its own).
pub fn hsm_handle() -> Hsm {
    hsm()
}

/// Everything the process logged (every test's stack shares it), for secret scans.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogCapture;

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut l) = LOGS.lock() {
            l.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log so far.
pub fn captured_logs() -> String {
    LOGS.lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default()
}

pub fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------

fn admin_config(db: &str) -> tokio_postgres::Config {
    let mut c: tokio_postgres::Config = dev()
        .var("DATABASE_URL")
        .parse()
        .expect("DATABASE_URL parses");
    c.dbname(db);
    c
}

pub async fn connect(cfg: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .expect("connect to the dev Postgres (make infra)");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The migrated template, built once per process (and per migration set).
async fn template() -> String {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for m in alga_gateway::db::migrate::all() {
                h.update(m.name.as_bytes());
                h.update(m.sql.as_bytes());
            }
            let name = format!("gwtmpl_{}", &hex::encode(h.finalize())[..16]);
            let admin = connect(&admin_config("alga")).await;
            drop_leftovers(&admin, &name).await;
            ensure_template(&admin, &name).await;
            name
        })
        .await
        .clone()
}

/// Builds the template `name` from the migrations unless it exists.
async fn ensure_template(admin: &tokio_postgres::Client, name: &str) {
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("query")
        .is_some();
    if exists {
        return;
    }
    let building = format!("{name}_b{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
        .await
        .expect("drop a half-built template");
    admin
        .batch_execute(&format!("CREATE DATABASE {building} OWNER alga_migrator"))
        .await
        .expect("create template");
    let mut mig: tokio_postgres::Config = dev()
        .var("ALGA_MIGRATOR_DATABASE_URL")
        .parse()
        .expect("parses");
    mig.dbname(&building);
    alga_gateway::db::migrate::migrate(&mig)
        .await
        .expect("migrations apply");
    // Idempotent: a second run applies nothing.
    assert!(
        alga_gateway::db::migrate::migrate(&mig)
            .await
            .expect("rerun")
            .is_empty()
    );
    let renamed = admin
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
        .await;
    if renamed.is_err() {
        // Another test process won the race; use theirs.
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
            .await;
    }
}

/// Drops test databases of processes that are gone and templates of older migration
/// sets (best effort: a database still in use is left alone).
async fn drop_leftovers(admin: &tokio_postgres::Client, template: &str) {
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'gwtest\\_%' OR datname LIKE 'gwtmpl\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let db: String = r.get(0);
        let stale = if let Some(rest) = db.strip_prefix("gwtest_") {
            let pid = rest.split('_').next().unwrap_or_default();
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        } else {
            db != template && !db.contains("_b")
        };
        if stale {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                .await;
        }
    }
}

/// A fresh database for one test.
async fn test_database() -> String {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let tmpl = template().await;
    // The pid in the name lets a later run drop what a crashed run left behind.
    let name = format!("gwtest_{}_{}", std::process::id(), Uuid::new_v4().simple());
    let _g = LOCK.lock().await;
    let admin = connect(&admin_config("alga")).await;
    // A test process of another migration set (another checkout sharing this Postgres)
    // drops templates that are not its own: then this one is built again.
    let mut attempts = 0;
    while let Err(e) = admin
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE {tmpl} OWNER alga_migrator"
        ))
        .await
    {
        attempts += 1;
        assert!(
            attempts < 3 && e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_DATABASE),
            "clone the template: {e}"
        );
        ensure_template(&admin, &tmpl).await;
    }
    admin
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {name} TO alga_gateway"))
        .await
        .expect("grant connect");
    name
}

// ---------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------

/// Options of a stack.
#[derive(Clone, Default)]
pub struct Opts {
    /// Keep the policy's real rate limits (otherwise they are raised out of the way).
    pub real_rate_limits: bool,
    /// SMTP port of the gateway (a test's own [`SmtpSink`]); default: the stack's sink.
    pub smtp_port: Option<u16>,
    /// Keys of the gateway's `[mail]` section (TOML lines); default: none.
    pub mail: Option<String>,
    /// The gateway's database pool size; default 16.
    pub pool_size: Option<usize>,
    /// The gateway's `database.min_connections`; default: unset (the gateway's default).
    pub min_connections: Option<usize>,
    /// Keys of the gateway's `[limits]` section (TOML lines); default: no per-source
    /// connection limit (every test client is 127.0.0.1).
    pub limits: Option<String>,
    /// TOML appended to the gateway's configuration (e.g. an `[ops]` section).
    pub extra: Option<String>,
    /// The policy's `audit.checkpoint_every_records` (default: the dev policy's).
    pub checkpoint_every: Option<u64>,
}

pub struct Stack {
    pub db: String,
    gw_config: alga_gateway::config::Config,
    /// Superuser connection to the test database.
    pub admin: tokio_postgres::Client,
    pub policy: Policy,
    pub gw: String,
    pub issuer_addr: std::net::SocketAddr,
    issuer_stop: Option<oneshot::Sender<()>>,
    issuer_task: Option<tokio::task::JoinHandle<()>>,
    gw_stop: Option<oneshot::Sender<()>>,
    gw_task: Option<tokio::task::JoinHandle<()>>,
    _issuer_log: tempfile::TempDir,
}

fn issuer_config(log_dir: &std::path::Path) -> alga_issuer::config::IssuerConfig {
    let d = dev();
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
[tls]
certificate = "{}"
private_key = "{}"
client_ca = "{}"
[hsm]
module = "{}"
token_label = "{}"
pin_file = "{}"
workers = 2
[policy]
path = "{}"
[log]
directory = "{}"
[audit_log]
origin = "alga-license.test/audit-log"
"#,
        d.path("ALGA_ISSUER_SERVER_CERT"),
        d.path("ALGA_ISSUER_SERVER_KEY"),
        d.path("ALGA_CA_BUNDLE"),
        d.path("ALGA_HSM_MODULE"),
        d.var("ALGA_HSM_TOKEN_LABEL"),
        d.path("ALGA_HSM_PIN_FILE"),
        d.path("ALGA_POLICY"),
        log_dir.display()
    );
    toml::from_str(&text).expect("issuer config")
}

fn gateway_config(
    db: &str,
    issuer: std::net::SocketAddr,
    opts: &Opts,
) -> alga_gateway::config::Config {
    alga_gateway::config::Config::parse(&gateway_config_text(db, issuer, opts))
        .expect("gateway config")
}

/// The test gateway's configuration file, as TOML (a process of its own reads it).
pub fn gateway_config_text(db: &str, issuer: std::net::SocketAddr, opts: &Opts) -> String {
    let d = dev();
    let port = d.var("ALGA_PG_PORT");
    format!(
        r#"
[listen]
address = "127.0.0.1:0"
public_url = "https://localhost:8443"
[tls]
certificate = "{gw_cert}"
private_key = "{gw_key}"
client_ca = "{ca}"
[database]
url = "postgres://alga_gateway@127.0.0.1:{port}/{db}"
password_file = "{secrets}/alga_gateway.pw"
migrator_url = "postgres://alga_migrator@127.0.0.1:{port}/{db}"
migrator_password_file = "{secrets}/alga_migrator.pw"
pool_size = {pool_size}
{min_connections}
[issuer]
url = "https://localhost:{iport}"
ca = "{ca}"
certificate = "{gc_cert}"
private_key = "{gc_key}"
[smtp]
host = "127.0.0.1"
port = {smtp}
security = "none"
from = "alga-license <licenses@alga.test>"
[mail]
{mail}
[limits]
{limits}
[s3]
endpoint = "{s3}"
region = "{region}"
bucket = "{bucket}"
key = "{key}"
path_style = true
credentials_file = "{s3cred}"
[policy]
path = "{policy}"
{extra}
"#,
        gw_cert = d.path("ALGA_GATEWAY_SERVER_CERT"),
        gw_key = d.path("ALGA_GATEWAY_SERVER_KEY"),
        ca = d.path("ALGA_CA_BUNDLE"),
        secrets = d.secrets(),
        iport = issuer.port(),
        gc_cert = d.path("ALGA_GATEWAY_CLIENT_CERT"),
        gc_key = d.path("ALGA_GATEWAY_CLIENT_KEY"),
        smtp = opts
            .smtp_port
            .map_or_else(|| d.var("ALGA_SMTP_PORT"), |p| p.to_string()),
        mail = opts.mail.as_deref().unwrap_or(""),
        pool_size = opts.pool_size.unwrap_or(16),
        min_connections = opts
            .min_connections
            .map_or_else(String::new, |n| format!("min_connections = {n}")),
        s3 = d.var("ALGA_S3_ENDPOINT"),
        region = d.var("ALGA_S3_REGION"),
        bucket = d.var("ALGA_S3_BUCKET"),
        key = d.var("ALGA_S3_KEY"),
        s3cred = d.path("ALGA_S3_CREDENTIALS_FILE"),
        policy = d.path("ALGA_POLICY"),
        // Every test client is 127.0.0.1, and R1 opens hundreds of connections at once:
        // no per-source limit unless a test asks for one (edge.rs tests it).
        limits = opts
            .limits
            .as_deref()
            .unwrap_or("max_connections_per_source = 0"),
        extra = opts.extra.as_deref().unwrap_or(""),
    )
}

async fn start_issuer(
    listener: std::net::TcpListener,
    log_dir: &std::path::Path,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let cfg = issuer_config(log_dir);
    let policy = Policy::load(&cfg.policy.path).expect("policy");
    let keys = tokio::task::spawn_blocking(hsm).await.expect("hsm opens");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        alga_issuer::server::run(cfg, policy, keys, listener, async {
            let _ = rx.await;
        })
        .await
        .expect("issuer runs");
    });
    (tx, task)
}

/// Starts a gateway on a fresh loopback port; returns its URL, stop and task.
fn start_gateway(
    config: alga_gateway::config::Config,
    policy: Policy,
) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let gl = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gw = format!(
        "https://localhost:{}",
        gl.local_addr().expect("addr").port()
    );
    let (gw_stop, rx) = oneshot::channel::<()>();
    let gw_task = tokio::spawn(async move {
        alga_gateway::run(config, policy, gl, async {
            let _ = rx.await;
        })
        .await
        .expect("gateway runs");
    });
    (gw, gw_stop, gw_task)
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(Opts::default()).await
    }

    pub async fn start_with(opts: Opts) -> Stack {
        // Everything goes to the capture (scanned for secrets), at debug for the gateway.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,alga_gateway=debug,alga_issuer=info,tokio_postgres=info,rustls=info,hyper=info",
            ))
            .with_writer(|| LogCapture)
            .with_ansi(false)
            .try_init();
        let db = test_database().await;
        let admin = connect(&admin_config(&db)).await;

        let issuer_log = tempfile::tempdir().expect("tempdir");
        let il = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let issuer_addr = il.local_addr().expect("addr");
        let (issuer_stop, issuer_task) = start_issuer(il, issuer_log.path()).await;

        let mut policy =
            Policy::load(std::path::Path::new(&dev().path("ALGA_POLICY"))).expect("policy");
        if !opts.real_rate_limits {
            let many = Quota {
                per_minute: 100_000,
                burst: 100_000,
            };
            policy.rate_limits.redeem_per_source = many;
            policy.rate_limits.redeem_per_code = many;
        }
        if let Some(every) = opts.checkpoint_every {
            policy.audit.checkpoint_every_records = every;
        }
        let gw_config = gateway_config(&db, issuer_addr, &opts);
        let (gw, gw_stop, gw_task) = start_gateway(gw_config.clone(), policy.clone());
        let s = Stack {
            db,
            gw_config,
            admin,
            policy,
            gw,
            issuer_addr,
            issuer_stop: Some(issuer_stop),
            issuer_task: Some(issuer_task),
            gw_stop: Some(gw_stop),
            gw_task: Some(gw_task),
            _issuer_log: issuer_log,
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&self) {
        let c = self.anon();
        // Up to 30 s: returns at the first ready answer; only a gateway that never
        // becomes ready fails (a slow machine must not).
        for _ in 0..600 {
            if let Ok(r) = c.get(self.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not become ready");
    }

    /// Stops the gateway through its shutdown future (its mail worker included) and
    /// starts a new one on the same database and issuer, on a new port.
    pub async fn restart_gateway(&mut self) {
        if let Some(tx) = self.gw_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.gw_task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("the gateway stops")
                .expect("the gateway task ends cleanly");
        }
        let (gw, stop, task) = start_gateway(self.gw_config.clone(), self.policy.clone());
        self.gw = gw;
        self.gw_stop = Some(stop);
        self.gw_task = Some(task);
        self.wait_ready().await;
    }

    /// Starts a new gateway (as [`Stack::restart_gateway`]) without waiting for it to
    /// be ready (its issuer may be down).
    pub async fn restart_gateway_unready(&mut self) {
        if let Some(tx) = self.gw_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.gw_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        let (gw, stop, task) = start_gateway(self.gw_config.clone(), self.policy.clone());
        self.gw = gw;
        self.gw_stop = Some(stop);
        self.gw_task = Some(task);
    }

    /// Another issuer server (on the shared token) and a gateway over it, on this
    /// stack's database: the second half of a two-issuer, two-gateway deployment
    /// (RELIABILITY.md R1, R13). Stop it with [`Pair::stop`].
    pub async fn start_pair(&self) -> Pair {
        let log = tempfile::tempdir().expect("tempdir");
        let il = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let issuer_addr = il.local_addr().expect("addr");
        let (issuer_stop, issuer_task) = start_issuer(il, log.path()).await;
        let mut cfg = self.gw_config.clone();
        cfg.issuer.url = format!("https://localhost:{}", issuer_addr.port());
        let (gw, gw_stop, gw_task) = start_gateway(cfg, self.policy.clone());
        let c = self.anon();
        let mut ready = false;
        // Up to 30 s, as `wait_ready`.
        for _ in 0..600 {
            if let Ok(r) = c.get(format!("{gw}/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "the second gateway did not become ready");
        Pair {
            gw,
            stops: vec![gw_stop, issuer_stop],
            tasks: vec![gw_task, issuer_task],
            _log: log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.gw, path)
    }

    /// A gateway-side client of this stack's issuer (the gateway's certificate).
    pub fn gateway_issuer_client(
        &self,
        metrics: Arc<alga_gateway::metrics::Metrics>,
    ) -> alga_gateway::issuer_client::IssuerClient {
        gateway_issuer_client_at(&self.issuer_url(), metrics)
    }

    /// The directory of this stack's issuer signing log.
    pub fn issuer_log_dir(&self) -> &std::path::Path {
        self._issuer_log.path()
    }

    /// The claims of a license JWT, verified (ES256, audience) against the JWKS the
    /// gateway publishes.
    pub async fn license_claims(&self, token: &str) -> Value {
        let (_, jwks, _) = send(self.anon().get(self.url("/.well-known/jwks.json"))).await;
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let jwk = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| Some(k["kid"].as_str().unwrap_or_default()) == header.kid.as_deref())
            .expect("kid published");
        let key = jsonwebtoken::DecodingKey::from_ec_components(
            jwk["x"].as_str().expect("x"),
            jwk["y"].as_str().expect("y"),
        )
        .expect("jwk");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["alga-appliance"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .expect("license verifies")
            .claims
    }

    /// Stops the issuer (the gateway keeps running).
    pub async fn stop_issuer(&mut self) {
        if let Some(tx) = self.issuer_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.issuer_task.take() {
            let _ = t.await;
        }
    }

    /// Starts the issuer again on its old port.
    pub async fn restart_issuer(&mut self) {
        let mut listener = None;
        for _ in 0..50 {
            match std::net::TcpListener::bind(self.issuer_addr) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let (tx, task) = start_issuer(
            listener.expect("issuer port free again"),
            self._issuer_log.path(),
        )
        .await;
        self.issuer_stop = Some(tx);
        self.issuer_task = Some(task);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Stops everything and drops the database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.gw_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.gw_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.stop_issuer().await;
        let admin = connect(&admin_config("alga")).await;
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .await;
    }

    // -- clients ----------------------------------------------------------------

    fn client(
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dev().path("ALGA_CA_BUNDLE")).expect("CA bundle") {
            roots.add(c.expect("cert")).expect("root");
        }
        let b = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let tls = match identity {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("client cert"),
            None => b.with_no_client_auth(),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    fn pem_identity(
        cert: &str,
        key: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        (chain, key)
    }

    fn file_identity(cert_var: &str, key_var: &str) -> reqwest::Client {
        let cert = std::fs::read_to_string(dev().path(cert_var)).expect("cert file");
        let key = std::fs::read_to_string(dev().path(key_var)).expect("key file");
        Self::client(Some(Self::pem_identity(&cert, &key)))
    }

    /// A client whose certificate the test makes: signed by the dev service CA (or
    /// self-signed), with the given URI SANs, clientAuth EKU or not, and CN.
    pub fn forged(
        &self,
        uris: &[&str],
        client_auth: bool,
        cn: &str,
        self_signed: bool,
    ) -> reqwest::Client {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("ia5")))
            .collect();
        if client_auth {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = if self_signed {
            params.self_signed(&key).expect("self-signed")
        } else {
            let ca_key = rcgen::KeyPair::from_pem(
                &std::fs::read_to_string(format!(
                    "{}/pki/service-ca.key",
                    dev().var("ALGA_DEV_DIR")
                ))
                .expect("CA key"),
            )
            .expect("CA key parses");
            let ca_pem = std::fs::read_to_string(dev().path("ALGA_CA_BUNDLE")).expect("CA cert");
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
            params.signed_by(&key, &issuer).expect("signed")
        };
        Self::client(Some(Self::pem_identity(&cert.pem(), &key.serialize_pem())))
    }

    pub fn anon(&self) -> reqwest::Client {
        Self::client(None)
    }

    pub fn store(&self) -> reqwest::Client {
        Self::file_identity("ALGA_STORE_CERT", "ALGA_STORE_KEY")
    }

    pub fn auditor(&self) -> reqwest::Client {
        Self::file_identity("ALGA_AUDITOR_CERT", "ALGA_AUDITOR_KEY")
    }

    /// The gateway's own client identity (valid service cert, but not a gateway client).
    pub fn gateway_identity(&self) -> reqwest::Client {
        Self::file_identity("ALGA_GATEWAY_CLIENT_CERT", "ALGA_GATEWAY_CLIENT_KEY")
    }

    /// A client presenting an appliance credential.
    pub fn appliance(&self, a: &Appliance) -> reqwest::Client {
        let cert = a
            .certificate
            .as_ref()
            .expect("paid appliance has a credential");
        let full = format!("{}\n{}", cert, a.chain.as_deref().unwrap_or(""));
        Self::client(Some(Self::pem_identity(&full, &a.key_pem)))
    }

    // -- flows ------------------------------------------------------------------

    /// Registers a tenant; returns the 201 body.
    pub async fn register(&self, company: &str, email: &str, edition: &str) -> Value {
        let (s, v, _) = send(
            self.store()
                .post(self.url("/register-tenant"))
                .json(&json!({
                    "company": company,
                    "contact": {"name": "Ada Lovelace", "email": email},
                    "edition": edition,
                })),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// The stored binding of a code.
    pub async fn binding(&self, code_id: &str) -> CodeBinding {
        let row = self
            .admin
            .query_one(
                "SELECT tenant_id, edition, expires_at, key_version, replaces_appliance_id \
                 FROM install_codes WHERE code_id = $1",
                &[&code_id],
            )
            .await
            .expect("code row");
        let kv: i32 = row.get(3);
        CodeBinding {
            code_id: alga_protocol::CodeId::parse(code_id).expect("code id"),
            tenant_id: row.get(0),
            edition: row.get(1),
            expires_at: row.get(2),
            key_version: u32::try_from(kv).expect("version"),
            replaces_appliance_id: row.get(4),
        }
    }

    /// A plain HTTP client with the gateway's certificate, for calling the issuer.
    pub fn issuer_client(&self) -> reqwest::Client {
        Self::file_identity("ALGA_GATEWAY_CLIENT_CERT", "ALGA_GATEWAY_CLIENT_KEY")
    }

    /// The base URL of this stack's issuer.
    pub fn issuer_url(&self) -> String {
        format!("https://localhost:{}", self.issuer_addr.port())
    }

    /// The install code of `code_id`, as the mail would carry it (re-derived by the issuer).
    pub async fn code(&self, code_id: &str) -> String {
        let binding = self.binding(code_id).await;
        let r: DeriveCodeResponse = self
            .issuer_client()
            .post(format!(
                "https://localhost:{}{}",
                self.issuer_addr.port(),
                ia::DERIVE_CODE
            ))
            .json(&DeriveCodeRequest { binding })
            .send()
            .await
            .expect("issuer answers")
            .json()
            .await
            .expect("derive response");
        r.code.expose().to_owned()
    }

    /// A credential for `a` signed by the issuer directly with a short lifetime (the
    /// gateway never asks for one), so that check-in sees it near its end, and recorded
    /// as the appliance's current credential, as the rotation that issued it would
    /// have.
    pub async fn short_credential(
        &self,
        tenant_id: Uuid,
        a: &Appliance,
        lifetime_seconds: u64,
    ) -> Appliance {
        let (short, signed) = self
            .unrecorded_credential(tenant_id, a, lifetime_seconds)
            .await;
        self.admin
            .execute(
                "UPDATE appliances SET credential_serial = $2, credential_expires_at = $3 \
                 WHERE appliance_id = $1",
                &[
                    &a.appliance_id.expect("redeemed"),
                    &signed.serial,
                    &signed.expires_at,
                ],
            )
            .await
            .expect("record the credential");
        short
    }

    /// A credential for `a` signed by the issuer directly (lifetime in seconds) and not
    /// recorded anywhere: a certificate of the appliance that was never its credential.
    /// Returns `a` with it, and what the issuer answered.
    pub async fn unrecorded_credential(
        &self,
        tenant_id: Uuid,
        a: &Appliance,
        lifetime_seconds: u64,
    ) -> (Appliance, ia::SignedCredential) {
        let r: ia::SignedCredential = self
            .issuer_client()
            .post(format!(
                "https://localhost:{}{}",
                self.issuer_addr.port(),
                ia::SIGN_CREDENTIAL
            ))
            .json(&ia::SignCredentialRequest {
                tenant_id,
                appliance_id: a.appliance_id.expect("redeemed"),
                edition: "pro".into(),
                csr_pem: a.csr_pem.clone(),
                lifetime_seconds: Some(lifetime_seconds),
            })
            .send()
            .await
            .expect("issuer answers")
            .json()
            .await
            .expect("credential");
        let mut short = a.clone();
        short.certificate = Some(r.certificate_pem.clone());
        short.chain = Some(r.chain_pem.clone());
        (short, r)
    }

    /// Mints a code at the issuer directly and stores its binding (for expiry tests).
    pub async fn mint_raw(
        &self,
        tenant_id: Uuid,
        edition: &str,
        expires_at: OffsetDateTime,
    ) -> (String, String) {
        let r: MintCodeResponse = self
            .issuer_client()
            .post(format!(
                "https://localhost:{}{}",
                self.issuer_addr.port(),
                ia::MINT_CODE
            ))
            .json(&MintCodeRequest {
                tenant_id,
                edition: edition.to_owned(),
                expires_at,
                replaces_appliance_id: None,
            })
            .send()
            .await
            .expect("issuer answers")
            .json()
            .await
            .expect("mint response");
        let b = r.binding;
        let kv = i32::try_from(b.key_version).expect("version");
        self.admin
            .execute(
                "INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version) VALUES ($1, $2, $3, $4, $5)",
                &[&b.code_id.as_str(), &b.tenant_id, &b.edition, &b.expires_at, &kv],
            )
            .await
            .expect("insert binding");
        (b.code_id.to_string(), r.code.expose().to_owned())
    }

    /// Registers a tenant and returns `(tenant_id, code_id, code)`.
    pub async fn tenant_with_code(&self, edition: &str) -> (Uuid, String, String) {
        let company = format!("Acme {}", Uuid::new_v4().simple());
        let v = self.register(&company, "ops@acme.test", edition).await;
        let tenant: Uuid = v["tenant_id"]
            .as_str()
            .expect("tenant_id")
            .parse()
            .expect("uuid");
        let code_id = v["install_code"]["code_id"]
            .as_str()
            .expect("code_id")
            .to_owned();
        let code = self.code(&code_id).await;
        (tenant, code_id, code)
    }

    /// Redeems `code` with a fresh key; returns status, body and the appliance.
    pub async fn redeem(&self, code: &str) -> (StatusCode, Value, Appliance) {
        let a = Appliance::new();
        let (s, v) = self.redeem_as(code, &a).await;
        (s, v.clone(), a.with_response(&v))
    }

    /// Redeems `code` with `a`'s key.
    pub async fn redeem_as(&self, code: &str, a: &Appliance) -> (StatusCode, Value) {
        let (s, v, _) = send(
            self.anon()
                .post(self.url("/register"))
                .json(&redeem_body(a, code)),
        )
        .await;
        (s, v)
    }

    /// The gateway's configuration.
    pub fn gateway_config(&self) -> &alga_gateway::config::Config {
        &self.gw_config
    }

    /// A second superuser connection to the test database (for a transaction of its
    /// own beside `admin`, or a `&mut` client).
    pub async fn another_admin(&self) -> tokio_postgres::Client {
        connect(&admin_config(&self.db)).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.admin.query_one(sql, &[]).await.expect("count").get(0)
    }

    /// The appliance row's recorded credential: `(credential_serial, credential_expires_at)`.
    pub async fn stored_credential(
        &self,
        appliance_id: Uuid,
    ) -> (Option<String>, Option<time::OffsetDateTime>) {
        let row = self
            .admin
            .query_one(
                "SELECT credential_serial, credential_expires_at FROM appliances \
                 WHERE appliance_id = $1",
                &[&appliance_id],
            )
            .await
            .expect("appliance row");
        (row.get(0), row.get(1))
    }

    /// `POST /install-codes/reissue` as the store: status and body.
    pub async fn reissue(&self, body: &Value) -> (StatusCode, Value) {
        let (st, v, _) = send(
            self.store()
                .post(self.url("/install-codes/reissue"))
                .json(body),
        )
        .await;
        (st, v)
    }

    /// `GET /tenants/{tenant_id}` as the store; asserts 200.
    pub async fn tenant(&self, tenant_id: Uuid) -> Value {
        let (st, v, _) = send(self.store().get(self.url(&format!("/tenants/{tenant_id}")))).await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// `POST /check-in` with `a`'s credential: status and body.
    pub async fn check_in(&self, a: &Appliance) -> (StatusCode, Value) {
        let (st, v, _) = send(
            self.appliance(a)
                .post(self.url("/check-in"))
                .json(&json!({"appliance": {"version": "1.0.0"}})),
        )
        .await;
        (st, v)
    }

    /// A pool of superuser connections to the test database, for calling the gateway's
    /// `db` functions directly (with a `now` of the test's choosing).
    pub fn admin_pool(&self) -> deadpool_postgres::Pool {
        alga_gateway::db::pool(admin_config(&self.db), 2).expect("admin pool")
    }

    /// The state column of the code `code_id` (`unclaimed`, `consumed`, `revoked`).
    pub async fn code_state(&self, code_id: &str) -> String {
        self.admin
            .query_one(
                "SELECT state FROM install_codes WHERE code_id = $1",
                &[&code_id],
            )
            .await
            .expect("code row")
            .get(0)
    }

    /// Waits (at most 20 s) until the sequencer has chained every audit event, asserts
    /// it did, and returns how many records the chain holds.
    pub async fn wait_until_all_chained(&self) -> i64 {
        let mut chained = (0, 0);
        for _ in 0..200 {
            chained = (
                self.count("SELECT count(*) FROM audit_events").await,
                self.count("SELECT count(*) FROM audit_chain").await,
            );
            if chained.0 == chained.1 {
                return chained.1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            chained.0, chained.1,
            "every audit event chained within 20 s"
        );
        chained.1
    }
}

/// The body of `POST /register` (redeem) for `code` with the appliance's CSR.
pub fn redeem_body(a: &Appliance, code: &str) -> Value {
    json!({
        "install_code": code,
        "csr": a.csr_pem,
        "appliance": {"hostname": "appliance-1", "version": "1.0.0"},
    })
}

/// A second issuer and gateway started by [`Stack::start_pair`].
pub struct Pair {
    pub gw: String,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _log: tempfile::TempDir,
}

impl Pair {
    /// Stops the gateway, then the issuer (bounded).
    pub async fn stop(self) {
        for (tx, t) in self.stops.into_iter().zip(self.tasks) {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Sends, returns status, JSON body (or a JSON string of the text), headers.
pub async fn send(rb: reqwest::RequestBuilder) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = rb.send().await.expect("request sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    assert!(
        headers.contains_key("x-request-id"),
        "every response has x-request-id ({status})"
    );
    let text = resp.text().await.expect("body");
    if status.is_server_error() {
        // Diagnostics: the detail of a 5xx is in the log only.
        for line in captured_logs()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .rev()
            .take(3)
        {
            eprintln!("gateway log: {line}");
        }
    }
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, headers)
}

/// Asserts an error body with `code` and returns it.
pub fn assert_error(status: StatusCode, v: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "{v}");
    assert_eq!(v["error"]["code"], want_code, "{v}");
    assert!(
        v["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v}"
    );
}

/// An appliance: its own key (never leaves it), a CSR, and what redeeming gave it.
#[derive(Clone)]
pub struct Appliance {
    pub key_pem: String,
    pub csr_pem: String,
    pub certificate: Option<String>,
    pub chain: Option<String>,
    pub appliance_id: Option<Uuid>,
}

impl Appliance {
    pub fn new() -> Appliance {
        Appliance::with_alg(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// An appliance whose key is of another algorithm (the issuer refuses P-384).
    pub fn with_alg(alg: &'static rcgen::SignatureAlgorithm) -> Appliance {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        Appliance {
            key_pem: key.serialize_pem(),
            csr_pem: csr,
            certificate: None,
            chain: None,
            appliance_id: None,
        }
    }

    pub fn with_response(mut self, v: &Value) -> Appliance {
        self.certificate = v["credential"]["certificate"].as_str().map(str::to_owned);
        self.chain = v["credential"]["chain"].as_str().map(str::to_owned);
        self.appliance_id = v["appliance_id"].as_str().and_then(|s| s.parse().ok());
        self
    }
}

/// Waits for the mail to `recipient` whose code has `code_id` in the stack's mail
/// directory; returns the code found in it (decoding quoted-printable or base64 bodies
/// as needed).
pub async fn mailed_code(recipient: &str, code_id: &str) -> String {
    mailed_code_in(
        &PathBuf::from(dev().path("ALGA_MAIL_DIR")),
        recipient,
        code_id,
    )
    .await
}

/// [`mailed_code`] in `dir`.
pub async fn mailed_code_in(dir: &std::path::Path, recipient: &str, code_id: &str) -> String {
    for _ in 0..150 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let Ok(raw) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                if !raw.contains(recipient) {
                    continue;
                }
                if let Some(code) = find_code(&raw)
                    .into_iter()
                    .find(|c| c.replace('-', "").starts_with(code_id))
                {
                    return code;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no mail to {recipient} with code {code_id} in {}",
        dir.display()
    );
}

/// A test's own SMTP server: the stack's sink (`scripts/smtp_sink.py`, Debian's
/// aiosmtpd) on a free loopback port, storing one `.eml` per message in a temporary
/// directory. It can be stopped and started again on the same port without touching
/// other tests.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl SmtpSink {
    /// Starts a sink on a free port.
    pub async fn start() -> SmtpSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut sink = SmtpSink {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        sink.resume().await;
        sink
    }

    /// The directory messages land in (one `.eml` each).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Starts the sink again on its port and waits until it accepts connections.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the sink is running");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/smtp_sink.py");
        let maildir = self.dir();
        let child = std::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--maildir")
            .arg(&maildir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("/usr/bin/python3 with Debian's python3-aiosmtpd runs scripts/smtp_sink.py");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the SMTP sink exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the SMTP sink does not listen on {}", self.port);
    }

    /// Stops the sink: connections to its port are refused until [`SmtpSink::resume`].
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("port {} still accepts after the sink stopped", self.port);
    }

    /// The raw messages whose envelope recipient is `recipient`.
    pub fn messages_to(&self, recipient: &str) -> Vec<String> {
        let rcpt = format!("X-Alga-Sink-Rcpt-To: <{recipient}>");
        let mut names: Vec<_> = std::fs::read_dir(self.dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .filter(|raw| raw.lines().any(|l| l == rcpt))
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A header's value in a raw message (first occurrence, unfolded).
pub fn header(raw: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = raw.lines();
    while let Some(l) = lines.next() {
        if l.is_empty() {
            return None;
        }
        if l.to_ascii_lowercase().starts_with(&prefix) {
            let mut v = l[prefix.len()..].trim().to_owned();
            for cont in lines.by_ref() {
                if cont.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(cont.trim());
                } else {
                    break;
                }
            }
            return Some(v);
        }
    }
    None
}

/// The presigned link's `X-Amz-Signature` values in a raw message.
pub fn link_signatures(raw: &str) -> Vec<String> {
    let mut found = Vec::new();
    for t in decoded_texts(raw) {
        let mut rest = t.as_str();
        while let Some(i) = rest.find("X-Amz-Signature=") {
            rest = &rest[i + "X-Amz-Signature=".len()..];
            let sig: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            if sig.len() == 64 && !found.contains(&sig) {
                found.push(sig);
            }
        }
    }
    found
}

/// A raw message as is, quoted-printable decoded, and its base64 blocks decoded.
fn decoded_texts(raw: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut texts = vec![raw.to_owned()];
    // Quoted-printable: join soft breaks, decode =XX.
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let mut qp = String::new();
    let b = joined.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            qp.push(v as char);
            i += 3;
            continue;
        }
        qp.push(b[i] as char);
        i += 1;
    }
    texts.push(qp);
    // Base64 blocks: runs of lines made only of base64 characters.
    let mut block = String::new();
    for line in raw.lines().chain(std::iter::once("")) {
        let l = line.trim_end();
        if !l.is_empty()
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
        {
            block.push_str(l);
        } else {
            if block.len() >= 16
                && let Ok(d) = base64::engine::general_purpose::STANDARD.decode(&block)
            {
                texts.push(String::from_utf8_lossy(&d).into_owned());
            }
            block.clear();
        }
    }
    texts
}

/// Every install code in a raw message, whatever its transfer encoding.
fn find_code(raw: &str) -> Vec<String> {
    let texts = decoded_texts(raw);
    let is_sym = |c: u8| c.is_ascii_digit() || (c.is_ascii_uppercase() && !b"ILOU".contains(&c));
    let mut found = Vec::new();
    for t in texts {
        let t = t.as_bytes();
        for start in 0..t.len().saturating_sub(34) {
            let w = &t[start..start + 35];
            let ok = w
                .iter()
                .enumerate()
                .all(|(i, &c)| if i % 6 == 5 { c == b'-' } else { is_sym(c) });
            if ok {
                found.push(String::from_utf8_lossy(w).into_owned());
            }
        }
    }
    found
}

/// A gateway-side issuer client (the gateway's certificate) of the issuer at `url`.
pub fn gateway_issuer_client_at(
    url: &str,
    metrics: Arc<alga_gateway::metrics::Metrics>,
) -> alga_gateway::issuer_client::IssuerClient {
    let d = dev();
    alga_gateway::issuer_client::IssuerClient::new(
        url,
        std::path::Path::new(&d.path("ALGA_CA_BUNDLE")),
        std::path::Path::new(&d.path("ALGA_GATEWAY_CLIENT_CERT")),
        std::path::Path::new(&d.path("ALGA_GATEWAY_CLIENT_KEY")),
        metrics,
    )
    .expect("issuer client")
}

/// An anonymous client whose connections come from `source` (any 127/8 address).
pub fn client_from(source: std::net::IpAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dev().path("ALGA_CA_BUNDLE")).expect("CA bundle") {
        roots.add(c.expect("cert")).expect("root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .local_address(source)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A code with `code_id` (or a random id) and a random secret: well formed, wrong.
pub fn guess(code_id: Option<&str>) -> String {
    let mut mac = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut mac);
    let id = code_id.map_or_else(alga_protocol::CodeId::random, |c| {
        alga_protocol::CodeId::parse(c).expect("code id")
    });
    alga_protocol::InstallCode::from_mac(id, &mac)
        .expose_formatted()
        .to_string()
}
