//! `GET /tenants/{id}`: the tenant, its entitlement, its codes (public facts only), its
//! appliances with their health, and its mail status.

use time::OffsetDateTime;
use uuid::Uuid;

use super::lifecycle::health_cutoffs;
use crate::App;
use crate::db::appliances::{State, WithHealth};
use crate::db::codes::CodeRow;
use crate::db::outbox::Mail;
use crate::db::tenants::{Entitlement, Tenant};
use crate::db::{self, appliances, codes, outbox, tenants};
use crate::error::ApiError;

/// Everything the registry holds about a tenant, health as of the `now` asked for.
#[derive(Debug, Clone)]
pub struct TenantDetails {
    pub tenant: Tenant,
    pub entitlement: Option<Entitlement>,
    /// The policy's `max_appliances` of the tenant's edition (0 if the policy lost it).
    pub max_appliances: u32,
    /// Newest first.
    pub codes: Vec<CodeRow>,
    /// Oldest first.
    pub appliances: Vec<WithHealth>,
    /// Newest first.
    pub mail: Vec<Mail>,
}

impl TenantDetails {
    /// How many of its appliances are active (take a seat).
    pub fn active_appliances(&self) -> u32 {
        let n = self
            .appliances
            .iter()
            .filter(|a| a.appliance.state == State::Active)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Reads a tenant (no audit record: reads are not state changes).
pub async fn get(
    app: &App,
    tenant_id: Uuid,
    now: OffsetDateTime,
) -> Result<TenantDetails, ApiError> {
    let conn = app.pool.get().await.map_err(db::DbError::from)?;
    let c = &conn;
    let tenant = tenants::get(c, tenant_id)
        .await?
        .ok_or(ApiError::TenantNotFound)?;
    let cutoffs = health_cutoffs(&app.policy, now);
    // Independent reads, pipelined on the connection.
    let (entitlement, codes, appliances, mail) = tokio::try_join!(
        tenants::entitlement(c, tenant_id),
        codes::list_for_tenant(c, tenant_id),
        appliances::list_for_tenant(c, tenant_id, &cutoffs),
        outbox::list_for_tenant(c, tenant_id),
    )?;
    let max_appliances = app
        .policy
        .edition(&tenant.edition)
        .map_or(0, |e| e.max_appliances);
    Ok(TenantDetails {
        tenant,
        entitlement,
        max_appliances,
        codes,
        appliances,
        mail,
    })
}
