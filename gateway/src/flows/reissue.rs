//! `POST /install-codes/reissue`: for the tenant found by id or contact email, revoke
//! every unclaimed code and mint a new one bound to the same tenant (the entitlement
//! stays attached to the tenant), with a new link and mail: one transaction. After the
//! commit, the mail's first attempt (`email.status`: `sent` or `queued`).

use std::sync::Arc;

use alga_protocol::api::{EmailStatus, RegisterTenantResponse};
use tracing::instrument;
use uuid::Uuid;

use super::Ctx;
use super::register::issue_code;
use super::validate::ContactEmail;
use crate::App;
use crate::audit::{self, actions};
use crate::db::{self, outbox::MailKind, tenants};
use crate::error::ApiError;

/// How the store names the tenant.
#[derive(Debug, Clone)]
pub enum TenantRef {
    Id(Uuid),
    ContactEmail(ContactEmail),
}

/// Re-issues a code.
#[instrument(skip_all, fields(tenant.id = tracing::field::Empty))]
pub async fn reissue(
    app: &Arc<App>,
    ctx: &Ctx,
    target: TenantRef,
) -> Result<RegisterTenantResponse, ApiError> {
    let result = reissue_inner(app, ctx, &target).await;
    if let Err(e) = &result {
        let record = ctx.record(actions::CODE_REISSUE).map(|r| match &target {
            TenantRef::Id(t) => r.tenant(*t),
            TenantRef::ContactEmail(_) => r.detail("by", "contact_email"),
        });
        audit::append_failure(&app.pool, record, e.code()).await;
    }
    result
}

async fn reissue_inner(
    app: &Arc<App>,
    ctx: &Ctx,
    target: &TenantRef,
) -> Result<RegisterTenantResponse, ApiError> {
    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let tenant_id = match target {
        TenantRef::Id(id) => *id,
        TenantRef::ContactEmail(email) => {
            let ids = tenants::ids_by_contact_email(&tx, &email.normalized(), 2).await?;
            match ids.as_slice() {
                [] => return Err(ApiError::TenantNotFound),
                [one] => *one,
                _ => return Err(ApiError::AmbiguousContact),
            }
        }
    };
    tracing::Span::current().record("tenant.id", tracing::field::display(tenant_id));
    if !tenants::lock(&tx, tenant_id).await? {
        return Err(ApiError::TenantNotFound);
    }
    let tenant = tenants::get(&tx, tenant_id)
        .await?
        .ok_or(ApiError::TenantNotFound)?;
    let entitlement = tenants::entitlement(&tx, tenant_id)
        .await?
        .ok_or_else(|| ApiError::internal("tenant without entitlement"))?;

    let revoked = db::codes::revoke_unclaimed(&tx, tenant_id).await?;
    for code_id in &revoked {
        audit::append(
            &tx,
            ctx.record(actions::CODE_REVOKE)?
                .tenant(tenant_id)
                .subject("code_id", code_id)
                .detail("reason", "reissue"),
        )
        .await?;
    }
    let issued = issue_code(
        app,
        ctx,
        &tx,
        tenant_id,
        &entitlement.edition,
        &tenant.contact_email,
        MailKind::Reissue,
    )
    .await?;
    audit::append(
        &tx,
        ctx.record(actions::CODE_REISSUE)?
            .tenant(tenant_id)
            .subject("code_id", &issued.code_id)
            .detail("revoked", revoked.len()),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    // Back to the pool before the first mail attempt (see `register`).
    drop(conn);
    tracing::info!(tenant.id = %tenant_id, code.id = %issued.code_id, revoked = revoked.len(), "install code re-issued");
    let status = crate::mail::first_attempt(app, issued.mail_id).await;
    Ok(RegisterTenantResponse {
        tenant_id,
        edition: entitlement.edition,
        install_code: issued.code,
        download: issued.download,
        email: EmailStatus { status },
        revoked_code_ids: Some(revoked),
    })
}
