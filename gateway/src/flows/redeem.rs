//! `POST /register`: redeem an install code.
//!
//! 1. Before verification, local checks only: the per-source rate limit, the code's
//!    offline parse (check symbols) → `code_malformed`, the appliance fields, the CSR
//!    (`csr_invalid`: exactly what the issuer would refuse, so no signature is ever made
//!    for a CSR it then rejects). No caller is established yet: these refusals are
//!    counted in the refusal summary ([`crate::audit::Refusals`]), not recorded one by
//!    one.
//! 2. Look the binding up by `code_id`; have the issuer verify the code against it, or,
//!    for an unknown id, against a decoy binding (the presented id, a random tenant):
//!    unknown id and wrong secret do the same work and give the *same* `code_invalid`,
//!    with the same audit record. Only a failed verification is charged to the code
//!    id's budget (`rate_limited` once it is spent): a code that verifies is never
//!    refused by the per-code limit, whatever others guessed. From here on every
//!    attempt has an audit record of its own.
//! 3. One transaction, under the tenant's row lock (so a tenant's redeems, reissues
//!    and changes serialize): a suspended tenant is refused (`tenant_suspended`,
//!    nothing consumed); the conditional `UPDATE … WHERE state='unclaimed' AND
//!    expires_at > now() RETURNING …`; the seat check (`seat_limit_reached` when the
//!    edition's `max_appliances` active appliances are taken, the replaced one not
//!    counted; the rollback leaves the code unclaimed); then (paid editions) license +
//!    credential from the issuer, the appliance row, the replaced appliance marked
//!    `replaced`, license row, audit. An issuer failure rolls it all back: the code
//!    stays usable and the caller gets `license_service_unavailable`.
//! 4. No row updated: classify, only now that the code verified — consumed by the
//!    same public key less than 15 minutes ago, for an appliance still active → the
//!    same tenant and appliance with a fresh license and credential, which becomes
//!    the appliance's only accepted credential (`flows::check_in`); otherwise
//!    `code_already_used`, `code_revoked` or `code_expired`.
//!
//! What is signed follows the tenant's edition now (a fresh code is bound to it: an
//! edition change revokes the codes of the old one).

use std::sync::atomic::Ordering;

use alga_policies::Edition;
use alga_protocol::api::ApplianceInfo;
use alga_protocol::issuer_api::{SignedCredential, SignedLicense};
use alga_protocol::{CodeBinding, CodeId, InstallCode, SecretText};
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use super::csr::Csr;
use super::validate::Name;
use super::{Ctx, issuer_error};
use crate::App;
use crate::audit::{self, actions};
use crate::db::appliances::{LicenseReason, NewAppliance, NewLicense, State};
use crate::db::codes::{CodeRow, CodeState};
use crate::db::{self, appliances, tenants};
use crate::error::ApiError;

/// A redeemed code's outcome: the appliance, and, for a paid edition, what the issuer
/// signed for it.
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub tenant_id: Uuid,
    /// The tenant's edition now, which the license carries.
    pub edition: String,
    pub appliance_id: Uuid,
    /// The license and credential; `None` for an edition without a license.
    pub signed: Option<(SignedLicense, SignedCredential)>,
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Redeems a code. `install_code` is the operator's input, untouched.
#[instrument(skip_all, fields(code.id = tracing::field::Empty, tenant.id = tracing::field::Empty))]
pub async fn redeem(
    app: &App,
    ctx: &Ctx,
    install_code: &SecretText,
    csr_pem: &str,
    appliance: &ApplianceInfo,
) -> Result<Redeemed, ApiError> {
    let (code, csr) = match checked_input(app, ctx, install_code, csr_pem, appliance) {
        Ok(input) => input,
        Err(e) => {
            // Refused before the code was verified: counted, not recorded one by one.
            app.metrics.redeem_outcome(e.code());
            app.refusals
                .count_request(ctx, actions::CODE_REDEEM, e.code());
            return Err(e);
        }
    };
    let code_id = code.code_id().clone();
    tracing::Span::current().record("code.id", tracing::field::display(&code_id));

    match verify_and_consume(app, ctx, code, &csr, appliance).await {
        Ok(resp) => {
            app.metrics.redeem_outcome("ok");
            Ok(resp)
        }
        Err((e, tenant)) => {
            app.metrics.redeem_outcome(e.code());
            let record = ctx.record(actions::CODE_REDEEM).map(|r| {
                let r = r.subject("code_id", code_id.as_str());
                match tenant {
                    Some(t) => r.tenant(t),
                    None => r,
                }
            });
            audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
            Err(e)
        }
    }
}

