//! `bootstrap`: the in-cluster steps that adopt the tenant and seed the license state
//! in the appliance's own Postgres (CONTRACT.md §7), in its own small schema
//! `alga_appliance`, created when missing.
//!
//! - `create-tenant` adopts `INITIAL_TENANT_ID` when the `appliance-initial-tenant`
//!   Secret has it, and generates an id only when it does not (no install code was
//!   used: the seed says the Secret *gains* the key when one is). Re-running is a
//!   no-op; a database that already belongs to a different tenant is an error, never
//!   silently replaced.
//! - `seed-license` writes `license_state` from `appliance-license-seed`: no seed (no
//!   install code was used) or a seed without a token (essentials) gives tier
//!   `essentials` and no token, the least an appliance can run with; a paid seed
//!   gives tier `licensed`, the token, its expiry, and the next refresh at
//!   `now + check_in_interval_seconds` of the license's entitlements.
//!
//! Every step runs in one transaction under an advisory lock, so two bootstrap pods
//! racing cannot both insert.
#![allow(
    clippy::disallowed_methods,
    reason = "the appliance's own local database: this module is its only writer"
)]

use std::path::Path;

use alga_protocol::SecretText;
use time::OffsetDateTime;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::crypto;
use crate::error::{Error, Result};
use crate::secrets::{self, LicenseSeed, SecretManifest};

/// The schema, idempotent.
pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS alga_appliance;
CREATE TABLE IF NOT EXISTS alga_appliance.appliance_tenant (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tenant_id  uuid NOT NULL,
    source     text NOT NULL CHECK (source IN ('install_code', 'generated')),
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS alga_appliance.license_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tenant_id       uuid NOT NULL,
    edition         text NOT NULL,
    tier            text NOT NULL CHECK (tier IN ('essentials', 'licensed')),
    license_token   text,
    license_jti     text,
    expires_at      timestamptz,
    next_refresh_at timestamptz,
    updated_at      timestamptz NOT NULL,
    CHECK ((tier = 'licensed') = (license_token IS NOT NULL))
);
";

/// Key of the advisory lock serialising bootstrap steps.
const LOCK_KEY: i64 = 0x616c_6761_6170_706c; // "algaappl"

/// Connects to the appliance's Postgres (in-cluster, plain TCP or a socket).
pub async fn connect(database_url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(database_url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// What `create-tenant` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAction {
    /// Adopted the install code's tenant.
    Adopted,
    /// Generated an id (no install code).
    Generated,
    /// The tenant was already there: nothing changed.
    Unchanged,
}

/// The outcome of `create-tenant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantOutcome {
    pub tenant_id: Uuid,
    pub action: TenantAction,
}

/// `INITIAL_TENANT_ID` of the Secret in `dir`: `None` when the Secret or the key is
/// absent (or empty); an error when it is present but not a UUID.
pub fn read_initial_tenant(dir: &Path) -> Result<Option<Uuid>> {
    let Some(m) = SecretManifest::load(dir, secrets::INITIAL_TENANT)? else {
        return Ok(None);
    };
    match m.get_str(secrets::KEY_INITIAL_TENANT_ID)?.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => Uuid::try_parse(s).map(Some).map_err(|_| {
            Error::input(
                "the appliance-initial-tenant Secret",
                "INITIAL_TENANT_ID is not a UUID",
            )
        }),
    }
}

/// The license seed in `dir`, if its Secret exists.
pub fn read_license_seed(dir: &Path) -> Result<Option<LicenseSeed>> {
    SecretManifest::load(dir, secrets::LICENSE_SEED)?
        .map(|m| LicenseSeed::from_manifest(&m))
        .transpose()
}

/// Creates the schema when missing.
pub async fn ensure_schema(client: &Client) -> Result<()> {
    client.batch_execute(SCHEMA_SQL).await?;
    Ok(())
}

