//! Real servers started by the tests, each on a free loopback port, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Test credentials of the S3 server (not secrets: they exist only for this process).
pub const S3_ACCESS_KEY: &str = "ALGATESTACCESSKEY";
pub const S3_SECRET_KEY: &str = "alga/test+secret/key";

/// A child process killed (by its own pid) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An alga-dev-s3 server (`devtools/s3`) over a temporary root directory.
pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    _child: ChildGuard,
}

impl S3Server {
    /// Starts `alga-dev-s3` on 127.0.0.1 with a bucket seeded with `objects` (key, bytes).
    pub fn start(bucket: &str, objects: &[(&str, &[u8])]) -> Result<S3Server> {
        let bin = dev_s3_bin()?;
        let root = tempfile::tempdir()?;
        for (key, bytes) in objects {
            let path = root.path().join(bucket).join(key);
            std::fs::create_dir_all(path.parent().context("object path has a parent")?)?;
            std::fs::write(&path, bytes)?;
        }
        std::fs::create_dir_all(root.path().join(bucket))?;
        // alga-dev-s3 never takes keys as arguments: these throwaway test credentials of
        // this one process go through its environment.
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0", "--root"])
            .arg(root.path())
            .env("ALGA_DEV_S3_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("ALGA_DEV_S3_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting alga-dev-s3")?;
        let stdout = child.stdout.take().context("alga-dev-s3 stdout")?;
        let guard = ChildGuard(child);
        // alga-dev-s3 prints "… listening on http://127.0.0.1:<port>" once it listens.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = tx.send(port.parse::<u16>().ok());
                    sent = true;
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .context("alga-dev-s3 did not report its port within 20 s")?
            .context("alga-dev-s3 reported an unparsable port")?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(S3Server {
            port,
            root,
            _child: guard,
        })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// An HTTP client for plain-HTTP test servers. reqwest is built without a rustls
/// provider of its own; the process-wide one is ring (never aws-lc-rs).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {limit:?}")
}

/// A port that was free a moment ago (for servers that cannot report their own).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The alga-dev-s3 that `make deps` builds from `devtools/s3` (`ALGA_DEV_S3_BIN` in
/// `.dev/env`), else one on PATH.
fn dev_s3_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ALGA_DEV_S3_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.is_file(),
            "ALGA_DEV_S3_BIN names {}, which is not a file: run `make deps`",
            bin.display()
        );
        return Ok(bin);
    }
    which("alga-dev-s3").context(
        "alga-dev-s3 is neither in ALGA_DEV_S3_BIN nor on PATH: run `make deps` and load \
         .dev/env (it builds devtools/s3 with cargo install --path --locked)",
    )
}

/// The path of an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// How the test SMTP server protects its connections.
#[derive(Clone, Copy)]
pub enum SmtpTls<'a> {
    /// Plain SMTP.
    None,
    /// STARTTLS offered and required (aiosmtpd's `--tlscert`), with this cert and key.
    Starttls(&'a Path, &'a Path),
    /// Implicit TLS (aiosmtpd's `--smtpscert`).
    Implicit(&'a Path, &'a Path),
    /// STARTTLS and AUTH required: cert, key, user, password file.
    StarttlsAuth(&'a Path, &'a Path, &'a str, &'a Path),
}

/// Debian's aiosmtpd with the recording handler of `smtp_recorder.py`.
pub struct SmtpServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _child: ChildGuard,
}

impl SmtpServer {
    pub fn start(tls: SmtpTls<'_>) -> Result<SmtpServer> {
        let python = Path::new("/usr/bin/python3");
        let check = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .context("running /usr/bin/python3")?;
        if !check.success() {
            bail!("aiosmtpd is missing: apt-get install python3-aiosmtpd");
        }
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it");
        let mut cmd = Command::new(python);
        if let SmtpTls::StarttlsAuth(cert, key, user, password_file) = tls {
            cmd.arg(format!("{here}/smtp_recorder.py"))
                .args(["127.0.0.1", &port.to_string()])
                .arg(dir.path())
                .args([cert, key])
                .arg(user)
                .arg(password_file);
        } else {
            cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        }
        match tls {
            SmtpTls::None | SmtpTls::StarttlsAuth(..) => {}
            SmtpTls::Starttls(cert, key) => {
                cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
            }
            SmtpTls::Implicit(cert, key) => {
                cmd.arg("--smtpscert").arg(cert).arg("--smtpskey").arg(key);
            }
        }
        if !matches!(tls, SmtpTls::StarttlsAuth(..)) {
            cmd.args(["-c", "smtp_recorder.Recorder"]).arg(dir.path());
        }
        let child = cmd
            .env("PYTHONPATH", here)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting aiosmtpd")?;
        let mut guard = ChildGuard(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = guard.0.try_wait()? {
                bail!("aiosmtpd exited before listening: {status}");
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("aiosmtpd does not listen on 127.0.0.1:{port} after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(SmtpServer {
            port,
            dir,
            _child: guard,
        })
    }

    /// How many messages were received so far.
    pub fn count(&self) -> Result<usize> {
        Ok(std::fs::read_dir(self.dir.path())?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count())
    }

    /// The `n`-th message received (1-based; the recorder numbers its files).
    pub fn message(&self, n: usize) -> Result<serde_json::Value> {
        let path = self.dir.path().join(format!("{n:06}.json"));
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }

    /// Every message received so far, in arrival order (the recorder's JSON records).
    pub fn messages(&self) -> Result<Vec<serde_json::Value>> {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| Ok(serde_json::from_slice(&std::fs::read(p)?)?))
            .collect()
    }
}
