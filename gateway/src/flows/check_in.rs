//! `POST /check-in`: an appliance, identified by its credential, refreshes its license,
//! and its credential too when less than a third of the presented certificate's
//! lifetime is left and it sent a CSR.
//!
//! Refused: a certificate that is not the appliance's credential
//! (`credential_superseded`, below), a revoked appliance (`appliance_revoked`), one a
//! rebuild replaced (`appliance_replaced`), a suspended tenant's (`tenant_suspended`).
//! Each refusal is audited as a failed `appliance.check_in` (with the presented
//! certificate's serial) and signs nothing. The license carries the tenant's edition
//! now; when that edition has no license (a downgrade to essentials) the answer is
//! `"license": null` and no credential, and the appliance falls back to that tier.
//!
//! # Which certificate checks in
//!
//! A certificate the appliance CA signed for the appliance's URI is not enough: after
//! a rotation the old certificate and key would otherwise keep checking in until they
//! expire, and near their end obtain a fresh credential. So the presented certificate's
//! serial must be the appliance's current credential (`credential_serial`), or the one
//! the last rotation replaced (`previous_credential_serial`) while its overlap lasts
//! (`previous_credential_until`) and the current one has not been used yet. The
//! overlap is for an appliance that crashed after the service issued its new
//! credential but before it saved it: it retries with the old one. Anything else is
//! `credential_superseded`. The rules ([`standing`], [`after_check_in`]):
//!
//! - A rotation (the current credential and a CSR, when renewal is due) makes the new
//!   credential current and the presented one previous, until `now +
//!   credentials.rotation_overlap` (a policy bound of at most the credential lifetime),
//!   and never past that certificate's own expiry.
//! - The first check-in with the current credential clears the previous one: the
//!   appliance demonstrably holds the new one.
//! - A check-in with the previous credential changes neither slot; if it rotates (the
//!   crash retry), its new credential becomes current, the one issued before it (never
//!   used, or the previous one would be gone) is dropped, and the previous one keeps
//!   its end. However many retries, the old key is accepted no later than the end the
//!   first rotation set.
//! - A redeem retry records its credential as the only one (`flows::redeem`).
//! - A row with no recorded credential (`credential_serial` NULL) adopts the presented
//!   one, which is recorded as current, so the rule holds from that check-in on. Paid
//!   appliances have had their credential recorded since the first schema, so such a
//!   row is a hand-made or damaged one; the certificate still chains to the appliance
//!   CA and names this appliance, and every credential the issuer signs for an
//!   appliance id is one the gateway asked for. Refusing would lock the appliance out
//!   until a new code is redeemed, for no gain.
//!
//! The decision is made on the appliance row locked for the transaction, so a
//! concurrent rotation, redeem retry or check-in is decided after this one commits.

use alga_audit::record::RecordBuilder;
use alga_protocol::ApplianceIdentity;
use alga_protocol::issuer_api::{SignedCredential, SignedLicense};
use futures::future::OptionFuture;
use time::OffsetDateTime;
use tracing::instrument;

use super::csr::Csr;
use super::redeem::license_row;
use super::relayed::Relayed;
use super::validate::Name;
use super::{Ctx, issuer_error};
use crate::App;
use crate::audit::{self, actions};
use crate::db;
use crate::db::appliances::{self, Credentials, LicenseReason, State};
use crate::error::ApiError;

/// When an appliance whose edition has no license should ask again. A client that
/// keeps its credential is licensed again by a later move back to a paid edition while
/// the credential is valid; `alga-appliance` drops it on `license: null` (it becomes an
/// essentials appliance) and is upgraded with a re-issued code.
pub const UNLICENSED_CHECK_IN_INTERVAL: time::Duration = time::Duration::hours(24);

/// A check-in's outcome: what the issuer signed, and when to come back.
#[derive(Debug, Clone)]
pub struct CheckedIn {
    /// The tenant's edition now.
    pub edition: String,
    /// `None` when that edition has no license (nothing is signed then).
    pub license: Option<SignedLicense>,
    /// A new credential, when renewal was due and a CSR came with the request.
    pub credential: Option<SignedCredential>,
    pub next_check_in_after: OffsetDateTime,
}

/// The presented credential: its serial and validity.
#[derive(Debug, Clone)]
pub struct Presented {
    /// As [`crate::auth::ApplianceCredential::serial`].
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Presented {
    /// What an authenticated appliance certificate presents (over mTLS or relayed).
    pub fn of(c: &crate::auth::ApplianceCredential) -> Presented {
        Presented {
            serial: c.serial.clone(),
            not_before: c.not_before,
            not_after: c.not_after,
        }
    }
}

impl Presented {
    /// Whether less than a third of the lifetime is left at `now`.
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        let lifetime = self.not_after - self.not_before;
        let left = self.not_after - now;
        left * 3 < lifetime
    }
}