/// Adopts `initial` (from the Secret) or generates a tenant id when there is none.
pub async fn create_tenant(
    client: &mut Client,
    initial: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<TenantOutcome> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(SCHEMA_SQL).await?;
    let existing: Option<Uuid> = tx
        .query_opt(
            "SELECT tenant_id FROM alga_appliance.appliance_tenant FOR UPDATE",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let outcome = match (existing, initial) {
        (Some(existing), Some(wanted)) if existing != wanted => {
            return Err(Error::TenantConflict { existing, wanted });
        }
        (Some(tenant_id), _) => TenantOutcome {
            tenant_id,
            action: TenantAction::Unchanged,
        },
        (None, wanted) => {
            let (tenant_id, source, action) = match wanted {
                Some(id) => (id, "install_code", TenantAction::Adopted),
                None => (Uuid::new_v4(), "generated", TenantAction::Generated),
            };
            tx.execute(
                "INSERT INTO alga_appliance.appliance_tenant (tenant_id, source, created_at)
                 VALUES ($1, $2, $3)",
                &[&tenant_id, &source, &now],
            )
            .await?;
            TenantOutcome { tenant_id, action }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The tenant of this appliance, if created.
pub async fn current_tenant(client: &Client) -> Result<Option<Uuid>> {
    ensure_schema(client).await?;
    Ok(client
        .query_opt("SELECT tenant_id FROM alga_appliance.appliance_tenant", &[])
        .await?
        .map(|r| r.get(0)))
}

/// The license state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseState {
    pub tenant_id: Uuid,
    pub edition: String,
    /// `essentials` or `licensed`.
    pub tier: String,
    pub has_token: bool,
    pub expires_at: Option<OffsetDateTime>,
    pub next_refresh_at: Option<OffsetDateTime>,
}

/// Writes `license_state` from `seed` (`None`: no license seed, essentials tier).
pub async fn seed_license(
    client: &mut Client,
    seed: Option<&LicenseSeed>,
    now: OffsetDateTime,
) -> Result<LicenseState> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(SCHEMA_SQL).await?;
    let tenant_id: Uuid = tx
        .query_opt("SELECT tenant_id FROM alga_appliance.appliance_tenant", &[])
        .await?
        .map(|r| r.get(0))
        .ok_or(Error::NoTenant)?;
    let edition = seed.map_or(secrets::ESSENTIALS, |s| s.edition.as_str());
    let state = match seed.and_then(|s| s.paid.as_ref()) {
        None => {
            tx.execute(
                "INSERT INTO alga_appliance.license_state
                   (tenant_id, edition, tier, license_token, license_jti, expires_at, next_refresh_at, updated_at)
                 VALUES ($1, $2, 'essentials', NULL, NULL, NULL, NULL, $3)
                 ON CONFLICT (singleton) DO UPDATE SET
                   tenant_id = EXCLUDED.tenant_id, edition = EXCLUDED.edition, tier = EXCLUDED.tier,
                   license_token = NULL, license_jti = NULL, expires_at = NULL,
                   next_refresh_at = NULL, updated_at = EXCLUDED.updated_at",
                &[&tenant_id, &edition, &now],
            )
            .await?;
            LicenseState {
                tenant_id,
                edition: edition.to_owned(),
                tier: "essentials".into(),
                has_token: false,
                expires_at: None,
                next_refresh_at: None,
            }
        }
        Some(paid) => {
            let claims = crypto::claims_of_verified_token(&paid.token)?;
            if claims.sub != tenant_id.hyphenated().to_string() {
                return Err(Error::input(
                    "the license seed",
                    format!(
                        "its license is for tenant {}, not this appliance's {tenant_id}",
                        claims.sub
                    ),
                ));
            }
            if claims.edition != edition {
                return Err(Error::input(
                    "the license seed",
                    "its license is for another edition than EDITION",
                ));
            }
            let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
                .map_err(|_| Error::input("the license seed", "its expiry is out of range"))?;
            if expires_at <= now {
                return Err(Error::input(
                    "the license seed",
                    "its license has expired: run `alga-appliance check-in` first",
                ));
            }
            let interval = i64::try_from(claims.entitlements.check_in_interval_seconds)
                .unwrap_or(i64::MAX)
                .clamp(60, 366 * 86_400);
            let next = now + time::Duration::seconds(interval);
            store_licensed(
                &tx,
                tenant_id,
                edition,
                &paid.token,
                &claims.jti,
                expires_at,
                next,
                now,
            )
            .await?;
            LicenseState {
                tenant_id,
                edition: edition.to_owned(),
                tier: "licensed".into(),
                has_token: true,
                expires_at: Some(expires_at),
                next_refresh_at: Some(next),
            }
        }
    };
    tx.commit().await?;
    Ok(state)
}

#[allow(clippy::too_many_arguments)] // one row's columns; a struct would only rename them
async fn store_licensed(
    tx: &tokio_postgres::Transaction<'_>,
    tenant_id: Uuid,
    edition: &str,
    token: &SecretText,
    jti: &str,
    expires_at: OffsetDateTime,
    next: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<()> {
    tx.execute(
        "INSERT INTO alga_appliance.license_state
           (tenant_id, edition, tier, license_token, license_jti, expires_at, next_refresh_at, updated_at)
         VALUES ($1, $2, 'licensed', $3, $4, $5, $6, $7)
         ON CONFLICT (singleton) DO UPDATE SET
           tenant_id = EXCLUDED.tenant_id, edition = EXCLUDED.edition, tier = EXCLUDED.tier,
           license_token = EXCLUDED.license_token, license_jti = EXCLUDED.license_jti,
           expires_at = EXCLUDED.expires_at, next_refresh_at = EXCLUDED.next_refresh_at,
           updated_at = EXCLUDED.updated_at",
        &[&tenant_id, &edition, &token.expose(), &jti, &expires_at, &next, &now],
    )
    .await?;
    Ok(())
}

/// Reads `license_state`.
pub async fn license_state(client: &Client) -> Result<Option<LicenseState>> {
    ensure_schema(client).await?;
    Ok(client
        .query_opt(
            "SELECT tenant_id, edition, tier, license_token IS NOT NULL, expires_at, next_refresh_at
               FROM alga_appliance.license_state",
            &[],
        )
        .await?
        .map(|r| LicenseState {
            tenant_id: r.get(0),
            edition: r.get(1),
            tier: r.get(2),
            has_token: r.get(3),
            expires_at: r.get(4),
            next_refresh_at: r.get(5),
        }))
}
