//! `tenants` and `entitlements`.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DbError, GenericClient};

/// A tenant to insert; names already validated and normalized by the flow.
#[derive(Debug, Clone)]
pub struct NewTenant<'a> {
    pub tenant_id: Uuid,
    pub company: &'a str,
    pub company_normalized: &'a str,
    pub contact_name: &'a str,
    pub contact_email: &'a str,
    pub contact_email_normalized: &'a str,
    pub edition: &'a str,
}

/// A stored tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub company: String,
    pub contact_name: String,
    pub contact_email: String,
    pub edition: String,
    pub suspended: bool,
    /// Since when it is suspended.
    pub suspended_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

/// A stored entitlement.
#[derive(Debug, Clone)]
pub struct Entitlement {
    pub edition: String,
    pub paid: bool,
    pub features: Vec<String>,
    pub seats: i32,
}

impl Entitlement {
    /// What a tenant of `edition` is entitled to, as the policy says now.
    pub fn of(edition: &alga_policies::Edition) -> Entitlement {
        Entitlement {
            edition: edition.name.clone(),
            paid: edition.is_paid(),
            features: edition.features.clone(),
            seats: i32::try_from(edition.seats).unwrap_or(i32::MAX),
        }
    }
}

const FIND_BY_COMPANY_CONTACT: &str = "SELECT tenant_id FROM tenants WHERE company_normalized = $1 \
     AND contact_email_normalized = $2";
const IDS_BY_CONTACT_EMAIL: &str = "SELECT tenant_id FROM tenants WHERE contact_email_normalized = $1 \
     ORDER BY created_at LIMIT $2";
const LOCK: &str = "SELECT status, edition FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE";
const GET: &str = "SELECT tenant_id, company, contact_name, contact_email, edition, status, \
     suspended_at, created_at FROM tenants WHERE tenant_id = $1";
const ENTITLEMENT: &str =
    "SELECT edition, paid, features, seats FROM entitlements WHERE tenant_id = $1";

/// This module's statements on the flows' hot paths, by name: `tests/it/explain.rs`
/// checks the plan of each against a seeded registry.
pub(super) const HOT: &[(&str, &str)] = &[
    ("tenant by company and contact", FIND_BY_COMPANY_CONTACT),
    ("tenants by contact email", IDS_BY_CONTACT_EMAIL),
    ("tenant lock", LOCK),
    ("tenant by id", GET),
    ("entitlement by tenant", ENTITLEMENT),
];

