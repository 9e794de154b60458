//! `POST /appliances/{id}/revoke`: ban an appliance; its check-ins are refused from now
//! on (its certificate may still be inside its short validity, but every use of it
//! goes through check-in, which reads this state) and it no longer takes a seat. One a
//! rebuild replaced stays `replaced`: it is refused at check-in already.

use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use super::Ctx;
use crate::App;
use crate::audit::{self, actions};
use crate::db::appliances::State;
use crate::db::{self, appliances};
use crate::error::ApiError;

/// The result of a revocation.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    pub state: State,
    pub revoked_at: Option<OffsetDateTime>,
    /// `false` when it was already revoked, or replaced by a rebuild (the call is
    /// idempotent; `state` says which).
    pub changed: bool,
}

/// Revokes an appliance.
#[instrument(skip_all, fields(appliance.id = %appliance_id))]
pub async fn revoke(
    app: &App,
    ctx: &Ctx,
    appliance_id: Uuid,
    reason: Option<&str>,
) -> Result<Revoked, ApiError> {
    let result: Result<Revoked, ApiError> = async {
        let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
        let tx = conn.transaction().await.map_err(db::DbError::from)?;
        let a = appliances::get_for_update(&tx, appliance_id)
            .await?
            .ok_or(ApiError::ApplianceNotFound)?;
        let changed = appliances::revoke(&tx, appliance_id).await?;
        if changed {
            let mut record = ctx
                .record(actions::APPLIANCE_REVOKE)?
                .tenant(a.tenant_id)
                .subject("appliance_id", appliance_id);
            if let Some(r) = reason {
                record = record.detail("reason", r);
            }
            audit::append(&tx, record).await?;
        }
        let after = appliances::get(&tx, appliance_id)
            .await?
            .ok_or(ApiError::ApplianceNotFound)?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok(Revoked {
            appliance_id,
            tenant_id: a.tenant_id,
            state: after.state,
            revoked_at: after.revoked_at,
            changed,
        })
    }
    .await;
    if let Err(e) = &result {
        let record = ctx
            .record(actions::APPLIANCE_REVOKE)
            .map(|r| r.subject("appliance_id", appliance_id));
        audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
    }
    result
}