/// Which of the appliance's credentials a check-in presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The current credential.
    Current,
    /// The one the last rotation replaced, within its overlap, the current one unused.
    Previous,
    /// The appliance has no recorded credential: the presented one is adopted.
    Unrecorded,
}

impl Standing {
    /// The name in the check-in's audit record (detail `credential`).
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Current => "current",
            Standing::Previous => "previous",
            Standing::Unrecorded => "unrecorded",
        }
    }
}

/// Whether the certificate `serial` may check in for an appliance whose credentials
/// are `c`, at `now` (see the module doc): its standing, or `credential_superseded`.
pub fn standing(c: &Credentials, serial: &str, now: OffsetDateTime) -> Result<Standing, ApiError> {
    if c.serial.as_deref() == Some(serial) {
        return Ok(Standing::Current);
    }
    if c.previous_serial.as_deref() == Some(serial) && c.previous_until.is_some_and(|t| now < t) {
        return Ok(Standing::Previous);
    }
    if c.serial.is_none() {
        return Ok(Standing::Unrecorded);
    }
    Err(ApiError::CredentialSuperseded)
}

/// The appliance's credentials after a check-in at `now` that presented `presented`
/// (of `standing` in `c`) and renewed the credential to `renewed` (`(serial,
/// expires_at)`) if it did; `overlap` is the policy's `credentials.rotation_overlap`.
/// See the module doc for the rules.
pub fn after_check_in(
    c: &Credentials,
    standing: Standing,
    presented: &Presented,
    renewed: Option<(&str, OffsetDateTime)>,
    now: OffsetDateTime,
    overlap: time::Duration,
) -> Credentials {
    match (standing, renewed) {
        // The crash retry without a CSR: nothing learnt, nothing changes.
        (Standing::Previous, None) => c.clone(),
        // The crash retry rotating again: a new current one, the previous one kept
        // with its end, the one issued before this (never used) dropped.
        (Standing::Previous, Some((serial, expires_at))) => Credentials {
            serial: Some(serial.to_owned()),
            expires_at: Some(expires_at),
            previous_serial: c.previous_serial.clone(),
            previous_until: c.previous_until,
        },
        // The new credential is in use: the replaced one is done.
        (Standing::Current, None) => Credentials {
            previous_serial: None,
            previous_until: None,
            ..c.clone()
        },
        (Standing::Unrecorded, None) => Credentials {
            serial: Some(presented.serial.clone()),
            expires_at: Some(presented.not_after),
            previous_serial: None,
            previous_until: None,
        },
        // A rotation: the presented credential stays usable for the overlap.
        (Standing::Current | Standing::Unrecorded, Some((serial, expires_at))) => Credentials {
            serial: Some(serial.to_owned()),
            expires_at: Some(expires_at),
            previous_serial: Some(presented.serial.clone()),
            previous_until: Some((now + overlap).min(presented.not_after)),
        },
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
    relayed: Option<&Relayed>,
) -> Result<CheckedIn, ApiError> {
    let result = check_in_inner(app, ctx, id, &presented, version, csr_pem, relayed).await;
    if let Err(e @ ApiError::RelayedReplayed) = &result {
        // Anyone holding a copy of an accepted request can submit it again, as often
        // as they like: counted in the refusal summary, not one record each, so that
        // replays cannot grow the log without bound.
        app.refusals
            .count_request(ctx, actions::APPLIANCE_CHECK_IN, e.code());
    } else if let Err(e) = &result {
        let record = ctx.record(actions::APPLIANCE_CHECK_IN).map(|r| {
            mark_relayed(
                r.tenant(id.tenant_id)
                    .subject("appliance_id", id.appliance_id)
                    .detail("presented_serial", presented.serial.as_str()),
                relayed,
            )
        });
        audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
    }
    result
}

async fn check_in_inner(
    app: &App,
    ctx: &Ctx,
    id: ApplianceIdentity,
    presented: &Presented,
    version: &str,
    csr_pem: Option<&str>,
    relayed: Option<&Relayed>,
) -> Result<CheckedIn, ApiError> {
    let version = Name::parse(version).map_err(|m| ApiError::field("appliance.version", m))?;
    let csr = csr_pem.map(Csr::parse).transpose()?;
    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let subject = appliances::for_check_in(&tx, id.appliance_id)
        .await?
        .filter(|s| s.appliance.tenant_id == id.tenant_id)
        .ok_or(ApiError::ApplianceNotFound)?;
    // A relayed request is accepted once: recorded in this transaction, so a check-in
    // that fails below records nothing and can be submitted again.
    if let Some(r) = relayed {
        let first = db::relayed::accept_once(
            &tx,
            &r.payload_sha256,
            r.nonce,
            id.appliance_id,
            r.issued_at,
        )
        .await?;
        if !first {
            return Err(ApiError::RelayedReplayed);
        }
    }
    // Which certificate before what the appliance may do: a superseded one learns
    // nothing more about the appliance or its tenant.
    let credentials = Credentials::of(&subject.appliance);
    let standing = standing(&credentials, &presented.serial, ctx.now).inspect_err(|_| {
        // A replaced key still in use: the appliance's own bug, or someone else's copy.
        tracing::warn!(
            credential.serial = %presented.serial,
            "check-in refused: the certificate is not the appliance's credential"
        );
    })?;
    let overlap = app.policy.credential_rotation_overlap;
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
        let record = mark_relayed(
            ctx.record(actions::APPLIANCE_CHECK_IN)?
                .tenant(id.tenant_id)
                .subject("appliance_id", id.appliance_id)
                .detail("edition", edition.name.as_str())
                .detail("license", false)
                .detail("credential", standing.as_str()),
            relayed,
        );
        let after = after_check_in(&credentials, standing, presented, None, ctx.now, overlap);
        tokio::try_join!(
            async {
                appliances::record_check_in(&tx, id.appliance_id, version.as_str(), &after)
                    .await
                    .map_err(ApiError::from)
            },
            async { audit::append(&tx, record).await.map_err(ApiError::from) },
        )?;
        tx.commit().await.map_err(db::DbError::from)?;
        tracing::info!(edition = %edition.name, "appliance checked in: no license for its edition");
        return Ok(CheckedIn {
            edition: edition.name.clone(),
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
    let mut record = mark_relayed(
        ctx.record(actions::APPLIANCE_CHECK_IN)?
            .tenant(id.tenant_id)
            .subject("appliance_id", id.appliance_id)
            .subject("jti", signed.jti)
            .detail("edition", edition.name.as_str())
            .detail("credential", standing.as_str())
            .detail("credential_renewed", renewed.is_some()),
        relayed,
    );
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
            let after = after_check_in(
                &credentials,
                standing,
                presented,
                renewed.as_ref().map(|c| (c.serial.as_str(), c.expires_at)),
                ctx.now,
                overlap,
            );
            appliances::record_check_in(&tx, id.appliance_id, version.as_str(), &after)
                .await
                .map_err(ApiError::from)
        },
        async { audit::append(&tx, record).await.map_err(ApiError::from) },
    )?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(
        renewed = renewed.is_some(),
        credential = standing.as_str(),
        "appliance checked in"
    );
    Ok(CheckedIn {
        edition: edition.name.clone(),
        license: Some(signed),
        credential: renewed,
        next_check_in_after: ctx.now + paid.check_in_interval,
    })
}

/// A check-in's audit record, with `relayed: true` when the request came through a
/// relay (`POST /check-in/relayed`) rather than over the appliance's own mTLS.
fn mark_relayed(record: RecordBuilder, relayed: Option<&Relayed>) -> RecordBuilder {
    match relayed {
        Some(_) => record.detail("relayed", true),
        None => record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn renewal_at_one_third() {
        let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
        let p = Presented {
            serial: "40".repeat(16),
            not_before: nb,
            not_after: nb + Duration::days(30),
        };
        assert!(!p.needs_renewal(nb));
        assert!(!p.needs_renewal(nb + Duration::days(20)));
        assert!(p.needs_renewal(nb + Duration::days(20) + Duration::seconds(1)));
        assert!(p.needs_renewal(nb + Duration::days(31)));
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid")
    }

    fn presented(serial: &str, not_after: OffsetDateTime) -> Presented {
        Presented {
            serial: serial.to_owned(),
            not_before: not_after - Duration::days(30),
            not_after,
        }
    }

    fn only(serial: &str) -> Credentials {
        Credentials {
            serial: Some(serial.to_owned()),
            expires_at: Some(t0() + Duration::days(1)),
            previous_serial: None,
            previous_until: None,
        }
    }

    fn superseded(r: Result<Standing, ApiError>) -> bool {
        matches!(r, Err(ApiError::CredentialSuperseded))
    }

    const DAY: Duration = Duration::hours(24);

    #[test]
    fn only_the_current_credential_checks_in() {
        let c = only("aa");
        assert_eq!(standing(&c, "aa", t0()).ok(), Some(Standing::Current));
        assert!(superseded(standing(&c, "bb", t0())));
        // Serials are compared exactly, as the issuer wrote them.
        assert!(superseded(standing(&c, "AA", t0())));
        assert!(superseded(standing(&c, "00aa", t0())));
    }

    #[test]
    fn a_rotation_keeps_the_old_credential_for_the_overlap_or_until_the_new_one_is_used() {
        let now = t0();
        let old = presented("aa", now + Duration::days(5));
        let c = after_check_in(
            &only("aa"),
            Standing::Current,
            &old,
            Some(("bb", now + Duration::days(30))),
            now,
            DAY,
        );
        assert_eq!(c.serial.as_deref(), Some("bb"));
        assert_eq!(c.expires_at, Some(now + Duration::days(30)));
        assert_eq!(c.previous_serial.as_deref(), Some("aa"));
        assert_eq!(c.previous_until, Some(now + DAY));
        // Inside the overlap the old one works (the crash retry)…
        let later = now + Duration::hours(23);
        assert_eq!(standing(&c, "aa", later).ok(), Some(Standing::Previous));
        assert_eq!(
            after_check_in(&c, Standing::Previous, &old, None, later, DAY),
            c,
            "a retry without a CSR changes nothing"
        );
        // …not once it has ended…
        assert!(superseded(standing(&c, "aa", now + DAY)));
        // …nor once the new one was used.
        assert_eq!(standing(&c, "bb", later).ok(), Some(Standing::Current));
        let used = after_check_in(
            &c,
            Standing::Current,
            &presented("bb", now + Duration::days(30)),
            None,
            later,
            DAY,
        );
        assert_eq!(used, only_with_expiry("bb", now + Duration::days(30)));
        assert!(superseded(standing(&used, "aa", later)));
    }

    fn only_with_expiry(serial: &str, expires_at: OffsetDateTime) -> Credentials {
        Credentials {
            expires_at: Some(expires_at),
            ..only(serial)
        }
    }

    #[test]
    fn the_overlap_never_outlives_the_old_certificate() {
        let now = t0();
        let old = presented("aa", now + Duration::hours(2));
        let c = after_check_in(
            &only("aa"),
            Standing::Current,
            &old,
            Some(("bb", now + Duration::days(30))),
            now,
            DAY,
        );
        assert_eq!(c.previous_until, Some(now + Duration::hours(2)));
    }

    #[test]
    fn retried_rotations_never_extend_the_old_credential() {
        let now = t0();
        let old = presented("aa", now + Duration::days(5));
        let mut c = after_check_in(
            &only("aa"),
            Standing::Current,
            &old,
            Some(("b1", now + Duration::days(30))),
            now,
            DAY,
        );
        let end = c.previous_until;
        // The appliance crashes before saving each new credential and retries with
        // the old one, every hour: each retry's credential replaces the last, never
        // used, and the old one's end stays where the first rotation put it.
        for i in 1..24 {
            let at = now + Duration::hours(i);
            assert_eq!(standing(&c, "aa", at).ok(), Some(Standing::Previous));
            let serial = format!("b{}", i + 1);
            let before = c.serial.clone().expect("current");
            c = after_check_in(
                &c,
                Standing::Previous,
                &old,
                Some((&serial, at + Duration::days(30))),
                at,
                DAY,
            );
            assert_eq!(c.serial.as_deref(), Some(serial.as_str()));
            assert_eq!(c.previous_serial.as_deref(), Some("aa"));
            assert_eq!(c.previous_until, end);
            assert!(
                superseded(standing(&c, &before, at)),
                "{before}: issued, never used"
            );
        }
        assert!(superseded(standing(&c, "aa", now + DAY)));
    }

    #[test]
    fn an_unrecorded_credential_is_adopted_then_held_to_the_rule() {
        let now = t0();
        let none = Credentials {
            serial: None,
            expires_at: None,
            previous_serial: None,
            previous_until: None,
        };
        let first = presented("aa", now + Duration::days(9));
        assert_eq!(standing(&none, "aa", now).ok(), Some(Standing::Unrecorded));
        let c = after_check_in(&none, Standing::Unrecorded, &first, None, now, DAY);
        assert_eq!(c, only_with_expiry("aa", now + Duration::days(9)));
        assert!(superseded(standing(&c, "bb", now)));
    }
}
