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

/// Where an appliance is in its life: only `Active` appliances check in and take a
/// seat; `Replaced` (by a rebuild's redeem) and `Revoked` (by the store) are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Active,
    Replaced,
    Revoked,
}

impl State {
    fn parse(s: &str) -> Result<State, DbError> {
        match s {
            "active" => Ok(State::Active),
            "replaced" => Ok(State::Replaced),
            "revoked" => Ok(State::Revoked),
            other => Err(super::corrupt("appliances.state", other)),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Replaced => "replaced",
            State::Revoked => "revoked",
        }
    }
}

/// A stored appliance.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    pub code_id: String,
    pub hostname: String,
    pub version: String,
    pub state: State,
    pub public_key_fingerprint: String,
    pub credential_serial: Option<String>,
    pub credential_expires_at: Option<OffsetDateTime>,
    /// The credential a rotation replaced, still accepted at check-in until
    /// `previous_credential_until` unless the current one has been used since.
    pub previous_credential_serial: Option<String>,
    pub previous_credential_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub last_check_in_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub replaced_by: Option<Uuid>,
    pub replaced_at: Option<OffsetDateTime>,
}

/// The columns [`from_row`] reads, in its order (a macro so statements stay `const`).
macro_rules! columns {
    () => {
        "appliance_id, tenant_id, code_id, hostname, version, state, \
         public_key_fingerprint, credential_serial, credential_expires_at, created_at, \
         last_check_in_at, revoked_at, replaced_by, replaced_at, previous_credential_serial, \
         previous_credential_until"
    };
}
/// How many columns `columns!()` has (what a query selects after them starts here).
const NCOLUMNS: usize = 16;

/// `appliances a` (the columns of `columns!()`, then `health`): `$1` the stale cutoff,
/// `$2`/`$3` the paid editions and their overdue cutoffs. The reference time is the
/// last check-in, or the redeem before the first one.
macro_rules! with_health {
    () => {
        concat!(
            "SELECT a.*, \
               CASE WHEN a.state <> 'active' OR c.overdue_before IS NULL THEN NULL \
                    WHEN coalesce(a.last_check_in_at, a.created_at) <= $1 THEN 'stale' \
                    WHEN coalesce(a.last_check_in_at, a.created_at) < c.overdue_before THEN 'overdue' \
                    ELSE 'ok' END AS health \
             FROM (SELECT ",
            columns!(),
            " FROM appliances) a \
             LEFT JOIN entitlements e ON e.tenant_id = a.tenant_id \
             LEFT JOIN unnest($2::text[], $3::timestamptz[]) AS c(edition, overdue_before) \
               ON c.edition = e.edition"
        )
    };
}

const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM appliances WHERE appliance_id = $1"
);
const GET_FOR_UPDATE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM appliances WHERE appliance_id = $1 FOR UPDATE"
);
const FOR_CHECK_IN: &str = concat!(
    "SELECT a.*, t.status, e.edition, e.paid, e.features, e.seats \
     FROM (SELECT ",
    columns!(),
    " FROM appliances WHERE appliance_id = $1 FOR UPDATE) a \
     JOIN tenants t ON t.tenant_id = a.tenant_id \
     LEFT JOIN entitlements e ON e.tenant_id = a.tenant_id"
);
const LIST_FOR_TENANT: &str = concat!(
    "SELECT * FROM (",
    with_health!(),
    " WHERE a.tenant_id = $4) x ORDER BY created_at, appliance_id"
);
const PAGE: &str = concat!(
    "SELECT * FROM (",
    with_health!(),
    " WHERE ($5::uuid IS NULL OR a.appliance_id > $5) \
         AND ($4::text IS NULL OR a.state = 'active')) x \
     WHERE $4::text IS NULL OR health = $4 \
     ORDER BY appliance_id LIMIT $6"
);
/// Reads every active appliance by design (the metrics gauge, at most once per 30 s):
/// not a hot statement.
const COUNT_BY_HEALTH: &str = concat!(
    "SELECT health, count(*) FROM (",
    with_health!(),
    " WHERE a.state = 'active') x WHERE health IS NOT NULL GROUP BY health"
);
const SEATS_IN_USE: &str = "SELECT count(*), coalesce(bool_or(appliance_id = $2), false) \
     FROM appliances WHERE tenant_id = $1 AND state = 'active'";
