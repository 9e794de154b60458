//! `alga-dev-s3`: the local dev/test stack's S3 server (dev only, never shipped).
//!
//! It is s3s-fs 0.14.1's own binary (`s3s-fs/src/main.rs`) reduced to what the stack
//! uses, built from the same library crates (`s3s`, `s3s-fs`): a directory served over
//! plain HTTP on a loopback address, path-style requests, SigV4 (headers or presigned
//! query) checked for exactly one access key. What differs is where the keys come from:
//! s3s-fs takes them only as command-line options, so its secret was visible to every
//! local user in `ps`. This binary has no option for a key at all:
//!
//! - `--credentials-file FILE`: `access_key_id=…` and `secret_access_key=…` lines (the
//!   format of the stack's `.dev/secrets/s3-credentials`, the file the gateway reads
//!   too); the file must be a regular file not readable by group or others (0600);
//! - else the environment: `ALGA_DEV_S3_ACCESS_KEY_ID` and `ALGA_DEV_S3_SECRET_ACCESS_KEY`
//!   (readable only by the same user and root, in `/proc/<pid>/environ`).
//!
//! Without credentials it refuses to start: it never serves anonymously. It binds only
//! loopback addresses. Nothing it prints names the secret, and an error about an argument
//! never repeats the argument's value (it could be a secret typed in the wrong place).
//!
//! Once it listens it prints one line on stdout:
//! `alga-dev-s3 <version>: listening on http://<addr>` (the port is the real one when
//! `--port 0` asked for any free port). Logs (`RUST_LOG`, default `info`) go to stdout.
//! SIGTERM or SIGINT stop it after the requests in flight (at most 5 s).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::{SecretKey, SimpleAuth};
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use zeroize::Zeroize;

const NAME: &str = env!("CARGO_PKG_NAME");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The environment variables read when no `--credentials-file` is given.
const ENV_ACCESS_KEY_ID: &str = "ALGA_DEV_S3_ACCESS_KEY_ID";
const ENV_SECRET_ACCESS_KEY: &str = "ALGA_DEV_S3_SECRET_ACCESS_KEY";

const USAGE: &str = "\
alga-dev-s3: the alga-license dev stack's S3 server (dev only).

Serves the buckets under DIR (one directory per bucket) on a loopback address, with
SigV4 authentication for one access key. The keys are never taken from the command line.

Usage: alga-dev-s3 --root DIR [--host ADDR] [--port PORT] [--credentials-file FILE]
       alga-dev-s3 --version | --help

Options:
  --root DIR               directory served (required; must exist)
  --host ADDR              loopback IP address to listen on (default 127.0.0.1)
  --port PORT              TCP port (default 9000; 0 picks a free one, printed on start)
  --credentials-file FILE  access_key_id=... and secret_access_key=... lines; the file
                           must not be readable by group or others (mode 0600)

Without --credentials-file the keys come from the environment variables
ALGA_DEV_S3_ACCESS_KEY_ID and ALGA_DEV_S3_SECRET_ACCESS_KEY.
Logs go to stdout, filtered by RUST_LOG (default info).
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Help,
    Version,
    Serve(Opt),
}

#[derive(Debug, PartialEq, Eq)]
struct Opt {
    host: IpAddr,
    port: u16,
    root: PathBuf,
    credentials_file: Option<PathBuf>,
}

/// The one key pair served; the secret is zeroized when dropped (s3s's `SecretKey`).
struct Credentials {
    access_key_id: String,
    secret: SecretKey,
}

