//! The mTLS client: identity files, pinned trust, and the service's stable error body.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alga_protocol::api::ErrorBody;
use anyhow::{Context, Result, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where to reach the gateway and who we are.
#[derive(Debug, Clone)]
pub struct Identity {
    pub gateway_url: String,
    pub ca_bundle: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A failure the service reported with its stable error body.
#[derive(Debug)]
pub struct ServiceError {
    pub status: u16,
    pub body: ErrorBody,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.body.error;
        write!(
            f,
            "the service answered {} {}: {} (request {})",
            self.status, e.code, e.message, e.request_id
        )?;
        if let Some(fields) = &e.fields {
            for (field, problem) in fields {
                write!(f, "\n  {field}: {problem}")?;
            }
        }
        if let Some(t) = e.tenant_id {
            write!(f, "\n  existing tenant: {t}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {}

/// An HTTP client that presents `identity` and trusts only its CA bundle.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(identity: &Identity) -> Result<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&identity.ca_bundle)? {
            roots
                .add(cert)
                .context("adding the CA bundle to the trust store")?;
        }
        let chain = read_certs(&identity.cert)?;
        let key = PrivateKeyDer::from_pem_file(&identity.key)
            .with_context(|| format!("reading private key {}", identity.key.display()))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the client certificate and key do not match")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: identity.gateway_url.trim_end_matches('/').to_owned(),
        })
    }

    /// GET `path` and decode the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(unreachable)?;
        decode(resp).await
    }

    /// GET `path`, a text answer (e.g. the log's verifier keys), as it came.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the response")?;
        if status.is_success() {
            return String::from_utf8(bytes.to_vec())
                .context("the service's answer is not UTF-8 text");
        }
        Err(error_of(status, &bytes))
    }

    /// POST `body` as JSON (with optional extra headers) and decode the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, String)],
    ) -> Result<T> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.map_err(unreachable)?;
        decode(resp).await
    }

    /// PUT `body` as JSON and decode the JSON answer.
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        decode(resp).await
    }
}

/// The request did not get an answer: the message names why, down the error's whole
/// chain ("… tcp connect error: Connection refused", "… invalid peer certificate:
/// UnknownIssuer"), since reqwest's own message says only which URL it was sending to.
fn unreachable(e: reqwest::Error) -> anyhow::Error {
    let mut why = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !why.ends_with(&said) {
            why = format!("{why}: {said}");
        }
        cause = c.source();
    }
    anyhow::anyhow!("cannot reach the gateway: {why}")
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    let status = resp.status();
    let bytes = resp.bytes().await.context("reading the response")?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .context("the service's answer is not what this client expects");
    }
    Err(error_of(status, &bytes))
}

/// The service's stable error body of a failed answer.
fn error_of(status: reqwest::StatusCode, bytes: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ServiceError {
            status: status.as_u16(),
            body,
        }
        .into(),
        Err(_) => anyhow::anyhow!("the service answered {status} without an error body"),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}
