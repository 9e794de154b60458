//! `alga-audit witness`: an independent witness of the transparency log.
//!
//! - `init` makes the witness's Ed25519 key (a file, mode 0600, never printed).
//! - `poll` fetches the log's checkpoint and tiles (HTTP or a published directory),
//!   accepts only consistent growth and cosigns it (`alga_tlog::Witness::observe`).
//! - `serve` answers c2sp.org/tlog-witness `POST /add-checkpoint` for a log that
//!   pushes its checkpoints (`alga_tlog::Witness::add_checkpoint`).
//!
//! The witness key is read from its file only; it never appears in argv, output,
//! logs or errors.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alga_tlog::{TileFetch, TilePath, TlogError, Witness, WitnessKey};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use zeroize::Zeroizing;

use super::transparency::read_log_keys;

/// Largest checkpoint note accepted from a log (its signatures and a few dozen
/// cosignatures fit easily).
const MAX_CHECKPOINT: usize = 16 << 10;
/// Largest `add-checkpoint` request body (a note and at most 63 proof lines).
const MAX_REQUEST: usize = 64 << 10;
/// Connections `serve` handles at once.
const MAX_CONNECTIONS: usize = 64;

// `witness`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum WitnessCommand {
    /// Make a witness key: writes it to FILE (mode 0600, never overwritten), prints
    /// its public verifier key.
    Init {
        /// The witness's name (its cosignatures' key name), e.g. witness.example.com/w1.
        #[arg(long)]
        name: String,
        /// Where to write the private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Follow the log: fetch its checkpoint and tiles, accept and cosign consistent
    /// growth; on a fork or rollback say so, keep the state, exit 1 (--once).
    Poll(PollArgs),
    /// Answer c2sp.org/tlog-witness `POST /add-checkpoint` over plain HTTP/1.1.
    Serve {
        /// Address to listen on (loopback unless --public).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Allow a non-loopback --listen address (put TLS in front).
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        keys: WitnessKeys,
        /// The witness's state: the last cosigned checkpoint (created on first use).
        #[arg(long)]
        state: PathBuf,
    },
}

/// Runs a `witness` subcommand.
pub async fn run(command: &WitnessCommand) -> anyhow::Result<ExitCode> {
    match command {
        WitnessCommand::Init { name, key } => init(name, key),
        WitnessCommand::Poll(args) => poll(args).await,
        WitnessCommand::Serve {
            listen,
            public,
            keys,
            state,
        } => serve(*listen, *public, &keys.log_keys, &keys.key, state).await,
    }
}

// The files both `poll` and `serve` read.
#[derive(Args, Debug)]
pub struct WitnessKeys {
    /// The log's verifier keys, one per line (`GET /audit/log/vkey`).
    #[arg(long)]
    log_keys: PathBuf,
    /// The witness key (`witness init`).
    #[arg(long)]
    key: PathBuf,
}

// `witness poll`'s arguments (plain comments: a doc comment here would be clap's help).
#[derive(Args, Debug)]
pub struct PollArgs {
    /// The log: an https:// URL (the gateway's …/audit/log) or a directory written
    /// by `alga-audit publish`.
    #[arg(long)]
    log: String,
    #[command(flatten)]
    keys: WitnessKeys,
    /// The witness's state: the last accepted checkpoint (created on first use).
    #[arg(long)]
    state: PathBuf,
    /// Time between polls.
    #[arg(long, default_value = "30s")]
    interval: String,
    /// Poll once and exit.
    #[arg(long)]
    once: bool,
    /// PEM root certificate(s) of an https log's server (required for https).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Also write each accepted checkpoint, with this witness's cosignature
    /// appended, to DIR/<size>.
    #[arg(long)]
    cosignatures: Option<PathBuf>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `witness init --name NAME --key FILE`: writes a new key, prints its verifier key.
pub fn init(name: &str, key_path: &Path) -> anyhow::Result<ExitCode> {
    let key = WitnessKey::generate(name)?;
    let skey = key.to_skey();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} exists: refusing to overwrite a witness key (its cosignatures \
                     would no longer verify with the published verifier key)",
                    key_path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot create {}", key_path.display()))
            }
        })?;
    let mut contents = Zeroizing::new(Vec::with_capacity(skey.len() + 1));
    contents.extend_from_slice(skey.as_bytes());
    contents.push(b'\n');
    file.write_all(&contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    drop(file);
    let dir = match key_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot flush {}", dir.display()))?;
    println!("{}", key.vkey());
    eprintln!(
        "witness key written to {} (mode 0600, keep it secret); the verifier key above is \
         public: give it to the log's operator and to whoever checks cosignatures",
        key_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_witness_key(path: &Path) -> anyhow::Result<WitnessKey> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "alga-audit: warning: the witness key {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read witness key {}", path.display()))?,
    );
    WitnessKey::from_skey(&text).with_context(|| format!("witness key {}", path.display()))
}

