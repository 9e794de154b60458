//! The store's side of a license's life: edition changes, suspension and resumption,
//! and which appliances stopped checking in.
//!
//! Each change runs in one transaction that first locks the tenant's row
//! ([`tenants::lock`]), as redeem and reissue do, so a tenant's changes, redeems and
//! reissues serialize, and writes its audit record inside it. A refused change is
//! recorded as a failure, with nothing changed.
//!
//! Health is computed from a `now` passed in: [`health_cutoffs`] turns the policy
//! into the instants before which a last check-in makes an appliance `overdue` (per
//! paid edition: its check-in interval plus its grace) or `stale` (30 days, any
//! edition); the queries of `db::appliances` compare against them.

use alga_policies::{Edition, Policy, STALE_AFTER};
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use super::Ctx;
use crate::App;
use crate::audit::{self, actions};
use crate::db::appliances::{self, Health, HealthCutoffs, WithHealth};
use crate::db::codes::Superseded;
use crate::db::{self, tenants};
use crate::error::ApiError;

/// What an edition change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditionChanged {
    pub tenant_id: Uuid,
    pub edition: String,
    pub previous_edition: String,
    /// `false` when the tenant already had the edition.
    pub changed: bool,
    /// Unclaimed codes of the previous edition, revoked.
    pub revoked_code_ids: Vec<String>,
    pub active_appliances: u32,
    pub max_appliances: u32,
}

/// Moves the tenant to `edition`. Its next check-in's license carries the new edition
/// (none for an edition without a license). Refused with `seat_limit_reached` when the
/// tenant has more active appliances than the new edition allows (revoke some first).
/// Its unclaimed codes are bound to the old edition and are revoked: a pending install
/// needs a code re-issued for the new one.
#[instrument(skip_all, fields(tenant.id = %tenant_id, edition = %edition.name))]
pub async fn change_edition(
    app: &App,
    ctx: &Ctx,
    tenant_id: Uuid,
    edition: &Edition,
) -> Result<EditionChanged, ApiError> {
    let result = change_edition_inner(app, ctx, tenant_id, edition).await;
    if let Err(e) = &result {
        let record = ctx
            .record(actions::ENTITLEMENT_CHANGE)
            .map(|r| r.tenant(tenant_id).detail("to", edition.name.as_str()));
        audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
    }
    result
}

async fn change_edition_inner(
    app: &App,
    ctx: &Ctx,
    tenant_id: Uuid,
    edition: &Edition,
) -> Result<EditionChanged, ApiError> {
    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let tenant = tenants::lock(&tx, tenant_id)
        .await?
        .ok_or(ApiError::TenantNotFound)?;
    let (active, _) = appliances::seats_in_use(&tx, tenant_id, None).await?;
    let changed = tenant.edition != edition.name;
    let mut revoked = Vec::new();
    if changed {
        if active > edition.max_appliances {
            return Err(ApiError::SeatLimitReached {
                active,
                max: edition.max_appliances,
            });
        }
        tenants::set_entitlement(&tx, tenant_id, &tenants::Entitlement::of(edition)).await?;
        revoked = super::revoke_codes(&tx, ctx, tenant_id, Superseded::All, "entitlement_changed")
            .await?;
    }
    audit::append(
        &tx,
        ctx.record(actions::ENTITLEMENT_CHANGE)?
            .tenant(tenant_id)
            .detail("from", tenant.edition.as_str())
            .detail("to", edition.name.as_str())
            .detail("changed", changed)
            .detail("revoked", revoked.len()),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(from = %tenant.edition, changed, revoked = revoked.len(), "edition changed");
    Ok(EditionChanged {
        tenant_id,
        edition: edition.name.clone(),
        previous_edition: tenant.edition,
        changed,
        revoked_code_ids: revoked,
        active_appliances: active,
        max_appliances: edition.max_appliances,
    })
}

/// A tenant's status after a suspend or resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChanged {
    pub tenant_id: Uuid,
    pub suspended: bool,
    pub suspended_at: Option<OffsetDateTime>,
}

