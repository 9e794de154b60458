//! The HTTPS client to the license service: trust pinned to the given CA bundle only
//! (rustls with the ring provider, no system roots), optional client certificate,
//! timeouts, bounded retries with backoff on connection errors only, and the mapping
//! of transport failures to [`Error`].

use std::sync::Arc;
use std::time::Duration;

use alga_protocol::api::{ErrorBody, error_code};
use reqwest::{Client, StatusCode, Url};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Largest response body accepted.
const MAX_BODY: usize = 1 << 20;

/// Timeouts and retries of service calls.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Connection timeout of one attempt.
    pub connect_timeout: Duration,
    /// Whole-request timeout of one attempt.
    pub request_timeout: Duration,
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            attempts: 4,
            initial_backoff: Duration::from_secs(1),
        }
    }
}

/// A client certificate: the certificate chain (leaf first) and its private key, PEM.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    pub cert_chain_pem: &'a str,
    pub key_pem: &'a alga_protocol::SecretText,
}

/// A client of one license service, trusting only `ca_pem`.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    http: Client,
    retry: Retry,
}

/// A non-2xx answer: its status and, when the body is the API's error body, its code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl ApiError {
    /// The error for the statuses every call shares (busy, unavailable, other).
    pub fn into_generic(self) -> Error {
        let code = self.code.as_deref().unwrap_or("");
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::BAD_GATEWAY
            || self.status == StatusCode::GATEWAY_TIMEOUT
            || code == error_code::RATE_LIMITED
            || code == error_code::LICENSE_SERVICE_UNAVAILABLE
            || code == error_code::SERVICE_UNAVAILABLE
        {
            return Error::ServiceUnavailable;
        }
        Error::Refused {
            code: self
                .code
                .unwrap_or_else(|| format!("HTTP {}", self.status.as_u16())),
            message: self.message.unwrap_or_default(),
        }
    }
}

