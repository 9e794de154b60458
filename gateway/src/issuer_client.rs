//! The issuer's API as the gateway calls it: reqwest on rustls (ring provider), mutual
//! TLS with the gateway's client certificate, the issuer's CA only, and timeouts.
//!
//! Errors are typed so the flows can tell "the issuer is down" (redeem answers 503
//! `license_service_unavailable`, nothing changed) from "the issuer refused this input"
//! (a CSR it will not sign is the caller's `csr_invalid`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alga_protocol::CodeBinding;
use alga_protocol::SecretText;
use alga_protocol::issuer_api::{
    self as ia, IssuerErrorBody, IssuerErrorCode, MintCodeRequest, MintCodeResponse, PublicKeys,
    SignCheckpointRequest, SignCredentialRequest, SignLicenseRequest, SignedCheckpoint,
    SignedCredential, SignedLicense, VerifyCodeRequest, VerifyCodeResponse,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Why an issuer call failed.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Connection refused, TLS failure, timeout: the issuer cannot be reached.
    #[error("issuer unreachable: {0}")]
    Unreachable(String),
    /// The issuer answered 5xx (HSM unavailable, internal).
    #[error("issuer unavailable ({status}): {message}")]
    Unavailable { status: u16, message: String },
    /// The issuer refused the request (4xx) with a stable code.
    #[error("issuer refused ({code:?}): {message}")]
    Refused {
        code: IssuerErrorCode,
        message: String,
    },
    /// The issuer answered something that is not its API.
    #[error("issuer protocol error: {0}")]
    Protocol(String),
    /// The client could not be built (files, certificates).
    #[error("issuer client configuration: {0}")]
    Config(String),
}

/// A client of the issuer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IssuerClient {
    http: reqwest::Client,
    base: String,
    metrics: Arc<Metrics>,
}

