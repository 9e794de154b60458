//! `POST /install-codes/reissue`: for the tenant found by id or contact email, mint a
//! new code bound to the same tenant and its current edition, with a new link and
//! mail, and revoke the unclaimed codes it supersedes: one transaction, under the
//! tenant's lock. After the commit, the mail's first attempt (`email.status`: `sent`
//! or `queued`).
//!
//! The code names the appliance its redeem retires, and that is part of its binding:
//! - [`Replacement::Appliance`]: the one the store names (active, of this tenant);
//! - [`Replacement::Implicit`]: the tenant's only active appliance (the seed's
//!   reinstall), or none when it has none yet (a first install's code sent again);
//!   several active appliances are `replacement_ambiguous`;
//! - [`Replacement::Add`]: none; one more appliance, refused up front when the edition's
//!   `max_appliances` are all taken (the redeem checks again).
//!
//! Superseded: the unclaimed codes for the same replacement (another code for the same
//! rebuild, or for the same first install); an added appliance's code supersedes
//! nothing, so several can be pending at once.

use std::sync::Arc;

use tracing::instrument;
use uuid::Uuid;

use super::Ctx;
use super::register::{CodeIssued, NewCode, issue_code};
use super::validate::ContactEmail;
use crate::App;
use crate::audit::{self, actions};
use crate::db::appliances::{self, State};
use crate::db::codes::Superseded;
use crate::db::{self, outbox::MailKind, tenants};
use crate::error::ApiError;

/// How the store names the tenant.
#[derive(Debug, Clone)]
pub enum TenantRef {
    Id(Uuid),
    ContactEmail(ContactEmail),
}

/// Which appliance the new code's redeem retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// The tenant's only active appliance, or none when it has none.
    Implicit,
    /// This appliance of the tenant.
    Appliance(Uuid),
    /// None: the code adds an appliance.
    Add,
}

/// A reissue's outcome: the new code, the codes it revoked and the appliance its
/// redeem will retire.
#[derive(Debug, Clone)]
pub struct Reissued {
    pub code: CodeIssued,
    /// The unclaimed codes this one supersedes, sorted.
    pub revoked_code_ids: Vec<String>,
    pub replaces_appliance_id: Option<Uuid>,
}

/// Re-issues a code.
#[instrument(skip_all, fields(tenant.id = tracing::field::Empty))]
pub async fn reissue(
    app: &Arc<App>,
    ctx: &Ctx,
    target: TenantRef,
    replacement: Replacement,
) -> Result<Reissued, ApiError> {
    let result = reissue_inner(app, ctx, &target, replacement).await;
    if let Err(e) = &result {
        let record = ctx.record(actions::CODE_REISSUE).map(|r| {
            let r = match &target {
                TenantRef::Id(t) => r.tenant(*t),
                TenantRef::ContactEmail(_) => r.detail("by", "contact_email"),
            };
            match replacement {
                Replacement::Appliance(a) => r.subject("replaces_appliance_id", a),
                Replacement::Add => r.detail("add_appliance", true),
                Replacement::Implicit => r,
            }
        });
        audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
    }
    result
}

/// The appliance the code will replace, checked against the tenant's appliances now.
async fn resolve(
    app: &App,
    tx: &deadpool_postgres::Transaction<'_>,
    tenant_id: Uuid,
    edition: &str,
    replacement: Replacement,
) -> Result<Option<Uuid>, ApiError> {
    match replacement {
        Replacement::Appliance(id) => {
            let a = appliances::get(tx, id)
                .await?
                .filter(|a| a.tenant_id == tenant_id)
                .ok_or(ApiError::ApplianceNotFound)?;
            match a.state {
                State::Active => Ok(Some(id)),
                other => Err(ApiError::ApplianceNotActive {
                    state: other.as_str(),
                }),
            }
        }
        Replacement::Implicit => match appliances::active_ids(tx, tenant_id, 2).await?[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => {
                let (active, _) = appliances::seats_in_use(tx, tenant_id, None).await?;
                Err(ApiError::ReplacementAmbiguous { active })
            }
        },
        Replacement::Add => {
            let max = app
                .policy
                .edition(edition)
                .ok_or_else(|| ApiError::internal("tenant edition not in the policy"))?
                .max_appliances;
            let (active, _) = appliances::seats_in_use(tx, tenant_id, None).await?;
            if active >= max {
                return Err(ApiError::SeatLimitReached { active, max });
            }
            Ok(None)
        }
    }
}

async fn reissue_inner(
    app: &Arc<App>,
    ctx: &Ctx,
    target: &TenantRef,
    replacement: Replacement,
) -> Result<Reissued, ApiError> {
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
    // Serializes this tenant's reissues (two cannot both leave an unclaimed code for
    // one replacement), redeems and changes.
    let locked = tenants::lock(&tx, tenant_id)
        .await?
        .ok_or(ApiError::TenantNotFound)?;
    if locked.suspended {
        return Err(ApiError::TenantSuspended);
    }
    let tenant = tenants::get(&tx, tenant_id)
        .await?
        .ok_or(ApiError::TenantNotFound)?;
    let edition = locked.edition;
    let replaces = resolve(app, &tx, tenant_id, &edition, replacement).await?;

    let revoked = match replacement {
        Replacement::Add => Vec::new(),
        _ => {
            let which = Superseded::Replacing(replaces);
            super::revoke_codes(&tx, ctx, tenant_id, which, "reissue").await?
        }
    };
    let issued = issue_code(
        app,
        ctx,
        &tx,
        &NewCode {
            tenant_id,
            edition: &edition,
            replaces,
            recipient: &tenant.contact_email,
            kind: MailKind::Reissue,
        },
    )
    .await?;
    let mut code = issued.outcome(tenant_id, &edition);
    audit::append(&tx, issued.mint_record).await?;
    let mut record = ctx
        .record(actions::CODE_REISSUE)?
        .tenant(tenant_id)
        .subject("code_id", &issued.code_id)
        .detail("revoked", revoked.len())
        .detail("add_appliance", replacement == Replacement::Add);
    if let Some(old) = replaces {
        record = record.subject("replaces_appliance_id", old);
    }
    audit::append(&tx, record).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    // Back to the pool before the first mail attempt (see `register`).
    drop(conn);
    tracing::info!(
        tenant.id = %tenant_id, code.id = %issued.code_id, revoked = revoked.len(),
        replaces = ?replaces, "install code re-issued"
    );
    code.mail = crate::mail::first_attempt(app, issued.mail_id).await;
    Ok(Reissued {
        code,
        revoked_code_ids: revoked,
        replaces_appliance_id: replaces,
    })
}
