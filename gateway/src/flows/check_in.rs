//! `POST /check-in`: an appliance, identified by its credential, refreshes its license,
//! and its credential too when less than a third of the presented certificate's
//! lifetime is left and it sent a CSR.
//!
//! Refused: a revoked appliance (`appliance_revoked`), one a rebuild replaced
//! (`appliance_replaced`), a suspended tenant's (`tenant_suspended`). The license
//! carries the tenant's edition now; when that edition has no license (a downgrade to
//! essentials) the answer is `"license": null` and no credential, and the appliance
//! falls back to that tier.

use alga_protocol::ApplianceIdentity;
use alga_protocol::api::{CheckInResponse, Credential, License};
use futures::future::OptionFuture;
use time::OffsetDateTime;
use tracing::instrument;

use super::csr::Csr;
use super::redeem::license_row;
use super::validate::Name;
use super::{Ctx, issuer_error};
use crate::App;
use crate::audit::{self, actions};
use crate::db;
use crate::db::appliances::{self, LicenseReason, State};
use crate::error::ApiError;

/// When an appliance whose edition has no license should ask again. A client that
/// keeps its credential is licensed again by a later move back to a paid edition while
/// the credential is valid; `alga-appliance` drops it on `license: null` (it becomes an
/// essentials appliance) and is upgraded with a re-issued code.
pub const UNLICENSED_CHECK_IN_INTERVAL: time::Duration = time::Duration::hours(24);

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
    let subject = appliances::for_check_in(&tx, id.appliance_id)
        .await?
        .filter(|s| s.appliance.tenant_id == id.tenant_id)
        .ok_or(ApiError::ApplianceNotFound)?;
    match subject.appliance.state {
        State::Active => {}
        State::Revoked => return Err(ApiError::ApplianceRevoked),
        State::Replaced => return Err(ApiError::ApplianceReplaced),
    }
    if subject.tenant_suspended {
        return Err(ApiError::TenantSuspended);
    }
    let entitlement = subject
        .entitlement
        .ok_or_else(|| ApiError::internal("tenant without entitlement"))?;
    let edition = app
        .policy
        .edition(&entitlement.edition)
        .ok_or_else(|| ApiError::internal("entitlement edition not in the policy"))?;
    let Some(paid) = edition.paid else {
        // Only a paid edition's appliance has a credential: this one's tenant moved
        // to an edition without a license. It is told so, and gets nothing signed.
        let record = ctx
            .record(actions::APPLIANCE_CHECK_IN)?
            .tenant(id.tenant_id)
            .subject("appliance_id", id.appliance_id)
            .detail("edition", edition.name.as_str())
            .detail("license", false);
        tokio::try_join!(
            async {
                appliances::record_check_in(&tx, id.appliance_id, version.as_str(), None)
                    .await
                    .map_err(ApiError::from)
            },
            async { audit::append(&tx, record).await.map_err(ApiError::from) },
        )?;
        tx.commit().await.map_err(db::DbError::from)?;
        tracing::info!(edition = %edition.name, "appliance checked in: no license for its edition");
        return Ok(CheckInResponse {
            edition: Some(edition.name.clone()),
            license: None,
            credential: None,
            next_check_in_after: ctx.now + UNLICENSED_CHECK_IN_INTERVAL,
        });
    };

    // License and (when due) credential at once: the issuer answers each only after
    // its signing log is fsynced, and concurrent appends share one fsync.
    let renew = csr.filter(|_| presented.needs_renewal(ctx.now));
    let (signed, renewed) = tokio::join!(
        app.issuer
            .sign_license(id.tenant_id, id.appliance_id, &entitlement.edition),
        OptionFuture::from(renew.as_ref().map(|csr| {
            app.issuer.sign_credential(
                id.tenant_id,
                id.appliance_id,
                &entitlement.edition,
                csr.pem(),
            )
        })),
    );
    let signed = signed.map_err(issuer_error)?;
    let renewed = renewed.transpose().map_err(issuer_error)?;
    let mut record = ctx
        .record(actions::APPLIANCE_CHECK_IN)?
        .tenant(id.tenant_id)
        .subject("appliance_id", id.appliance_id)
        .subject("jti", signed.jti)
        .detail("edition", edition.name.as_str())
        .detail("credential_renewed", renewed.is_some());
    if let Some(c) = &renewed {
        record = record.subject("serial", &c.serial);
    }
    // Three independent writes, pipelined on the connection: one round trip.
    tokio::try_join!(
        async {
            let row = license_row(
                &signed,
                id.tenant_id,
                id.appliance_id,
                LicenseReason::CheckIn,
            );
            appliances::insert_license(&tx, &row)
                .await
                .map_err(ApiError::from)
        },
        async {
            let credential = renewed.as_ref().map(|c| (c.serial.as_str(), c.expires_at));
            appliances::record_check_in(&tx, id.appliance_id, version.as_str(), credential)
                .await
                .map_err(ApiError::from)
        },
        async { audit::append(&tx, record).await.map_err(ApiError::from) },
    )?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(renewed = renewed.is_some(), "appliance checked in");
    Ok(CheckInResponse {
        edition: Some(edition.name.clone()),
        license: Some(License {
            token: signed.token,
            expires_at: signed.expires_at,
        }),
        credential: renewed.map(|c| Credential {
            certificate: c.certificate_pem,
            chain: c.chain_pem,
            expires_at: c.expires_at,
        }),
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
