//! `POST /register-tenant`: create the tenant and its entitlement, mint the install code
//! (issuer), presign the ISO link, queue the mail, audit: one transaction. After the
//! commit, the mail's first attempt (`email.status`: `sent` or `queued`).
//!
//! Idempotency: the response is stored under `(caller, Idempotency-Key)` in the same
//! transaction with the SHA-256 of the request body; the same key with the same body
//! replays it, with another body it is `idempotency_conflict`. Two fields of a replay
//! are fresh rather than stored: `email.status` is the mail's current state (`sent`
//! once it went out), and `download.url` is presigned again for the stored
//! `download.expires_at`: the stored response keeps only the link's query-less
//! location, because a presigned query is a download credential and nothing stores one.
//!
//! What is stored is a typed [`StoredRegistration`], not a response body: the `api`
//! module alone turns outcomes into JSON bodies.

use std::sync::Arc;

use alga_audit::record::RecordBuilder;
use alga_delivery::PresignedLink;
use alga_protocol::api::MailState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use super::validate::Registration;
use super::{Ctx, issuer_error, whole_seconds};
use crate::App;
use crate::audit::{self, actions};
use crate::db::{self, outbox::MailKind, tenants};
use crate::error::ApiError;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// An `Idempotency-Key` with the hash of the body it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub caller: String,
    pub key: String,
    pub body_hash: String,
}

impl Idempotency {
    /// Validates the header value (printable ASCII, 1–200 bytes) and hashes the body.
    pub fn new(caller: &str, key: &str, body: &[u8]) -> Result<Idempotency, ApiError> {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY
            || !key.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            return Err(ApiError::field(
                "Idempotency-Key",
                "must be 1 to 200 printable ASCII characters without spaces",
            ));
        }
        Ok(Idempotency {
            caller: caller.to_owned(),
            key: key.to_owned(),
            body_hash: hex::encode(Sha256::digest(body)),
        })
    }
}

/// A code minted for a tenant, as its caller learns it: a registration's outcome, and
/// the code of a reissue's.
#[derive(Debug, Clone)]
pub struct CodeIssued {
    pub tenant_id: Uuid,
    /// The edition the code is bound to.
    pub edition: String,
    /// The code's public id (the code itself went to the mailbox only).
    pub code_id: String,
    pub code_expires_at: OffsetDateTime,
    /// The ISO image's presigned link.
    pub download: PresignedLink,
    /// The mail carrying the code: `sent` by the first attempt, else `queued`.
    pub mail: MailState,
}

/// The stored outcome of a registration (`idempotency_keys.response_body`): what a
/// replay cannot compute again. The mail's state is read afresh, and the link is
/// presigned again from its query-less location and expiry, since a presigned query
/// is a download credential and nothing stores one.
///
/// Its JSON shape is the one the response body had when it was stored as-is (field
/// names and nesting), so rows written by earlier versions replay unchanged: their
/// `email` is ignored and their `download.url` already lacks the query. A row that does
/// not parse is corrupt (`DbError::Corrupt`, a 500 whose log names the row's caller
/// and key, never its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRegistration {
    pub tenant_id: Uuid,
    pub edition: String,
    pub install_code: StoredCode,
    pub download: StoredLink,
}

