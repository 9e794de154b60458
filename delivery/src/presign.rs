//! Presigned, time-boxed download links for the generic appliance ISO.
//!
//! The ISO is not secret, but the bucket is private: a link is a SigV4 query-string
//! presigned `GET` for exactly one object, valid for a bounded time. Nothing here talks
//! to S3; signing is local and pure given the credentials and `now`.
//!
//! Invariants:
//! - The secret access key and session token never reach a `Debug` output, a log or an
//!   error message; a returned URL carries a signature, so its `Debug` hides the query.
//! - A link never outlives the credentials that signed it, nor 7 days (SigV4's limit).
//! - The `Host` the link is signed for is the endpoint's host exactly: a link signed for
//!   `127.0.0.1` is refused when fetched as `localhost`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};
use tracing::instrument;
use url::Url;
use zeroize::Zeroizing;

use crate::Error;

/// The longest validity SigV4 allows for a presigned URL.
pub const MAX_LINK_TTL: Duration = Duration::days(7);

/// The SigV4 service name of S3.
const SERVICE: &str = "s3";

/// The gateway's `[s3]` table: where the ISO is and how to sign for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Base URL of the S3-compatible service, `http(s)://host[:port]`, no path.
    pub endpoint: Url,
    /// SigV4 signing region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// Bucket holding the ISO.
    pub bucket: String,
    /// Object key of the ISO (may contain `/`).
    pub key: String,
    /// `true`: `endpoint/bucket/key`; `false`: virtual-hosted `bucket.endpoint/key`.
    #[serde(default)]
    pub path_style: bool,
    /// File with `access_key_id=…` and `secret_access_key=…` lines (optionally
    /// `session_token=…` and `expires_at=<rfc3339>`). Without it, the credentials come
    /// from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

/// Credentials to sign with. Only the access key id (which every link shows anyway)
/// appears in `Debug`.
#[derive(Clone)]
pub struct S3Credentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
    expires_at: Option<OffsetDateTime>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl S3Credentials {
    /// Long-term credentials (no session token, no expiry).
    pub fn new(access_key_id: impl Into<String>, secret_access_key: SecretString) -> Self {
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token: None,
            expires_at: None,
        }
    }

    /// Temporary credentials: the token is signed into every link, and links are clamped
    /// to `expires_at` (when known).
    pub fn with_session(
        mut self,
        session_token: SecretString,
        expires_at: Option<OffsetDateTime>,
    ) -> Self {
        self.session_token = Some(session_token);
        self.expires_at = expires_at;
        self
    }

    /// Sets when these credentials stop working, so links never outlive them.
    pub fn with_expiry(mut self, expires_at: OffsetDateTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The public half, for diagnostics.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// When these credentials expire, if they are temporary.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    /// Reads a credentials file: `name=value` lines (`access_key_id`,
    /// `secret_access_key`, optional `session_token` and `expires_at`); blank lines and
    /// `#` comments are ignored. Unknown or repeated names are errors, so a typo is not
    /// silently ignored.
    #[instrument(skip_all)]
    pub fn from_file(path: &Path) -> Result<S3Credentials, Error> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            Error::S3CredentialsFile {
                path: path.to_owned(),
                source,
            }
        })?);
        let origin = path.display().to_string();
        let invalid = |problem: String| Error::S3CredentialsInvalid {
            origin: origin.clone(),
            problem,
        };
        let mut fields = Fields::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(invalid(format!("line {} is not name=value", n + 1)));
            };
            let (name, value) = (name.trim(), value.trim());
            let slot = match name {
                "access_key_id" => &mut fields.access_key_id,
                "secret_access_key" => &mut fields.secret_access_key,
                "session_token" => &mut fields.session_token,
                "expires_at" => &mut fields.expires_at,
                _ => return Err(invalid(format!("line {}: unknown name {name:?}", n + 1))),
            };
            if slot.is_some() {
                return Err(invalid(format!("line {}: {name} given twice", n + 1)));
            }
            *slot = Some(Zeroizing::new(value.to_owned()));
        }
        fields.build().map_err(invalid)
    }

    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optional)
    /// `AWS_SESSION_TOKEN` from the process environment.
    #[instrument(skip_all)]
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the environment for this binary's configuration"
    )]
    pub fn from_env() -> Result<S3Credentials, Error> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`S3Credentials::from_env`] over any lookup (tests pass a map, so they need not
    /// mutate the process environment).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<S3Credentials, Error> {
        let get = |name: &str| {
            lookup(name)
                .map(Zeroizing::new)
                .filter(|v| !v.trim().is_empty())
        };
        let fields = Fields {
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            session_token: get("AWS_SESSION_TOKEN"),
            expires_at: None,
        };
        fields
            .build()
            .map_err(|problem| Error::S3CredentialsInvalid {
                origin: "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)".into(),
                problem,
            })
    }
}

