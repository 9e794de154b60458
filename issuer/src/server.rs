//! The issuer's API: JSON over HTTP/1.1 on mutual TLS, to the gateway's identity only.
//!
//! - TLS: rustls with the **ring** provider (never aws-lc-rs), TLS 1.3 only (both ends
//!   are ours), client certificates required and verified against `tls.client_ca`.
//! - Who may call: after the handshake, the verified leaf must carry exactly one URI
//!   SAN and the clientAuth EKU, and the policy must map that URI to the `gateway`
//!   role. Any other client (a store or auditor identity from the same CA, a
//!   certificate without EKU) gets `403 forbidden` on every request of its
//!   connection, and its identity is logged once. A certificate from another CA never
//!   completes the handshake.
//! - Every signing route writes the signing log (fsynced) before it replies; if the
//!   log cannot be written the request fails with 503 and the signature is dropped.
//! - `POST /v1/licenses/batch` ([`api::SIGN_LICENSES`]) signs and logs 1 to
//!   [`api::MAX_LICENSE_BATCH`] licenses concurrently, each exactly as the single route
//!   would: one result per license in request order, a refused license carrying the
//!   single route's error code and message. If the log fails for any of them the whole
//!   request is 503 and no license is released (those of the batch already logged stay
//!   in the log undelivered, like a single request whose reply was lost:
//!   reconciliation reports them as signed but not recorded).
//! - Errors are [`IssuerErrorBody`]; a 5xx never carries internal detail (the log
//!   does). Bodies are limited to [`MAX_BODY_BYTES`]; requests refuse unknown fields.
//! - The issuer never talks to Postgres, SMTP or S3: there is no code for it here.
//!
//! A hand-written accept loop (tokio-rustls + hyper) rather than axum-server, because
//! the identity is decided once per connection from the verified peer certificate and
//! attached to each request as a [`Client`] extension.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alga_policies::{Policy, Role};
use alga_protocol::issuer_api::{
    self as api, DeriveCodeRequest, DeriveCodeResponse, IssuerErrorBody, IssuerErrorCode,
    IssuerErrorDetail, LicenseResult, MintCodeRequest, MintCodeResponse, PublicKeys,
    SignCheckpointRequest, SignCredentialRequest, SignLicenseRequest, SignLicensesRequest,
    SignLicensesResponse, SignLogCheckpointRequest, SignedCheckpoint, SignedCredential,
    SignedLicense, SignedLogCheckpoint, VerifyCodeRequest, VerifyCodeResponse,
};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{Instrument, instrument};

use crate::config::{IssuerConfig, LogOrigin, TlsConfig};
use crate::keyring::KeyOps;
use crate::ops::{self, OpsError, Signed};
use crate::signlog::{SignLog, SignlogError, SignlogOptions};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A client has this long to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client has this long to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, connections get this long to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS files cannot be read or used (names the file, never its content).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The signing log cannot be opened.
    #[error(transparent)]
    Signlog(#[from] SignlogError),
    /// The listening socket cannot be used.
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    /// A start-up task failed.
    #[error("start-up: {0}")]
    Startup(String),
}

/// Serves the issuer API on `listener` until `shutdown` resolves, then lets open
/// connections finish (up to [`SHUTDOWN_GRACE`]).
///
/// Generic over the key store so that tests can run the real server over software
/// keys too; production passes `hsm::Hsm`.
pub async fn run<K: KeyOps + Clone>(
    config: IssuerConfig,
    policy: Policy,
    keys: K,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let tls = Arc::new(tls_config(&config.tls)?);
    let log_dir = config.log.directory.clone();
    let signlog =
        tokio::task::spawn_blocking(move || SignLog::open(&log_dir, SignlogOptions::default()))
            .await
            .map_err(|e| ServerError::Startup(e.to_string()))??;
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Listener)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ServerError::Listener)?;
    // Never sign a license the appliances would refuse: the policy must be within
    // what the trust root endorsed the active license key for.
    crate::endorse::check_policy_covered(&keys, &policy).map_err(ServerError::Startup)?;
    let policy = Arc::new(policy);
    let watcher = tokio::spawn(watch_ca(keys.clone(), policy.clone()));
    let app = App {
        keys,
        policy: policy.clone(),
        signlog,
        origin: Arc::new(config.audit_log.origin),
    };
    serve(listener, TlsAcceptor::from(tls), policy, app, shutdown).await;
    watcher.abort();
    Ok(())
}