/// A stored code's public facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCode {
    pub code_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A stored link: where it points, without its presigned query, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLink {
    #[serde(rename = "url")]
    pub location: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// The status every stored registration was answered with (`201 Created`).
const CREATED: u16 = 201;

impl StoredRegistration {
    fn of(c: &CodeIssued) -> StoredRegistration {
        let url = c.download.url.as_str();
        StoredRegistration {
            tenant_id: c.tenant_id,
            edition: c.edition.clone(),
            install_code: StoredCode {
                code_id: c.code_id.clone(),
                expires_at: c.code_expires_at,
            },
            download: StoredLink {
                location: url.split_once('?').map_or(url, |(base, _)| base).to_owned(),
                expires_at: c.download.expires_at,
            },
        }
    }
}

/// Registers a tenant.
#[instrument(skip_all, fields(tenant.id = tracing::field::Empty))]
pub async fn register_tenant(
    app: &Arc<App>,
    ctx: &Ctx,
    reg: Registration<'_>,
    idem: Option<Idempotency>,
) -> Result<CodeIssued, ApiError> {
    let first = match &idem {
        Some(i) => replay(app, i, ctx.now).await,
        None => Ok(None),
    };
    let attempt = match first {
        Ok(Some(r)) => return Ok(r),
        Ok(None) => register_once(app, ctx, &reg, idem.as_ref()).await,
        Err(e) => Err(e),
    };
    match attempt {
        Ok(r) => Ok(r),
        Err(e) => {
            // A concurrent request with the same key may have won the race.
            if let Some(i) = &idem
                && !matches!(e, ApiError::IdempotencyConflict)
                && let Ok(Some(r)) = replay(app, i, ctx.now).await
            {
                return Ok(r);
            }
            let record = ctx.record(actions::TENANT_REGISTER).map(|r| {
                let r = r.detail("edition", reg.edition.name.as_str());
                match &e {
                    ApiError::TenantExists(t) => r.tenant(*t),
                    _ => r,
                }
            });
            audit::append_failure(&app.pool, &app.pending_failures, record, e.code()).await;
            Err(e)
        }
    }
}

/// The stored outcome for `i`, its mail state and link brought up to `now`.
async fn replay(
    app: &App,
    i: &Idempotency,
    now: OffsetDateTime,
) -> Result<Option<CodeIssued>, ApiError> {
    let conn = app.pool.get().await.map_err(db::DbError::from)?;
    match db::idempotency::get::<StoredRegistration>(&conn, &i.caller, &i.key).await? {
        None => Ok(None),
        Some(s) if s.request_hash == i.body_hash => {
            if s.status != CREATED {
                return Err(ApiError::internal(format!(
                    "stored registration with status {}",
                    s.status
                )));
            }
            let stored = s.outcome;
            // Stored before the first attempt; the mail may have gone out since.
            let sent = db::outbox::sent_for_code(&conn, &stored.install_code.code_id).await?;
            Ok(Some(CodeIssued {
                download: fresh_link(app, &stored.download, now)?,
                tenant_id: stored.tenant_id,
                edition: stored.edition,
                code_id: stored.install_code.code_id,
                code_expires_at: stored.install_code.expires_at,
                mail: if sent {
                    MailState::Sent
                } else {
                    MailState::Queued
                },
            }))
        }
        Some(_) => Err(ApiError::IdempotencyConflict),
    }
}

/// A replay's link: presigned again until the stored expiry, or, once that has
/// passed, for the policy's TTL from now (an expired link would be no answer).
fn fresh_link(
    app: &App,
    stored: &StoredLink,
    now: OffsetDateTime,
) -> Result<PresignedLink, ApiError> {
    // Whole seconds, as SigV4 signs them, so the link ends exactly at `until`.
    let now = whole_seconds(now);
    let until = Some(stored.expires_at).filter(|t| *t - now >= time::Duration::minutes(1));
    let ttl = until.map_or(app.policy.download_link_ttl, |t| t - now);
    app.presigner.presign(now, ttl).map_err(ApiError::internal)
}

async fn register_once(
    app: &Arc<App>,
    ctx: &Ctx,
    reg: &Registration<'_>,
    idem: Option<&Idempotency>,
) -> Result<CodeIssued, ApiError> {
    let tenant_id = Uuid::new_v4();
    let span = tracing::Span::current();
    span.record("tenant.id", tracing::field::display(tenant_id));
    let edition = reg.edition;
    let company_norm = reg.company.normalized();
    let email_norm = reg.contact_email.normalized();

    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let inserted = tenants::insert(
        &tx,
        &tenants::NewTenant {
            tenant_id,
            company: reg.company.as_str(),
            company_normalized: &company_norm,
            contact_name: reg.contact_name.as_str(),
            contact_email: reg.contact_email.as_str(),
            contact_email_normalized: &email_norm,
            edition: &edition.name,
        },
    )
    .await?;
    if !inserted {
        let existing = tenants::find_by_company_contact(&tx, &company_norm, &email_norm)
            .await?
            .ok_or_else(|| ApiError::internal("tenant conflict without a tenant"))?;
        return Err(ApiError::TenantExists(existing));
    }
    tenants::insert_entitlement(&tx, tenant_id, &tenants::Entitlement::of(edition)).await?;

    let issued = issue_code(
        app,
        ctx,
        &tx,
        &NewCode {
            tenant_id,
            edition: &edition.name,
            replaces: None,
            recipient: reg.contact_email.as_str(),
            kind: MailKind::Registration,
        },
    )
    .await?;

    let mail_id = issued.mail_id;
    let mut outcome = issued.outcome(tenant_id, &edition.name);
    // The tenant's record first, then its code's: readers of the log (and the event
    // feed) see the tenant before the code issued to it.
    audit::append(
        &tx,
        ctx.record(actions::TENANT_REGISTER)?
            .tenant(tenant_id)
            .subject("code_id", &outcome.code_id)
            .detail("edition", edition.name.as_str()),
    )
    .await?;
    audit::append(&tx, issued.mint_record).await?;
    if let Some(i) = idem
        && !db::idempotency::insert(
            &tx,
            &i.caller,
            &i.key,
            &i.body_hash,
            CREATED,
            &StoredRegistration::of(&outcome),
        )
        .await?
    {
        // Someone committed this key first: ours rolls back, theirs is the answer. The
        // connection goes back to the pool first: the replay takes its own.
        drop(tx);
        drop(conn);
        return replay(app, i, ctx.now)
            .await?
            .ok_or_else(|| ApiError::internal("idempotency record vanished"));
    }
    tx.commit().await.map_err(db::DbError::from)?;
    // Back to the pool before the first mail attempt, which takes connections of its
    // own: holding two per request starves a busy pool.
    drop(conn);
    tracing::info!(tenant.id = %tenant_id, code.id = %outcome.code_id, edition = %edition.name, "tenant registered");
    outcome.mail = crate::mail::first_attempt(app, mail_id).await;
    Ok(outcome)
}

/// The code to mint: for whom, and the mail that carries it.
pub(crate) struct NewCode<'a> {
    pub tenant_id: Uuid,
    pub edition: &'a str,
    /// The appliance its redeem retires (part of the binding).
    pub replaces: Option<Uuid>,
    pub recipient: &'a str,
    pub kind: MailKind,
}

