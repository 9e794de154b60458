//! The routes' handlers: thin, they extract the request, call the signing operation
//! with the time, log the result durably and answer.
#![allow(
    clippy::disallowed_methods,
    reason = "request handlers are the edge: each reads the clock once and passes `now` to ops"
)]

use alga_protocol::issuer_api::{
    self as api, DeriveCodeRequest, DeriveCodeResponse, IssuerErrorCode, LicenseResult,
    MintCodeRequest, MintCodeResponse, PublicKeys, SignCheckpointRequest, SignCredentialRequest,
    SignLicenseRequest, SignLicensesRequest, SignLicensesResponse, SignLogCheckpointRequest,
    SignedCheckpoint, SignedCredential, SignedLicense, SignedLogCheckpoint, VerifyCodeRequest,
    VerifyCodeResponse,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use time::OffsetDateTime;
use tracing::instrument;

use super::error::ApiError;
use super::extract::ApiJson;
use super::routes::App;
use crate::Error;
use crate::keyring::KeyOps;
use crate::ops::{self, Signed};

#[instrument(skip_all)]
pub(super) async fn mint_code<K: KeyOps + Clone>(
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
pub(super) async fn derive_code<K: KeyOps + Clone>(
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
pub(super) async fn verify_code<K: KeyOps + Clone>(
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
pub(super) async fn sign_license<K: KeyOps + Clone>(
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
pub(super) async fn sign_licenses<K: KeyOps + Clone>(
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
pub(super) async fn sign_credential<K: KeyOps + Clone>(
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
pub(super) async fn sign_checkpoint<K: KeyOps + Clone>(
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
pub(super) async fn sign_log_checkpoint<K: KeyOps + Clone>(
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

pub(super) async fn public_keys<K: KeyOps + Clone>(
    State(app): State<App<K>>,
) -> Result<Json<PublicKeys>, ApiError> {
    ops::public_keys::public_keys(&app.keys, &app.origin)
        .map(Json)
        .map_err(|e| refused("public_keys", e))
}

/// Liveness, whether the signing log still takes records, and whether the key store
/// can serve at all (not after the HSM refused the PIN: see `hsm::worker`).
pub(super) async fn health<K: KeyOps + Clone>(
    State(app): State<App<K>>,
) -> Result<&'static str, ApiError> {
    if !app.signlog.is_healthy() {
        return Err(ApiError::Signlog);
    }
    if let Err(e) = app.keys.health() {
        // Logged loudly once where it happened; a health probe only answers.
        return Err(ApiError::Unhealthy(e.to_string()));
    }
    Ok("ok")
}

pub(super) async fn forbidden() -> ApiError {
    ApiError::Forbidden
}

/// Logs a refused or failed operation once (messages carry no secrets by design).
fn refused(op: &'static str, e: Error) -> ApiError {
    let code = e.code();
    match code {
        IssuerErrorCode::Internal
        | IssuerErrorCode::HsmUnavailable
        | IssuerErrorCode::CaExpiring => {
            tracing::error!(op, error.code = ?code, error = %e, "operation failed");
        }
        _ => tracing::info!(op, error.code = ?code, error = %e, "operation refused"),
    }
    ApiError::Failed(e)
}
