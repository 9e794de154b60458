//! The issuer's API as the gateway calls it: reqwest on rustls (ring provider), mutual
//! TLS with the gateway's client certificate, the issuer's CA only, and timeouts.
//!
//! Errors are typed so the flows can tell "the issuer is down" (redeem answers 503
//! `license_service_unavailable`, nothing changed) from "the issuer refused this input"
//! (a CSR it will not sign is the caller's `csr_invalid`), and both from "the issuer
//! will not sign until an operator acts" (its appliance CA expired or expires too soon:
//! [`IssuerError::CaExpiring`], also a 503 for the caller, but counted apart as
//! `kind="ca_expiring"` and logged by the flows as an operator's task).
//!
//! License requests are coalesced under load: at most [`LICENSE_CALLS_IN_FLIGHT`]
//! license calls are in flight; a request that finds them all busy waits in a queue,
//! and the next call to go out takes everything queued (up to
//! [`ia::MAX_LICENSE_BATCH`]) as one `SIGN_LICENSES` batch. Alone, a request goes out at
//! once as a plain `SIGN_LICENSE` call, so light load sees no delay; under load the
//! issuer's per-request costs (TLS, HTTP, the signing log's fsync) are shared by the
//! batch. The calls run in their own tasks: a caller that gives up (its client went
//! away) never cancels the others' licenses. An issuer without the batch route (older
//! version, 404/405) gets the batch as single calls.
//!
//! Kept-alive connections: the issuer closes a connection that
//! has waited [`ISSUER_IDLE_CLOSE`] for its next request, and a request written on a
//! pooled connection just as the issuer closes it fails ("peer closed connection
//! without sending TLS close_notify"). Two measures:
//! - the pool drops a connection idle for [`POOL_IDLE_TIMEOUT`], well below the
//!   issuer's close, so a pooled connection is not one the issuer is about to close;
//! - the idempotent calls ([`IssuerClient::verify_code`], [`IssuerClient::derive_code`],
//!   [`IssuerClient::public_keys`], [`IssuerClient::health`]) that still fail because
//!   their connection was closed under them are sent once more, on a fresh connection
//!   (a second client that keeps no connection). Verifying and deriving change
//!   nothing (a derive adds one more `code_derive` line to the issuer's signing log,
//!   which reconciliation accounts for by the code's mint), reading keys and health
//!   neither.
//!
//! The signing calls (mint, license, batch, credential, checkpoint) are **never**
//! re-sent: a connection closed under a request does not say whether the issuer
//! received it, and if it did, it signed and logged: a second request would sign a
//! second code, license, certificate or checkpoint, the first one delivered to nobody
//! (and reported by reconciliation as signed but unrecorded). They rely on the idle
//! ordering above; a failure left is a 503 whose flow rolls back (the code stays usable).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alga_protocol::CodeBinding;
use alga_protocol::SecretText;
use alga_protocol::issuer_api::{
    self as ia, IssuerErrorBody, IssuerErrorCode, MintCodeRequest, MintCodeResponse, PublicKeys,
    SignCheckpointRequest, SignCredentialRequest, SignLicenseRequest, SignLogCheckpointRequest,
    SignedCheckpoint, SignedCredential, SignedLicense, SignedLogCheckpoint, VerifyCodeRequest,
    VerifyCodeResponse,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Most license calls in flight at once; requests beyond wait and go out as batches.
pub const LICENSE_CALLS_IN_FLIGHT: usize = 8;

/// How long the issuer keeps a connection open waiting for its next request:
/// `alga_issuer::server::HEADER_READ_TIMEOUT` (hyper's header-read timer runs while a
/// kept-alive connection waits). The gateway does not depend on the issuer crate; a
/// test checks the two agree.
pub const ISSUER_IDLE_CLOSE: Duration = Duration::from_secs(10);

/// The gateway closes pooled issuer connections idle this long: well below
/// [`ISSUER_IDLE_CLOSE`], so that the issuer is not closing a connection the gateway
/// takes from its pool (the margin covers a busy gateway returning a connection to
/// its pool seconds after the issuer sent the response).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Why an issuer call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssuerError {
    /// Connection refused, TLS failure, timeout: the issuer cannot be reached.
    #[error("issuer unreachable: {0}")]
    Unreachable(String),
    /// The issuer answered 5xx (HSM unavailable, internal).
    #[error("issuer unavailable ({status}): {message}")]
    Unavailable { status: u16, message: String },
    /// The issuer refused to sign because its active appliance CA has expired or
    /// expires too soon (its 503 `ca_expiring`): nothing was signed, and nothing will
    /// be until an operator rotates the CA. Unlike [`IssuerError::Unavailable`], it
    /// does not pass by itself.
    #[error("issuer refuses to sign, its appliance CA has expired or expires too soon: {message}")]
    CaExpiring { message: String },
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

/// A client of the issuer. Cheap to clone; clones share the license queue.
#[derive(Clone, Debug)]
pub struct IssuerClient {
    http: reqwest::Client,
    /// The same client without a pool: every request on a new connection (the one
    /// retry of an idempotent call whose pooled connection was closed).
    fresh: reqwest::Client,
    base: String,
    metrics: Arc<Metrics>,
    licenses: Arc<LicenseQueue>,
}

/// License requests waiting for a call, and the permits of the calls in flight.
#[derive(Debug)]
struct LicenseQueue {
    waiting: Mutex<Vec<PendingLicense>>,
    calls: Arc<tokio::sync::Semaphore>,
}

impl LicenseQueue {
    fn new(calls_in_flight: usize) -> LicenseQueue {
        LicenseQueue {
            waiting: Mutex::new(Vec::new()),
            calls: Arc::new(tokio::sync::Semaphore::new(calls_in_flight.max(1))),
        }
    }

    /// Takes up to [`ia::MAX_LICENSE_BATCH`] waiting requests, oldest first.
    fn take(&self) -> Vec<PendingLicense> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let n = waiting.len().min(ia::MAX_LICENSE_BATCH);
        waiting.drain(..n).collect()
    }
}