/// What minting a code produced: its public facts, the link and the queued mail.
pub(crate) struct IssuedCode {
    /// The mint's audit record (`code.mint`): the caller appends it in the same
    /// transaction, where its records read best (a registration's after the tenant's).
    pub mint_record: RecordBuilder,
    pub code_id: String,
    pub code_expires_at: OffsetDateTime,
    pub mail_id: Uuid,
    pub download: PresignedLink,
}

impl IssuedCode {
    /// The caller's outcome, the mail `queued` until its first attempt says otherwise
    /// (the stored outcome of an idempotent request is written before that attempt).
    pub(crate) fn outcome(&self, tenant_id: Uuid, edition: &str) -> CodeIssued {
        CodeIssued {
            tenant_id,
            edition: edition.to_owned(),
            code_id: self.code_id.clone(),
            code_expires_at: self.code_expires_at,
            download: self.download.clone(),
            mail: MailState::Queued,
        }
    }
}

/// Mints a code for the tenant (issuer), stores its binding, presigns the link and
/// queues the mail (reserved for this request's first attempt), all in `tx`, and
/// returns the mint's audit record, which the caller must append in `tx`. The code
/// itself is dropped here (zeroized): the mail sender re-derives it from the binding.
pub(crate) async fn issue_code(
    app: &App,
    ctx: &Ctx,
    tx: &deadpool_postgres::Transaction<'_>,
    code: &NewCode<'_>,
) -> Result<IssuedCode, ApiError> {
    let &NewCode {
        tenant_id,
        edition,
        replaces,
        recipient,
        kind,
    } = code;
    let expires_at = whole_seconds(ctx.now + app.policy.install_code_ttl);
    let minted = app
        .issuer
        .mint_code(tenant_id, edition, expires_at, replaces)
        .await
        .map_err(issuer_error)?;
    let binding = minted.binding;
    drop(minted.code);
    if binding.tenant_id != tenant_id
        || binding.edition != edition
        || binding.replaces_appliance_id != replaces
    {
        return Err(ApiError::internal(
            "issuer minted a code for another binding",
        ));
    }
    db::codes::insert(tx, &binding).await?;
    let link = app
        .presigner
        .presign(ctx.now, app.policy.download_link_ttl)
        .map_err(ApiError::internal)?;
    let mail_id = db::outbox::enqueue(
        tx,
        binding.code_id.as_str(),
        tenant_id,
        recipient,
        kind,
        app.outbox.reserve_secs(),
    )
    .await?;
    let mut record = ctx.record(actions::CODE_MINT)?;
    if let Some(old) = replaces {
        record = record.subject("replaces_appliance_id", old);
    }
    let mint_record = record
        .tenant(tenant_id)
        .subject("code_id", binding.code_id.as_str())
        .detail("expires_at", binding.expires_at.unix_timestamp())
        .detail("key_version", binding.key_version)
        .detail("mail", kind.as_str());
    Ok(IssuedCode {
        mint_record,
        code_id: binding.code_id.to_string(),
        code_expires_at: binding.expires_at,
        mail_id,
        download: link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("time")
    }

    #[test]
    fn a_row_stored_as_the_response_body_still_replays() {
        // As the version that stored the response body itself wrote it: `email` too,
        // and the link already without its query.
        let old = serde_json::json!({
            "download": {"expires_at": "2026-12-08T10:00:00Z", "url": "https://s3.test/iso/alga.iso"},
            "edition": "pro",
            "email": {"status": "queued"},
            "install_code": {"code_id": "ABCD-EFGH", "expires_at": "2026-12-21T10:00:00Z"},
            "tenant_id": "7f1d2c6e-8a3b-4c5d-9e0f-1a2b3c4d5e6f",
        });
        let stored: StoredRegistration = serde_json::from_value(old).expect("old rows parse");
        assert_eq!(
            stored,
            StoredRegistration {
                tenant_id: Uuid::parse_str("7f1d2c6e-8a3b-4c5d-9e0f-1a2b3c4d5e6f").expect("uuid"),
                edition: "pro".into(),
                install_code: StoredCode {
                    code_id: "ABCD-EFGH".into(),
                    expires_at: t("2026-12-21T10:00:00Z"),
                },
                download: StoredLink {
                    location: "https://s3.test/iso/alga.iso".into(),
                    expires_at: t("2026-12-08T10:00:00Z"),
                },
            }
        );
    }

    #[test]
    fn the_stored_outcome_keeps_no_presigned_query() {
        let issued = CodeIssued {
            tenant_id: Uuid::nil(),
            edition: "pro".into(),
            code_id: "ABCD-EFGH".into(),
            code_expires_at: t("2026-12-21T10:00:00Z"),
            download: PresignedLink {
                url: "https://s3.test/iso/alga.iso?X-Amz-Signature=secret".into(),
                expires_at: t("2026-12-08T10:00:00Z"),
            },
            mail: MailState::Sent,
        };
        let stored = StoredRegistration::of(&issued);
        assert_eq!(stored.download.location, "https://s3.test/iso/alga.iso");
        let json = serde_json::to_string(&stored).expect("serializes");
        assert!(!json.contains("Signature") && !json.contains('?'), "{json}");
        let back: StoredRegistration = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, stored);
    }

    #[test]
    fn a_row_of_another_shape_does_not_parse() {
        let other = serde_json::json!({"tenant_id": "7f1d2c6e-8a3b-4c5d-9e0f-1a2b3c4d5e6f"});
        assert!(serde_json::from_value::<StoredRegistration>(other).is_err());
    }
}