/// How long before the active appliance CA ends the issuer starts warning.
pub const CA_WARN_BEFORE: time::Duration = time::Duration::days(90);

/// How often the CA's remaining lifetime is logged once it is within
/// [`CA_WARN_BEFORE`].
const CA_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Logs, at start and every few hours, how long the active appliance CA has left:
/// a warning within [`CA_WARN_BEFORE`], an error once credentials are refused.
async fn watch_ca<K: KeyOps>(keys: K, policy: Arc<Policy>) {
    let mut tick = tokio::time::interval(CA_WATCH_EVERY);
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc();
        match crate::ops::credential::active_ca(&keys) {
            Ok(ca) => {
                let left = ca.not_after - now;
                if crate::ops::credential::check_ca_usable(&ca, &policy, now).is_err() {
                    tracing::error!(
                        ca.version = ca.version,
                        ca.not_after = %ca.not_after,
                        "the appliance CA expires too soon: credentials are refused until it is rotated (`alga-issuer keys rotate ca`)"
                    );
                } else if left < CA_WARN_BEFORE {
                    tracing::warn!(
                        ca.version = ca.version,
                        ca.not_after = %ca.not_after,
                        ca.days_left = left.whole_days(),
                        "the appliance CA expires soon: rotate it (`alga-issuer keys rotate ca`)"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "the appliance CA cannot be read"),
        }
    }
}

/// The accept loop.
async fn serve<K: KeyOps + Clone>(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    policy: Arc<Policy>,
    app: App<K>,
    shutdown: impl Future<Output = ()>,
) {
    let authorized = router(app);
    let forbidden = Router::new().fallback(forbidden);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen.address = %addr, "issuer API listening");
    }
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let policy = policy.clone();
        let authorized = authorized.clone();
        let forbidden = forbidden.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                };
                let service = match authorize(&policy, tls.get_ref().1.peer_certificates()) {
                    Ok(client) => {
                        tracing::debug!(client.uri = %client.uri, "gateway connected");
                        authorized
                            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                                req.extensions_mut().insert(client.clone());
                                req
                            })
                            .boxed_clone()
                    }
                    Err(refusal) => {
                        tracing::warn!(
                            client.uri = refusal.uri.as_deref().unwrap_or("-"),
                            reason = refusal.reason,
                            "client refused: not the gateway"
                        );
                        forbidden
                            .map_request(|req: Request<hyper::body::Incoming>| req)
                            .boxed_clone()
                    }
                };
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(true);
                let conn =
                    http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::info_span!("connection", net.peer = %peer)),
        );
    }
    drop(listener);
    tracing::info!("issuer API shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// The rustls server configuration: ring provider, TLS 1.3, client certificates
/// required and verified against the client CA bundle.
pub fn tls_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read_certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, ServerError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ServerError::Tls(format!(
                "{}: no certificate",
                path.display()
            )));
        }
        Ok(certs)
    };
    let chain = read_certs(&tls.certificate)?;
    // The error of a key file names the file and the PEM problem, never its content.
    let key = PrivateKeyDer::from_pem_file(&tls.private_key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.private_key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&tls.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.client_ca.display())))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ServerError::Tls(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The authorized client of a connection (attached to each of its requests).
#[derive(Debug, Clone)]
pub struct Client {
    /// The certificate's single URI SAN.
    pub uri: Arc<str>,
}

/// Why a verified client is not allowed in.
#[derive(Debug)]
struct Refusal {
    uri: Option<String>,
    reason: &'static str,
}

/// Decides from the (already chain-verified) peer certificate whether the client is
/// the gateway: exactly one URI SAN, clientAuth EKU, and the policy's `gateway` role.
fn authorize(policy: &Policy, peer: Option<&[CertificateDer<'static>]>) -> Result<Client, Refusal> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};

    let refuse = |uri: Option<String>, reason| Refusal { uri, reason };
    let leaf = peer
        .and_then(|chain| chain.first())
        .ok_or_else(|| refuse(None, "no client certificate"))?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|_| refuse(None, "unparseable certificate"))?;
    let mut uris = Vec::new();
    let mut client_auth = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_owned());
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => client_auth = eku.client_auth,
            _ => {}
        }
    }
    let uri = match uris.as_slice() {
        [one] => one.clone(),
        [] => return Err(refuse(None, "no URI SAN")),
        _ => return Err(refuse(Some(uris.join(",")), "more than one URI SAN")),
    };
    if !client_auth {
        return Err(refuse(Some(uri), "no clientAuth EKU"));
    }
    if policy.role_of(&uri) != Some(Role::Gateway) {
        return Err(refuse(Some(uri), "not the gateway's identity"));
    }
    Ok(Client { uri: uri.into() })
}