const ACTIVE_IDS: &str = "SELECT appliance_id FROM appliances \
     WHERE tenant_id = $1 AND state = 'active' ORDER BY created_at, appliance_id LIMIT $2";
const REPLACE: &str = "UPDATE appliances SET state = 'replaced', replaced_by = $3, \
     replaced_at = now() WHERE appliance_id = $1 AND tenant_id = $2 AND state = 'active'";
const RECORD_CHECK_IN: &str = "UPDATE appliances SET last_check_in_at = now(), version = $2, \
     credential_serial = $3, credential_expires_at = $4, \
     previous_credential_serial = $5, previous_credential_until = $6 \
     WHERE appliance_id = $1";

/// This module's statements on the flows' hot paths, by name: `tests/it/explain.rs`
/// checks the plan of each against a seeded registry.
pub(super) const HOT: &[(&str, &str)] = &[
    ("appliance by id", GET),
    ("appliance by id for update", GET_FOR_UPDATE),
    ("check-in read", FOR_CHECK_IN),
    ("appliances of a tenant with health", LIST_FOR_TENANT),
    ("a page of appliances by health", PAGE),
    ("seats in use", SEATS_IN_USE),
    ("active appliances of a tenant", ACTIVE_IDS),
    ("replace an appliance", REPLACE),
    ("check-in update", RECORD_CHECK_IN),
];

fn from_row(r: &tokio_postgres::Row) -> Result<Appliance, DbError> {
    Ok(Appliance {
        appliance_id: r.get(0),
        tenant_id: r.get(1),
        code_id: r.get(2),
        hostname: r.get(3),
        version: r.get(4),
        state: State::parse(r.get(5))?,
        public_key_fingerprint: r.get(6),
        credential_serial: r.get(7),
        credential_expires_at: r.get(8),
        created_at: r.get(9),
        last_check_in_at: r.get(10),
        revoked_at: r.get(11),
        replaced_by: r.get(12),
        replaced_at: r.get(13),
        previous_credential_serial: r.get(14),
        previous_credential_until: r.get(15),
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
        .query_opt(&c.prepare_cached(GET).await?, &[&appliance_id])
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// One appliance, locked for the rest of the transaction (check-in vs. revoke).
pub async fn get_for_update(
    c: &impl GenericClient,
    appliance_id: Uuid,
) -> Result<Option<Appliance>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(GET_FOR_UPDATE).await?, &[&appliance_id])
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

/// The appliance, locked for the rest of the transaction (check-in vs. revoke and
/// replacement), with its tenant's status and entitlement: one round trip instead of
/// three.
pub async fn for_check_in(
    c: &impl GenericClient,
    appliance_id: Uuid,
) -> Result<Option<CheckInSubject>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(FOR_CHECK_IN).await?, &[&appliance_id])
        .await?;
    let Some(r) = row else { return Ok(None) };
    let paid: Option<bool> = r.get(NCOLUMNS + 2);
    Ok(Some(CheckInSubject {
        appliance: from_row(&r)?,
        tenant_suspended: tenants::suspended(r.get(NCOLUMNS))?,
        entitlement: paid.map(|_| tenants::entitlement_at(&r, NCOLUMNS + 1)),
    }))
}

/// When appliances turn `overdue` and `stale` at some `now`: per paid edition, the
/// time before which a last check-in makes an appliance overdue, and the time before
/// which it makes any appliance stale. Built from the policy by the flows; the
/// queries below only compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCutoffs {
    /// A last check-in at or before this is `stale`.
    pub stale_at_or_before: OffsetDateTime,
    /// `(edition, t)`: a last check-in before `t` is `overdue` for that edition.
    /// Editions not listed (unpaid) have no health.
    pub overdue_before: Vec<(String, OffsetDateTime)>,
}

/// An appliance with its health (`None`: not active, or its edition does not check
/// in).
#[derive(Debug, Clone)]
pub struct WithHealth {
    pub appliance: Appliance,
    pub health: Option<Health>,
}

/// Health as the queries compute it; see [`HealthCutoffs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    Ok,
    Overdue,
    Stale,
}