/// Credential fields as read, before validation.
#[derive(Default)]
struct Fields {
    access_key_id: Option<Zeroizing<String>>,
    secret_access_key: Option<Zeroizing<String>>,
    session_token: Option<Zeroizing<String>>,
    expires_at: Option<Zeroizing<String>>,
}

impl Fields {
    fn build(self) -> Result<S3Credentials, String> {
        let access_key_id = self
            .access_key_id
            .ok_or("the access key id is missing")?
            .to_string();
        if !access_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(
                "the access key id has characters other than letters, digits, _ and -".into(),
            );
        }
        let secret = self
            .secret_access_key
            .ok_or("the secret access key is missing")?;
        if secret.chars().any(char::is_control) {
            return Err("the secret access key contains control characters".into());
        }
        let expires_at = match self.expires_at {
            None => None,
            Some(s) => Some(
                OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| "expires_at is not an RFC 3339 time".to_owned())?,
            ),
        };
        let session_token = match self.session_token {
            None => None,
            Some(t) if t.chars().any(char::is_control) => {
                return Err("the session token contains control characters".into());
            }
            Some(t) => Some(SecretString::from(t.to_string())),
        };
        if expires_at.is_some() && session_token.is_none() {
            return Err("expires_at is only meaningful with a session_token".into());
        }
        Ok(S3Credentials {
            access_key_id,
            secret_access_key: SecretString::from(secret.to_string()),
            session_token,
            expires_at,
        })
    }
}

/// A presigned download link. The URL carries a signature that grants access until
/// `expires_at`: treat it as a secret in logs (`Debug` shows only scheme, host and path).
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedLink {
    /// The full URL to hand to the customer.
    pub url: String,
    /// When S3 stops accepting the link.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for PresignedLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = match self.url.split_once('?') {
            Some((base, _)) => format!("{base}?[redacted]"),
            None => self.url.clone(),
        };
        f.debug_struct("PresignedLink")
            .field("url", &shown)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Signs links for the one ISO object of an [`S3Config`].
///
/// Cheap to share (`Arc` it). Credentials can be swapped at run time with
/// [`Presigner::reload_credentials`] (temporary credentials are rotated under a running
/// gateway).
#[derive(Debug)]
pub struct Presigner {
    /// `scheme://host[:port]/path-to-object`, without query.
    object_url: String,
    region: String,
    source: CredentialSource,
    credentials: RwLock<Arc<S3Credentials>>,
}

/// Where the credentials come from, for reloading.
#[derive(Debug, Clone)]
enum CredentialSource {
    File(PathBuf),
    Environment,
    Given,
}

impl Presigner {
    /// Builds a presigner from the configuration, reading the credentials from its file
    /// or, without one, from the environment.
    #[instrument(skip_all)]
    pub fn from_config(config: &S3Config) -> Result<Presigner, Error> {
        let (source, credentials) = match &config.credentials_file {
            Some(path) => (
                CredentialSource::File(path.clone()),
                S3Credentials::from_file(path)?,
            ),
            None => (CredentialSource::Environment, S3Credentials::from_env()?),
        };
        Self::build(config, source, credentials)
    }

    /// Builds a presigner with credentials obtained elsewhere (tests, a secrets manager).
    pub fn with_credentials(
        config: &S3Config,
        credentials: S3Credentials,
    ) -> Result<Presigner, Error> {
        Self::build(config, CredentialSource::Given, credentials)
    }