#[derive(Debug)]
struct PendingLicense {
    request: SignLicenseRequest,
    reply: tokio::sync::oneshot::Sender<Result<SignedLicense, IssuerError>>,
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
        let builder = || {
            reqwest::Client::builder()
                .use_preconfigured_tls(tls.clone())
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
        };
        let http = builder()
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| cfg(&e))?;
        let fresh = builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| cfg(&e))?;
        Ok(IssuerClient {
            http,
            fresh,
            base: base_url.trim_end_matches('/').to_owned(),
            metrics,
            licenses: Arc::new(LicenseQueue::new(LICENSE_CALLS_IN_FLIGHT)),
        })
    }

    /// The same client with at most `calls` license calls in flight (tests).
    pub fn with_license_calls_in_flight(mut self, calls: usize) -> IssuerClient {
        self.licenses = Arc::new(LicenseQueue::new(calls));
        self
    }

    /// Mints a code for the tenant.
    #[instrument(skip_all, fields(tenant.id = %tenant_id))]
    pub async fn mint_code(
        &self,
        tenant_id: Uuid,
        edition: &str,
        expires_at: OffsetDateTime,
        replaces_appliance_id: Option<Uuid>,
    ) -> Result<MintCodeResponse, IssuerError> {
        self.post(
            "mint_code",
            ia::MINT_CODE,
            &MintCodeRequest {
                tenant_id,
                edition: edition.to_owned(),
                expires_at,
                replaces_appliance_id,
            },
        )
        .await
    }

    /// Whether `code` is the code of `binding`. Idempotent: re-sent once on a fresh
    /// connection when its pooled one was closed (see the module doc).
    #[instrument(skip_all, fields(code.id = %binding.code_id))]
    pub async fn verify_code(
        &self,
        binding: &CodeBinding,
        code: SecretText,
    ) -> Result<bool, IssuerError> {
        let body = VerifyCodeRequest {
            binding: binding.clone(),
            code,
        };
        let url = format!("{}{}", self.base, ia::VERIFY_CODE);
        let r: VerifyCodeResponse = self
            .call_idempotent("verify_code", |c| c.post(&url).json(&body))
            .await?;
        Ok(r.valid)
    }

    /// Signs a license for the appliance: alone at once, or in the next batch when
    /// [`LICENSE_CALLS_IN_FLIGHT`] license calls are already out (see the module doc).
    #[instrument(skip_all, fields(tenant.id = %tenant_id, appliance.id = %appliance_id))]
    pub async fn sign_license(
        &self,
        tenant_id: Uuid,
        appliance_id: Uuid,
        edition: &str,
    ) -> Result<SignedLicense, IssuerError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.licenses
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(PendingLicense {
                request: SignLicenseRequest {
                    tenant_id,
                    appliance_id,
                    edition: edition.to_owned(),
                    lifetime_seconds: None,
                },
                reply,
            });
        self.dispatch_licenses();
        answer.await.unwrap_or_else(|_| {
            Err(IssuerError::Unreachable(
                "the license call ended without an answer".into(),
            ))
        })
    }

    /// Starts a call for the waiting license requests while a call permit is free.
    /// Every call, once answered, gives its permit back and dispatches again, so a
    /// request queued while all permits were out is never left behind.
    fn dispatch_licenses(&self) {
        loop {
            let Ok(permit) = Arc::clone(&self.licenses.calls).try_acquire_owned() else {
                return;
            };
            let batch = self.licenses.take();
            if batch.is_empty() {
                return;
            }
            let client = self.clone();
            tokio::spawn(async move {
                client.send_licenses(batch).await;
                drop(permit);
                client.dispatch_licenses();
            });
        }
    }

    /// One call for `batch`, each answer to its requester.
    async fn send_licenses(&self, mut batch: Vec<PendingLicense>) {
        if batch.len() == 1 {
            let p = batch.remove(0);
            let result = self
                .post("sign_license", ia::SIGN_LICENSE, &p.request)
                .await;
            let _ = p.reply.send(result);
            return;
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        let body = ia::SignLicensesRequest { licenses: requests };
        let result: Result<ia::SignLicensesResponse, IssuerError> =
            self.post("sign_licenses", ia::SIGN_LICENSES, &body).await;
        match result {
            Ok(r) if r.results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(r.results) {
                    let _ = reply.send(match result {
                        ia::LicenseResult::License(l) => Ok(l),
                        ia::LicenseResult::Error(e) => {
                            // The batch call succeeded; its item failed as the single
                            // call would have, and is counted as that call's failure.
                            let e = refusal(e);
                            self.metrics.issuer_error("sign_license", error_kind(&e));
                            Err(e)
                        }
                    });
                }
            }
            Ok(r) => {
                let e = IssuerError::Protocol(format!(
                    "{} results for a batch of {} licenses",
                    r.results.len(),
                    replies.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) if lacks_batch_route(&e) => {
                // An issuer without the batch route (an older version: 404 or 405,
                // `bad_request`): each license as its own call, all at once. Never
                // after an answer that may have signed the batch (a 200 that does not
                // parse, a 5xx), which would sign those licenses twice.
                let calls = body.licenses.iter().map(|request| async move {
                    self.post::<_, SignedLicense>("sign_license", ia::SIGN_LICENSE, request)
                        .await
                });
                let results = futures::future::join_all(calls).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
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

    /// Signs a checkpoint of the audit log's Merkle tree: `size` leaves, RFC 6962
    /// root hash `root_hash`. The issuer writes the checkpoint body under its own
    /// origin and returns the whole signed note (verify it with `PublicKeys::log_keys`).
    pub async fn sign_log_checkpoint(
        &self,
        size: u64,
        root_hash: [u8; 32],
    ) -> Result<SignedLogCheckpoint, IssuerError> {
        self.post(
            "sign_log_checkpoint",
            ia::SIGN_LOG_CHECKPOINT,
            &SignLogCheckpointRequest {
                size,
                root_hash: STANDARD.encode(root_hash),
            },
        )
        .await
    }

    /// Every public key and certificate the issuer publishes. Idempotent (see
    /// [`IssuerClient::verify_code`]).
    pub async fn public_keys(&self) -> Result<PublicKeys, IssuerError> {
        let url = format!("{}{}", self.base, ia::PUBLIC_KEYS);
        self.call_idempotent("public_keys", |c| c.get(&url)).await
    }

    /// Liveness of the issuer (for `/readyz`). Idempotent (see
    /// [`IssuerClient::verify_code`]).
    pub async fn health(&self) -> Result<(), IssuerError> {
        let url = format!("{}{}", self.base, ia::HEALTH);
        let request = |c: &reqwest::Client| c.get(&url).timeout(Duration::from_secs(2));
        let resp = match request(&self.http).send().await {
            Err(e) if closed_under_us(&e) => {
                retry_note("health", &e);
                request(&self.fresh).send().await
            }
            other => other,
        }
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

    /// An idempotent call: sent on a pooled connection, and once more on a fresh one
    /// if that connection was closed under the request (see the module doc).
    async fn call_idempotent<Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Resp, IssuerError> {
        let started = Instant::now();
        let sent = match request(&self.http).send().await {
            Err(e) if closed_under_us(&e) => {
                retry_note(op, &e);
                request(&self.fresh).send().await
            }
            other => other,
        };
        self.finish(op, started, sent).await
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Resp, IssuerError> {
        let started = Instant::now();
        let sent = req.send().await;
        self.finish(op, started, sent).await
    }

    /// Reads the answer of a sent request, maps it, and records the call's metrics.
    async fn finish<Resp: DeserializeOwned>(
        &self,
        op: &'static str,
        started: Instant,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Resp, IssuerError> {
        let result = async {
            let resp = sent.map_err(|e| IssuerError::Unreachable(error_chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| IssuerError::Unreachable(error_chain(&e)))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| IssuerError::Protocol(e.to_string()));
            }
            Err(answer_error(status, &bytes))
        }
        .await;
        self.metrics
            .issuer_call(op, started.elapsed(), result.as_ref().err().map(error_kind));
        result
    }
}

/// The error an answer other than 2xx stands for. The issuer's body carries a stable
/// code: a 4xx is a refusal of this input; a 5xx is an issuer that is failing (and may
/// recover), except `ca_expiring`, which stays until its CA is rotated.
fn answer_error(status: reqwest::StatusCode, body: &[u8]) -> IssuerError {
    let detail = serde_json::from_slice::<IssuerErrorBody>(body).ok();
    let message = detail
        .as_ref()
        .map(|d| d.error.message.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    match detail {
        Some(d) if d.error.code == IssuerErrorCode::CaExpiring => {
            IssuerError::CaExpiring { message }
        }
        Some(d) if status.is_client_error() => IssuerError::Refused {
            code: d.error.code,
            message,
        },
        _ if status.is_server_error() => IssuerError::Unavailable {
            status: status.as_u16(),
            message,
        },
        _ => IssuerError::Protocol(format!("HTTP {status}: {message}")),
    }
}

/// Whether a request failed because its connection was closed under it: the issuer
/// closed it (an idle close crossing the request, a restart) before any answer. Not a
/// failure to connect and not a timeout (those are no keep-alive race, and a second
/// try would only double the wait). Only idempotent calls act on it.
fn closed_under_us(e: &reqwest::Error) -> bool {
    if e.is_connect() || e.is_timeout() || !e.is_request() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(h) = inner.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return true;
        }
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        source = inner.source();
    }
    false
}

/// Logs the one retry of an idempotent call (the error names no secret: the request
/// body is not part of it).
fn retry_note(op: &'static str, e: &reqwest::Error) {
    tracing::info!(
        issuer.op = op,
        error = %error_chain(e),
        "issuer connection closed under the request; sending it once more on a fresh connection"
    );
}

/// Whether a batch call failed because the issuer has no batch route (it then signed
/// nothing): its 404/405 `bad_request`, or a bare 404/405 from something in between.
fn lacks_batch_route(e: &IssuerError) -> bool {
    match e {
        IssuerError::Refused { code, .. } => *code == IssuerErrorCode::BadRequest,
        IssuerError::Protocol(m) => m.starts_with("HTTP 404") || m.starts_with("HTTP 405"),
        _ => false,
    }
}

/// A batch's per-license error as the single call would have reported it.
fn refusal(e: ia::IssuerErrorDetail) -> IssuerError {
    match e.code {
        IssuerErrorCode::HsmUnavailable => IssuerError::Unavailable {
            status: 503,
            message: e.message,
        },
        IssuerErrorCode::Internal => IssuerError::Unavailable {
            status: 500,
            message: e.message,
        },
        IssuerErrorCode::CaExpiring => IssuerError::CaExpiring { message: e.message },
        code => IssuerError::Refused {
            code,
            message: e.message,
        },
    }
}

fn error_kind(e: &IssuerError) -> &'static str {
    match e {
        IssuerError::Unreachable(_) => "unreachable",
        IssuerError::Unavailable { .. } => "unavailable",
        IssuerError::CaExpiring { .. } => "ca_expiring",
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
    /// Re-derives the code of a stored binding (the mail worker; the code is never
    /// stored). Idempotent (see [`IssuerClient::verify_code`]).
    #[instrument(skip_all, fields(code.id = %binding.code_id))]
    pub async fn derive_code(&self, binding: &CodeBinding) -> Result<SecretText, IssuerError> {
        let body = ia::DeriveCodeRequest {
            binding: binding.clone(),
        };
        let url = format!("{}{}", self.base, ia::DERIVE_CODE);
        let r: ia::DeriveCodeResponse = self
            .call_idempotent("derive_code", |c| c.post(&url).json(&body))
            .await?;
        Ok(r.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_batch_route_falls_back_to_single_calls() {
        let refused = |code| IssuerError::Refused {
            code,
            message: "m".into(),
        };
        // An older issuer's 404/405 (its bad_request body, or a bare status).
        assert!(lacks_batch_route(&refused(IssuerErrorCode::BadRequest)));
        assert!(lacks_batch_route(&IssuerError::Protocol(
            "HTTP 404 Not Found: no such endpoint".into()
        )));
        assert!(lacks_batch_route(&IssuerError::Protocol(
            "HTTP 405 Method Not Allowed: x".into()
        )));
        // Answers after which the batch may have been signed are never retried singly.
        assert!(!lacks_batch_route(&IssuerError::Protocol(
            "expected value at line 1 column 1".into()
        )));
        assert!(!lacks_batch_route(&IssuerError::Unavailable {
            status: 503,
            message: "m".into()
        }));
        assert!(!lacks_batch_route(&IssuerError::Unreachable(
            "timeout".into()
        )));
        assert!(!lacks_batch_route(&refused(IssuerErrorCode::Forbidden)));
    }

    #[test]
    fn a_batch_items_error_is_what_the_single_call_would_have_returned() {
        let detail = |code| ia::IssuerErrorDetail {
            code,
            message: "m".into(),
        };
        assert!(matches!(
            refusal(detail(IssuerErrorCode::HsmUnavailable)),
            IssuerError::Unavailable { status: 503, .. }
        ));
        assert!(matches!(
            refusal(detail(IssuerErrorCode::Internal)),
            IssuerError::Unavailable { status: 500, .. }
        ));
        assert!(matches!(
            refusal(detail(IssuerErrorCode::EditionNotPaid)),
            IssuerError::Refused {
                code: IssuerErrorCode::EditionNotPaid,
                ..
            }
        ));
        let e = refusal(detail(IssuerErrorCode::CaExpiring));
        assert!(matches!(e, IssuerError::CaExpiring { .. }), "{e:?}");
        assert_eq!(error_kind(&e), "ca_expiring");
    }

    #[test]
    fn the_issuers_answers_map_to_typed_errors() {
        let body = |code: &str| {
            format!(
                r#"{{"error":{{"code":"{code}","message":"appliance CA ca-2 expires 2027-01-01"}}}}"#
            )
        };
        let status = |n| reqwest::StatusCode::from_u16(n).expect("status");
        // The CA refusal: its own kind, whatever status carries it.
        for n in [503, 400] {
            let e = answer_error(status(n), body("ca_expiring").as_bytes());
            assert!(
                matches!(&e, IssuerError::CaExpiring { message } if message.contains("ca-2")),
                "{n}: {e:?}"
            );
            assert_eq!(error_kind(&e), "ca_expiring");
        }
        assert!(matches!(
            answer_error(status(503), body("hsm_unavailable").as_bytes()),
            IssuerError::Unavailable { status: 503, .. }
        ));
        assert!(matches!(
            answer_error(status(400), body("csr_invalid").as_bytes()),
            IssuerError::Refused {
                code: IssuerErrorCode::CsrInvalid,
                ..
            }
        ));
        assert!(matches!(
            answer_error(status(502), b"<html>bad gateway</html>"),
            IssuerError::Unavailable { status: 502, .. }
        ));
        assert!(matches!(
            answer_error(status(404), b"not found"),
            IssuerError::Protocol(_)
        ));
    }
}