impl Health {
    /// The name the queries compute.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Overdue => "overdue",
            Health::Stale => "stale",
        }
    }

    fn parse(s: Option<&str>) -> Result<Option<Health>, DbError> {
        match s {
            None => Ok(None),
            Some("ok") => Ok(Some(Health::Ok)),
            Some("overdue") => Ok(Some(Health::Overdue)),
            Some("stale") => Ok(Some(Health::Stale)),
            Some(other) => Err(super::corrupt("health", other)),
        }
    }
}

fn cutoff_params(h: &HealthCutoffs) -> (Vec<&str>, Vec<OffsetDateTime>) {
    h.overdue_before
        .iter()
        .map(|(e, t)| (e.as_str(), *t))
        .unzip()
}

fn with_health_row(r: &tokio_postgres::Row) -> Result<WithHealth, DbError> {
    Ok(WithHealth {
        appliance: from_row(r)?,
        health: Health::parse(r.get(NCOLUMNS))?,
    })
}

/// The tenant's appliances with their health, oldest first.
pub async fn list_for_tenant(
    c: &impl GenericClient,
    tenant_id: Uuid,
    cutoffs: &HealthCutoffs,
) -> Result<Vec<WithHealth>, DbError> {
    let (editions, overdue) = cutoff_params(cutoffs);
    let rows = c
        .query(
            &c.prepare_cached(LIST_FOR_TENANT).await?,
            &[&cutoffs.stale_at_or_before, &editions, &overdue, &tenant_id],
        )
        .await?;
    rows.iter().map(with_health_row).collect()
}

/// A page of appliances in `appliance_id` order after `after`, with their health;
/// only those of health `health` when it is given (active appliances of paid
/// editions), every appliance otherwise.
pub async fn page(
    c: &impl GenericClient,
    cutoffs: &HealthCutoffs,
    health: Option<Health>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<WithHealth>, DbError> {
    let (editions, overdue) = cutoff_params(cutoffs);
    let health = health.map(Health::as_str);
    let rows = c
        .query(
            &c.prepare_cached(PAGE).await?,
            &[
                &cutoffs.stale_at_or_before,
                &editions,
                &overdue,
                &health,
                &after,
                &limit,
            ],
        )
        .await?;
    rows.iter().map(with_health_row).collect()
}

/// How many active appliances of paid editions are in each health.
pub async fn count_by_health(
    c: &impl GenericClient,
    cutoffs: &HealthCutoffs,
) -> Result<Vec<(Health, i64)>, DbError> {
    let (editions, overdue) = cutoff_params(cutoffs);
    let rows = c
        .query(
            &c.prepare_cached(COUNT_BY_HEALTH).await?,
            &[&cutoffs.stale_at_or_before, &editions, &overdue],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let h = Health::parse(r.get(0))?.ok_or_else(|| super::corrupt("health", "NULL"))?;
            Ok((h, r.get(1)))
        })
        .collect()
}

/// An appliance [`mark_overdue`] found overdue in a new episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub appliance_id: Uuid,
    pub tenant_id: Uuid,
    pub edition: String,
    /// Its last check-in, or its redeem before the first: what the episode is of.
    pub last_seen_at: OffsetDateTime,
}

/// Marks up to `limit` active appliances of paid editions that are overdue at the
/// cutoffs (stale included) and not yet marked for their current episode, and returns
/// them. The mark (`overdue_recorded_for`) is the reference time the episode is of, so
/// a later check-in, which moves the reference, starts a new episode without touching
/// the mark. The `UPDATE` re-checks the mark under the row's lock: of two concurrent
/// sweeps, one marks an appliance and the other skips it.
pub async fn mark_overdue(
    c: &impl GenericClient,
    cutoffs: &HealthCutoffs,
    limit: i64,
) -> Result<Vec<Overdue>, DbError> {
    let (editions, overdue) = cutoff_params(cutoffs);
    let rows = c
        .query(
            &c.prepare_cached(
                "UPDATE appliances a SET overdue_recorded_for = x.seen \
                 FROM (SELECT b.appliance_id, e.edition, \
                              coalesce(b.last_check_in_at, b.created_at) AS seen \
                       FROM appliances b \
                       JOIN entitlements e ON e.tenant_id = b.tenant_id \
                       JOIN unnest($1::text[], $2::timestamptz[]) AS k(edition, overdue_before) \
                         ON k.edition = e.edition \
                       WHERE b.state = 'active' \
                         AND coalesce(b.last_check_in_at, b.created_at) < k.overdue_before \
                         AND b.overdue_recorded_for IS DISTINCT FROM \
                             coalesce(b.last_check_in_at, b.created_at) \
                       ORDER BY b.appliance_id LIMIT $3) x \
                 WHERE a.appliance_id = x.appliance_id AND a.state = 'active' \
                   AND coalesce(a.last_check_in_at, a.created_at) = x.seen \
                   AND a.overdue_recorded_for IS DISTINCT FROM \
                       coalesce(a.last_check_in_at, a.created_at) \
                 RETURNING a.appliance_id, a.tenant_id, x.edition, x.seen",
            )
            .await?,
            &[&editions, &overdue, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Overdue {
            appliance_id: r.get(0),
            tenant_id: r.get(1),
            edition: r.get(2),
            last_seen_at: r.get(3),
        })
        .collect())
}

