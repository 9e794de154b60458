//! The issuer's configuration file (TOML), parsed into typed settings at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

pub use alga_protocol::config_file::ConfigError;

/// The whole configuration (see `config/dev/issuer.toml.in` for every key, commented).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub hsm: HsmConfig,
    pub policy: PolicyConfig,
    pub log: LogConfig,
    pub audit_log: AuditLogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address of the mTLS listener, e.g. `127.0.0.1:9443`.
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub certificate: PathBuf,
    /// Server private key (PEM, PKCS#8 or SEC1).
    pub private_key: PathBuf,
    /// CA bundle (PEM) that issued the gateway's client certificate.
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`libsofthsm2.so` in dev).
    pub module: PathBuf,
    /// Label of the token holding the keys; slots are found by label, never by id.
    pub token_label: String,
    /// File holding the user PIN (trailing whitespace ignored). `ALGA_HSM_PIN` overrides it.
    pub pin_file: Option<PathBuf>,
    /// Worker threads, each with its own logged-in session (default 2).
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_workers() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Path of the policy TOML shared with the gateway.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Directory of the issuer's own hash-chained signing log.
    pub directory: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogConfig {
    /// The transparency log's origin: the first line of every checkpoint the log key
    /// signs, and that key's name in the signed notes and verifier keys. Required.
    pub origin: LogOrigin,
}

/// A transparency log's origin (c2sp.org/tlog-checkpoint), which is also the log
/// key's name in c2sp.org/signed-note: not empty, no Unicode whitespace, no `+`.
/// Witnesses and verifiers identify the log by it, so it stays the same for the life
/// of a deployment (conventionally a schema-less URL, `example.com/audit-log`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LogOrigin(String);

impl LogOrigin {
    /// Checks `origin` (see the type).
    pub fn new(origin: impl Into<String>) -> Result<LogOrigin, ConfigError> {
        let origin = origin.into();
        let invalid = |reason: &str| ConfigError::Invalid {
            key: "audit_log.origin",
            reason: format!(
                "{reason}; it is the log's signed-note key name (c2sp.org/signed-note)"
            ),
        };
        if origin.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if origin.chars().any(char::is_whitespace) {
            return Err(invalid("must not contain whitespace"));
        }
        if origin.contains('+') {
            return Err(invalid("must not contain '+'"));
        }
        // A checkpoint's lines are text: no control character either.
        if origin.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        Ok(LogOrigin(origin))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogOrigin {
    type Error = ConfigError;

    fn try_from(origin: String) -> Result<LogOrigin, ConfigError> {
        LogOrigin::new(origin)
    }
}

impl std::fmt::Display for LogOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl IssuerConfig {
    /// Reads and parses the configuration file.
    pub fn load(path: &Path) -> Result<IssuerConfig, ConfigError> {
        let text = alga_protocol::config_file::read_config_text(path)?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

impl HsmConfig {
    /// The user PIN: `ALGA_HSM_PIN` if set, else the contents of `pin_file`. Never from argv.
    pub fn pin(&self) -> Result<SecretString, ConfigError> {
        read_secret("ALGA_HSM_PIN", self.pin_file.as_deref())
    }
}

/// Reads a secret from an environment variable or, failing that, its file
/// ([`alga_protocol::config_file::read_secret_file`]).
#[allow(
    clippy::disallowed_methods,
    reason = "reads the environment for this binary's configuration"
)]
pub fn read_secret(env_var: &str, file: Option<&Path>) -> Result<SecretString, ConfigError> {
    if let Ok(v) = std::env::var(env_var)
        && !v.is_empty()
    {
        return Ok(SecretString::from(v));
    }
    let Some(file) = file else {
        return Err(ConfigError::Invalid {
            key: "hsm.pin_file",
            reason: format!("no HSM PIN: {env_var} is not set and no file is configured"),
        });
    };
    alga_protocol::config_file::read_secret_file(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_sample_parses() {
        let c: IssuerConfig = toml::from_str(include_str!("../../deploy/config/issuer.toml"))
            .expect("deploy/config/issuer.toml parses");
        assert_eq!(c.hsm.workers, 2);
        assert_eq!(c.listen.address.port(), 9443);
        assert_eq!(
            c.audit_log.origin.as_str(),
            "licensing.example.com/audit-log"
        );
    }

    #[test]
    fn dev_template_parses() {
        let text = include_str!("../../config/dev/issuer.toml.in")
            .replace("${ALGA_ISSUER_PORT}", "9443")
            .replace("${ALGA_DEV_DIR}", "/dev-dir")
            .replace("${ALGA_HSM_MODULE}", "/usr/lib/softhsm/libsofthsm2.so")
            .replace("${ALGA_HSM_TOKEN_LABEL}", "alga-dev");
        let c: IssuerConfig = toml::from_str(&text).expect("the dev template parses");
        assert_eq!(c.hsm.token_label, "alga-dev");
        assert_eq!(c.audit_log.origin.as_str(), "alga-license.dev/audit-log");
    }

    fn with_audit_log(section: &str) -> String {
        let text = include_str!("../../config/dev/issuer.toml.in")
            .replace("${ALGA_ISSUER_PORT}", "9443")
            .replace("${ALGA_DEV_DIR}", "/dev-dir")
            .replace("${ALGA_HSM_MODULE}", "/usr/lib/softhsm/libsofthsm2.so")
            .replace("${ALGA_HSM_TOKEN_LABEL}", "alga-dev");
        let (before, _) = text.split_once("[audit_log]").expect("the template has it");
        format!("{before}{section}")
    }

    #[test]
    fn the_log_origin_is_required_and_must_be_a_key_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("issuer.toml");
        std::fs::write(&path, with_audit_log("")).expect("write");
        let err = IssuerConfig::load(&path).expect_err("no [audit_log]");
        assert!(err.to_string().contains("audit_log"), "{err}");

        for (bad, why) in [
            ("", "must not be empty"),
            ("example.com/audit log", "whitespace"),
            ("example.com/audit\tlog", "whitespace"),
            ("example.com/audit\\u00A0log", "whitespace"),
            ("example.com/a+b", "'+'"),
        ] {
            std::fs::write(
                &path,
                with_audit_log(&format!("[audit_log]\norigin = \"{bad}\"\n")),
            )
            .expect("write");
            let err = IssuerConfig::load(&path).expect_err(bad).to_string();
            assert!(
                err.contains("audit_log.origin") && err.contains(why),
                "{bad:?}: {err}"
            );
        }
        std::fs::write(
            &path,
            with_audit_log("[audit_log]\norigin = \"example.com/log\"\n"),
        )
        .expect("write");
        let c = IssuerConfig::load(&path).expect("a good origin");
        assert_eq!(c.audit_log.origin.to_string(), "example.com/log");
    }

    #[test]
    fn an_empty_pin_file_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "  \n").expect("write");
        let err = read_secret("ALGA_TEST_UNSET_PIN_VARIABLE", Some(&path)).expect_err("empty");
        assert_eq!(
            err.to_string(),
            format!("cannot read secret file {}: empty", path.display())
        );
    }
}