/// The witness, and the origin of the log it follows.
fn open_witness(
    log_keys: &Path,
    key: &Path,
    state: &Path,
) -> anyhow::Result<(Arc<Witness>, String)> {
    let keys = read_log_keys(log_keys)?;
    let origin = keys.origin().to_owned();
    let key = read_witness_key(key)?;
    let witness = Witness::new(key, keys, state.to_path_buf());
    witness
        .state()
        .with_context(|| format!("witness state {}", state.display()))?;
    Ok((Arc::new(witness), origin))
}

/// Where the log is read from.
#[derive(Debug, Clone)]
enum LogSource {
    /// A directory written by `alga-audit publish`.
    Dir(PathBuf),
    /// `<base>/checkpoint` and `<base>/tile/…` over HTTP(S).
    Http {
        client: reqwest::Client,
        base: String,
    },
}

impl LogSource {
    fn new(log: &str, ca: Option<&Path>) -> anyhow::Result<LogSource> {
        let lower = log.to_ascii_lowercase();
        let https = lower.starts_with("https://");
        if !https && !lower.starts_with("http://") {
            if ca.is_some() {
                bail!("--ca applies to an https:// log, not a directory");
            }
            return Ok(LogSource::Dir(PathBuf::from(log)));
        }
        if https && ca.is_none() {
            bail!(
                "--log is an https URL: pass --ca FILE, the PEM root certificate(s) of the \
                 log's server certificate (this tool trusts no built-in or system roots)"
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read {}", ca.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing certificates {}", ca.display()))?;
            if certs.is_empty() {
                bail!("no certificate in {}", ca.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("adding {} to the trust store", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("alga-audit-witness/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(LogSource::Http {
            client,
            base: log.trim_end_matches('/').to_owned(),
        })
    }

    async fn checkpoint(&self) -> anyhow::Result<String> {
        let bytes = match self {
            LogSource::Dir(dir) => {
                let path = dir.join("checkpoint");
                let len = std::fs::metadata(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .len();
                if len > MAX_CHECKPOINT as u64 {
                    bail!("{}: larger than {MAX_CHECKPOINT} bytes", path.display());
                }
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
            }
            LogSource::Http { client, base } => {
                let url = format!("{base}/checkpoint");
                get_bounded(client, &url, MAX_CHECKPOINT)
                    .await
                    .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
            }
        };
        String::from_utf8(bytes).context("the log's checkpoint is not UTF-8")
    }
}

/// GETs `url`, refusing anything but 200 and bodies over `limit` bytes.
async fn get_bounded(client: &reqwest::Client, url: &str, limit: usize) -> Result<Vec<u8>, String> {
    let mut resp = client.get(url).send().await.map_err(|e| chain(&e))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("larger than {limit} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e))? {
        if out.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Tiles over HTTP, for the synchronous [`TileFetch`]: runs on a blocking thread
/// (`spawn_blocking`) and waits for each request on the runtime.
struct HttpFetch {
    client: reqwest::Client,
    base: String,
    runtime: tokio::runtime::Handle,
}

impl TileFetch for HttpFetch {
    fn fetch(&self, path: &TilePath) -> Result<Vec<u8>, TlogError> {
        // Exactly this many bytes: 32 per hash, 2 + 32 per entry.
        let limit = path.width * if path.level.is_some() { 32 } else { 34 };
        let url = format!("{}/{path}", self.base);
        self.runtime
            .block_on(get_bounded(&self.client, &url, limit))
            .map_err(|detail| TlogError::Tile {
                path: path.to_string(),
                detail,
            })
    }
}

/// One poll's outcome.
enum Polled {
    Accepted,
    Unchanged,
    /// The log offered a checkpoint the witness must not cosign (exit 1 with `--once`).
    Refused,
}

/// `witness poll`.
pub async fn poll(args: &PollArgs) -> anyhow::Result<ExitCode> {
    let (witness, _) = open_witness(&args.keys.log_keys, &args.keys.key, &args.state)?;
    let source = LogSource::new(&args.log, args.ca.as_deref())?;
    let interval = alga_policies::parse_duration(&args.interval)
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--interval {:?}: a duration such as 30s", args.interval))?;
    if let Some(dir) = &args.cosignatures {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    loop {
        let outcome = poll_once(&witness, &source, args.cosignatures.as_deref()).await;
        match outcome {
            Ok(Polled::Accepted | Polled::Unchanged) if args.once => {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Polled::Refused) if args.once => return Ok(ExitCode::from(1)),
            Err(e) if args.once => return Err(e),
            Err(e) => eprintln!("{} alga-audit: poll failed: {e:#}", timestamp()),
            Ok(_) => {}
        }
        std::io::stdout().flush()?;
        tokio::select! {
            () = shutdown() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn poll_once(
    witness: &Arc<Witness>,
    source: &LogSource,
    cosignatures: Option<&Path>,
) -> anyhow::Result<Polled> {
    let note = source.checkpoint().await?;
    let now = unix_now();
    let (w, s, offered) = (witness.clone(), source.clone(), note.clone());
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || match s {
        LogSource::Dir(root) => w.observe(&offered, &alga_tlog::DirFetch { root }, now),
        LogSource::Http { client, base } => w.observe(
            &offered,
            &HttpFetch {
                client,
                base,
                runtime,
            },
            now,
        ),
    })
    .await
    .context("the witness step stopped")?;
    match result {
        Ok(accepted) if accepted.previous_size == accepted.checkpoint.size => {
            tracing::debug!(size = accepted.previous_size, "the log's size is unchanged");
            Ok(Polled::Unchanged)
        }
        Ok(accepted) => {
            let size = accepted.checkpoint.size;
            println!("accepted size {size} (was {})", accepted.previous_size);
            print!("{}", accepted.cosignature);
            if let Some(dir) = cosignatures {
                let mut cosigned = accepted.checkpoint.note.clone();
                if !cosigned.ends_with('\n') {
                    cosigned.push('\n');
                }
                cosigned.push_str(&accepted.cosignature);
                let path = dir.join(size.to_string());
                alga_tlog::witness::write_atomically(&path, cosigned.as_bytes())?;
            }
            Ok(Polled::Accepted)
        }
        Err(TlogError::Fork { old_size, new_size }) => {
            eprintln!(
                "{} FORK: the log's checkpoint of size {new_size} is not consistent with the \
                 checkpoint of size {old_size} this witness accepted. Not cosigned; the state \
                 is unchanged. Keep both notes as evidence (the accepted one is in the state \
                 file); the one offered:\n{note}",
                timestamp()
            );
            Ok(Polled::Refused)
        }
        Err(TlogError::Rollback { old_size, new_size }) => {
            eprintln!(
                "{} ROLLBACK: the log offers size {new_size} after this witness accepted size \
                 {old_size}. Not cosigned; the state is unchanged. The checkpoint offered:\n{note}",
                timestamp()
            );
            Ok(Polled::Refused)
        }
        Err(
            e @ (TlogError::Signature(_)
            | TlogError::Malformed { .. }
            | TlogError::Proof(_)
            | TlogError::BeyondTree(_)
            | TlogError::UnknownLog(_)),
        ) => {
            eprintln!(
                "{} REFUSED: the log's checkpoint: {e}. Not cosigned; the state is unchanged.",
                timestamp()
            );
            Ok(Polled::Refused)
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot check the log's checkpoint")),
    }
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// `witness serve`: c2sp.org/tlog-witness `add-checkpoint` over plain HTTP/1.1.
pub async fn serve(
    listen: SocketAddr,
    public: bool,
    log_keys: &Path,
    key: &Path,
    state: &Path,
) -> anyhow::Result<ExitCode> {
    if !listen.ip().is_loopback() && !public {
        bail!(
            "refusing to listen on {listen}: not a loopback address. This server speaks plain \
             HTTP; pass --public to accept checkpoints from the network (behind a TLS proxy)"
        );
    }
    let (witness, origin) = open_witness(log_keys, key, state)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!(
        "witness {} for {} listening on http://{addr}/add-checkpoint",
        witness.key().name(),
        origin
    );
    std::io::stdout().flush()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            p = permits.clone().acquire_owned() => p.context("connection limit")?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{} alga-audit: accept: {e}", timestamp());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let w = witness.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| add_checkpoint(w.clone(), peer, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "witness connection ended");
            }
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

async fn add_checkpoint(
    witness: Arc<Witness>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/add-checkpoint" {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    }
    if req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        resp.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    let too_large = || {
        eprintln!(
            "{} refused from {peer}: 413 a body over {MAX_REQUEST} bytes",
            timestamp()
        );
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_REQUEST} bytes\n"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST as u64) {
        return Ok(too_large());
    }
    let collected = tokio::time::timeout(
        Duration::from_secs(30),
        Limited::new(req.into_body(), MAX_REQUEST).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => {
            return Ok(text(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long\n",
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Ok(too_large()),
        Ok(Err(_)) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "the body could not be read\n",
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return Ok(text(StatusCode::BAD_REQUEST, "the body is not UTF-8\n"));
    };
    let now = unix_now();
    let w = witness.clone();
    let result = tokio::task::spawn_blocking(move || w.add_checkpoint(&body, now)).await;
    Ok(match result {
        Err(e) => {
            eprintln!("{} alga-audit: add-checkpoint stopped: {e}", timestamp());
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
        Ok(Ok(accepted)) => {
            println!(
                "{} accepted size {} (was {}) from {peer}",
                timestamp(),
                accepted.checkpoint.size,
                accepted.previous_size
            );
            let _ = std::io::stdout().flush();
            text(StatusCode::OK, accepted.cosignature)
        }
        Ok(Err(e)) => {
            let status = e.witness_status();
            eprintln!("{} refused from {peer}: {status} {e}", timestamp());
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match e {
                TlogError::Conflict { cosigned } => reply(
                    StatusCode::CONFLICT,
                    "text/x.tlog.size",
                    format!("{cosigned}\n"),
                ),
                // Local failures (the state file): details stay in the log.
                _ if status.is_server_error() => {
                    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
                other => text(status, format!("{other}\n")),
            }
        }
    })
}
