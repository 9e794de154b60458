//! The gateway's configuration file (TOML, `deny_unknown_fields`), parsed at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use alga_protocol::config_file::{ConfigError, read_secret_file};

/// The whole configuration (see `config/dev/gateway.toml.in`, every key commented).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    pub issuer: IssuerConfig,
    pub smtp: SmtpConfig,
    /// Delivery of the outbox (optional section: every key has a default).
    #[serde(default)]
    pub mail: MailConfig,
    pub s3: S3Config,
    pub policy: PolicyConfig,
    /// Connection limits and timeouts of the listeners (optional section: every key
    /// has a default).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The operations listener (plain HTTP: `/healthz`, `/readyz`, `/metrics`,
    /// `/openapi.json`). Absent: the API port serves them, as before; present: the API
    /// port stops serving `/readyz` and `/metrics`.
    #[serde(default)]
    pub ops: Option<OpsConfig>,
    /// Witnesses the sequencer's leader submits each audit log checkpoint to
    /// (c2sp.org/tlog-witness); their cosignatures are served with the checkpoint.
    /// None: checkpoints are served with the log's signature only.
    #[serde(default)]
    pub witnesses: Vec<WitnessConfig>,
    /// Endpoints the leading gateway delivers the event feed to, signed (see
    /// `crate::webhooks`). None: the feed is only read through `GET /events`.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// A webhook endpoint (`[[webhooks]]`): every event of the feed is POSTed to `url`,
/// signed with the secret in `secret_file`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (or `http://` on a private network). It also names the endpoint's
    /// outbox and feed position in the database: changing it starts a new endpoint from
    /// the start of the feed. No user or password in it (it is logged and stored).
    pub url: String,
    /// The HMAC-SHA256 signing secret shared with the receiver, read at start-up
    /// (surrounding whitespace trimmed), never logged. At least 32 bytes.
    pub secret_file: PathBuf,
    /// CA bundle (PEM) for an `https` URL; absent: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// First retry delay after a failed delivery, in seconds; each further failure of
    /// the same event doubles it, up to `retry_max_secs`, with jitter (half to all of
    /// it).
    #[serde(default = "WebhookConfig::default_retry_initial")]
    pub retry_initial_secs: f64,
    /// Longest retry delay, in seconds. An event is retried until it is delivered.
    #[serde(default = "WebhookConfig::default_retry_max")]
    pub retry_max_secs: f64,
    /// Longest wait for the receiver's answer to one delivery, in seconds.
    #[serde(default = "WebhookConfig::default_timeout")]
    pub timeout_secs: f64,
}

impl WebhookConfig {
    /// Shortest accepted secret, in bytes.
    pub const MIN_SECRET_LEN: usize = 32;

    fn default_retry_initial() -> f64 {
        5.0
    }
    fn default_retry_max() -> f64 {
        600.0
    }
    fn default_timeout() -> f64 {
        10.0
    }