/// What every handler shares.
#[derive(Clone)]
struct App<K> {
    keys: K,
    policy: Arc<Policy>,
    signlog: SignLog,
    /// The transparency log's origin (`audit_log.origin`): checkpoint origin line and
    /// log key name.
    origin: Arc<LogOrigin>,
}

impl<K> App<K> {
    /// Logs a signing operation durably, then releases its result.
    async fn logged<T>(&self, signed: Signed<T>) -> Result<(T, u64), ApiError> {
        let op = signed.event.op;
        let logged = self.signlog.append(signed.event).await.map_err(|e| {
            tracing::error!(op = %op, error = %e, "signing log unavailable: result discarded");
            ApiError::Signlog
        })?;
        Ok((signed.value, logged.seq))
    }
}

fn router<K: KeyOps + Clone>(app: App<K>) -> Router {
    Router::new()
        .route(api::MINT_CODE, post(mint_code::<K>))
        .route(api::DERIVE_CODE, post(derive_code::<K>))
        .route(api::VERIFY_CODE, post(verify_code::<K>))
        .route(api::SIGN_LICENSE, post(sign_license::<K>))
        .route(api::SIGN_LICENSES, post(sign_licenses::<K>))
        .route(api::SIGN_CREDENTIAL, post(sign_credential::<K>))
        .route(api::SIGN_CHECKPOINT, post(sign_checkpoint::<K>))
        .route(api::SIGN_LOG_CHECKPOINT, post(sign_log_checkpoint::<K>))
        .route(api::PUBLIC_KEYS, get(public_keys::<K>))
        .route(api::HEALTH, get(health::<K>))
        .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(app)
}

/// A span per request with the gateway's `x-request-id` (echoed back), when sane.
async fn request_span(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let client = req.extensions().get::<Client>().map(|c| c.uri.clone());
    let span = tracing::info_span!(
        "request",
        request.id = id.as_deref().unwrap_or("-"),
        http.method = %req.method(),
        http.path = %req.uri().path(),
        client.uri = client.as_deref().unwrap_or("-"),
    );
    let mut response = next.run(req).instrument(span).await;
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[instrument(skip_all)]
async fn mint_code<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<MintCodeRequest>,
) -> Result<Json<MintCodeResponse>, ApiError> {
    let signed = ops::codes::mint(&app.keys, &app.policy, &req, OffsetDateTime::now_utc())
        .await
        .map_err(|e| refused("code_mint", e))?;
    let (value, seq) = app.logged(signed).await?;
    tracing::info!(
        tenant.id = %value.binding.tenant_id,
        code.id = %value.binding.code_id,
        code.expires_at = %value.binding.expires_at,
        signlog.seq = seq,
        "code minted"
    );
    Ok(Json(value))
}

#[instrument(skip_all)]
async fn derive_code<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<DeriveCodeRequest>,
) -> Result<Json<DeriveCodeResponse>, ApiError> {
    let signed = ops::codes::derive(
        &app.keys,
        &app.policy,
        &req.binding,
        OffsetDateTime::now_utc(),
    )
    .await
    .map_err(|e| refused("code_derive", e))?;
    let (value, seq) = app.logged(signed).await?;
    tracing::info!(
        tenant.id = %req.binding.tenant_id,
        code.id = %req.binding.code_id,
        signlog.seq = seq,
        "code derived"
    );
    Ok(Json(value))
}

#[instrument(skip_all)]
async fn verify_code<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<VerifyCodeRequest>,
) -> Result<Json<VerifyCodeResponse>, ApiError> {
    let answer = ops::codes::verify(&app.keys, &req.binding, &req.code)
        .await
        .map_err(|e| refused("code_verify", e))?;
    tracing::info!(
        tenant.id = %req.binding.tenant_id,
        code.id = %req.binding.code_id,
        code.valid = answer.valid,
        "code verified"
    );
    Ok(Json(answer))
}