    fn build(
        config: &S3Config,
        source: CredentialSource,
        credentials: S3Credentials,
    ) -> Result<Presigner, Error> {
        let object_url = object_url(config)?;
        let region = config.region.trim();
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::S3Config(
                "region must be letters, digits and dashes".into(),
            ));
        }
        Ok(Presigner {
            object_url,
            region: region.to_owned(),
            source,
            credentials: RwLock::new(Arc::new(credentials)),
        })
    }

    /// The object's URL without any signature (safe to log).
    pub fn object_url(&self) -> &str {
        &self.object_url
    }

    fn current_credentials(&self) -> Arc<S3Credentials> {
        Arc::clone(
            &self
                .credentials
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reads the credentials again from their file or the environment, and uses them
    /// for the following links. Does nothing for credentials given in code.
    #[instrument(skip_all)]
    pub fn reload_credentials(&self) -> Result<(), Error> {
        let fresh = match &self.source {
            CredentialSource::File(path) => S3Credentials::from_file(path)?,
            CredentialSource::Environment => S3Credentials::from_env()?,
            CredentialSource::Given => return Ok(()),
        };
        *self
            .credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// Signs a link valid from `now` until `until` (same clamping as
    /// [`Presigner::presign`]): for callers that compute an expiry time rather than a TTL.
    pub fn presign_until(
        &self,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<PresignedLink, Error> {
        self.presign(now, until - now)
    }

    /// Signs a `GET` link valid from `now` for `ttl`, clamped to 7 days and to the
    /// credentials' expiry. Temporary credentials that expire before `now + ttl` are
    /// first re-read from their file or the environment, in case they were rotated. `now` is truncated to the second (SigV4's resolution), and
    /// `expires_at` is exactly when S3 starts refusing the link.
    #[instrument(skip_all)]
    pub fn presign(&self, now: OffsetDateTime, ttl: Duration) -> Result<PresignedLink, Error> {
        let now = now.replace_nanosecond(0).map_err(|_| Error::InvalidTtl)?;
        if ttl < Duration::SECOND {
            return Err(Error::InvalidTtl);
        }
        let mut ttl = ttl.min(MAX_LINK_TTL);
        let mut credentials = self.current_credentials();
        // Temporary credentials that would cut the link short are probably rotated
        // already where they come from: look again before signing a shorter link.
        if credentials
            .expires_at
            .is_some_and(|expires_at| expires_at - now < ttl)
            && !matches!(self.source, CredentialSource::Given)
        {
            match self.reload_credentials() {
                Ok(()) => credentials = self.current_credentials(),
                Err(error) => {
                    tracing::warn!(%error, "could not reload the S3 credentials; using the loaded ones")
                }
            }
        }
        if let Some(expired_at) = credentials.expires_at {
            let left = expired_at - now;
            if left < Duration::SECOND {
                return Err(Error::S3CredentialsExpired { expired_at });
            }
            ttl = ttl.min(left);
        }
        let secs = ttl.whole_seconds();
        let expires_in =
            std::time::Duration::from_secs(u64::try_from(secs).map_err(|_| Error::InvalidTtl)?);

        let identity = aws_credential_types::Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.expose_secret().to_owned(),
            credentials
                .session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            credentials.expires_at.map(SystemTime::from),
            "alga-delivery",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires_in);
        // S3 signs the path as sent: no double encoding, no dot-segment normalization.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::from(now))
            .settings(settings)
            .build()
            .map_err(|e| Error::Signing(e.to_string()))?
            .into();
        let request = SignableRequest::new(
            "GET",
            &self.object_url,
            std::iter::empty(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| Error::Signing(e.to_string()))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| Error::Signing(e.to_string()))?
            .into_parts();
        let (_headers, query) = instructions.into_parts();

        let mut url = self.object_url.clone();
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&uri_encode(name, true));
            url.push('=');
            url.push_str(&uri_encode(value, true));
        }
        Ok(PresignedLink {
            url,
            expires_at: now + Duration::seconds(secs),
        })
    }
}

/// The unsigned URL of the configured object, checked and canonically encoded.
fn object_url(config: &S3Config) -> Result<String, Error> {
    let bad = |m: &str| Error::S3Config(m.to_owned());
    let endpoint = &config.endpoint;
    if !matches!(endpoint.scheme(), "http" | "https") {
        return Err(bad("endpoint must be an http or https URL"));
    }
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(bad(
            "endpoint must not carry credentials (use credentials_file)",
        ));
    }
    if endpoint.path() != "/" || endpoint.query().is_some() || endpoint.fragment().is_some() {
        return Err(bad("endpoint must be scheme://host[:port] without a path"));
    }
    let host = endpoint
        .host_str()
        .ok_or_else(|| bad("endpoint has no host"))?;
    let bucket = config.bucket.as_str();
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if !valid_bucket {
        return Err(bad(
            "bucket must be 3-63 lowercase letters, digits, dots and dashes",
        ));
    }
    let key = config.key.as_str();
    if key.is_empty() || key.len() > 1024 || key.chars().any(char::is_control) {
        return Err(bad("key must be 1-1024 bytes without control characters"));
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad("key must not contain . or .. segments"));
    }
    // `Url` drops a scheme's default port, which is also what the signer and HTTP
    // clients put into `Host`.
    let authority = match endpoint.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let scheme = endpoint.scheme();
    let key = uri_encode(key, false);
    Ok(if config.path_style {
        format!("{scheme}://{authority}/{bucket}/{key}")
    } else {
        if bucket.contains('.') && scheme == "https" {
            return Err(bad(
                "a bucket with dots needs path_style = true over https (the certificate cannot match)",
            ));
        }
        format!("{scheme}://{bucket}.{authority}/{key}")
    })
}