    fn validate(&self) -> Result<(), String> {
        let url =
            url::Url::parse(&self.url).map_err(|e| format!("webhooks: url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(format!(
                "webhooks: url {:?} must be https or http",
                self.url
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("webhooks: a url must not hold a user or password".into());
        }
        let ok = |v: f64, max: f64| v.is_finite() && v > 0.0 && v <= max;
        if !ok(self.retry_initial_secs, 86_400.0) || !ok(self.retry_max_secs, 86_400.0) {
            return Err("webhooks: retry_initial_secs and retry_max_secs must be more than 0 and at most 86400".into());
        }
        if self.retry_max_secs < self.retry_initial_secs {
            return Err("webhooks: retry_max_secs must be >= retry_initial_secs".into());
        }
        if !ok(self.timeout_secs, 300.0) {
            return Err("webhooks: timeout_secs must be more than 0 and at most 300".into());
        }
        Ok(())
    }
}

/// A witness of the audit log (`[[witnesses]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Its submission prefix: `add-checkpoint` is POSTed to `<url>/add-checkpoint`.
    pub url: String,
    /// Its cosignature verifier key (`<name>+<key id>+<base64(0x04 ‖ key)>`).
    pub vkey: String,
    /// CA bundle (PEM) for an `https` URL.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Socket address of the HTTPS API.
    pub address: SocketAddr,
    /// Public base URL (the base of `check_in_url`).
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CA of the service client identities (store, auditor).
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Runtime connection (least-privileged role), without password.
    pub url: String,
    pub password_file: Option<PathBuf>,
    /// Schema owner's connection, used only by `migrate`.
    pub migrator_url: String,
    pub migrator_password_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Connections opened before the gateway listens and kept open (re-opened within
    /// [`crate::db::POOL_KEEPER_INTERVAL`] when Postgres drops them), so a burst after a
    /// start or a database restart does not open the whole pool at once. At most
    /// `pool_size`; default [`DatabaseConfig::DEFAULT_MIN_CONNECTIONS`] or `pool_size`
    /// if smaller. Read it through [`DatabaseConfig::min_connections`].
    #[serde(default)]
    pub min_connections: Option<usize>,
}

fn default_pool_size() -> usize {
    16
}

impl DatabaseConfig {
    /// `min_connections` when the file does not set it (capped at `pool_size`).
    pub const DEFAULT_MIN_CONNECTIONS: usize = 4;

    /// Connections the gateway keeps open at least.
    pub fn min_connections(&self) -> usize {
        self.min_connections
            .unwrap_or(Self::DEFAULT_MIN_CONNECTIONS.min(self.pool_size))
    }

    fn validate(&self) -> Result<(), String> {
        if self.pool_size == 0 {
            return Err("database.pool_size must be at least 1".into());
        }
        if self.min_connections() > self.pool_size {
            return Err(format!(
                "database.min_connections ({}) must be at most database.pool_size ({})",
                self.min_connections(),
                self.pool_size
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub url: String,
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// The `[smtp]` table is `alga_delivery`'s, the crate that owns mail: its keys, their
/// defaults and their checks (`from` is parsed here, at start-up) are defined there once.
pub use alga_delivery::{S3Config, SmtpConfig, SmtpSecurity};

/// How the outbox delivers: the first attempt inside the request, then retries with
/// exponential backoff until the budget is spent and the mail is marked failed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Attempts per mail, the first one (inside the request) included, before it is
    /// marked failed (audited `mail.failed`, counted, shown by `GET /tenants/{id}`).
    pub max_attempts: u32,
    /// Delay after the first failed attempt, in seconds; it doubles per attempt.
    pub retry_initial_secs: f64,
    /// Longest delay between two attempts, in seconds.
    pub retry_max_secs: f64,
    /// Bound of the first attempt inside `POST /register-tenant` and
    /// `POST /install-codes/reissue`, in seconds (code derivation + SMTP). `0` skips
    /// it: every mail goes through the worker and the response says `queued`.
    pub first_attempt_timeout_secs: f64,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            max_attempts: 8,
            retry_initial_secs: 30.0,
            retry_max_secs: 3600.0,
            first_attempt_timeout_secs: 4.0,
        }
    }
}

impl MailConfig {
    /// Longest accepted first-attempt bound: it delays the store's response.
    pub const MAX_FIRST_ATTEMPT_SECS: f64 = 30.0;

    fn validate(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err("mail.max_attempts must be 1 to 1000".into());
        }
        if !positive(self.retry_initial_secs) || !positive(self.retry_max_secs) {
            return Err("mail.retry_initial_secs and mail.retry_max_secs must be > 0".into());
        }
        if self.retry_max_secs < self.retry_initial_secs {
            return Err("mail.retry_max_secs must be >= mail.retry_initial_secs".into());
        }
        if !(self.first_attempt_timeout_secs.is_finite()
            && (0.0..=Self::MAX_FIRST_ATTEMPT_SECS).contains(&self.first_attempt_timeout_secs))
        {
            return Err(format!(
                "mail.first_attempt_timeout_secs must be 0 to {}",
                Self::MAX_FIRST_ATTEMPT_SECS
            ));
        }
        Ok(())
    }
}

/// How long the listeners wait for slow clients, and how many connections one source
/// may hold. Every timeout is in seconds, more than 0 and at most
/// [`LimitsConfig::MAX_SECS`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest TLS handshake, from the TCP accept.
    pub tls_handshake_timeout_secs: f64,
    /// Longest wait for a request's headers (HTTP/1.1), from the connection's start or
    /// the previous response (hyper's `header_read_timeout`).
    pub header_read_timeout_secs: f64,
    /// Longest wait for a request's whole body, from the end of its headers.
    pub body_read_timeout_secs: f64,
    /// A connection without a request in progress for this long is closed: an
    /// HTTP/1.1 keep-alive, an HTTP/2 connection without an open request, a TLS
    /// connection that never sends one. (HTTP/1.1 also waits at most
    /// `header_read_timeout_secs` for the next request's headers, so an idle HTTP/1.1
    /// connection is closed after the smaller of the two.)
    pub idle_timeout_secs: f64,
    /// HTTP/2: a ping after this long without a frame from the client ...
    pub http2_keep_alive_interval_secs: f64,
    /// ... and the connection is closed if its answer takes longer than this.
    pub http2_keep_alive_timeout_secs: f64,
    /// Concurrent connections on the API port from one source: an IPv4 address, or an
    /// IPv6 /64. Beyond it a connection is closed at once, before any TLS work, and
    /// counted in `alga_gateway_connections_refused_total{reason="per_source_limit"}`.
    /// `0`: no limit (behind a TCP proxy that hides client addresses).
    pub max_connections_per_source: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            tls_handshake_timeout_secs: 10.0,
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 30.0,
            idle_timeout_secs: 60.0,
            http2_keep_alive_interval_secs: 20.0,
            http2_keep_alive_timeout_secs: 10.0,
            max_connections_per_source: 256,
        }
    }
}