/// The name of an option as typed, without any `=value` part (which is never shown).
fn option_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(name, _)| name)
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Action> {
    let mut host: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut root: Option<PathBuf> = None;
    let mut credentials_file: Option<PathBuf> = None;
    let mut args = args.into_iter().enumerate();
    while let Some((position, arg)) = args.next() {
        let Some(arg) = arg.to_str().map(str::to_owned) else {
            bail!("argument {position} is not valid UTF-8");
        };
        if !arg.starts_with("--") {
            bail!("unexpected argument {position} (see --help; values are not repeated here)");
        }
        let name = option_name(&arg).to_owned();
        let inline = arg.split_once('=').map(|(_, v)| OsString::from(v));
        let mut value = |what: &str| -> Result<OsString> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args
                    .next()
                    .map(|(_, v)| v)
                    .with_context(|| format!("{name} needs {what}")),
            }
        };
        match name.as_str() {
            "--help" | "-h" => return Ok(Action::Help),
            "--version" | "-V" => return Ok(Action::Version),
            "--host" => {
                let v = value("an IP address")?;
                let ip: IpAddr = v
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .context("--host needs an IP address literal (such as 127.0.0.1)")?;
                ensure!(
                    ip.is_loopback(),
                    "--host {ip} is not a loopback address: this dev server listens on loopback only"
                );
                host = Some(ip);
            }
            "--port" => {
                let v = value("a port number")?;
                port = Some(
                    v.to_str()
                        .and_then(|s| s.parse().ok())
                        .context("--port needs a number from 0 to 65535")?,
                );
            }
            "--root" => root = Some(PathBuf::from(value("a directory")?)),
            "--credentials-file" => credentials_file = Some(PathBuf::from(value("a file")?)),
            "--access-key" | "--secret-key" | "--access-key-id" | "--secret-access-key" => bail!(
                "{name}: keys are never taken on the command line (every local user could read \
                 them in `ps`); use --credentials-file or {ENV_ACCESS_KEY_ID} and \
                 {ENV_SECRET_ACCESS_KEY}"
            ),
            _ => bail!("unknown option {name} (see --help)"),
        }
    }
    Ok(Action::Serve(Opt {
        host: host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port: port.unwrap_or(9000),
        root: root.context("--root DIR is required (see --help)")?,
        credentials_file,
    }))
}

/// Parses `access_key_id=` / `secret_access_key=` lines; blank lines and `#` comments are
/// skipped. A problem names the line and key, never a value.
fn parse_credentials(text: &str) -> Result<Credentials> {
    let mut access_key_id: Option<String> = None;
    let mut secret: Option<SecretKey> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected key=value", i + 1);
        };
        let value = value.trim();
        match key.trim() {
            "access_key_id" => access_key_id = Some(value.to_owned()),
            "secret_access_key" => secret = Some(SecretKey::from(value)),
            other => bail!(
                "line {}: unknown key {other:?} (only access_key_id and secret_access_key; \
                 session tokens are not supported)",
                i + 1
            ),
        }
    }
    let access_key_id = access_key_id.context("no access_key_id line")?;
    let secret = secret.context("no secret_access_key line")?;
    check_credentials(access_key_id, secret)
}

fn check_credentials(access_key_id: String, secret: SecretKey) -> Result<Credentials> {
    ensure!(
        !access_key_id.is_empty()
            && !access_key_id.contains(|c: char| c.is_whitespace() || c == '/'),
        "the access key id is empty or holds a space or '/'"
    );
    ensure!(
        !secret.expose().is_empty(),
        "the secret access key is empty"
    );
    Ok(Credentials {
        access_key_id,
        secret,
    })
}

/// Reads the credentials file, refusing one that group or others may read, or a
/// symbolic link (`O_NOFOLLOW`).
fn read_credentials_file(path: &Path) -> Result<Credentials> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening the credentials file {}", path.display()))?;
    let meta = file.metadata()?;
    ensure!(
        meta.is_file(),
        "the credentials file {} is not a regular file",
        path.display()
    );
    let mode = meta.mode() & 0o7777;
    ensure!(
        mode & 0o077 == 0,
        "the credentials file {} has mode {mode:04o}: it must not be readable by group or \
         others (chmod 0600)",
        path.display()
    );
    let mut text = String::new();
    let read = file.read_to_string(&mut text);
    let parsed = read
        .with_context(|| format!("reading the credentials file {}", path.display()))
        .and_then(|_| parse_credentials(&text))
        .with_context(|| format!("the credentials file {}", path.display()));
    text.zeroize();
    parsed
}

fn credentials_from_env(get: impl Fn(&str) -> Option<OsString>) -> Result<Option<Credentials>> {
    let (id, secret) = (get(ENV_ACCESS_KEY_ID), get(ENV_SECRET_ACCESS_KEY));
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => {
            let id = id
                .into_string()
                .map_err(|_| anyhow::anyhow!("{ENV_ACCESS_KEY_ID} is not valid UTF-8"))?;
            let secret = secret
                .into_string()
                .map_err(|_| anyhow::anyhow!("{ENV_SECRET_ACCESS_KEY} is not valid UTF-8"))?;
            check_credentials(id, SecretKey::from(secret)).map(Some)
        }
        _ => bail!("{ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY} must be set together"),
    }
}

fn load_credentials(opt: &Opt) -> Result<(Credentials, String)> {
    if let Some(path) = &opt.credentials_file {
        let c = read_credentials_file(path)?;
        return Ok((c, format!("the file {}", path.display())));
    }
    match credentials_from_env(|k| std::env::var_os(k))? {
        Some(c) => Ok((c, "the environment".to_owned())),
        None => bail!(
            "no credentials: give --credentials-file FILE or set {ENV_ACCESS_KEY_ID} and \
             {ENV_SECRET_ACCESS_KEY} (this server never runs without authentication)"
        ),
    }
}

