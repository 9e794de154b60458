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

use alga_protocol::api::{
    DownloadLink, EmailStatus, InstallCodeInfo, MailState, RegisterTenantResponse,
};
use std::sync::Arc;

use alga_audit::record::RecordBuilder;
use sha2::{Digest, Sha256};
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

/// A response to send: status and JSON (stored as-is for idempotent replays).
#[derive(Debug, Clone)]
pub struct Replayable {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Registers a tenant.
#[instrument(skip_all, fields(tenant.id = tracing::field::Empty))]
pub async fn register_tenant(
    app: &Arc<App>,
    ctx: &Ctx,
    reg: Registration<'_>,
    idem: Option<Idempotency>,
) -> Result<Replayable, ApiError> {
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

/// The stored response to `i`, its mail status and link brought up to `now`.
async fn replay(
    app: &App,
    i: &Idempotency,
    now: time::OffsetDateTime,
) -> Result<Option<Replayable>, ApiError> {
    let conn = app.pool.get().await.map_err(db::DbError::from)?;
    match db::idempotency::get(&conn, &i.caller, &i.key).await? {
        None => Ok(None),
        Some(s) if s.request_hash == i.body_hash => {
            let mut body = s.body;
            // The stored response says `queued` (it was written before the first
            // attempt); the mail may have gone out since.
            if let Some(code_id) = body["install_code"]["code_id"].as_str() {
                let sent = db::outbox::sent_for_code(&conn, code_id).await?;
                body["email"]["status"] = serde_json::json!(if sent {
                    MailState::Sent
                } else {
                    MailState::Queued
                });
            }
            if body.get("download").is_some() {
                body["download"] = serde_json::to_value(fresh_link(app, &body["download"], now)?)
                    .map_err(ApiError::internal)?;
            }
            Ok(Some(Replayable {
                status: s.status,
                body,
            }))
        }
        Some(_) => Err(ApiError::IdempotencyConflict),
    }
}

/// The stored form of a response: the download link without its presigned query.
fn storable(body: &serde_json::Value) -> serde_json::Value {
    let mut stored = body.clone();
    if let Some(url) = body["download"]["url"].as_str() {
        let location = url.split_once('?').map_or(url, |(base, _)| base);
        stored["download"]["url"] = serde_json::json!(location);
    }
    stored
}

/// A replay's link: presigned again until the stored expiry, or, once that has
/// passed, for the policy's TTL from now (an expired link would be no answer).
fn fresh_link(
    app: &App,
    stored: &serde_json::Value,
    now: time::OffsetDateTime,
) -> Result<DownloadLink, ApiError> {
    // Whole seconds, as SigV4 signs them, so the link ends exactly at `until`.
    let now = whole_seconds(now);
    let until = stored["expires_at"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .filter(|t| *t - now >= time::Duration::minutes(1));
    let ttl = until.map_or(app.policy.download_link_ttl, |t| t - now);
    let link = app
        .presigner
        .presign(now, ttl)
        .map_err(ApiError::internal)?;
    Ok(DownloadLink {
        url: link.url,
        expires_at: link.expires_at,
    })
}

async fn register_once(
    app: &Arc<App>,
    ctx: &Ctx,
    reg: &Registration<'_>,
    idem: Option<&Idempotency>,
) -> Result<Replayable, ApiError> {
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

    let body = RegisterTenantResponse {
        tenant_id,
        edition: edition.name.clone(),
        install_code: issued.code,
        download: issued.download,
        // Until the first attempt after the commit says otherwise (the stored
        // idempotent response keeps this; replays read the mail's state).
        email: EmailStatus {
            status: MailState::Queued,
        },
    };
    let body = serde_json::to_value(&body).map_err(ApiError::internal)?;
    // The tenant's record first, then its code's: readers of the log (and the event
    // feed) see the tenant before the code issued to it.
    audit::append(
        &tx,
        ctx.record(actions::TENANT_REGISTER)?
            .tenant(tenant_id)
            .subject("code_id", &issued.code_id)
            .detail("edition", edition.name.as_str()),
    )
    .await?;
    audit::append(&tx, issued.mint_record).await?;
    if let Some(i) = idem
        && !db::idempotency::insert(&tx, &i.caller, &i.key, &i.body_hash, 201, &storable(&body))
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
    tracing::info!(tenant.id = %tenant_id, code.id = %issued.code_id, edition = %edition.name, "tenant registered");
    let mut body = body;
    body["email"]["status"] =
        serde_json::json!(crate::mail::first_attempt(app, issued.mail_id).await);
    Ok(Replayable { status: 201, body })
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
    pub mail_id: Uuid,
    pub code: InstallCodeInfo,
    pub download: DownloadLink,
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
        mail_id,
        code: InstallCodeInfo {
            code_id: binding.code_id.to_string(),
            expires_at: binding.expires_at,
        },
        download: DownloadLink {
            url: link.url,
            expires_at: link.expires_at,
        },
    })
}