impl IssuerClient {
    /// Builds the mTLS client from PEM files.
    pub fn new(
        base_url: &str,
        ca: &Path,
        certificate: &Path,
        private_key: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<IssuerClient, IssuerError> {
        let cfg = |e: &dyn std::fmt::Display| IssuerError::Config(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| cfg(&e))? {
            roots.add(c.map_err(|e| cfg(&e))?).map_err(|e| cfg(&e))?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
            .map_err(|e| cfg(&e))?
            .collect::<Result<_, _>>()
            .map_err(|e| cfg(&e))?;
        let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| cfg(&e))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| cfg(&e))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| cfg(&e))?;
        Ok(IssuerClient {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            metrics,
        })
    }

    /// Mints a code for the tenant.
    #[instrument(skip_all, fields(tenant.id = %tenant_id))]
    pub async fn mint_code(
        &self,
        tenant_id: Uuid,
        edition: &str,
        expires_at: OffsetDateTime,
    ) -> Result<MintCodeResponse, IssuerError> {
        self.post(
            "mint_code",
            ia::MINT_CODE,
            &MintCodeRequest {
                tenant_id,
                edition: edition.to_owned(),
                expires_at,
            },
        )
        .await
    }

    /// Whether `code` is the code of `binding`.
    #[instrument(skip_all, fields(code.id = %binding.code_id))]
    pub async fn verify_code(
        &self,
        binding: &CodeBinding,
        code: SecretText,
    ) -> Result<bool, IssuerError> {
        let r: VerifyCodeResponse = self
            .post(
                "verify_code",
                ia::VERIFY_CODE,
                &VerifyCodeRequest {
                    binding: binding.clone(),
                    code,
                },
            )
            .await?;
        Ok(r.valid)
    }

    /// Signs a license for the appliance.
    #[instrument(skip_all, fields(tenant.id = %tenant_id, appliance.id = %appliance_id))]
    pub async fn sign_license(
        &self,
        tenant_id: Uuid,
        appliance_id: Uuid,
        edition: &str,
    ) -> Result<SignedLicense, IssuerError> {
        self.post(
            "sign_license",
            ia::SIGN_LICENSE,
            &SignLicenseRequest {
                tenant_id,
                appliance_id,
                edition: edition.to_owned(),
                lifetime_seconds: None,
            },
        )
        .await
    }

    /// Signs an appliance credential from the CSR.
    #[instrument(skip_all, fields(tenant.id = %tenant_id, appliance.id = %appliance_id))]
    pub async fn sign_credential(
        &self,
        tenant_id: Uuid,
        appliance_id: Uuid,
        edition: &str,
        csr_pem: &str,
    ) -> Result<SignedCredential, IssuerError> {
        self.post(
            "sign_credential",
            ia::SIGN_CREDENTIAL,
            &SignCredentialRequest {
                tenant_id,
                appliance_id,
                edition: edition.to_owned(),
                csr_pem: csr_pem.to_owned(),
                lifetime_seconds: None,
            },
        )
        .await
    }

    /// Signs an audit checkpoint.
    pub async fn sign_checkpoint(
        &self,
        sequence: u64,
        head_hash: &str,
    ) -> Result<SignedCheckpoint, IssuerError> {
        self.post(
            "sign_checkpoint",
            ia::SIGN_CHECKPOINT,
            &SignCheckpointRequest {
                sequence,
                head_hash: head_hash.to_owned(),
            },
        )
        .await
    }

    /// Every public key and certificate the issuer publishes.
    pub async fn public_keys(&self) -> Result<PublicKeys, IssuerError> {
        self.call(
            "public_keys",
            self.http.get(format!("{}{}", self.base, ia::PUBLIC_KEYS)),
        )
        .await
    }

    /// Liveness of the issuer (for `/readyz`).
    pub async fn health(&self) -> Result<(), IssuerError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, ia::HEALTH))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| IssuerError::Unreachable(e.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(IssuerError::Unavailable {
                status: resp.status().as_u16(),
                message: "health check failed".into(),
            })
        }
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        body: &Req,
    ) -> Result<Resp, IssuerError> {
        self.call(
            op,
            self.http.post(format!("{}{}", self.base, path)).json(body),
        )
        .await
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Resp, IssuerError> {
        let started = Instant::now();
        let result = async {
            let resp = req
                .send()
                .await
                .map_err(|e| IssuerError::Unreachable(error_chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| IssuerError::Unreachable(error_chain(&e)))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| IssuerError::Protocol(e.to_string()));
            }
            let detail = serde_json::from_slice::<IssuerErrorBody>(&bytes).ok();
            let message = detail
                .as_ref()
                .map(|d| d.error.message.clone())
                .unwrap_or_else(|| format!("HTTP {status}"));
            match detail {
                Some(d) if status.is_client_error() => Err(IssuerError::Refused {
                    code: d.error.code,
                    message,
                }),
                _ if status.is_server_error() => Err(IssuerError::Unavailable {
                    status: status.as_u16(),
                    message,
                }),
                _ => Err(IssuerError::Protocol(format!("HTTP {status}: {message}"))),
            }
        }
        .await;
        self.metrics
            .issuer_call(op, started.elapsed(), result.as_ref().err().map(error_kind));
        result
    }
}

fn error_kind(e: &IssuerError) -> &'static str {
    match e {
        IssuerError::Unreachable(_) => "unreachable",
        IssuerError::Unavailable { .. } => "unavailable",
        IssuerError::Refused { .. } => "refused",
        IssuerError::Protocol(_) => "protocol",
        IssuerError::Config(_) => "config",
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl IssuerClient {
    /// Re-derives the code of a stored binding (the mail worker; the code is never stored).
    #[instrument(skip_all, fields(code.id = %binding.code_id))]
    pub async fn derive_code(&self, binding: &CodeBinding) -> Result<SecretText, IssuerError> {
        let r: ia::DeriveCodeResponse = self
            .post(
                "derive_code",
                ia::DERIVE_CODE,
                &ia::DeriveCodeRequest {
                    binding: binding.clone(),
                },
            )
            .await?;
        Ok(r.code)
    }
}