#[instrument(skip_all)]
async fn sign_license<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<SignLicenseRequest>,
) -> Result<Json<SignedLicense>, ApiError> {
    let signed = ops::license::sign(&app.keys, &app.policy, &req, OffsetDateTime::now_utc())
        .await
        .map_err(|e| refused("license", e))?;
    Ok(Json(license_logged(&app, &req, signed).await?))
}

/// Logs a signed license durably, then releases it (both license routes).
async fn license_logged<K>(
    app: &App<K>,
    req: &SignLicenseRequest,
    signed: Signed<SignedLicense>,
) -> Result<SignedLicense, ApiError> {
    let (value, seq) = app.logged(signed).await?;
    tracing::info!(
        tenant.id = %req.tenant_id,
        appliance.id = %req.appliance_id,
        license.jti = %value.jti,
        license.kid = %value.kid,
        signlog.seq = seq,
        "license signed"
    );
    Ok(value)
}

/// Signs and logs each license of the batch as [`sign_license`] would: every license
/// signed first, concurrently (both HSM workers busy), then every record appended at
/// once, so the signing log's writer finds the whole batch waiting and fsyncs it once
/// (group commit). One result per license, in request order.
///
/// A signing-log failure for any license fails the whole request with 503 and releases
/// no license. Licenses of the batch that were logged before it are then in the
/// signing log but were never delivered, as after a single request whose reply was
/// lost: reconciliation reports them as signed but not recorded by the gateway.
#[instrument(skip_all, fields(batch.size))]
async fn sign_licenses<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<SignLicensesRequest>,
) -> Result<Json<SignLicensesResponse>, ApiError> {
    let count = req.licenses.len();
    tracing::Span::current().record("batch.size", count);
    if count == 0 || count > api::MAX_LICENSE_BATCH {
        tracing::info!("license batch refused: size");
        return Err(ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "a batch holds 1 to {} licenses, got {count}",
                api::MAX_LICENSE_BATCH
            ),
        });
    }
    let now = OffsetDateTime::now_utc();
    let app = &app;
    let signed = futures::future::join_all(req.licenses.iter().map(|item| async move {
        ops::license::sign(&app.keys, &app.policy, item, now)
            .await
            .map_err(|e| refused("license", e))
    }))
    .await;
    let outcomes = futures::future::join_all(
        signed
            .into_iter()
            .zip(&req.licenses)
            .map(|(signed, item)| async move { license_logged(app, item, signed?).await }),
    )
    .await;
    let mut results = Vec::with_capacity(count);
    for outcome in outcomes {
        results.push(match outcome {
            Ok(license) => LicenseResult::License(license),
            // Nothing leaves if any record did not reach the log (already logged as such).
            Err(ApiError::Signlog) => return Err(ApiError::Signlog),
            Err(e) => LicenseResult::Error(e.into_parts().1),
        });
    }
    Ok(Json(SignLicensesResponse { results }))
}

#[instrument(skip_all)]
async fn sign_credential<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<SignCredentialRequest>,
) -> Result<Json<SignedCredential>, ApiError> {
    let signed = ops::credential::sign(&app.keys, &app.policy, &req, OffsetDateTime::now_utc())
        .await
        .map_err(|e| refused("credential", e))?;
    let (value, seq) = app.logged(signed).await?;
    tracing::info!(
        tenant.id = %req.tenant_id,
        appliance.id = %req.appliance_id,
        credential.serial = %value.serial,
        signlog.seq = seq,
        "credential signed"
    );
    Ok(Json(value))
}

#[instrument(skip_all)]
async fn sign_checkpoint<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<SignCheckpointRequest>,
) -> Result<Json<SignedCheckpoint>, ApiError> {
    let signed = ops::checkpoint::sign(&app.keys, &req, OffsetDateTime::now_utc())
        .await
        .map_err(|e| refused("checkpoint", e))?;
    let (value, seq) = app.logged(signed).await?;
    tracing::info!(
        audit.sequence = value.sequence,
        signlog.seq = seq,
        "checkpoint signed"
    );
    Ok(Json(value))
}

