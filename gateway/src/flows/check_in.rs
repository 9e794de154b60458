//! `POST /check-in`: an appliance, identified by its credential, refreshes its license,
//! and its credential too when less than a third of the presented certificate's
//! lifetime is left and it sent a CSR.

use alga_protocol::ApplianceIdentity;
use alga_protocol::api::{CheckInResponse, Credential};
use time::OffsetDateTime;
use tracing::instrument;

use super::csr::Csr;
use super::redeem::sign_license;
use super::validate::Name;
use super::{Ctx, issuer_error};
use crate::App;
use crate::audit::{self, actions};
use crate::db::appliances::{self, LicenseReason};
use crate::db::{self, tenants};
use crate::error::ApiError;

/// The presented credential's validity.
#[derive(Debug, Clone, Copy)]
pub struct Presented {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Presented {
    /// Whether less than a third of the lifetime is left at `now`.
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.not_before;
        let left = self.not_after - now;
        left * 3 < lifetime
    }
}

/// Checks an appliance in.
#[instrument(skip_all, fields(tenant.id = %id.tenant_id, appliance.id = %id.appliance_id))]
pub async fn check_in(
    app: &App,
    ctx: &Ctx,
    id: ApplianceIdentity,
    presented: Presented,
    version: &str,
    csr_pem: Option<&str>,
) -> Result<CheckInResponse, ApiError> {
    let result = check_in_inner(app, ctx, id, presented, version, csr_pem).await;
    if let Err(e) = &result {
        let record = ctx.record(actions::APPLIANCE_CHECK_IN).map(|r| {
            r.tenant(id.tenant_id)
                .subject("appliance_id", id.appliance_id)
        });
        audit::append_failure(&app.pool, record, e.code()).await;
    }
    result
}

async fn check_in_inner(
    app: &App,
    ctx: &Ctx,
    id: ApplianceIdentity,
    presented: Presented,
    version: &str,
    csr_pem: Option<&str>,
) -> Result<CheckInResponse, ApiError> {
    let version = Name::parse(version).map_err(|m| {
        let mut f = std::collections::BTreeMap::new();
        f.insert("appliance.version".to_owned(), m.to_owned());
        ApiError::Validation(f)
    })?;
    let csr = csr_pem.map(Csr::parse).transpose()?;
    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let appliance = appliances::get_for_update(&tx, id.appliance_id)
        .await?
        .filter(|a| a.tenant_id == id.tenant_id)
        .ok_or(ApiError::ApplianceNotFound)?;
    if appliance.revoked {
        return Err(ApiError::ApplianceRevoked);
    }
    let tenant = tenants::get(&tx, id.tenant_id)
        .await?
        .ok_or(ApiError::ApplianceNotFound)?;
    if tenant.suspended {
        return Err(ApiError::TenantSuspended);
    }
    let entitlement = tenants::entitlement(&tx, id.tenant_id)
        .await?
        .ok_or_else(|| ApiError::internal("tenant without entitlement"))?;
    let edition = app
        .policy
        .edition(&entitlement.edition)
        .ok_or_else(|| ApiError::internal("entitlement edition not in the policy"))?;
    let Some(paid) = edition.paid else {
        // An essentials appliance has no credential; one that has a certificate anyway
        // is not entitled to a license.
        return Err(ApiError::Forbidden);
    };

    let (license, jti) = sign_license(
        app,
        &tx,
        id.tenant_id,
        id.appliance_id,
        &entitlement.edition,
        LicenseReason::CheckIn,
    )
    .await?;
    let mut credential = None;
    let mut serial = None;
    if let Some(csr) = csr.filter(|_| presented.needs_renewal(ctx.now)) {
        let c = app
            .issuer
            .sign_credential(
                id.tenant_id,
                id.appliance_id,
                &entitlement.edition,
                csr.pem(),
            )
            .await
            .map_err(issuer_error)?;
        appliances::set_credential(&tx, id.appliance_id, &c.serial, c.expires_at).await?;
        serial = Some(c.serial.clone());
        credential = Some(Credential {
            certificate: c.certificate_pem,
            chain: c.chain_pem,
            expires_at: c.expires_at,
        });
    }
    appliances::record_check_in(&tx, id.appliance_id, version.as_str()).await?;
    let mut record = ctx
        .record(actions::APPLIANCE_CHECK_IN)?
        .tenant(id.tenant_id)
        .subject("appliance_id", id.appliance_id)
        .subject("jti", &jti)
        .detail("credential_renewed", serial.is_some());
    if let Some(s) = &serial {
        record = record.subject("serial", s);
    }
    audit::append(&tx, record).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(renewed = serial.is_some(), "appliance checked in");
    Ok(CheckInResponse {
        license,
        credential,
        next_check_in_after: ctx.now + paid.check_in_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn renewal_at_one_third() {
        let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
        let p = Presented {
            not_before: nb,
            not_after: nb + Duration::days(30),
        };
        assert!(!p.needs_renewal(nb));
        assert!(!p.needs_renewal(nb + Duration::days(20)));
        assert!(p.needs_renewal(nb + Duration::days(20) + Duration::seconds(1)));
        assert!(p.needs_renewal(nb + Duration::days(31)));
    }
}
