//! `mail_outbox`: mail to send (the delivery worker sends it). Holds the code id and the
//! recipient only: never the code, never the presigned URL.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DbError, GenericClient};

/// Why a mail is sent: `alga_delivery`'s kind, stored as its `as_str` name
/// (`registration`, `reissue`).
pub use alga_delivery::MailKind;

/// A stored mail's status.
#[derive(Debug, Clone)]
pub struct Mail {
    pub mail_id: Uuid,
    pub code_id: String,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
    /// When the worker tries next (queued mail only).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Why the last attempt failed (an SMTP or issuer message; no secret).
    pub last_error: Option<String>,
}

/// Queues a mail, reserved for `reserve_secs` for the request that queues it: its
/// first attempt is [`claim_reserved`] right after the commit, and no worker claims
/// it before the reservation ends (a request that dies leaves it to the workers).
pub async fn enqueue(
    c: &impl GenericClient,
    code_id: &str,
    tenant_id: Uuid,
    recipient: &str,
    kind: MailKind,
    reserve_secs: f64,
) -> Result<Uuid, DbError> {
    let mail_id = Uuid::now_v7();
    c.execute(
        &c.prepare_cached("INSERT INTO mail_outbox (mail_id, code_id, tenant_id, recipient, kind, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))").await?,
        &[
            &mail_id,
            &code_id,
            &tenant_id,
            &recipient,
            &kind.as_str(),
            &reserve_secs,
        ],
    )
    .await?;
    Ok(mail_id)
}

/// The tenant's mail, newest first.
pub async fn list_for_tenant(
    c: &impl GenericClient,
    tenant_id: Uuid,
) -> Result<Vec<Mail>, DbError> {
    let rows = c
        .query(
            &c.prepare_cached(
                "SELECT mail_id, code_id, kind, state, attempts, created_at, sent_at, \
             CASE WHEN state = 'queued' THEN next_attempt_at END, last_error FROM mail_outbox \
             WHERE tenant_id = $1 ORDER BY created_at DESC, mail_id",
            )
            .await?,
            &[&tenant_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Mail {
            mail_id: r.get(0),
            code_id: r.get(1),
            kind: r.get(2),
            state: r.get(3),
            attempts: r.get(4),
            created_at: r.get(5),
            sent_at: r.get(6),
            next_attempt_at: r.get(7),
            last_error: r.get(8),
        })
        .collect())
}

/// Whether the mail of `code_id` went out.
pub async fn sent_for_code(c: &impl GenericClient, code_id: &str) -> Result<bool, DbError> {
    let row = c
        .query_one(&c.prepare_cached(SENT_FOR_CODE).await?, &[&code_id])
        .await?;
    Ok(row.get(0))
}

/// A mail due for sending, with what its template needs (no secret: the code is
/// re-derived from `binding` by the issuer at send time).
#[derive(Debug, Clone)]
pub struct DueMail {
    pub mail_id: Uuid,
    pub kind: MailKind,
    pub recipient: String,
    pub attempts: i32,
    pub tenant_id: Uuid,
    pub company: String,
    pub contact_name: String,
    pub binding: alga_protocol::CodeBinding,
    /// The code is still unclaimed and unexpired (a reissued or used code is not mailed).
    pub code_usable: bool,
}

/// What a claim returns: the mail and what its template needs (a macro, so that the
/// two claims below are `const` statements that `HOT` can name).
macro_rules! returning_claimed {
    () => {
        " RETURNING m.mail_id, m.kind, m.recipient, m.attempts, m.tenant_id, t.company, \
         t.contact_name, c.code_id, c.tenant_id, c.edition, c.expires_at, c.key_version, \
         c.state = 'unclaimed' AND c.expires_at > now(), c.replaces_appliance_id"
    };
}

/// [`claim_due`]'s statement.
const CLAIM_DUE: &str = concat!(
    "WITH due AS ( \
       SELECT mail_id FROM mail_outbox \
       WHERE state = 'queued' AND next_attempt_at <= now() \
       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
     UPDATE mail_outbox m SET attempts = m.attempts + 1, \
       next_attempt_at = now() + make_interval(secs => $2) \
     FROM due, install_codes c, tenants t \
     WHERE m.mail_id = due.mail_id AND c.code_id = m.code_id \
       AND t.tenant_id = m.tenant_id",
    returning_claimed!()
);

/// [`claim_reserved`]'s statement.
const CLAIM_RESERVED: &str = concat!(
    "UPDATE mail_outbox m SET attempts = m.attempts + 1, \
       next_attempt_at = now() + make_interval(secs => $2) \
     FROM install_codes c, tenants t \
     WHERE m.mail_id = $1 AND m.state = 'queued' AND m.attempts = 0 \
       AND c.code_id = m.code_id AND t.tenant_id = m.tenant_id",
    returning_claimed!()
);

/// [`sent_for_code`]'s statement.
const SENT_FOR_CODE: &str =
    "SELECT EXISTS (SELECT 1 FROM mail_outbox WHERE code_id = $1 AND state = 'sent')";