#[instrument(skip_all)]
async fn sign_log_checkpoint<K: KeyOps + Clone>(
    State(app): State<App<K>>,
    ApiJson(req): ApiJson<SignLogCheckpointRequest>,
) -> Result<Json<SignedLogCheckpoint>, ApiError> {
    let signed = ops::log_checkpoint::sign(&app.keys, &app.origin, &req, OffsetDateTime::now_utc())
        .await
        .map_err(|e| refused("log_checkpoint", e))?;
    let (value, seq) = app.logged(signed).await?;
    tracing::info!(
        log.size = req.size,
        log.kid = %value.kid,
        signlog.seq = seq,
        "log checkpoint signed"
    );
    Ok(Json(value))
}

async fn public_keys<K: KeyOps + Clone>(
    State(app): State<App<K>>,
) -> Result<Json<PublicKeys>, ApiError> {
    ops::public_keys::public_keys(&app.keys, &app.origin)
        .map(Json)
        .map_err(|e| refused("public_keys", e))
}

/// Liveness, whether the signing log still takes records, and whether the key store
/// can serve at all (not after the HSM refused the PIN: see `hsm::worker`).
async fn health<K: KeyOps + Clone>(State(app): State<App<K>>) -> Result<&'static str, ApiError> {
    if !app.signlog.is_healthy() {
        return Err(ApiError::Signlog);
    }
    if let Err(e) = app.keys.health() {
        // Logged loudly once where it happened; a health probe only answers.
        return Err(ApiError::Unhealthy(e.to_string()));
    }
    Ok("ok")
}

async fn forbidden() -> ApiError {
    ApiError::Forbidden
}

/// Logs a refused or failed operation once (messages carry no secrets by design).
fn refused(op: &'static str, e: OpsError) -> ApiError {
    let code = e.code();
    match code {
        IssuerErrorCode::Internal
        | IssuerErrorCode::HsmUnavailable
        | IssuerErrorCode::CaExpiring => {
            tracing::error!(op, error.code = ?code, error = %e, "operation failed");
        }
        _ => tracing::info!(op, error.code = ?code, error = %e, "operation refused"),
    }
    ApiError::Ops(e)
}

/// An API error, rendered as [`IssuerErrorBody`].
#[derive(Debug)]
enum ApiError {
    Ops(OpsError),
    /// The signing log could not take the record.
    Signlog,
    Forbidden,
    /// The key store cannot serve until an operator acts (the health route's answer;
    /// the message names the condition, never a secret).
    Unhealthy(String),
    /// A request that did not reach an operation (bad JSON, size, route).
    Rejected {
        status: StatusCode,
        message: String,
    },
}

impl ApiError {
    fn status(status: StatusCode, message: &str) -> ApiError {
        ApiError::Rejected {
            status,
            message: message.to_owned(),
        }
    }

    /// The HTTP status and the client-facing error: what a request failing with this
    /// error answers, and what a batch reports for one of its items.
    fn into_parts(self) -> (StatusCode, IssuerErrorDetail) {
        let (status, code, message) = match self {
            ApiError::Ops(e) => {
                let code = e.code();
                let status = status_of(code);
                // 5xx: no internal detail to the client; the log has it.
                let message = match code {
                    IssuerErrorCode::HsmUnavailable => {
                        "the HSM is unavailable; retry later".to_owned()
                    }
                    IssuerErrorCode::Internal => {
                        "internal error; the issuer's log has the detail".to_owned()
                    }
                    _ => e.to_string(),
                };
                (status, code, message)
            }
            ApiError::Signlog => (
                StatusCode::SERVICE_UNAVAILABLE,
                // There is no dedicated code; this one tells the gateway to retry later.
                IssuerErrorCode::HsmUnavailable,
                "the signing log cannot be written; retry later".to_owned(),
            ),
            ApiError::Unhealthy(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                IssuerErrorCode::HsmUnavailable,
                message,
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                IssuerErrorCode::Forbidden,
                "this client is not allowed to use the issuer".to_owned(),
            ),
            ApiError::Rejected { status, message } => {
                (status, IssuerErrorCode::BadRequest, message)
            }
        };
        (status, IssuerErrorDetail { code, message })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.into_parts();
        (status, Json(IssuerErrorBody { error })).into_response()
    }
}