/// The checks before verification, all local: the per-source limit, the code's
/// offline parse, the appliance fields and the CSR.
fn checked_input(
    app: &App,
    ctx: &Ctx,
    install_code: &SecretText,
    csr_pem: &str,
    appliance: &ApplianceInfo,
) -> Result<(InstallCode, Csr), ApiError> {
    app.limits
        .check_source(ctx.source_or_unspecified())
        .map_err(ApiError::RateLimited)?;
    let code = InstallCode::parse(install_code.expose())
        .map_err(|e| ApiError::CodeMalformed(e.to_string()))?;
    let mut fields = std::collections::BTreeMap::new();
    if let Err(m) = Name::parse(&appliance.hostname) {
        fields.insert("appliance.hostname".to_owned(), m.to_owned());
    }
    if let Err(m) = Name::parse(&appliance.version) {
        fields.insert("appliance.version".to_owned(), m.to_owned());
    }
    if !fields.is_empty() {
        return Err(ApiError::Validation(fields));
    }
    let csr = Csr::parse(csr_pem)?;
    Ok((code, csr))
}

/// What an unknown `code_id` is verified against: the presented id with a random
/// tenant, bound like a fresh code. No stored code has it, and its MAC matches a
/// presented code with probability 2^-90; the answer is `code_invalid` regardless.
fn decoy_binding(app: &App, code_id: &CodeId, now: OffsetDateTime) -> CodeBinding {
    let expires_at = now + app.policy.install_code_ttl;
    CodeBinding {
        code_id: code_id.clone(),
        tenant_id: Uuid::new_v4(),
        edition: app
            .policy
            .editions
            .keys()
            .next()
            .cloned()
            .unwrap_or_default(),
        expires_at: expires_at.replace_nanosecond(0).unwrap_or(expires_at),
        key_version: app.decoy_key_version.load(Ordering::Relaxed),
        replaces_appliance_id: None,
    }
}

/// The lookup, the issuer's verdict (unknown ids against a decoy), the per-code
/// budget on failure, then consumption. Errors carry the tenant once the code verified.
async fn verify_and_consume(
    app: &App,
    ctx: &Ctx,
    code: InstallCode,
    csr: &Csr,
    appliance: &ApplianceInfo,
) -> Result<Redeemed, (ApiError, Option<Uuid>)> {
    let code_id = code.code_id().clone();
    let row = {
        let conn = app
            .pool
            .get()
            .await
            .map_err(|e| (db::DbError::from(e).into(), None))?;
        db::codes::get(&conn, &code_id)
            .await
            .map_err(|e| (e.into(), None))?
    };
    let binding = match &row {
        Some(r) => {
            app.decoy_key_version
                .store(r.binding.key_version, Ordering::Relaxed);
            r.binding.clone()
        }
        None => decoy_binding(app, &code_id, ctx.now),
    };
    let valid = app
        .issuer
        .verify_code(
            &binding,
            SecretText::new(code.expose_formatted().to_string()),
        )
        .await
        .map_err(|e| (issuer_error(e), None))?;
    let Some(row) = row.filter(|_| valid) else {
        // Only failures are charged to the code id's budget.
        let e = match app.limits.code_failure(code_id.as_str()) {
            Ok(()) => ApiError::CodeInvalid,
            Err(wait) => ApiError::RateLimited(wait),
        };
        return Err((e, None));
    };
    let tenant_id = row.binding.tenant_id;
    tracing::Span::current().record("tenant.id", tracing::field::display(tenant_id));
    consume(app, ctx, &row, csr, appliance)
        .await
        .map_err(|e| (e, Some(tenant_id)))
}

/// Step 3 of the module doc, in one transaction under the tenant's lock: claim the
/// code (or recognize the retry), sign, record the appliance, write the rest, commit.
async fn consume(
    app: &App,
    ctx: &Ctx,
    row: &CodeRow,
    csr: &Csr,
    appliance: &ApplianceInfo,
) -> Result<Redeemed, ApiError> {
    let b = &row.binding;
    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let edition = lock_tenant(app, &tx, b).await?;
    let (appliance_id, reason) = claim(&tx, b, edition, csr).await?;
    let signed = if edition.is_paid() {
        Some(sign_both(app, b.tenant_id, appliance_id, &edition.name, csr.pem()).await?)
    } else {
        None
    };
    let credential = signed
        .as_ref()
        .map(|(_, c)| (c.serial.as_str(), c.expires_at));
    let replaced = match reason {
        LicenseReason::Redeem => {
            insert_appliance(&tx, b, appliance_id, appliance, csr, credential).await?
        }
        _ => None,
    };
    let redeemed = Redeemed {
        tenant_id: b.tenant_id,
        edition: edition.name.clone(),
        appliance_id,
        signed,
    };
    write_records(ctx, &tx, b, &redeemed, reason, replaced).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(
        tenant.id = %b.tenant_id, code.id = %b.code_id, appliance.id = %appliance_id,
        retry = reason == LicenseReason::RedeemRetry, replaced = ?replaced,
        "install code redeemed"
    );
    Ok(redeemed)
}

