//! The gateway's configuration file (TOML, `deny_unknown_fields`), parsed at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A secret file could not be read or is empty.
    #[error("cannot read secret file {path}: {reason}")]
    Secret { path: PathBuf, reason: String },
}

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

/// Transport security toward the SMTP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub from: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub path_style: bool,
    pub credentials_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub path: PathBuf,
}

impl Config {
    /// Reads and parses the configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
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
        Ok(c)
    }
}

/// Reads a secret file, trimming surrounding whitespace. Never logs the content.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
        path: path.to_owned(),
        reason: e.kind().to_string(),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::Secret {
            path: path.to_owned(),
            reason: "empty".into(),
        });
    }
    Ok(SecretString::from(trimmed.to_owned()))
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
