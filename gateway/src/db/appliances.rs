//! `appliances` and `licenses`.

use time::OffsetDateTime;
use uuid::Uuid;

use super::tenants::{self, Entitlement};
use super::{DbError, GenericClient};

/// An appliance to insert at redemption.
#[derive(Debug, Clone)]
pub struct NewAppliance<'a> {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    pub code_id: &'a str,
    pub hostname: &'a str,
    pub version: &'a str,
    pub public_key_fingerprint: &'a str,
    pub credential_serial: Option<&'a str>,
    pub credential_expires_at: Option<OffsetDateTime>,
}

/// A stored appliance.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    pub code_id: String,
    pub hostname: String,
    pub version: String,
    pub revoked: bool,
    pub public_key_fingerprint: String,
    pub credential_serial: Option<String>,
    pub credential_expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub last_check_in_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

const COLUMNS: &str = "appliance_id, tenant_id, code_id, hostname, version, state, \
     public_key_fingerprint, credential_serial, credential_expires_at, created_at, \
     last_check_in_at, revoked_at";

fn from_row(r: &tokio_postgres::Row) -> Result<Appliance, DbError> {
    let state: String = r.get(5);
    let revoked = match state.as_str() {
        "active" => false,
        "revoked" => true,
        other => return Err(super::corrupt("appliances.state", other)),
    };
    Ok(Appliance {
        appliance_id: r.get(0),
        tenant_id: r.get(1),
        code_id: r.get(2),
        hostname: r.get(3),
        version: r.get(4),
        revoked,
        public_key_fingerprint: r.get(6),
        credential_serial: r.get(7),
        credential_expires_at: r.get(8),
        created_at: r.get(9),
        last_check_in_at: r.get(10),
        revoked_at: r.get(11),
    })
}

/// Inserts the appliance a redemption creates.
pub async fn insert(c: &impl GenericClient, a: &NewAppliance<'_>) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached(
            "INSERT INTO appliances (appliance_id, tenant_id, code_id, hostname, version, \
         public_key_fingerprint, credential_serial, credential_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?,
        &[
            &a.appliance_id,
            &a.tenant_id,
            &a.code_id,
            &a.hostname,
            &a.version,
            &a.public_key_fingerprint,
            &a.credential_serial,
            &a.credential_expires_at,
        ],
    )
    .await?;
    Ok(())
}

/// One appliance.
pub async fn get(c: &impl GenericClient, appliance_id: Uuid) -> Result<Option<Appliance>, DbError> {
    let row = c
        .query_opt(
            &c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM appliances WHERE appliance_id = $1"
            ))
            .await?,
            &[&appliance_id],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// One appliance, locked for the rest of the transaction (check-in vs. revoke).
pub async fn get_for_update(
    c: &impl GenericClient,
    appliance_id: Uuid,
) -> Result<Option<Appliance>, DbError> {
    let row = c
        .query_opt(
            &c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM appliances WHERE appliance_id = $1 FOR UPDATE"
            ))
            .await?,
            &[&appliance_id],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// What a check-in reads, in one statement: the appliance, its tenant's status and the
/// tenant's entitlement.
#[derive(Debug, Clone)]
pub struct CheckInSubject {
    pub appliance: Appliance,
    pub tenant_suspended: bool,
    /// `None` only if the registry lost it (every tenant gets one at registration).
    pub entitlement: Option<Entitlement>,
}

/// The appliance, locked for the rest of the transaction (check-in vs. revoke), with
/// its tenant's status and entitlement: one round trip instead of three.
pub async fn for_check_in(
    c: &impl GenericClient,
    appliance_id: Uuid,
) -> Result<Option<CheckInSubject>, DbError> {
    let row = c
        .query_opt(
            &c.prepare_cached(&format!(
                "SELECT a.*, t.status, e.edition, e.paid, e.features, e.seats \
                 FROM (SELECT {COLUMNS} FROM appliances WHERE appliance_id = $1 FOR UPDATE) a \
                 JOIN tenants t ON t.tenant_id = a.tenant_id \
                 LEFT JOIN entitlements e ON e.tenant_id = a.tenant_id"
            ))
            .await?,
            &[&appliance_id],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let paid: Option<bool> = r.get(14);
    Ok(Some(CheckInSubject {
        appliance: from_row(&r)?,
        tenant_suspended: tenants::suspended(r.get(12))?,
        entitlement: paid.map(|_| tenants::entitlement_at(&r, 13)),
    }))
}

/// The tenant's appliances, oldest first.
pub async fn list_for_tenant(
    c: &impl GenericClient,
    tenant_id: Uuid,
) -> Result<Vec<Appliance>, DbError> {
    let rows = c
        .query(
            &c.prepare_cached(&format!("SELECT {COLUMNS} FROM appliances WHERE tenant_id = $1 ORDER BY created_at, appliance_id")).await?,
            &[&tenant_id],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Records a new credential.
pub async fn set_credential(
    c: &impl GenericClient,
    appliance_id: Uuid,
    serial: &str,
    expires_at: OffsetDateTime,
) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached("UPDATE appliances SET credential_serial = $2, credential_expires_at = $3 WHERE appliance_id = $1").await?,
        &[&appliance_id, &serial, &expires_at],
    )
    .await?;
    Ok(())
}

/// Records a check-in, and the credential it renewed (`(serial, expires_at)`) if any.
pub async fn record_check_in(
    c: &impl GenericClient,
    appliance_id: Uuid,
    version: &str,
    renewed: Option<(&str, OffsetDateTime)>,
) -> Result<(), DbError> {
    let (serial, expires_at) = renewed.unzip();
    c.execute(
        &c.prepare_cached(
            "UPDATE appliances SET last_check_in_at = now(), version = $2, \
             credential_serial = coalesce($3, credential_serial), \
             credential_expires_at = coalesce($4, credential_expires_at) \
             WHERE appliance_id = $1",
        )
        .await?,
        &[&appliance_id, &version, &serial, &expires_at],
    )
    .await?;
    Ok(())
}

/// Revokes an active appliance; `false` when it was already revoked.
pub async fn revoke(c: &impl GenericClient, appliance_id: Uuid) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "UPDATE appliances SET state = 'revoked', revoked_at = now() \
             WHERE appliance_id = $1 AND state = 'active'",
            )
            .await?,
            &[&appliance_id],
        )
        .await?;
    Ok(n == 1)
}

/// Why a license was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenseReason {
    Redeem,
    RedeemRetry,
    CheckIn,
}

impl LicenseReason {
    fn as_str(self) -> &'static str {
        match self {
            LicenseReason::Redeem => "redeem",
            LicenseReason::RedeemRetry => "redeem_retry",
            LicenseReason::CheckIn => "check_in",
        }
    }
}

/// An issued license (its public facts, never the token).
#[derive(Debug, Clone)]
pub struct NewLicense<'a> {
    pub jti: Uuid,
    pub kid: &'a str,
    pub tenant_id: Uuid,
    pub appliance_id: Uuid,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub reason: LicenseReason,
}

/// Records an issued license.
pub async fn insert_license(c: &impl GenericClient, l: &NewLicense<'_>) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached("INSERT INTO licenses (jti, kid, tenant_id, appliance_id, issued_at, expires_at, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)").await?,
        &[
            &l.jti,
            &l.kid,
            &l.tenant_id,
            &l.appliance_id,
            &l.issued_at,
            &l.expires_at,
            &l.reason.as_str(),
        ],
    )
    .await?;
    Ok(())
}
