//! A service's configuration file and the secret files it names, read the same way by
//! the gateway and the issuer: the one place this crate touches the file system. Both
//! binaries depend on this crate already, and the rules below must not differ between
//! them: a secret file loses its trailing line ending and blanks only (never a leading
//! character of the secret), an empty one is refused, and every error names the file,
//! never its content.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

/// Why a configuration, or a secret file it names, could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// What the file system answered.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the service's schema (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value parses but cannot be used.
    #[error("{key}: {reason}")]
    Invalid {
        /// The configuration key, dotted (`hsm.pin_file`).
        key: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// A secret file could not be read, or holds nothing.
    #[error("cannot read secret file {path}: {reason}")]
    Secret {
        /// The secret file (its name, never its content).
        path: PathBuf,
        /// What went wrong: the file system's error kind, or "empty".
        reason: String,
    },
}

/// Reads a configuration file as text.
pub fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads one secret (a password, a PIN, a signing secret) from its file: trailing line
/// endings and blanks removed, refused when nothing is left.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let refused = |reason: String| ConfigError::Secret {
        path: path.to_owned(),
        reason,
    };
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| refused(e.kind().to_string()))?,
    );
    let secret = text.trim_end_matches(['\n', '\r', ' ', '\t']);
    if secret.is_empty() {
        return Err(refused("empty".to_owned()));
    }
    Ok(SecretString::from(secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, content).expect("write");
        (dir, path)
    }

    #[test]
    fn a_secret_loses_its_trailing_line_ending_only() {
        use secrecy::ExposeSecret;
        for (content, want) in [
            ("s3cr3t\n", "s3cr3t"),
            ("s3cr3t\r\n", "s3cr3t"),
            ("s3cr3t \t\n\n", "s3cr3t"),
            (" lead\n", " lead"),
            ("in side\n", "in side"),
        ] {
            let (_dir, path) = file_with(content);
            let got = read_secret_file(&path).expect("reads");
            assert_eq!(got.expose_secret(), want, "{content:?}");
        }
    }

    #[test]
    fn an_empty_or_missing_secret_file_is_refused_by_name_without_content() {
        for content in ["", "\n", " \t\r\n"] {
            let (_dir, path) = file_with(content);
            let e = read_secret_file(&path).expect_err("empty");
            assert_eq!(
                e.to_string(),
                format!("cannot read secret file {}: empty", path.display())
            );
        }
        let (_dir, path) = file_with("hunter2\n");
        let missing = path.with_file_name("absent");
        let e = read_secret_file(&missing).expect_err("missing");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read secret file {}: entity not found",
                missing.display()
            )
        );
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn a_missing_config_file_names_it() {
        let e = read_config_text(Path::new("/nonexistent/alga.toml")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/alga.toml: "),
            "{e}"
        );
    }
}
