//! Thin handlers: extract, convert to domain input, call the flow, map the result.

use std::collections::BTreeMap;

use alga_protocol::api::{
    CheckInRequest, IDEMPOTENCY_KEY, RedeemRequest, RegisterTenantRequest, ReissueRequest,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{
    ApiJson, AppState, ApplianceCaller, AuditorCaller, Peer, ReaderCaller, StoreCaller, json_error,
};
use crate::audit::actions as audit_actions;
use crate::error::ApiError;
use crate::flows::{
    self, check_in::Presented, register::Idempotency, reissue::TenantRef, validate,
};

/// Audits a request refused before its flow ran (bad body, invalid fields), then
/// returns the error.
async fn refused(app: &crate::App, peer: &Peer, action: &str, e: ApiError) -> ApiError {
    let record = peer.ctx(app).record(action);
    crate::audit::append_failure(&app.pool, record, e.code()).await;
    e
}

/// `POST /register-tenant` (store).
pub async fn register_tenant(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    headers: HeaderMap,
    body: Result<ApiJson<RegisterTenantRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let input = (|| {
        let body = body?;
        let reg = validate::registration(&body.value, &app.policy)?;
        let idem = match headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => {
                let key = v.to_str().map_err(|_| {
                    let mut f = BTreeMap::new();
                    f.insert(
                        "Idempotency-Key".to_owned(),
                        "must be printable ASCII".to_owned(),
                    );
                    ApiError::Validation(f)
                })?;
                let caller = peer.conn.identity.actor_id(&app.policy).unwrap_or_default();
                Some(Idempotency::new(&caller, key, &body.raw)?)
            }
        };
        Ok((reg, idem))
    })();
    let (reg, idem) = match input {
        Ok(i) => i,
        Err(e) => return Err(refused(&app, &peer, audit_actions::TENANT_REGISTER, e).await),
    };
    let r = flows::register::register_tenant(&app, &ctx, reg, idem).await?;
    let status = StatusCode::from_u16(r.status).map_err(ApiError::internal)?;
    Ok((status, Json(r.body)).into_response())
}