/// Takes the tenant's lock (its redeems, reissues and changes serialize on it) and
/// returns its edition now; a suspended tenant is refused.
async fn lock_tenant<'p>(
    app: &'p App,
    tx: &Tx<'_>,
    b: &CodeBinding,
) -> Result<&'p Edition, ApiError> {
    let tenant = tenants::lock(tx, b.tenant_id)
        .await?
        .ok_or_else(|| ApiError::internal("code of a tenant that does not exist"))?;
    if tenant.suspended {
        return Err(ApiError::TenantSuspended);
    }
    app.policy.edition(&tenant.edition).ok_or_else(|| {
        ApiError::internal(format!(
            "tenant edition {:?} not in the policy",
            tenant.edition
        ))
    })
}

/// Consumes the code for a new appliance (the conditional `UPDATE`, then the edition
/// and seat checks, whose refusal rolls the consumption back), or, when it was not
/// consumed now, recognizes the redeem retry ([`retry_of`]): the appliance and why its
/// license is signed.
async fn claim(
    tx: &Tx<'_>,
    b: &CodeBinding,
    edition: &Edition,
    csr: &Csr,
) -> Result<(Uuid, LicenseReason), ApiError> {
    let appliance_id = Uuid::new_v4();
    if db::codes::consume(tx, b, appliance_id, csr.fingerprint())
        .await?
        .is_none()
    {
        return Ok((retry_of(tx, b, csr).await?, LicenseReason::RedeemRetry));
    }
    if b.edition != edition.name {
        // An edition change revokes the unclaimed codes of the old edition, under
        // the tenant's lock: an unclaimed one bound to another edition is superseded.
        return Err(ApiError::CodeRevoked);
    }
    let (active, frees_one) =
        appliances::seats_in_use(tx, b.tenant_id, b.replaces_appliance_id).await?;
    if active - u32::from(frees_one) >= edition.max_appliances {
        // The rollback leaves the code unclaimed.
        return Err(ApiError::SeatLimitReached {
            active,
            max: edition.max_appliances,
        });
    }
    Ok((appliance_id, LicenseReason::Redeem))
}

/// Inserts a new appliance with its credential (after the signing, so the row carries
/// it from the start) and retires the appliance the code's rebuild names, unless the
/// store revoked it or another rebuild replaced it since the code was issued; returns
/// the one it retired.
async fn insert_appliance(
    tx: &Tx<'_>,
    b: &CodeBinding,
    appliance_id: Uuid,
    appliance: &ApplianceInfo,
    csr: &Csr,
    credential: Option<(&str, OffsetDateTime)>,
) -> Result<Option<Uuid>, ApiError> {
    appliances::insert(
        tx,
        &NewAppliance {
            appliance_id,
            tenant_id: b.tenant_id,
            code_id: b.code_id.as_str(),
            hostname: appliance.hostname.trim(),
            version: appliance.version.trim(),
            public_key_fingerprint: csr.fingerprint(),
            credential_serial: credential.map(|c| c.0),
            credential_expires_at: credential.map(|c| c.1),
        },
    )
    .await?;
    match b.replaces_appliance_id {
        Some(old) if appliances::replace(tx, old, b.tenant_id, appliance_id).await? => {
            Ok(Some(old))
        }
        _ => Ok(None),
    }
}