impl LimitsConfig {
    /// Longest accepted timeout, in seconds.
    pub const MAX_SECS: f64 = 3600.0;

    fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            (
                "tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
            ),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            (
                "http2_keep_alive_interval_secs",
                self.http2_keep_alive_interval_secs,
            ),
            (
                "http2_keep_alive_timeout_secs",
                self.http2_keep_alive_timeout_secs,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= Self::MAX_SECS) {
                return Err(format!(
                    "limits.{key} must be more than 0 and at most {}",
                    Self::MAX_SECS
                ));
            }
        }
        Ok(())
    }

    fn secs(v: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(v)
    }

    pub fn tls_handshake_timeout(&self) -> std::time::Duration {
        Self::secs(self.tls_handshake_timeout_secs)
    }

    pub fn header_read_timeout(&self) -> std::time::Duration {
        Self::secs(self.header_read_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> std::time::Duration {
        Self::secs(self.body_read_timeout_secs)
    }

    pub fn idle_timeout(&self) -> std::time::Duration {
        Self::secs(self.idle_timeout_secs)
    }

    pub fn http2_keep_alive_interval(&self) -> std::time::Duration {
        Self::secs(self.http2_keep_alive_interval_secs)
    }

    pub fn http2_keep_alive_timeout(&self) -> std::time::Duration {
        Self::secs(self.http2_keep_alive_timeout_secs)
    }
}

/// The operations listener: plain HTTP, no client authentication, meant for loopback
/// or a management network only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Socket address; default [`OpsConfig::DEFAULT_ADDRESS`].
    #[serde(default = "OpsConfig::default_address")]
    pub address: SocketAddr,
}

impl OpsConfig {
    /// Where the operations listener binds when `[ops]` names no address.
    pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9464";

    fn default_address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9464))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub path: PathBuf,
}