/// Inserts a tenant; `None` when one with the same company + contact exists.
pub async fn insert(c: &impl GenericClient, t: &NewTenant<'_>) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "INSERT INTO tenants (tenant_id, company, company_normalized, contact_name, \
             contact_email, contact_email_normalized, edition) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT ON CONSTRAINT tenants_company_contact_unique DO NOTHING",
            )
            .await?,
            &[
                &t.tenant_id,
                &t.company,
                &t.company_normalized,
                &t.contact_name,
                &t.contact_email,
                &t.contact_email_normalized,
                &t.edition,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The tenant with this normalized company + contact email.
pub async fn find_by_company_contact(
    c: &impl GenericClient,
    company_normalized: &str,
    email_normalized: &str,
) -> Result<Option<Uuid>, DbError> {
    let row = c
        .query_opt(
            &c.prepare_cached(FIND_BY_COMPANY_CONTACT).await?,
            &[&company_normalized, &email_normalized],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Tenant ids whose contact email (normalized) is `email`, at most `limit`.
pub async fn ids_by_contact_email(
    c: &impl GenericClient,
    email_normalized: &str,
    limit: i64,
) -> Result<Vec<Uuid>, DbError> {
    let rows = c
        .query(
            &c.prepare_cached(IDS_BY_CONTACT_EMAIL).await?,
            &[&email_normalized, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A tenant locked for the rest of the transaction: its status and edition as the
/// last committed change left them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedTenant {
    pub suspended: bool,
    pub edition: String,
}

/// Locks the tenant's row (`FOR NO KEY UPDATE`) for the rest of the transaction and
/// reads its status and edition; `None` when there is no such tenant.
///
/// Every flow that decides on a tenant's appliances or codes takes this lock first
/// (redeem, reissue, edition change, suspend, resume), so they serialize per tenant:
/// two redeems cannot both take the last seat, and a suspension cannot slip between a
/// redeem's check and its commit. The lock does not conflict with the `FOR KEY SHARE`
/// that inserting rows referencing the tenant takes (licenses at check-in), and
/// Postgres returns the row as the holder of the lock committed it.
pub async fn lock(
    c: &impl GenericClient,
    tenant_id: Uuid,
) -> Result<Option<LockedTenant>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(LOCK).await?, &[&tenant_id])
        .await?;
    row.map(|r| {
        Ok(LockedTenant {
            suspended: suspended(r.get(0))?,
            edition: r.get(1),
        })
    })
    .transpose()
}

/// Suspends (`true`) or resumes the tenant; returns `suspended_at` after the change.
/// The caller holds the [`lock`] and has checked the current status.
pub async fn set_suspended(
    c: &impl GenericClient,
    tenant_id: Uuid,
    suspend: bool,
) -> Result<Option<OffsetDateTime>, DbError> {
    let row = c
        .query_one(
            &c.prepare_cached(
                "UPDATE tenants SET \
                   status = CASE WHEN $2 THEN 'suspended' ELSE 'active' END, \
                   suspended_at = CASE WHEN $2 THEN now() END \
                 WHERE tenant_id = $1 RETURNING suspended_at",
            )
            .await?,
            &[&tenant_id, &suspend],
        )
        .await?;
    Ok(row.get(0))
}

/// Moves the tenant to another edition: the tenant's edition and its entitlement,
/// in one statement. The caller holds the [`lock`].
pub async fn set_entitlement(
    c: &impl GenericClient,
    tenant_id: Uuid,
    e: &Entitlement,
) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached(
            "WITH t AS (UPDATE tenants SET edition = $2 WHERE tenant_id = $1) \
             UPDATE entitlements SET edition = $2, paid = $3, features = $4, seats = $5, \
               updated_at = now() \
             WHERE tenant_id = $1",
        )
        .await?,
        &[&tenant_id, &e.edition, &e.paid, &e.features, &e.seats],
    )
    .await?;
    Ok(())
}

/// One tenant.
pub async fn get(c: &impl GenericClient, tenant_id: Uuid) -> Result<Option<Tenant>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(GET).await?, &[&tenant_id])
        .await?;
    row.map(|r| {
        Ok(Tenant {
            tenant_id: r.get(0),
            company: r.get(1),
            contact_name: r.get(2),
            contact_email: r.get(3),
            edition: r.get(4),
            suspended: suspended(r.get(5))?,
            suspended_at: r.get(6),
            created_at: r.get(7),
        })
    })
    .transpose()
}

/// Whether a stored `tenants.status` is `suspended`.
pub(super) fn suspended(status: &str) -> Result<bool, DbError> {
    match status {
        "active" => Ok(false),
        "suspended" => Ok(true),
        other => Err(super::corrupt("tenants.status", other)),
    }
}

/// Inserts the tenant's entitlement.
pub async fn insert_entitlement(
    c: &impl GenericClient,
    tenant_id: Uuid,
    e: &Entitlement,
) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached(
            "INSERT INTO entitlements (tenant_id, edition, paid, features, seats) \
         VALUES ($1, $2, $3, $4, $5)",
        )
        .await?,
        &[&tenant_id, &e.edition, &e.paid, &e.features, &e.seats],
    )
    .await?;
    Ok(())
}

/// The tenant's entitlement.
pub async fn entitlement(
    c: &impl GenericClient,
    tenant_id: Uuid,
) -> Result<Option<Entitlement>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(ENTITLEMENT).await?, &[&tenant_id])
        .await?;
    Ok(row.map(|r| entitlement_at(&r, 0)))
}

/// The entitlement in columns `at..at + 4` (`edition, paid, features, seats`).
pub(super) fn entitlement_at(r: &tokio_postgres::Row, at: usize) -> Entitlement {
    Entitlement {
        edition: r.get(at),
        paid: r.get(at + 1),
        features: r.get(at + 2),
        seats: r.get(at + 3),
    }
}