/// SigV4's `UriEncode`: everything but `A-Za-z0-9-._~` is percent-encoded; `/` too
/// unless it separates path segments.
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, path_style: bool) -> S3Config {
        S3Config {
            endpoint: Url::parse(endpoint).expect("test URL"),
            region: "us-east-1".into(),
            bucket: "iso-bucket".into(),
            key: "images/alga appliance+1.iso".into(),
            path_style,
            credentials_file: None,
        }
    }

    #[test]
    fn object_urls_encode_the_key_and_place_the_bucket() {
        let table = [
            (
                "http://127.0.0.1:9000",
                true,
                "http://127.0.0.1:9000/iso-bucket/images/alga%20appliance%2B1.iso",
            ),
            (
                "https://s3.example.com",
                false,
                "https://iso-bucket.s3.example.com/images/alga%20appliance%2B1.iso",
            ),
            (
                "https://s3.example.com:443",
                true,
                "https://s3.example.com/iso-bucket/images/alga%20appliance%2B1.iso",
            ),
            (
                "http://localhost:80/",
                true,
                "http://localhost/iso-bucket/images/alga%20appliance%2B1.iso",
            ),
        ];
        for (endpoint, path_style, want) in table {
            assert_eq!(
                object_url(&config(endpoint, path_style)).expect("valid"),
                want,
                "{endpoint}"
            );
        }
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut bad = Vec::new();
        for endpoint in [
            "ftp://s3.example.com",
            "https://u:p@s3.example.com",
            "https://s3.example.com/prefix",
            "https://s3.example.com/?a=b",
        ] {
            bad.push(config(endpoint, true));
        }
        for bucket in ["ab", "Upper", "a..b", "-ab", "bucket/x", &"a".repeat(64)] {
            let mut c = config("https://s3.example.com", true);
            c.bucket = bucket.into();
            bad.push(c);
        }
        for key in ["", "a/../b", "./a", "a\nb", "a\0b"] {
            let mut c = config("https://s3.example.com", true);
            c.key = key.into();
            bad.push(c);
        }
        for c in bad {
            assert!(matches!(object_url(&c), Err(Error::S3Config(_))), "{c:?}");
        }
    }

    #[test]
    fn credentials_file_parses_and_never_shows_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "# dev\naccess_key_id = AKIDEXAMPLE\nsecret_access_key=s3cr3t/val+ue\n\nsession_token=tok3n\nexpires_at=2030-01-01T00:00:00Z\n",
        )
        .expect("write");
        let c = S3Credentials::from_file(&path).expect("parses");
        assert_eq!(c.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(
            c.expires_at(),
            Some(time::macros::datetime!(2030-01-01 0:00 UTC))
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("tok3n"), "{dbg}");
    }

    #[test]
    fn malformed_credentials_files_are_refused_without_echoing_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            "secret_access_key=SECRETVALUE\n",
            "access_key_id=AK\n",
            "access_key_id=AK\nsecret_access_key=SECRETVALUE\nsecret_access_key=SECRETVALUE\n",
            "access_key_id=AK\nsecret_access_key=SECRETVALUE\nregion=SECRETVALUE\n",
            "access_key_id=AK\nSECRETVALUE\n",
            "access_key_id=AK\nsecret_access_key=SECRETVALUE\nsession_token=t\nexpires_at=SECRETVALUE\n",
            "access_key_id=AK\nsecret_access_key=SECRETVALUE\nexpires_at=2030-01-01T00:00:00Z\n",
            "access_key_id=A K\nsecret_access_key=SECRETVALUE\n",
        ];
        for (i, text) in cases.iter().enumerate() {
            let path = dir.path().join(format!("c{i}"));
            std::fs::write(&path, text).expect("write");
            let err = S3Credentials::from_file(&path).expect_err(text);
            assert!(matches!(err, Error::S3CredentialsInvalid { .. }), "{err:?}");
            assert!(!err.to_string().contains("SECRETVALUE"), "{err}");
        }
        let missing = S3Credentials::from_file(&dir.path().join("absent")).expect_err("absent");
        assert!(matches!(missing, Error::S3CredentialsFile { .. }));
    }

    #[test]
    fn environment_credentials() {
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("sk".to_owned()),
            "AWS_SESSION_TOKEN" => Some("tok".to_owned()),
            _ => None,
        };
        let c = S3Credentials::from_env_with(env).expect("complete");
        assert_eq!(c.access_key_id(), "AKID");
        assert!(c.session_token.is_some());
        let err = S3Credentials::from_env_with(|_| None).expect_err("empty");
        assert!(matches!(err, Error::S3CredentialsInvalid { .. }));
    }

    #[test]
    fn link_debug_hides_the_signature() {
        let link = PresignedLink {
            url: "https://h/b/k?X-Amz-Signature=abcdef".into(),
            expires_at: OffsetDateTime::UNIX_EPOCH,
        };
        let dbg = format!("{link:?}");
        assert!(dbg.contains("https://h/b/k?[redacted]"), "{dbg}");
        assert!(!dbg.contains("abcdef"), "{dbg}");
    }
}