/// Suspends (`suspend`) or resumes the tenant. A suspended tenant's check-ins, redeems
/// and reissues are refused with `tenant_suspended` (nothing is consumed); resuming
/// lets them through again. Suspending a suspended tenant, or resuming an active one,
/// is refused (`tenant_already_suspended`, `tenant_not_suspended`).
#[instrument(skip_all, fields(tenant.id = %tenant_id, suspend))]
pub async fn set_suspended(
    app: &App,
    ctx: &Ctx,
    tenant_id: Uuid,
    suspend: bool,
    reason: Option<&str>,
) -> Result<StatusChanged, ApiError> {
    let action = if suspend {
        actions::TENANT_SUSPEND
    } else {
        actions::TENANT_RESUME
    };
    let result: Result<StatusChanged, ApiError> = async {
        let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
        let tx = conn.transaction().await.map_err(db::DbError::from)?;
        let tenant = tenants::lock(&tx, tenant_id)
            .await?
            .ok_or(ApiError::TenantNotFound)?;
        match (suspend, tenant.suspended) {
            (true, true) => return Err(ApiError::TenantAlreadySuspended),
            (false, false) => return Err(ApiError::TenantNotSuspended),
            _ => {}
        }
        let suspended_at = tenants::set_suspended(&tx, tenant_id, suspend).await?;
        let mut record = ctx.record(action)?.tenant(tenant_id);
        if let Some(r) = reason {
            record = record.detail("reason", r);
        }
        audit::append(&tx, record).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        tracing::info!(suspend, "tenant status changed");
        Ok(StatusChanged {
            tenant_id,
            suspended: suspend,
            suspended_at,
        })
    }
    .await;
    if let Err(e) = &result {
        let record = ctx.record(action).map(|r| r.tenant(tenant_id));
        audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
    }
    result
}

/// The instants at `now` before which a last check-in makes an appliance `overdue`
/// (per paid edition: `now - (check_in_interval + check_in_grace)`) or `stale`
/// (`now - 30 days`, at or before).
pub fn health_cutoffs(policy: &Policy, now: OffsetDateTime) -> HealthCutoffs {
    HealthCutoffs {
        stale_at_or_before: now - STALE_AFTER,
        overdue_before: policy
            .editions
            .values()
            .filter_map(|e| e.paid.map(|t| (e.name.clone(), now - t.overdue_after())))
            .collect(),
    }
}

/// Largest page of `GET /appliances`.
pub const MAX_APPLIANCE_PAGE: i64 = 1000;
/// Page size when none is asked for.
pub const DEFAULT_APPLIANCE_PAGE: i64 = 100;

/// A page of appliances and the cursor of the next one.
#[derive(Debug, Clone)]
pub struct AppliancePage {
    pub appliances: Vec<WithHealth>,
    /// The `after` of the next page; `None` when this one was the last.
    pub next: Option<Uuid>,
}

/// Appliances in id order after `after`: those of `health` (active appliances of paid
/// editions) when given, every one otherwise; health as of `now`.
pub async fn list_appliances(
    app: &App,
    now: OffsetDateTime,
    health: Option<Health>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<AppliancePage, ApiError> {
    let conn = app.pool.get().await.map_err(db::DbError::from)?;
    let cutoffs = health_cutoffs(&app.policy, now);
    let appliances = appliances::page(&conn, &cutoffs, health, after, limit).await?;
    let full = i64::try_from(appliances.len()).unwrap_or(i64::MAX) >= limit;
    let next = full
        .then(|| appliances.last().map(|a| a.appliance.appliance_id))
        .flatten();
    Ok(AppliancePage { appliances, next })
}

/// Counts active appliances by health at `now` into the metrics' gauge; a failure
/// keeps the last figures (and is logged).
pub async fn refresh_health_gauge(app: &App, now: OffsetDateTime) {
    let counts = async {
        let conn = app.pool.get().await.map_err(db::DbError::from)?;
        appliances::count_by_health(&conn, &health_cutoffs(&app.policy, now)).await
    }
    .await;
    match counts {
        Ok(counts) => {
            let of = |h: Health| {
                let n = counts.iter().find(|(c, _)| *c == h).map_or(0, |(_, n)| *n);
                (h.as_str(), n)
            };
            let all = [of(Health::Ok), of(Health::Overdue), of(Health::Stale)];
            app.metrics.appliances_by_health(&all);
        }
        Err(e) => tracing::warn!(error = %e, "cannot count appliances by health"),
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn cutoffs_follow_each_paid_edition() {
        let policy = Policy::from_toml(include_str!("../../../config/policy.sample.toml"))
            .expect("sample policy");
        let now = datetime!(2030-06-01 12:00:00 UTC);
        let c = health_cutoffs(&policy, now);
        assert_eq!(c.stale_at_or_before, now - Duration::days(30));
        // A 24 h interval and 3 (pro) or 7 (enterprise) days of grace; essentials does
        // not check in.
        assert_eq!(
            c.overdue_before,
            vec![
                ("enterprise".to_owned(), now - Duration::days(8)),
                ("pro".to_owned(), now - Duration::days(4)),
            ]
        );
    }
}