/// The tenant's active appliances now: how many, and whether `replacing` is one of
/// them (a replacement frees its seat).
pub async fn seats_in_use(
    c: &impl GenericClient,
    tenant_id: Uuid,
    replacing: Option<Uuid>,
) -> Result<(u32, bool), DbError> {
    let row = c
        .query_one(
            &c.prepare_cached(SEATS_IN_USE).await?,
            &[&tenant_id, &replacing],
        )
        .await?;
    let n: i64 = row.get(0);
    Ok((u32::try_from(n).unwrap_or(u32::MAX), row.get(1)))
}

/// Up to `limit` of the tenant's active appliances, oldest first.
pub async fn active_ids(
    c: &impl GenericClient,
    tenant_id: Uuid,
    limit: i64,
) -> Result<Vec<Uuid>, DbError> {
    let rows = c
        .query(&c.prepare_cached(ACTIVE_IDS).await?, &[&tenant_id, &limit])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Marks the tenant's active appliance `old` replaced by `new`; `false` when it is not
/// active (revoked or replaced since the code was issued: nothing to retire).
pub async fn replace(
    c: &impl GenericClient,
    old: Uuid,
    tenant_id: Uuid,
    new: Uuid,
) -> Result<bool, DbError> {
    let n = c
        .execute(&c.prepare_cached(REPLACE).await?, &[&old, &tenant_id, &new])
        .await?;
    Ok(n == 1)
}

/// Records the credential a redeem retry issued as the only one: the current
/// credential it replaces is not kept as the previous one, and a previous one is
/// dropped (see `flows::redeem` for why a retry needs no overlap).
pub async fn set_credential(
    c: &impl GenericClient,
    appliance_id: Uuid,
    serial: &str,
    expires_at: OffsetDateTime,
) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached(
            "UPDATE appliances SET credential_serial = $2, credential_expires_at = $3, \
             previous_credential_serial = NULL, previous_credential_until = NULL \
             WHERE appliance_id = $1",
        )
        .await?,
        &[&appliance_id, &serial, &expires_at],
    )
    .await?;
    Ok(())
}

/// An appliance's accepted credentials, as a check-in leaves them: the current one and
/// the one a rotation replaced with the end of its overlap. Written as a whole by
/// [`record_check_in`], computed by the flow from the row it locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub serial: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub previous_serial: Option<String>,
    pub previous_until: Option<OffsetDateTime>,
}

impl Credentials {
    /// The credential columns of a stored appliance.
    pub fn of(a: &Appliance) -> Credentials {
        Credentials {
            serial: a.credential_serial.clone(),
            expires_at: a.credential_expires_at,
            previous_serial: a.previous_credential_serial.clone(),
            previous_until: a.previous_credential_until,
        }
    }
}

/// Records a check-in and the appliance's credentials after it. The caller holds the
/// row's lock ([`for_check_in`]) and computed `credentials` from what it read, so the
/// columns are set, not merged.
pub async fn record_check_in(
    c: &impl GenericClient,
    appliance_id: Uuid,
    version: &str,
    credentials: &Credentials,
) -> Result<(), DbError> {
    c.execute(
        &c.prepare_cached(RECORD_CHECK_IN).await?,
        &[
            &appliance_id,
            &version,
            &credentials.serial,
            &credentials.expires_at,
            &credentials.previous_serial,
            &credentials.previous_until,
        ],
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
