//! Presigned, time-boxed links to the generic appliance ISO. The link is
//! registration-gated and expires; the ISO itself is not secret.
//!
//! The flows see only [`LinkPresigner`]; the implementation is the delivery crate's
//! SigV4 presigner (`alga_delivery::Presigner`: query-string SigV4, clamped to 7 days
//! and to the credentials' own expiry, credentials re-read on rotation).

use time::{Duration, OffsetDateTime};

use crate::config::S3Config;

/// Why a link could not be presigned (the message never carries a secret).
#[derive(Debug, thiserror::Error)]
#[error("presign: {0}")]
pub struct PresignError(String);

/// A presigned link and the moment S3 stops accepting it.
#[derive(Clone)]
pub struct Link {
    pub url: String,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The query is a bearer credential for the download: never in a log.
        let base = self
            .url
            .split_once('?')
            .map_or(self.url.as_str(), |(b, _)| b);
        f.debug_struct("Link")
            .field("url", &format_args!("{base}?[redacted]"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Presigns a GET of the ISO.
pub trait LinkPresigner: Send + Sync + std::fmt::Debug {
    /// A link valid from `now` for (at most) `ttl`.
    fn presign(&self, now: OffsetDateTime, ttl: Duration) -> Result<Link, PresignError>;
}

impl LinkPresigner for alga_delivery::Presigner {
    fn presign(&self, now: OffsetDateTime, ttl: Duration) -> Result<Link, PresignError> {
        let l = alga_delivery::Presigner::presign(self, now, ttl)
            .map_err(|e| PresignError(e.to_string()))?;
        Ok(Link {
            url: l.url,
            expires_at: l.expires_at,
        })
    }
}

/// The presigner of the `[s3]` section.
pub fn from_config(c: &S3Config) -> Result<alga_delivery::Presigner, PresignError> {
    let endpoint =
        url::Url::parse(&c.endpoint).map_err(|e| PresignError(format!("s3.endpoint: {e}")))?;
    alga_delivery::Presigner::from_config(&alga_delivery::S3Config {
        endpoint,
        region: c.region.clone(),
        bucket: c.bucket.clone(),
        key: c.key.clone(),
        path_style: c.path_style,
        credentials_file: Some(c.credentials_file.clone()),
    })
    .map_err(|e| PresignError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_url_shape_and_redacted_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cred = dir.path().join("s3-credentials");
        std::fs::write(&cred, "access_key_id=AKID\nsecret_access_key=topsecret\n").expect("write");
        let p = from_config(&S3Config {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "alga-iso".into(),
            key: "appliance/alga-appliance.iso".into(),
            path_style: true,
            credentials_file: cred,
        })
        .expect("presigner");
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
        let link = LinkPresigner::presign(&p, now, Duration::hours(72)).expect("presigns");
        assert!(
            link.url
                .starts_with("http://127.0.0.1:9000/alga-iso/appliance/alga-appliance.iso?"),
            "{}",
            link.url
        );
        assert!(link.url.contains("X-Amz-Expires=259200"));
        assert_eq!(link.expires_at, now + Duration::hours(72));
        assert!(!link.url.contains("topsecret"));
        assert!(!format!("{link:?}").contains("X-Amz-Signature"));
    }
}
