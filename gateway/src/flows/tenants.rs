//! `GET /tenants/{id}`: the tenant, its entitlement, its codes (public facts only), its
//! appliances and its mail status.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::App;
use crate::db::{self, appliances, codes, outbox, tenants};
use crate::error::ApiError;

#[derive(Debug, Serialize)]
pub struct TenantView {
    pub tenant_id: Uuid,
    pub company: String,
    pub contact: ContactView,
    pub edition: String,
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub entitlement: Option<EntitlementView>,
    pub install_codes: Vec<CodeView>,
    pub appliances: Vec<ApplianceView>,
    pub mail: Vec<MailView>,
}

#[derive(Debug, Serialize)]
pub struct ContactView {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Serialize)]
pub struct EntitlementView {
    pub edition: String,
    pub paid: bool,
    pub features: Vec<String>,
    pub seats: i32,
}

#[derive(Debug, Serialize)]
pub struct CodeView {
    pub code_id: String,
    pub state: &'static str,
    pub expired: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub consumed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub appliance_id: Option<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct ApplianceView {
    pub appliance_id: Uuid,
    pub state: &'static str,
    pub hostname: String,
    pub version: String,
    pub code_id: String,
    pub credential_serial: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub credential_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_check_in_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize)]
pub struct MailView {
    pub mail_id: Uuid,
    pub code_id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// The next attempt (queued mail only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Why the last attempt failed (for a failed mail: why it was given up).
    pub last_error: Option<String>,
}

/// Reads a tenant (no audit record: reads are not state changes).
pub async fn get(app: &App, tenant_id: Uuid) -> Result<TenantView, ApiError> {
    let conn = app.pool.get().await.map_err(db::DbError::from)?;
    let c = &conn;
    let t = tenants::get(c, tenant_id)
        .await?
        .ok_or(ApiError::TenantNotFound)?;
    let entitlement = tenants::entitlement(c, tenant_id).await?;
    let codes = codes::list_for_tenant(c, tenant_id).await?;
    let apps = appliances::list_for_tenant(c, tenant_id).await?;
    let mail = outbox::list_for_tenant(c, tenant_id).await?;
    Ok(TenantView {
        tenant_id,
        company: t.company,
        contact: ContactView {
            name: t.contact_name,
            email: t.contact_email,
        },
        edition: t.edition,
        status: if t.suspended { "suspended" } else { "active" },
        created_at: t.created_at,
        entitlement: entitlement.map(|e| EntitlementView {
            edition: e.edition,
            paid: e.paid,
            features: e.features,
            seats: e.seats,
        }),
        install_codes: codes
            .into_iter()
            .map(|r| CodeView {
                code_id: r.binding.code_id.to_string(),
                state: r.state.as_str(),
                expired: r.expired,
                expires_at: r.binding.expires_at,
                created_at: r.created_at,
                consumed_at: r.consumed_at,
                revoked_at: r.revoked_at,
                appliance_id: r.appliance_id,
            })
            .collect(),
        appliances: apps
            .into_iter()
            .map(|a| ApplianceView {
                appliance_id: a.appliance_id,
                state: if a.revoked { "revoked" } else { "active" },
                hostname: a.hostname,
                version: a.version,
                code_id: a.code_id,
                credential_serial: a.credential_serial,
                credential_expires_at: a.credential_expires_at,
                created_at: a.created_at,
                last_check_in_at: a.last_check_in_at,
                revoked_at: a.revoked_at,
            })
            .collect(),
        mail: mail
            .into_iter()
            .map(|m| MailView {
                mail_id: m.mail_id,
                code_id: m.code_id,
                kind: m.kind,
                status: m.state,
                attempts: m.attempts,
                created_at: m.created_at,
                sent_at: m.sent_at,
                next_attempt_at: m.next_attempt_at,
                last_error: m.last_error,
            })
            .collect(),
    })
}
