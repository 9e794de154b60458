//! Thin handlers: extract, convert to domain input, call the flow, map the result.

use std::collections::BTreeMap;

use alga_protocol::api::{
    CheckInRequest, EntitlementRequest, Health, IDEMPOTENCY_KEY, ReasonRequest, RedeemRequest,
    RegisterTenantRequest, ReissueRequest,
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
    self,
    check_in::Presented,
    register::Idempotency,
    reissue::{Replacement, TenantRef},
    validate,
};

use super::views;

/// Audits a request refused before its flow ran (bad body, invalid fields), then
/// returns the error: a record of its own when the caller is established (every route
/// that calls this requires the store's certificate first), else counted in the
/// refusal summary.
async fn refused(app: &crate::App, peer: &Peer, action: &'static str, e: ApiError) -> ApiError {
    refused_for(app, peer, action, None, e).await
}

/// [`refused`], naming the tenant the request was about.
async fn refused_for(
    app: &crate::App,
    peer: &Peer,
    action: &'static str,
    tenant: Option<Uuid>,
    e: ApiError,
) -> ApiError {
    let ctx = peer.ctx(app);
    crate::audit::append_refusal(
        &app.pool,
        &app.pending_failures,
        &app.refusals,
        &ctx,
        action,
        e.code(),
        |r| match tenant {
            Some(t) => r.tenant(t),
            None => r,
        },
    )
    .await;
    e
}

/// An optional JSON body (empty: the default), for routes whose body is optional.
fn optional_json<T: Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    if !super::extract::is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(body).map_err(json_error)
}

