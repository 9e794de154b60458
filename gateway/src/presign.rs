//! Presigned, time-boxed links to the generic appliance ISO (SigV4 query-string
//! presigning, aws-sigv4). The link is registration-gated and expires; the ISO itself is
//! not secret. The delivery crate will provide the production [`LinkPresigner`]; this
//! SigV4 one is complete and is what the gateway uses until then.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use crate::config::S3Config;

/// Why a link could not be presigned.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// The credentials file is missing or malformed (the message never quotes it).
    #[error("S3 credentials: {0}")]
    Credentials(String),
    /// The expiry is in the past or beyond SigV4's 7 days.
    #[error("link expiry out of range")]
    Expiry,
    /// SigV4 signing failed.
    #[error("presigning failed: {0}")]
    Sign(String),
}

/// Presigns a GET of the ISO valid until `expires_at`.
pub trait LinkPresigner: Send + Sync + std::fmt::Debug {
    /// A URL that downloads the ISO until `expires_at` (and not after).
    fn presign(
        &self,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<String, PresignError>;
}

/// SigV4 query-string presigning for an S3-compatible endpoint.
#[derive(Debug)]
pub struct SigV4Presigner {
    endpoint: String,
    region: String,
    bucket: String,
    key: String,
    path_style: bool,
    access_key_id: String,
    secret_access_key: SecretString,
}

impl SigV4Presigner {
    /// From the `[s3]` configuration; reads the credentials file
    /// (`access_key_id=…` and `secret_access_key=…` lines).
    pub fn from_config(c: &S3Config) -> Result<SigV4Presigner, PresignError> {
        let (access_key_id, secret_access_key) = read_credentials(&c.credentials_file)?;
        Ok(SigV4Presigner {
            endpoint: c.endpoint.trim_end_matches('/').to_owned(),
            region: c.region.clone(),
            bucket: c.bucket.clone(),
            key: c.key.trim_start_matches('/').to_owned(),
            path_style: c.path_style,
            access_key_id,
            secret_access_key,
        })
    }

    fn object_url(&self) -> Result<String, PresignError> {
        let key = self
            .key
            .split('/')
            .map(uri_encode)
            .collect::<Vec<_>>()
            .join("/");
        if self.path_style {
            return Ok(format!(
                "{}/{}/{}",
                self.endpoint,
                uri_encode(&self.bucket),
                key
            ));
        }
        let (scheme, host) = self
            .endpoint
            .split_once("://")
            .ok_or_else(|| PresignError::Sign("endpoint has no scheme".into()))?;
        Ok(format!("{scheme}://{}.{host}/{key}", self.bucket))
    }
}

impl LinkPresigner for SigV4Presigner {
    fn presign(
        &self,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<String, PresignError> {
        let ttl = expires_at - now;
        if ttl <= time::Duration::ZERO || ttl > alga_policies::MAX_DOWNLOAD_LINK_TTL {
            return Err(PresignError::Expiry);
        }
        let ttl = Duration::from_secs(
            u64::try_from(ttl.whole_seconds()).map_err(|_| PresignError::Expiry)?,
        );
        let url = self.object_url()?;
        let identity = Credentials::new(
            &self.access_key_id,
            self.secret_access_key.expose_secret(),
            None,
            None,
            "alga-gateway",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(ttl);
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::from(now))
            .settings(settings)
            .build()
            .map_err(|e| PresignError::Sign(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "GET",
            url.as_str(),
            std::iter::empty(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| PresignError::Sign(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| PresignError::Sign(e.to_string()))?
            .into_parts();
        let mut req = http::Request::get(url.as_str())
            .body(())
            .map_err(|e| PresignError::Sign(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut req);
        Ok(req.uri().to_string())
    }
}

/// RFC 3986 unreserved characters stay, everything else is percent-encoded.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_credentials(path: &Path) -> Result<(String, SecretString), PresignError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PresignError::Credentials(format!("cannot read {}: {}", path.display(), e.kind()))
    })?;
    let mut id = None;
    let mut secret = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some(("access_key_id", v)) => id = Some(v.trim().to_owned()),
            Some(("secret_access_key", v)) => {
                secret = Some(SecretString::from(v.trim().to_owned()))
            }
            _ => {
                return Err(PresignError::Credentials(format!(
                    "{}: unexpected line",
                    path.display()
                )));
            }
        }
    }
    match (id, secret) {
        (Some(i), Some(s)) if !i.is_empty() => Ok((i, s)),
        _ => Err(PresignError::Credentials(format!(
            "{}: needs access_key_id= and secret_access_key= lines",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presigner(path_style: bool) -> SigV4Presigner {
        SigV4Presigner {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "alga-iso".into(),
            key: "appliance/alga appliance.iso".into(),
            path_style,
            access_key_id: "AKID".into(),
            secret_access_key: SecretString::from("secret".to_owned()),
        }
    }

    #[test]
    fn presigned_url_shape() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
        let url = presigner(true)
            .presign(now, now + time::Duration::hours(72))
            .expect("presigns");
        assert!(
            url.starts_with("http://127.0.0.1:9000/alga-iso/appliance/alga%20appliance.iso?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=259200"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(!url.contains("secret"), "{url}");
        let vhost = presigner(false)
            .presign(now, now + time::Duration::hours(1))
            .expect("presigns");
        assert!(
            vhost.starts_with("http://alga-iso.127.0.0.1:9000/"),
            "{vhost}"
        );
    }

    #[test]
    fn expiry_bounds() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
        let p = presigner(true);
        assert!(p.presign(now, now).is_err());
        assert!(p.presign(now, now + time::Duration::days(8)).is_err());
    }
}