fn setup_tracing() {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // s3s logs the presented and expected signatures on a mismatch at debug level: keep
    // them out of the log whatever RUST_LOG says.
    if let Ok(cap) = "s3s::ops::signature=info".parse() {
        filter = filter.add_directive(cap);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
}

fn main() -> ExitCode {
    let action = match parse_args(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opt = match action {
        Action::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("{NAME} {VERSION}");
            return ExitCode::SUCCESS;
        }
        Action::Serve(opt) => opt,
    };
    setup_tracing();
    match run(opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(opt: Opt) -> Result<()> {
    let (credentials, source) = load_credentials(&opt)?;
    let root = opt.root.clone();
    ensure!(
        root.is_dir(),
        "--root {} is not a directory",
        root.display()
    );
    let fs =
        FileSystem::new(&root).map_err(|e| anyhow::anyhow!("serving {}: {e:?}", root.display()))?;

    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        let Credentials {
            access_key_id,
            secret,
        } = credentials;
        b.set_auth(SimpleAuth::from_single(access_key_id, secret));
        b.build()
    };

    let listener = TcpListener::bind(SocketAddr::new(opt.host, opt.port))
        .await
        .with_context(|| format!("listening on {}:{}", opt.host, opt.port))?;
    let local = listener.local_addr()?;
    info!(credentials.source = %source, root = %root.display(), "SigV4 authentication for one access key");
    // The line scripts and tests wait for (stdout is line-buffered).
    println!("{NAME} {VERSION}: listening on http://{local}");

    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let socket = tokio::select! {
            res = listener.accept() => match res {
                Ok((socket, _)) => socket,
                Err(err) => {
                    error!("accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_parse_with_defaults() {
        let a = parse_args(args(&["--root", "/srv", "--port=0"])).unwrap();
        assert_eq!(
            a,
            Action::Serve(Opt {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 0,
                root: PathBuf::from("/srv"),
                credentials_file: None,
            })
        );
        assert_eq!(parse_args(args(&["--version"])).unwrap(), Action::Version);
    }

    #[test]
    fn keys_on_the_command_line_are_refused_without_echoing_them() {
        for a in [
            &["--root", "/srv", "--secret-key", "s3cr3t-value"][..],
            &["--root", "/srv", "--secret-key=s3cr3t-value"][..],
            &["--root", "/srv", "--access-key", "id"][..],
            &["--root", "/srv", "s3cr3t-value"][..],
            &["--root", "/srv", "--bogus=s3cr3t-value"][..],
        ] {
            let err = format!("{:#}", parse_args(args(a)).unwrap_err());
            assert!(!err.contains("s3cr3t-value"), "{err}");
        }
    }

    #[test]
    fn only_loopback_hosts() {
        assert!(parse_args(args(&["--root", "/", "--host", "0.0.0.0"])).is_err());
        assert!(parse_args(args(&["--root", "/", "--host", "192.168.1.1"])).is_err());
        assert!(parse_args(args(&["--root", "/", "--host", "::1"])).is_ok());
        assert!(parse_args(args(&["--root", "/", "--host", "localhost"])).is_err());
    }

    #[test]
    fn credentials_file_format() {
        let c = parse_credentials("# dev\naccess_key_id=AK\n\nsecret_access_key=s/k+1\n").unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(c.secret.expose(), "s/k+1");
        for bad in [
            "access_key_id=AK\n",
            "secret_access_key=x\n",
            "access_key_id=AK\nsecret_access_key=\n",
            "access_key_id=AK\nsecret_access_key=x\nsession_token=t0k3n\n",
            "access_key_id=AK\nsecret_access_key x\n",
        ] {
            let err = format!("{:#}", parse_credentials(bad).err().expect(bad));
            assert!(!err.contains("t0k3n"), "{err}");
        }
    }

    #[test]
    fn credentials_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("alga-dev-s3-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("creds");
        std::fs::write(&f, "access_key_id=AK\nsecret_access_key=sk\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_credentials_file(&f).is_err());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_credentials_file(&f).unwrap().access_key_id, "AK");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_credentials_file(&link).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn environment_pair() {
        let none = credentials_from_env(|_| None).unwrap();
        assert!(none.is_none());
        let half = credentials_from_env(|k| (k == ENV_ACCESS_KEY_ID).then(|| "AK".into()));
        assert!(half.is_err());
        let both = credentials_from_env(|_| Some("v".into())).unwrap().unwrap();
        assert_eq!(both.secret.expose(), "v");
    }
}