/// `POST /install-codes/reissue` (store).
pub async fn reissue(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    body: Result<ApiJson<ReissueRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let target = (|| {
        let body = body?;
        match (body.value.tenant_id, body.value.contact_email.as_deref()) {
            (Some(id), None) => Ok(TenantRef::Id(id)),
            (None, Some(email)) => validate::ContactEmail::parse(email)
                .map(TenantRef::ContactEmail)
                .map_err(|m| {
                    let mut f = BTreeMap::new();
                    f.insert("contact_email".to_owned(), m.to_owned());
                    ApiError::Validation(f)
                }),
            _ => {
                let mut f = BTreeMap::new();
                let m = "give exactly one of tenant_id and contact_email";
                f.insert("tenant_id".to_owned(), m.to_owned());
                f.insert("contact_email".to_owned(), m.to_owned());
                Err(ApiError::Validation(f))
            }
        }
    })();
    let target = match target {
        Ok(t) => t,
        Err(e) => return Err(refused(&app, &peer, audit_actions::CODE_REISSUE, e).await),
    };
    let r = flows::reissue::reissue(&app, &ctx, target).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// `POST /register` (appliance, no client certificate needed).
pub async fn redeem(
    State(app): AppState,
    peer: Peer,
    body: ApiJson<RedeemRequest>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let req = body.value;
    let r = flows::redeem::redeem(&app, &ctx, &req.install_code, &req.csr, &req.appliance).await?;
    Ok((StatusCode::OK, Json(r)).into_response())
}

/// `POST /check-in` (appliance credential).
pub async fn check_in(
    State(app): AppState,
    ApplianceCaller(peer): ApplianceCaller,
    body: ApiJson<CheckInRequest>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let (id, not_before, not_after) = peer.identity().require_appliance()?;
    let req = body.value;
    let r = flows::check_in::check_in(
        &app,
        &ctx,
        id,
        Presented {
            not_before,
            not_after,
        },
        &req.appliance.version,
        req.csr.as_deref(),
    )
    .await?;
    Ok((StatusCode::OK, Json(r)).into_response())
}

/// `GET /tenants/{tenant_id}` (store, auditor).
pub async fn get_tenant(
    State(app): AppState,
    _caller: ReaderCaller,
    Path(tenant_id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant_id = Uuid::try_parse(&tenant_id).map_err(|_| ApiError::TenantNotFound)?;
    let view = flows::tenants::get(&app, tenant_id).await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /appliances/{appliance_id}/revoke` (store). Optional body `{"reason": str}`.
pub async fn revoke_appliance(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    Path(appliance_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let appliance_id = Uuid::try_parse(&appliance_id).map_err(|_| ApiError::ApplianceNotFound)?;
    let parsed: RevokeBody = if body.is_empty() {
        RevokeBody::default()
    } else {
        if !super::extract::is_json(&headers) {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&body).map_err(json_error)?
    };
    let reason = parsed
        .reason
        .as_deref()
        .map(validate::Name::parse)
        .transpose()
        .map_err(|m| {
            let mut f = BTreeMap::new();
            f.insert("reason".to_owned(), m.to_owned());
            ApiError::Validation(f)
        })?;
    let r = flows::revoke::revoke(
        &app,
        &ctx,
        appliance_id,
        reason.as_ref().map(|n| n.as_str()),
    )
    .await?;
    Ok(Json(r).into_response())
}

/// Paging of the audit endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Return records with a sequence number greater than this.
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many (1–1000, default 100).
    #[serde(default)]
    pub limit: Option<i64>,
    /// Only this tenant's records (`/audit/events`).
    #[serde(default)]
    pub tenant_id: Option<uuid::Uuid>,
    /// Only this action, e.g. `code.redeem` (`/audit/events`).
    #[serde(default)]
    pub action: Option<String>,
}

/// `GET /audit/events` (auditor).
pub async fn audit_events(
    State(app): AppState,
    _caller: AuditorCaller,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(query_error)?;
    let v = crate::audit::events(
        &app.pool,
        page.after,
        page.limit,
        page.tenant_id,
        page.action.as_deref(),
    )
    .await?;
    Ok(Json(v).into_response())
}

/// `GET /audit/checkpoints` (auditor).
pub async fn audit_checkpoints(
    State(app): AppState,
    _caller: AuditorCaller,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(query_error)?;
    let v = crate::audit::checkpoints(&app.pool, page.after, page.limit).await?;
    Ok(Json(v).into_response())
}

/// `GET /audit/keys` (auditor): every public key the issuer publishes — the audit
/// checkpoint keys with the JWKS and CA chain — in the issuer's own `PublicKeys` form,
/// which `alga-audit verify --audit-keys` reads. Security staff get what they need to
/// verify offline without the gateway's identity toward the issuer.
pub async fn audit_keys(
    State(app): AppState,
    _caller: AuditorCaller,
) -> Result<Response, ApiError> {
    let keys = app.public_keys().await?;
    Ok(Json(&*keys).into_response())
}

fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    let mut f = BTreeMap::new();
    f.insert("query".to_owned(), e.body_text());
    ApiError::Validation(f)
}

/// `GET /.well-known/jwks.json` (anyone).
pub async fn jwks(State(app): AppState) -> Result<Response, ApiError> {
    let keys = app.public_keys().await?;
    let mut resp = Json(&keys.jwks).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

/// `GET /ca.pem` (anyone).
pub async fn ca_pem(State(app): AppState) -> Result<Response, ApiError> {
    let keys = app.public_keys().await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        keys.ca_chain_pem.clone(),
    )
        .into_response())
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the database and the issuer answer.
pub async fn readyz(State(app): AppState) -> Result<Response, ApiError> {
    let db_ok = async {
        let conn = app.pool.get().await.ok()?;
        conn.simple_query("SELECT 1").await.ok()
    }
    .await
    .is_some();
    let issuer_ok = app.issuer.health().await.is_ok();
    if db_ok && issuer_ok {
        Ok(
            Json(serde_json::json!({"status": "ready", "database": "ok", "issuer": "ok"}))
                .into_response(),
        )
    } else {
        tracing::warn!(database = db_ok, issuer = issuer_ok, "not ready");
        Err(ApiError::ServiceUnavailable)
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): AppState) -> Result<Response, ApiError> {
    let text = app.metrics.render(&app.pool).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
