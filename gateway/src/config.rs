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
}

fn default_pool_size() -> usize {
    16
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
        toml::from_str(text).map_err(|e| e.to_string())
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
    fn dev_template_parses() {
        let c = Config::parse(&sample()).expect("the dev template parses");
        assert_eq!(c.smtp.security, SmtpSecurity::None);
        assert!(c.s3.path_style);
    }

    #[test]
    fn unknown_key_refused() {
        let bad = sample().replace("[listen]", "[listen]\nbogus = 1");
        let err = Config::parse(&bad).expect_err("unknown key refused");
        assert!(err.contains("bogus"), "{err}");
    }
}