/// Parses and checks a service URL: `https` only, no query or fragment.
pub fn parse_service_url(s: &str) -> Result<Url> {
    let url =
        Url::parse(s.trim()).map_err(|_| Error::input("the service URL", "it is not a URL"))?;
    if url.scheme() != "https" {
        return Err(Error::input(
            "the service URL",
            "it must start with https://",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() {
        return Err(Error::input(
            "the service URL",
            "it must be https://host[:port][/path]",
        ));
    }
    Ok(url)
}

/// `base` joined with an absolute API path (`/register`), keeping any base path.
pub fn endpoint(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    u.set_path(&joined);
    u
}

impl ServiceClient {
    /// A client trusting only the certificates of `ca_pem`, presenting `identity` if given.
    pub fn new(
        ca_pem: &[u8],
        identity: Option<ClientIdentity<'_>>,
        retry: Retry,
    ) -> Result<ServiceClient> {
        let mut roots = RootCertStore::empty();
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|_| Error::input("the CA bundle", "it is not PEM"))?;
            roots.add(c).map_err(|e| {
                Error::input("the CA bundle", format!("a certificate is unusable: {e}"))
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(Error::input("the CA bundle", "it holds no certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let certs = CertificateDer::pem_slice_iter(id.cert_chain_pem.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| Error::input("the appliance certificate", "it is not PEM"))?;
                if certs.is_empty() {
                    return Err(Error::input(
                        "the appliance certificate",
                        "it holds no certificate",
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.expose().as_bytes()).map_err(
                    |_| Error::input("the appliance key", "it is not a PEM private key"),
                )?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| Error::input("the appliance credential", e))?
            }
        };
        let http = Client::builder()
            .use_preconfigured_tls(config)
            .connect_timeout(retry.connect_timeout)
            .timeout(retry.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!("alga-appliance/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(ServiceClient { http, retry })
    }

    /// `POST url` with a JSON body; `Ok(Err(_))` is an HTTP error answer. Retried on
    /// connection errors and timeouts, which is safe for every call this client makes:
    /// redeem with the same key returns the same tenant (CONTRACT.md §4), a check-in is
    /// idempotent, and a relayed check-in is accepted once (a retry of one that did
    /// land is refused as a replay, never applied twice).
    pub async fn post_json<B: Serialize, R: DeserializeOwned>(
        &self,
        url: &Url,
        body: &B,
    ) -> Result<std::result::Result<R, ApiError>> {
        let mut backoff = self.retry.initial_backoff;
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let req = self.http.post(url.clone()).json(body);
            let result = match req.send().await {
                Ok(resp) => read_response(resp).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => return Ok(r),
                Err(e) => {
                    let err = classify(url, &e);
                    let retryable = matches!(err, Error::Unreachable { .. });
                    if !retryable || attempt >= attempts {
                        return Err(err);
                    }
                    tracing::warn!(
                        http.url = %url,
                        attempt,
                        error = %err,
                        "license service not reachable; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}

async fn read_response<R: DeserializeOwned>(
    resp: reqwest::Response,
) -> std::result::Result<std::result::Result<R, ApiError>, reqwest::Error> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status.is_success() {
        if bytes.len() > MAX_BODY {
            return Ok(Err(ApiError {
                status,
                code: Some("response_too_large".into()),
                message: None,
            }));
        }
        return Ok(match serde_json::from_slice::<R>(&bytes) {
            Ok(r) => Ok(r),
            Err(_) => Err(ApiError {
                status,
                code: Some("malformed_response".into()),
                message: Some("the response body is not the expected JSON".into()),
            }),
        });
    }
    let parsed = serde_json::from_slice::<ErrorBody>(&bytes).ok();
    Ok(Err(ApiError {
        status,
        code: parsed.as_ref().map(|b| b.error.code.clone()),
        message: parsed.map(|b| b.error.message),
    }))
}

/// Tells a TLS failure (wrong service or wrong CA bundle: never retried) from an
/// unreachable service (retried).
fn classify(url: &Url, e: &reqwest::Error) -> Error {
    let shown = url_origin(url);
    if let Some(tls) = find_tls_error(e) {
        return Error::Tls {
            url: shown,
            detail: tls,
        };
    }
    let detail = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        root_cause(e)
    } else if e.is_decode() || e.is_body() {
        return Error::bad("the response could not be read");
    } else {
        root_cause(e)
    };
    Error::Unreachable { url: shown, detail }
}

fn url_origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn find_tls_error(e: &reqwest::Error) -> Option<String> {
    tls_in(e, 0).map(describe_tls)
}

/// The rustls error inside `err`: through `source()` and through the `io::Error`s that
/// wrap it (hyper-util nests one `io::Error` in another, and an `io::Error`'s
/// `source()` skips the error it wraps).
fn tls_in<'a>(err: &'a (dyn std::error::Error + 'static), depth: u32) -> Option<&'a rustls::Error> {
    if depth > 16 {
        return None;
    }
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(t) = tls_in(inner, depth + 1)
    {
        return Some(t);
    }
    err.source().and_then(|s| tls_in(s, depth + 1))
}

fn describe_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            format!("the service's certificate is not trusted by the CA bundle: {c:?}")
        }
        rustls::Error::AlertReceived(a) => format!("the service refused the TLS handshake ({a:?})"),
        other => format!("TLS error: {other}"),
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_url_rules() {
        assert!(parse_service_url("https://localhost:8443").is_ok());
        assert!(parse_service_url("http://localhost:8443").is_err());
        assert!(parse_service_url("localhost").is_err());
        let base = parse_service_url("https://h.example/api/").expect("url");
        assert_eq!(
            endpoint(&base, "/register").as_str(),
            "https://h.example/api/register"
        );
        let base = parse_service_url("https://h.example").expect("url");
        assert_eq!(
            endpoint(&base, "/register").as_str(),
            "https://h.example/register"
        );
    }
}