/// The HTTP status of each stable error code.
pub fn status_of(code: IssuerErrorCode) -> StatusCode {
    match code {
        IssuerErrorCode::BadRequest
        | IssuerErrorCode::UnknownEdition
        | IssuerErrorCode::EditionNotPaid
        | IssuerErrorCode::BeyondPolicy
        | IssuerErrorCode::CsrInvalid
        | IssuerErrorCode::CodeMalformed => StatusCode::BAD_REQUEST,
        IssuerErrorCode::Forbidden => StatusCode::FORBIDDEN,
        IssuerErrorCode::HsmUnavailable | IssuerErrorCode::CaExpiring => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        IssuerErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `Json` whose rejections are [`IssuerErrorBody`]s (`bad_request`, with the status
/// axum chose: 400, 413 or 415). The message names the JSON problem; it goes back to
/// the gateway that sent the body and is not logged.
struct ApiJson<T>(T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                // axum answers 422 for well-formed JSON of the wrong shape (an unknown
                // field, a bad UUID); to the gateway that is a bad request like any other.
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    other => other,
                };
                tracing::info!(http.status = status.as_u16(), "request body refused");
                Err(ApiError::Rejected {
                    status,
                    message: rejection.body_text(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alga_protocol::signlog::file_name;
    use http_body_util::BodyExt;

    use super::*;
    use crate::ops::software_keys::{SoftwareKeys, test_policy};

    fn app(log: SignLog) -> Router {
        router(App {
            keys: SoftwareKeys::new(OffsetDateTime::now_utc()),
            policy: Arc::new(test_policy()),
            signlog: log,
            origin: Arc::new(LogOrigin::new(ORIGIN).expect("origin")),
        })
    }

    const ORIGIN: &str = "alga.test/audit-log";

    async fn call(router: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("x-request-id", "req-1")
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        let response = router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        assert_eq!(
            response.headers().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"req-1"[..])
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    const LICENSE: &str = r#"{"tenant_id":"00000000-0000-0000-0000-000000000001","appliance_id":"00000000-0000-0000-0000-000000000002","edition":"pro"}"#;

    /// A log that takes one record and fails the next: one record per file, and the
    /// second file's name taken by a directory. Keep the directory alive.
    fn log_failing_at_the_second_record() -> (tempfile::TempDir, SignLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SignLog::open(dir.path(), SignlogOptions { max_file_bytes: 1 }).expect("log");
        std::fs::create_dir(dir.path().join(file_name(2))).expect("mkdir");
        (dir, log)
    }

    #[tokio::test]
    async fn no_signature_leaves_when_the_log_cannot_take_it() {
        // The second append fails.
        let (_dir, log) = log_failing_at_the_second_record();
        let router = app(log.clone());
        let (status, body) = call(&router, "POST", api::SIGN_LICENSE, LICENSE).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&router, "POST", api::SIGN_LICENSE, LICENSE).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.contains("eyJ"), "no token in {body}");
        let parsed: IssuerErrorBody = serde_json::from_str(&body).expect("error body");
        assert_eq!(parsed.error.code, IssuerErrorCode::HsmUnavailable);
        // Fail closed from then on, health included.
        let (status, _) = call(&router, "POST", api::SIGN_LICENSE, LICENSE).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = call(&router, "GET", api::HEALTH, "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!log.is_healthy());
    }

    /// A batch body of `n` copies of [`LICENSE`].
    fn batch(n: usize) -> String {
        format!(r#"{{"licenses":[{}]}}"#, vec![LICENSE; n].join(","))
    }

    #[tokio::test]
    async fn a_batch_releases_no_license_when_the_log_cannot_take_one() {
        // The first license of the batch is logged, the second cannot be.
        let (dir, log) = log_failing_at_the_second_record();
        let router = app(log.clone());
        let (status, body) = call(&router, "POST", api::SIGN_LICENSES, &batch(3)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(!body.contains("eyJ"), "no token in {body}");
        let parsed: IssuerErrorBody = serde_json::from_str(&body).expect("error body");
        assert_eq!(parsed.error.code, IssuerErrorCode::HsmUnavailable);
        assert_eq!(
            parsed.error.message,
            "the signing log cannot be written; retry later"
        );
        assert!(!log.is_healthy());
        // The license logged before the failure is in the log, undelivered.
        std::fs::remove_dir(dir.path().join(file_name(2))).expect("rmdir");
        let records = crate::signlog::read_dir(dir.path()).expect("log").records;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].op, alga_protocol::signlog::SignOp::License);
        // Fail closed from then on.
        let (status, body) = call(&router, "POST", api::SIGN_LICENSES, &batch(1)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    #[tokio::test]
    async fn a_batch_item_fails_with_the_single_routes_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = app(SignLog::open(dir.path(), SignlogOptions::default()).expect("log"));
        let essentials = LICENSE.replace("pro", "essentials");
        let long = LICENSE.replace('}', r#","lifetime_seconds":315360000}"#);
        let zero = LICENSE.replace('}', r#","lifetime_seconds":0}"#);
        let items = [LICENSE, &essentials, &long, &zero, LICENSE];
        let (status, body) = call(
            &router,
            "POST",
            api::SIGN_LICENSES,
            &format!(r#"{{"licenses":[{}]}}"#, items.join(",")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let parsed: SignLicensesResponse = serde_json::from_str(&body).expect("batch body");
        assert_eq!(parsed.results.len(), items.len());
        for (item, result) in items.iter().zip(&parsed.results) {
            let (status, single) = call(&router, "POST", api::SIGN_LICENSE, item).await;
            match result {
                LicenseResult::License(_) => assert_eq!(status, StatusCode::OK, "{single}"),
                LicenseResult::Error(detail) => {
                    let single: IssuerErrorBody = serde_json::from_str(&single).expect("error");
                    assert_eq!(detail.code, single.error.code, "{item}");
                    assert_eq!(detail.message, single.error.message, "{item}");
                }
            }
        }
        let codes: Vec<Option<IssuerErrorCode>> = parsed
            .results
            .iter()
            .map(|r| match r {
                LicenseResult::License(_) => None,
                LicenseResult::Error(e) => Some(e.code),
            })
            .collect();
        assert_eq!(
            codes,
            [
                None,
                Some(IssuerErrorCode::EditionNotPaid),
                Some(IssuerErrorCode::BeyondPolicy),
                Some(IssuerErrorCode::BadRequest),
                None
            ]
        );
        // Two from the batch, two from the single route.
        assert_eq!(
            crate::signlog::read_dir(dir.path())
                .expect("log")
                .records
                .len(),
            4
        );
    }

    #[tokio::test]
    async fn a_log_checkpoint_is_a_note_the_published_key_verifies_and_is_logged() {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("tempdir");
        let router = app(SignLog::open(dir.path(), SignlogOptions::default()).expect("log"));
        let root = base64::engine::general_purpose::STANDARD.encode([0xabu8; 32]);
        let body = format!(r#"{{"size":42,"root_hash":"{root}"}}"#);
        let (status, text) = call(&router, "POST", api::SIGN_LOG_CHECKPOINT, &body).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let signed: SignedLogCheckpoint = serde_json::from_str(&text).expect("body");
        assert_eq!(signed.kid, "alga-log-v1");
        assert!(
            signed
                .note
                .starts_with(&format!("{ORIGIN}\n42\n{root}\n\n\u{2014} {ORIGIN} ")),
            "{}",
            signed.note
        );
        let (status, text) = call(&router, "GET", api::PUBLIC_KEYS, "").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let keys: PublicKeys = serde_json::from_str(&text).expect("keys");
        assert_eq!(keys.log_keys.len(), 1);
        assert_eq!(keys.log_keys[0].kid, signed.kid);
        let verifier = signed_note::StandardVerifier::new(&keys.log_keys[0].vkey).expect("vkey");
        let known = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        signed_note::Note::from_bytes(signed.note.as_bytes())
            .expect("a note")
            .verify(&known)
            .expect("verifies with the published key");

        for bad in [
            r#"{"size":42,"root_hash":"AAAA"}"#.to_owned(),
            format!(r#"{{"size":42,"root_hash":"{}"}}"#, "ab".repeat(32)),
            format!(r#"{{"size":-1,"root_hash":"{root}"}}"#),
            format!(r#"{{"size":42,"root_hash":"{root}","origin":"evil"}}"#),
            r#"{"size":42}"#.to_owned(),
        ] {
            let (status, text) = call(&router, "POST", api::SIGN_LOG_CHECKPOINT, &bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
            let parsed: IssuerErrorBody = serde_json::from_str(&text).expect("error body");
            assert_eq!(parsed.error.code, IssuerErrorCode::BadRequest, "{bad}");
        }
        let records = crate::signlog::read_dir(dir.path()).expect("log").records;
        assert_eq!(records.len(), 1, "refusals sign nothing");
        assert_eq!(records[0].op, alga_protocol::signlog::SignOp::LogCheckpoint);
        assert_eq!(records[0].kid, "alga-log-v1");
        assert_eq!(records[0].ids.sequence, Some(42));
        assert_eq!(records[0].ids.head_hash, Some("ab".repeat(32)));
    }

    #[test]
    fn a_5xx_item_error_carries_no_internal_detail() {
        let (status, detail) = ApiError::Ops(OpsError::internal("the secret reason")).into_parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(detail.code, IssuerErrorCode::Internal);
        assert!(!detail.message.contains("secret"), "{}", detail.message);
    }

    #[tokio::test]
    async fn requests_are_refused_with_the_issuers_error_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = app(SignLog::open(dir.path(), SignlogOptions::default()).expect("log"));
        let unknown_field = LICENSE.replace('{', r#"{"admin":true,"#);
        let huge = format!(r#"{{"pad":"{}"}}"#, "a".repeat(MAX_BODY_BYTES));
        let essentials = LICENSE.replace("pro", "essentials");
        let empty_batch = batch(0);
        let oversized_batch = batch(api::MAX_LICENSE_BATCH + 1);
        let batch_unknown_field = batch(1).replace('{', r#"{"admin":true,"#);
        let item_unknown_field = format!(r#"{{"licenses":[{unknown_field}]}}"#);
        let cases: Vec<(&str, &str, &str, StatusCode, IssuerErrorCode)> = vec![
            (
                "POST",
                api::SIGN_LICENSE,
                &unknown_field,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSE,
                "{",
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSE,
                &huge,
                StatusCode::PAYLOAD_TOO_LARGE,
                IssuerErrorCode::BadRequest,
            ),
            (
                "GET",
                api::SIGN_LICENSE,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                IssuerErrorCode::BadRequest,
            ),
            (
                "GET",
                "/v1/elsewhere",
                "",
                StatusCode::NOT_FOUND,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSE,
                &essentials,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::EditionNotPaid,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &empty_batch,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &oversized_batch,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &batch_unknown_field,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                &item_unknown_field,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "POST",
                api::SIGN_LICENSES,
                LICENSE,
                StatusCode::BAD_REQUEST,
                IssuerErrorCode::BadRequest,
            ),
            (
                "GET",
                api::SIGN_LICENSES,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                IssuerErrorCode::BadRequest,
            ),
        ];
        for (method, path, body, status, code) in cases {
            let (got, text) = call(&router, method, path, body).await;
            assert_eq!(got, status, "{method} {path}: {text}");
            let parsed: IssuerErrorBody = serde_json::from_str(&text).expect("error body");
            assert_eq!(parsed.error.code, code, "{method} {path}");
        }
        assert_eq!(
            crate::signlog::read_dir(dir.path())
                .expect("log")
                .records
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn the_forbidden_router_answers_403_everywhere() {
        let router: Router = Router::new().fallback(forbidden);
        for (method, path) in [
            ("POST", api::SIGN_LICENSE),
            ("POST", api::SIGN_LICENSES),
            ("POST", api::SIGN_LOG_CHECKPOINT),
            ("GET", api::HEALTH),
            ("GET", "/x"),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .expect("request");
            let response = router.clone().oneshot(req).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn every_code_has_its_status() {
        let table = [
            (IssuerErrorCode::BadRequest, 400),
            (IssuerErrorCode::UnknownEdition, 400),
            (IssuerErrorCode::EditionNotPaid, 400),
            (IssuerErrorCode::BeyondPolicy, 400),
            (IssuerErrorCode::CsrInvalid, 400),
            (IssuerErrorCode::CodeMalformed, 400),
            (IssuerErrorCode::Forbidden, 403),
            (IssuerErrorCode::HsmUnavailable, 503),
            (IssuerErrorCode::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }
}