/// An optional `reason` (a single-line name), as the audit records it.
fn reason(reason: Option<&str>) -> Result<Option<validate::Name>, ApiError> {
    reason
        .map(validate::Name::parse)
        .transpose()
        .map_err(|m| ApiError::field("reason", m))
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
                let key = v
                    .to_str()
                    .map_err(|_| ApiError::field("Idempotency-Key", "must be printable ASCII"))?;
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
    // Through a `Value`, whose keys serialize sorted: the bytes this route has always
    // sent (a reissue's `code` has the struct's order).
    let body = serde_json::to_value(views::code_issued(r)).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /install-codes/reissue` (store).
pub async fn reissue(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    body: Result<ApiJson<ReissueRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let input = (|| {
        let body = body?.value;
        let mut f = BTreeMap::new();
        let target = match (body.tenant_id, body.contact_email.as_deref()) {
            (Some(id), None) => Some(TenantRef::Id(id)),
            (None, Some(email)) => validate::ContactEmail::parse(email)
                .map(TenantRef::ContactEmail)
                .map_err(|m| f.insert("contact_email".to_owned(), m.to_owned()))
                .ok(),
            _ => {
                let m = "give exactly one of tenant_id and contact_email";
                f.insert("tenant_id".to_owned(), m.to_owned());
                f.insert("contact_email".to_owned(), m.to_owned());
                None
            }
        };
        let replacement = match (body.replaces_appliance_id, body.add_appliance) {
            (None, false) => Replacement::Implicit,
            (Some(id), false) => Replacement::Appliance(id),
            (None, true) => Replacement::Add,
            (Some(_), true) => {
                let m = "give at most one of replaces_appliance_id and add_appliance";
                f.insert("replaces_appliance_id".to_owned(), m.to_owned());
                f.insert("add_appliance".to_owned(), m.to_owned());
                Replacement::Implicit
            }
        };
        match target {
            Some(t) if f.is_empty() => Ok((t, replacement)),
            _ => Err(ApiError::Validation(f)),
        }
    })();
    let (target, replacement) = match input {
        Ok(i) => i,
        Err(e) => return Err(refused(&app, &peer, audit_actions::CODE_REISSUE, e).await),
    };
    let r = flows::reissue::reissue(&app, &ctx, target, replacement).await?;
    Ok((StatusCode::CREATED, Json(views::reissued(r))).into_response())
}

/// The body of a route whose caller is not established yet (`/register`,
/// `/check-in/relayed`); one that does not parse is counted in the refusal summary as a
/// refusal of `action`.
pub(super) fn counted_body<T>(
    app: &crate::App,
    ctx: &flows::Ctx,
    action: &'static str,
    body: Result<ApiJson<T>, ApiError>,
) -> Result<T, ApiError> {
    body.map(|b| b.value).inspect_err(|e| {
        app.refusals.count_request(ctx, action, e.code());
    })
}

/// `POST /register` (appliance, no client certificate needed). A body that is not a
/// redeem request is refused before the flow, counted in the refusal summary.
pub async fn redeem(
    State(app): AppState,
    peer: Peer,
    body: Result<ApiJson<RedeemRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let req = counted_body(&app, &ctx, audit_actions::CODE_REDEEM, body)?;
    let r = flows::redeem::redeem(&app, &ctx, &req.install_code, &req.csr, &req.appliance).await?;
    Ok((StatusCode::OK, Json(views::redeemed(r, &app.check_in_url))).into_response())
}

/// `POST /check-in` (appliance credential).
pub async fn check_in(
    State(app): AppState,
    ApplianceCaller(peer): ApplianceCaller,
    body: ApiJson<CheckInRequest>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let credential = peer.identity().require_appliance()?;
    let req = body.value;
    let r = flows::check_in::check_in(
        &app,
        &ctx,
        credential.id,
        Presented::of(credential),
        &req.appliance.version,
        req.csr.as_deref(),
        None,
    )
    .await?;
    Ok((StatusCode::OK, Json(views::checked_in(r))).into_response())
}

/// `GET /tenants/{tenant_id}` (store, auditor).
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
pub async fn get_tenant(
    State(app): AppState,
    _caller: ReaderCaller,
    Path(tenant_id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant_id = Uuid::try_parse(&tenant_id).map_err(|_| ApiError::TenantNotFound)?;
    let details = flows::tenants::get(&app, tenant_id, time::OffsetDateTime::now_utc()).await?;
    Ok(Json(views::tenant(details)).into_response())
}

/// `PUT /tenants/{tenant_id}/entitlement` (store): body `{"edition": str}`.
pub async fn change_entitlement(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    Path(tenant_id): Path<String>,
    body: Result<ApiJson<EntitlementRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let tenant_id = Uuid::try_parse(&tenant_id).map_err(|_| ApiError::TenantNotFound)?;
    let edition = body.and_then(|b| {
        validate::edition(&app.policy, &b.value.edition).map_err(|m| ApiError::field("edition", m))
    });
    let edition = match edition {
        Ok(e) => e,
        Err(e) => {
            let action = audit_actions::ENTITLEMENT_CHANGE;
            return Err(refused_for(&app, &peer, action, Some(tenant_id), e).await);
        }
    };
    let r = flows::lifecycle::change_edition(&app, &ctx, tenant_id, edition).await?;
    Ok(Json(views::edition_changed(r)).into_response())
}

/// `POST /tenants/{tenant_id}/suspend` (store). Optional body `{"reason": str}`.
pub async fn suspend_tenant(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    set_tenant_status(app, peer, tenant_id, headers, body, true).await
}

/// `POST /tenants/{tenant_id}/resume` (store). Optional body `{"reason": str}`.
pub async fn resume_tenant(
    State(app): AppState,
    StoreCaller(peer): StoreCaller,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    set_tenant_status(app, peer, tenant_id, headers, body, false).await
}

async fn set_tenant_status(
    app: std::sync::Arc<crate::App>,
    peer: Peer,
    tenant_id: String,
    headers: HeaderMap,
    body: Bytes,
    suspend: bool,
) -> Result<Response, ApiError> {
    let ctx = peer.ctx(&app);
    let tenant_id = Uuid::try_parse(&tenant_id).map_err(|_| ApiError::TenantNotFound)?;
    let why =
        optional_json::<ReasonRequest>(&headers, &body).and_then(|b| reason(b.reason.as_deref()));
    let why = match why {
        Ok(r) => r,
        Err(e) => {
            let action = if suspend {
                audit_actions::TENANT_SUSPEND
            } else {
                audit_actions::TENANT_RESUME
            };
            return Err(refused_for(&app, &peer, action, Some(tenant_id), e).await);
        }
    };
    let r = flows::lifecycle::set_suspended(
        &app,
        &ctx,
        tenant_id,
        suspend,
        why.as_ref().map(validate::Name::as_str),
    )
    .await?;
    Ok(Json(views::status_changed(r)).into_response())
}

/// `GET /appliances` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliancesQuery {
    /// Only active appliances of paid editions in this health.
    #[serde(default)]
    pub health: Option<String>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many (1–1000, default 100).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `GET /appliances?health=ok|overdue|stale&after=<cursor>&limit=<n>` (store, auditor).
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
pub async fn list_appliances(
    State(app): AppState,
    _caller: ReaderCaller,
    query: Result<Query<AppliancesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let mut f = BTreeMap::new();
    let health = q.health.as_deref().map(Health::parse);
    if health == Some(None) {
        f.insert(
            "health".to_owned(),
            "must be ok, overdue or stale".to_owned(),
        );
    }
    let after = q.after.as_deref().map(Uuid::try_parse);
    if matches!(after, Some(Err(_))) {
        f.insert(
            "after".to_owned(),
            "must be the `next` of a previous page".to_owned(),
        );
    }
    let limit = q.limit.unwrap_or(flows::lifecycle::DEFAULT_APPLIANCE_PAGE);
    if !(1..=flows::lifecycle::MAX_APPLIANCE_PAGE).contains(&limit) {
        f.insert("limit".to_owned(), "must be between 1 and 1000".to_owned());
    }
    if !f.is_empty() {
        return Err(ApiError::Validation(f));
    }
    let page = flows::lifecycle::list_appliances(
        &app,
        time::OffsetDateTime::now_utc(),
        health.flatten().map(views::health_filter),
        after.and_then(Result::ok),
        limit,
    )
    .await?;
    Ok(Json(views::appliance_page(page)).into_response())
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
    let parsed: ReasonRequest = optional_json(&headers, &body)?;
    let reason = reason(parsed.reason.as_deref())?;
    let r = flows::revoke::revoke(
        &app,
        &ctx,
        appliance_id,
        reason.as_ref().map(|n| n.as_str()),
    )
    .await?;
    Ok(Json(views::revoked(r)).into_response())
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

pub(super) fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::field("query", e.body_text())
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
    let db_ok = crate::db::ping(&app.pool).await.is_ok();
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

/// `GET /metrics`: Prometheus text format. Counts appliances by health first when the
/// last count is older than [`crate::HEALTH_GAUGE_MAX_AGE`].
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
pub async fn metrics(State(app): AppState) -> Result<Response, ApiError> {
    if app
        .metrics
        .claim_appliances_count(std::time::Instant::now(), crate::HEALTH_GAUGE_MAX_AGE)
    {
        flows::lifecycle::refresh_health_gauge(&app, time::OffsetDateTime::now_utc()).await;
    }
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