impl Config {
    /// Reads and parses the configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = alga_protocol::config_file::read_config_text(path)?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.database.validate()?;
        c.mail.validate()?;
        c.limits.validate()?;
        if c.s3.credentials_file.is_none() {
            // The delivery crate would fall back to AWS_* variables; a service reads
            // its secrets from files (systemd credentials), never its environment.
            return Err("s3.credentials_file is required".into());
        }
        for w in &c.webhooks {
            w.validate()?;
        }
        let mut urls: Vec<&str> = c.webhooks.iter().map(|w| w.url.as_str()).collect();
        urls.sort_unstable();
        if urls.windows(2).any(|p| p[0] == p[1]) {
            return Err("webhooks: each url may be configured once".into());
        }
        if let Some(ops) = &c.ops
            && ops.address.port() != 0
            && ops.address == c.listen.address
        {
            return Err("ops.address must differ from listen.address".into());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dev template with its `${ALGA_...}` placeholders filled in as stack.sh does.
    fn sample() -> String {
        include_str!("../../config/dev/gateway.toml.in")
            .replace("${ALGA_GATEWAY_PORT}", "8443")
            .replace("${ALGA_PG_PORT}", "55432")
            .replace("${ALGA_PG_DB}", "alga")
            .replace("${ALGA_SMTP_PORT}", "2525")
            .replace("${ALGA_S3_PORT}", "9000")
            .replace("${ALGA_ISSUER_PORT}", "9443")
            .replace("${ALGA_DEV_DIR}", "/dev-dir")
    }

    #[test]
    fn min_connections_defaults_to_4_or_the_pool_and_may_not_exceed_it() {
        let c = Config::parse(&sample()).expect("the dev template parses");
        assert_eq!(
            (c.database.pool_size, c.database.min_connections()),
            (16, 4)
        );
        let with = |line: &str| sample().replace("pool_size = 16", line);
        let c = Config::parse(&with("pool_size = 2")).expect("a small pool");
        assert_eq!(c.database.min_connections(), 2);
        let c = Config::parse(&with("pool_size = 16\nmin_connections = 16")).expect("equal");
        assert_eq!(c.database.min_connections(), 16);
        let c = Config::parse(&with("pool_size = 2\nmin_connections = 0")).expect("none");
        assert_eq!(c.database.min_connections(), 0);
        let e = Config::parse(&with("pool_size = 2\nmin_connections = 3")).expect_err("over");
        assert_eq!(
            e,
            "database.min_connections (3) must be at most database.pool_size (2)"
        );
        let e = Config::parse(&with("pool_size = 0\nmin_connections = 0")).expect_err("zero");
        assert_eq!(e, "database.pool_size must be at least 1");
    }

    #[test]
    fn dev_template_parses() {
        let c = Config::parse(&sample()).expect("the dev template parses");
        assert_eq!(c.smtp.security, SmtpSecurity::None);
        assert!(c.s3.path_style);
        // The template documents the [mail] keys commented out, at their defaults.
        let uncommented: String = include_str!("../../config/dev/gateway.toml.in")
            .lines()
            .skip_while(|l| *l != "# [mail]")
            .take_while(|l| !l.starts_with("[s3]"))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                *l == "[mail]"
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
            })
            .collect::<Vec<_>>()
            .join("\n");
        let mail: toml::Table = toml::from_str(&uncommented).expect("the [mail] sample parses");
        let mail: MailConfig = mail["mail"].clone().try_into().expect("valid [mail]");
        assert_eq!(mail, MailConfig::default());
        assert_eq!(c.mail, MailConfig::default());
    }

    #[test]
    fn smtp_table_is_deliverys_with_its_defaults_and_checks() {
        let c = Config::parse(&sample()).expect("the dev template parses");
        assert_eq!((c.smtp.host.as_str(), c.smtp.port), ("127.0.0.1", 2525));
        assert_eq!(c.smtp.from.address().as_str(), "licenses@alga.test");
        assert_eq!(
            (c.smtp.username, c.smtp.password_file, c.smtp.ca_file),
            (None, None, None)
        );
        assert_eq!(c.smtp.timeout, alga_delivery::mail::DEFAULT_SMTP_TIMEOUT);
        // `from` is checked when the file is read, not at the first mail.
        let from = "from = \"alga-license <licenses@alga.test>\"";
        assert!(sample().contains(from));
        for bad in [
            "from = \"a <a@b.test>\\r\\nBcc: c@d.test\"",
            "from = \"=?utf-8?q?x?= <a@b.test>\"",
            "from = \"not an address\"",
        ] {
            let err = Config::parse(&sample().replace(from, bad)).expect_err(bad);
            assert!(err.contains("from"), "{bad}: {err}");
        }
        let ssl = sample().replace("security = \"none\"", "security = \"ssl\"");
        let err = Config::parse(&ssl).expect_err("an unknown security");
        assert!(err.contains("ssl"), "{err}");
        let bogus = sample().replace("[smtp]", "[smtp]\nbogus = 1");
        let err = Config::parse(&bogus).expect_err("an unknown key");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn mail_keys_are_checked() {
        for (bad, key) in [
            ("max_attempts = 0", "max_attempts"),
            ("retry_initial_secs = 0", "retry_initial_secs"),
            (
                "retry_initial_secs = 10\nretry_max_secs = 5",
                "retry_max_secs",
            ),
            (
                "first_attempt_timeout_secs = 60",
                "first_attempt_timeout_secs",
            ),
        ] {
            let text = sample().replace("[s3]", &format!("[mail]\n{bad}\n[s3]"));
            let err = Config::parse(&text).expect_err(bad);
            assert!(err.contains(key), "{bad}: {err}");
        }
        let ok = sample().replace(
            "[s3]",
            "[mail]\nmax_attempts = 2\nretry_initial_secs = 0.2\n[s3]",
        );
        let c = Config::parse(&ok).expect("parses");
        assert_eq!(c.mail.max_attempts, 2);
        assert_eq!(c.mail.retry_initial_secs, 0.2);
    }

    #[test]
    fn webhooks_are_documented_at_their_defaults_and_checked() {
        for template in [
            include_str!("../../config/dev/gateway.toml.in"),
            include_str!("../../deploy/config/gateway.toml"),
        ] {
            let text: String = template
                .lines()
                .skip_while(|l| *l != "# [[webhooks]]")
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.strip_prefix("# "))
                .collect::<Vec<_>>()
                .join("\n");
            let t: toml::Table = toml::from_str(&text).expect("the sample parses");
            let w: Vec<WebhookConfig> = t["webhooks"].clone().try_into().expect("valid");
            let w = &w[0];
            assert!(w.validate().is_ok());
            assert_eq!(
                (w.retry_initial_secs, w.retry_max_secs, w.timeout_secs),
                (
                    WebhookConfig::default_retry_initial(),
                    WebhookConfig::default_retry_max(),
                    WebhookConfig::default_timeout()
                )
            );
        }
        let hook = |extra: &str| {
            sample()
                + &format!(
                    "\n[[webhooks]]\nurl = \"https://h.test/x\"\nsecret_file = \"/s\"\n{extra}"
                )
        };
        assert_eq!(Config::parse(&hook("")).expect("parses").webhooks.len(), 1);
        for (bad, says) in [
            ("retry_initial_secs = 0", "retry_initial_secs"),
            (
                "retry_initial_secs = 10\nretry_max_secs = 5",
                "retry_max_secs",
            ),
            ("timeout_secs = 0", "timeout_secs"),
            ("unknown = 1", "unknown"),
        ] {
            let e = Config::parse(&hook(bad)).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        for url in ["ftp://h.test/x", "https://user:pw@h.test/x", "not a url"] {
            let text =
                sample() + &format!("\n[[webhooks]]\nurl = \"{url}\"\nsecret_file = \"/s\"\n");
            assert!(Config::parse(&text).is_err(), "{url}");
        }
        let twice = hook("") + "\n[[webhooks]]\nurl = \"https://h.test/x\"\nsecret_file = \"/t\"\n";
        assert!(Config::parse(&twice).expect_err("twice").contains("once"));
    }

    /// The commented-out `key = value` lines of a template section `# [name]`, up to the
    /// next blank line or uncommented section, as TOML.
    fn commented_section(template: &str, name: &str) -> toml::Table {
        let header = format!("# [{name}]");
        let text = template
            .lines()
            .skip_while(|l| *l != header)
            .take_while(|l| !l.is_empty() && !l.starts_with('['))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with('[')
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
            })
            .collect::<Vec<_>>()
            .join("\n");
        toml::from_str(&text).expect("the commented section parses")
    }

    #[test]
    fn limits_and_ops_default_and_are_documented_at_their_defaults() {
        let template = include_str!("../../config/dev/gateway.toml.in");
        let c = Config::parse(&sample()).expect("the dev template parses");
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(
            c.ops, None,
            "no ops listener in dev: the single-port default"
        );
        let limits: LimitsConfig = commented_section(template, "limits")["limits"]
            .clone()
            .try_into()
            .expect("valid [limits]");
        assert_eq!(limits, LimitsConfig::default());
        let ops: OpsConfig = commented_section(template, "ops")["ops"]
            .clone()
            .try_into()
            .expect("valid [ops]");
        assert_eq!(ops.address.to_string(), OpsConfig::DEFAULT_ADDRESS);
        // `[ops]` alone takes the default address.
        let c = Config::parse(&format!("{}\n[ops]\n", sample())).expect("[ops] alone");
        assert_eq!(
            c.ops.map(|o| o.address.to_string()).as_deref(),
            Some(OpsConfig::DEFAULT_ADDRESS)
        );
        // The production sample sets every [limits] key at its default, and an ops
        // listener on loopback.
        let prod = Config::parse(include_str!("../../deploy/config/gateway.toml"))
            .expect("production sample");
        assert_eq!(prod.limits, LimitsConfig::default());
        assert!(prod.ops.is_some_and(|o| o.address.ip().is_loopback()));
    }

    #[test]
    fn limits_keys_are_checked() {
        let with = |lines: &str| format!("{}\n[limits]\n{lines}\n", sample());
        let c = Config::parse(&with(
            "body_read_timeout_secs = 0.5\nidle_timeout_secs = 2\nmax_connections_per_source = 0",
        ))
        .expect("parses");
        assert_eq!(
            c.limits.body_read_timeout(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(c.limits.idle_timeout(), std::time::Duration::from_secs(2));
        assert_eq!(c.limits.max_connections_per_source, 0);
        assert_eq!(
            c.limits.tls_handshake_timeout_secs, 10.0,
            "the others default"
        );
        for bad in [
            "tls_handshake_timeout_secs = 0",
            "header_read_timeout_secs = -1",
            "body_read_timeout_secs = 3601",
            "idle_timeout_secs = nan",
            "http2_keep_alive_interval_secs = inf",
            "http2_keep_alive_timeout_secs = 0.0",
        ] {
            let err = Config::parse(&with(bad)).expect_err(bad);
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(err.contains(&format!("limits.{key}")), "{bad}: {err}");
        }
        let err = Config::parse(&with("max_connections_per_source = -1")).expect_err("negative");
        assert!(err.contains("max_connections_per_source"), "{err}");
        let err = Config::parse(&with("bogus = 1")).expect_err("unknown key");
        assert!(err.contains("bogus"), "{err}");
        let same = format!("{}\n[ops]\naddress = \"127.0.0.1:8443\"\n", sample());
        let err = Config::parse(&same).expect_err("same address as the API");
        assert!(err.contains("ops.address"), "{err}");
    }

    #[test]
    fn s3_credentials_come_from_a_file() {
        let text: String = sample()
            .lines()
            .filter(|l| !l.starts_with("credentials_file"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            Config::parse(&text).expect_err("no credentials file"),
            "s3.credentials_file is required"
        );
    }

    #[test]
    fn unknown_key_refused() {
        let bad = sample().replace("[listen]", "[listen]\nbogus = 1");
        let err = Config::parse(&bad).expect_err("unknown key refused");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn production_sample_parses() {
        let c = Config::parse(include_str!("../../deploy/config/gateway.toml"))
            .expect("deploy/config/gateway.toml parses");
        assert_eq!(c.smtp.security, SmtpSecurity::Starttls);
        assert!(!c.s3.path_style);
        assert_eq!(c.mail, MailConfig::default());
    }
}