/// The writes that depend on nothing but the appliance row: the license row, a
/// retry's new credential, the `code.redeem` record and the replaced appliance's
/// `appliance.replace` record, pipelined on the connection (one round trip).
async fn write_records(
    ctx: &Ctx,
    tx: &Tx<'_>,
    b: &CodeBinding,
    redeemed: &Redeemed,
    reason: LicenseReason,
    replaced: Option<Uuid>,
) -> Result<(), ApiError> {
    let appliance_id = redeemed.appliance_id;
    let mut record = ctx
        .record(actions::CODE_REDEEM)?
        .tenant(b.tenant_id)
        .subject("code_id", b.code_id.as_str())
        .subject("appliance_id", appliance_id)
        .detail("retry", reason == LicenseReason::RedeemRetry)
        .detail("edition", redeemed.edition.as_str());
    if let Some((l, c)) = &redeemed.signed {
        record = record.subject("jti", l.jti).subject("serial", &c.serial);
    }
    if let Some(old) = replaced {
        record = record.subject("replaced_appliance_id", old);
    }
    tokio::try_join!(
        async {
            if let Some((l, _)) = &redeemed.signed {
                let row = license_row(l, b.tenant_id, appliance_id, reason);
                appliances::insert_license(tx, &row).await?;
            }
            Ok::<_, ApiError>(())
        },
        async {
            // A fresh appliance got its credential at insert; a retry's replaces the old
            // one, which check-in refuses from now on (`credential_superseded`), and
            // drops any previous one. No overlap as after a rotation: the retry is made
            // with the key the new certificate certifies, by an appliance that has no
            // saved credential (or it would check in, not redeem); should this answer
            // be lost too, it retries the redeem again within the window.
            if let Some((_, c)) = redeemed
                .signed
                .as_ref()
                .filter(|_| reason == LicenseReason::RedeemRetry)
            {
                appliances::set_credential(tx, appliance_id, &c.serial, c.expires_at).await?;
            }
            Ok::<_, ApiError>(())
        },
        async { audit::append(tx, record).await.map_err(ApiError::from) },
        async {
            if let Some(old) = replaced {
                let r = ctx
                    .record(actions::APPLIANCE_REPLACE)?
                    .tenant(b.tenant_id)
                    .subject("appliance_id", old)
                    .subject("replaced_by", appliance_id)
                    .subject("code_id", b.code_id.as_str());
                audit::append(tx, r).await?;
            }
            Ok::<_, ApiError>(())
        },
    )?;
    Ok(())
}

/// A code that was not consumed now: its appliance when this is the redeem retry
/// (consumed by the same public key less than 15 minutes ago, the appliance still
/// active), else why not. Classified on the current row: the binding verified, so the
/// caller may know.
async fn retry_of(tx: &Tx<'_>, b: &CodeBinding, csr: &Csr) -> Result<Uuid, ApiError> {
    let now_row = db::codes::get(tx, &b.code_id)
        .await?
        .ok_or(ApiError::CodeInvalid)?;
    if now_row.binding != *b {
        // Edited since it verified: it no longer verifies.
        return Err(ApiError::CodeInvalid);
    }
    match now_row.state {
        CodeState::Consumed
            if now_row.within_retry_window
                && now_row.consumer_key_fingerprint.as_deref() == Some(csr.fingerprint()) =>
        {
            let id = now_row
                .appliance_id
                .ok_or_else(|| ApiError::internal("consumed code without appliance"))?;
            // A retry re-issues the appliance's license and credential: never for an
            // appliance revoked or replaced since (locked, as check-in does, against a
            // racing revoke). For that caller the code is simply used.
            let active = appliances::get_for_update(tx, id)
                .await?
                .is_some_and(|a| a.state == State::Active);
            if !active {
                return Err(ApiError::CodeAlreadyUsed);
            }
            Ok(id)
        }
        CodeState::Consumed => Err(ApiError::CodeAlreadyUsed),
        CodeState::Revoked => Err(ApiError::CodeRevoked),
        CodeState::Unclaimed if now_row.expired => Err(ApiError::CodeExpired),
        CodeState::Unclaimed => Err(ApiError::internal("unclaimed, unexpired code not consumed")),
    }
}

/// License and credential from the issuer, both requested at once: the issuer answers
/// each only after its signing log is fsynced, and concurrent appends share one fsync
/// (group commit), so the redeem (holding its code row and a pooled connection) waits
/// for one round, not two.
async fn sign_both(
    app: &App,
    tenant_id: Uuid,
    appliance_id: Uuid,
    edition: &str,
    csr_pem: &str,
) -> Result<(SignedLicense, SignedCredential), ApiError> {
    let (l, c) = tokio::join!(
        app.issuer.sign_license(tenant_id, appliance_id, edition),
        app.issuer
            .sign_credential(tenant_id, appliance_id, edition, csr_pem),
    );
    Ok((l.map_err(issuer_error)?, c.map_err(issuer_error)?))
}

/// The `licenses` row of a license the issuer signed (its public facts, never the token).
pub(crate) fn license_row(
    l: &SignedLicense,
    tenant_id: Uuid,
    appliance_id: Uuid,
    reason: LicenseReason,
) -> NewLicense<'_> {
    NewLicense {
        jti: l.jti,
        kid: &l.kid,
        tenant_id,
        appliance_id,
        issued_at: l.issued_at,
        expires_at: l.expires_at,
        reason,
    }
}
