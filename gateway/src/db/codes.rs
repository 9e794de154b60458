//! `install_codes`: binding fields and state, never a secret.

use alga_protocol::{CodeBinding, CodeId};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{DbError, GenericClient};

/// Where a code is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    Unclaimed,
    Consumed,
    Revoked,
}

impl CodeState {
    fn parse(s: &str) -> Result<CodeState, DbError> {
        match s {
            "unclaimed" => Ok(CodeState::Unclaimed),
            "consumed" => Ok(CodeState::Consumed),
            "revoked" => Ok(CodeState::Revoked),
            other => Err(super::corrupt("install_codes.state", other)),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeState::Unclaimed => "unclaimed",
            CodeState::Consumed => "consumed",
            CodeState::Revoked => "revoked",
        }
    }
}

/// A stored code: its binding and its state.
#[derive(Debug, Clone)]
pub struct CodeRow {
    pub binding: CodeBinding,
    pub state: CodeState,
    pub created_at: OffsetDateTime,
    pub consumed_at: Option<OffsetDateTime>,
    pub consumer_key_fingerprint: Option<String>,
    pub appliance_id: Option<Uuid>,
    pub revoked_at: Option<OffsetDateTime>,
    /// Computed by the database: `expires_at <= now()`.
    pub expired: bool,
    /// Computed by the database: consumed less than 15 minutes ago.
    pub within_retry_window: bool,
}

/// The columns [`from_row`] reads, in its order (a macro so statements stay `const`).
macro_rules! columns {
    () => {
        "code_id, tenant_id, edition, expires_at, key_version, state, created_at, \
         consumed_at, consumer_key_fingerprint, appliance_id, revoked_at, expires_at <= now(), \
         coalesce(consumed_at > now() - interval '15 minutes', false), replaces_appliance_id"
    };
}

const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM install_codes WHERE code_id = $1"
);
const LIST_FOR_TENANT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM install_codes WHERE tenant_id = $1 ORDER BY created_at DESC, code_id"
);
const CONSUME: &str = "UPDATE install_codes SET state = 'consumed', consumed_at = now(), \
     consumer_key_fingerprint = $3, appliance_id = $4 \
     WHERE code_id = $1 AND tenant_id = $2 AND edition = $5 AND expires_at = $6 \
     AND key_version = $7 AND replaces_appliance_id IS NOT DISTINCT FROM $8 \
     AND state = 'unclaimed' AND expires_at > now() \
     RETURNING consumed_at";
const REVOKE_UNCLAIMED: &str = "UPDATE install_codes SET state = 'revoked', revoked_at = now() \
     WHERE tenant_id = $1 AND state = 'unclaimed' \
       AND ($2 OR replaces_appliance_id IS NOT DISTINCT FROM $3) \
     RETURNING code_id";

/// This module's statements on the flows' hot paths, by name: `tests/it/explain.rs`
/// checks the plan of each against a seeded registry.
pub(super) const HOT: &[(&str, &str)] = &[
    ("code by code_id", GET),
    ("codes of a tenant", LIST_FOR_TENANT),
    ("conditional consume", CONSUME),
    ("revoke superseded codes", REVOKE_UNCLAIMED),
];

fn from_row(r: &tokio_postgres::Row) -> Result<CodeRow, DbError> {
    let code_id: String = r.get(0);
    let key_version: i32 = r.get(4);
    let state: String = r.get(5);
    Ok(CodeRow {
        binding: CodeBinding {
            code_id: CodeId::parse(&code_id)
                .map_err(|_| super::corrupt("install_codes.code_id", &code_id))?,
            tenant_id: r.get(1),
            edition: r.get(2),
            expires_at: r.get(3),
            key_version: u32::try_from(key_version).map_err(|_| {
                super::corrupt("install_codes.key_version", &key_version.to_string())
            })?,
            replaces_appliance_id: r.get(13),
        },
        state: CodeState::parse(&state)?,
        created_at: r.get(6),
        consumed_at: r.get(7),
        consumer_key_fingerprint: r.get(8),
        appliance_id: r.get(9),
        revoked_at: r.get(10),
        expired: r.get(11),
        within_retry_window: r.get(12),
    })
}

/// Stores a freshly minted code's binding (state `unclaimed`).
pub async fn insert(c: &impl GenericClient, b: &CodeBinding) -> Result<(), DbError> {
    let key_version = i32::try_from(b.key_version)
        .map_err(|_| DbError::Corrupt(format!("key version {} out of range", b.key_version)))?;
    c.execute(
        &c.prepare_cached(
            "INSERT INTO install_codes (code_id, tenant_id, edition, expires_at, key_version, \
             replaces_appliance_id) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?,
        &[
            &b.code_id.as_str(),
            &b.tenant_id,
            &b.edition,
            &b.expires_at,
            &key_version,
            &b.replaces_appliance_id,
        ],
    )
    .await?;
    Ok(())
}

/// The code with this id.
pub async fn get(c: &impl GenericClient, code_id: &CodeId) -> Result<Option<CodeRow>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(GET).await?, &[&code_id.as_str()])
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The tenant's codes, newest first.
pub async fn list_for_tenant(
    c: &impl GenericClient,
    tenant_id: Uuid,
) -> Result<Vec<CodeRow>, DbError> {
    let rows = c
        .query(&c.prepare_cached(LIST_FOR_TENANT).await?, &[&tenant_id])
        .await?;
    rows.iter().map(from_row).collect()
}

/// Consumes the code if, and only if, it is unclaimed and not expired by the
/// database's clock, and it still holds exactly the binding the issuer just verified.
/// One statement: concurrent redeems of one code serialize on the row, and exactly one
/// sees a row back.
pub async fn consume(
    c: &impl GenericClient,
    b: &CodeBinding,
    appliance_id: Uuid,
    key_fingerprint: &str,
) -> Result<Option<OffsetDateTime>, DbError> {
    let key_version = i32::try_from(b.key_version)
        .map_err(|_| DbError::Corrupt(format!("key version {} out of range", b.key_version)))?;
    let row = c
        .query_opt(
            &c.prepare_cached(CONSUME).await?,
            &[
                &b.code_id.as_str(),
                &b.tenant_id,
                &key_fingerprint,
                &appliance_id,
                &b.edition,
                &b.expires_at,
                &key_version,
                &b.replaces_appliance_id,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Which of a tenant's unclaimed codes a change supersedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superseded {
    /// Every one (the tenant's edition changed: they are bound to the old one).
    All,
    /// Those with this replacement: a new code for the same rebuild (`Some`), or a
    /// first install's code sent again (`None`; codes that add an appliance).
    Replacing(Option<Uuid>),
}

/// Revokes the tenant's unclaimed codes that `which` names; returns their ids, sorted.
pub async fn revoke_unclaimed(
    c: &impl GenericClient,
    tenant_id: Uuid,
    which: Superseded,
) -> Result<Vec<String>, DbError> {
    let (all, replacing) = match which {
        Superseded::All => (true, None),
        Superseded::Replacing(r) => (false, r),
    };
    let rows = c
        .query(
            &c.prepare_cached(REVOKE_UNCLAIMED).await?,
            &[&tenant_id, &all, &replacing],
        )
        .await?;
    let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort();
    Ok(ids)
}