/// This module's statements on hot paths, by name: `tests/it/explain.rs` checks the
/// plan of each against a seeded registry.
pub(super) const HOT: &[(&str, &str)] = &[
    ("outbox claim", CLAIM_DUE),
    ("outbox claim reserved", CLAIM_RESERVED),
    ("outbox sent check", SENT_FOR_CODE),
];

/// Claims up to `limit` due mails: each gets `attempts + 1` and a lease (its
/// `next_attempt_at` moves `lease_secs` ahead), so another worker skips it while this
/// one sends. `FOR UPDATE SKIP LOCKED`: several gateways share the outbox.
pub async fn claim_due(
    c: &impl GenericClient,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<DueMail>, DbError> {
    let rows = c
        .query(&c.prepare_cached(CLAIM_DUE).await?, &[&limit, &lease_secs])
        .await?;
    rows.iter().map(due_mail).collect()
}

/// Claims the first attempt of a mail [`enqueue`] reserved: only while no attempt was
/// made yet (`attempts = 0`), so the request and a worker (whose claim also moves
/// `attempts`) can never both hold it. The row lock serializes the two claims; the
/// loser sees `attempts = 1` and gets nothing. Leases it like [`claim_due`].
pub async fn claim_reserved(
    c: &impl GenericClient,
    mail_id: Uuid,
    lease_secs: f64,
) -> Result<Option<DueMail>, DbError> {
    let row = c
        .query_opt(
            &c.prepare_cached(CLAIM_RESERVED).await?,
            &[&mail_id, &lease_secs],
        )
        .await?;
    row.as_ref().map(due_mail).transpose()
}

/// Gives a reserved mail's first attempt back to the worker (due now), when the request
/// that reserved it could not claim it. Only while no attempt was made.
pub async fn release_reserved(c: &impl GenericClient, mail_id: Uuid) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "UPDATE mail_outbox SET next_attempt_at = now() \
                 WHERE mail_id = $1 AND state = 'queued' AND attempts = 0",
            )
            .await?,
            &[&mail_id],
        )
        .await?;
    Ok(n == 1)
}

fn due_mail(r: &tokio_postgres::Row) -> Result<DueMail, DbError> {
    let kind: String = r.get(1);
    let kind =
        MailKind::from_name(&kind).ok_or_else(|| super::corrupt("mail_outbox.kind", &kind))?;
    let code_id: String = r.get(7);
    let kv: i32 = r.get(11);
    Ok(DueMail {
        mail_id: r.get(0),
        kind,
        recipient: r.get(2),
        attempts: r.get(3),
        tenant_id: r.get(4),
        company: r.get(5),
        contact_name: r.get(6),
        binding: alga_protocol::CodeBinding {
            code_id: alga_protocol::CodeId::parse(&code_id)
                .map_err(|_| super::corrupt("install_codes.code_id", &code_id))?,
            tenant_id: r.get(8),
            edition: r.get(9),
            expires_at: r.get(10),
            key_version: u32::try_from(kv)
                .map_err(|_| super::corrupt("install_codes.key_version", &kv.to_string()))?,
            replaces_appliance_id: r.get(13),
        },
        code_usable: r.get(12),
    })
}

// The marks below are fenced by the claim: they change the row only while it is still
// queued under the attempt that was claimed (`attempts = $n`). A worker whose lease ran
// out and was re-claimed elsewhere changes nothing and learns it (`false`).

/// Marks a mail sent; `false` when the claim `attempt` no longer holds it.
pub async fn mark_sent(
    c: &impl GenericClient,
    mail_id: Uuid,
    attempt: i32,
) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "UPDATE mail_outbox SET state = 'sent', sent_at = now(), last_error = NULL \
             WHERE mail_id = $1 AND state = 'queued' AND attempts = $2",
            )
            .await?,
            &[&mail_id, &attempt],
        )
        .await?;
    Ok(n == 1)
}

/// Schedules another attempt after `delay_secs`, keeping the (secret-free) reason;
/// `false` when the claim `attempt` no longer holds the mail.
pub async fn mark_retry(
    c: &impl GenericClient,
    mail_id: Uuid,
    attempt: i32,
    delay_secs: f64,
    reason: &str,
) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "UPDATE mail_outbox SET next_attempt_at = now() + make_interval(secs => $3), \
             last_error = $4 WHERE mail_id = $1 AND state = 'queued' AND attempts = $2",
            )
            .await?,
            &[&mail_id, &attempt, &delay_secs, &reason],
        )
        .await?;
    Ok(n == 1)
}

/// Gives up on a mail; `false` when the claim `attempt` no longer holds it.
pub async fn mark_failed(
    c: &impl GenericClient,
    mail_id: Uuid,
    attempt: i32,
    reason: &str,
) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "UPDATE mail_outbox SET state = 'failed', last_error = $3 \
             WHERE mail_id = $1 AND state = 'queued' AND attempts = $2",
            )
            .await?,
            &[&mail_id, &attempt, &reason],
        )
        .await?;
    Ok(n == 1)
}
