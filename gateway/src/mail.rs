//! The mail outbox: sends the install-code mails that registration and reissue queued
//! in their transactions, first inside the request, then from a worker.
//!
//! The outbox row holds no secret. At send time the code is re-derived from the stored
//! binding (issuer `DERIVE_CODE`), a fresh ISO link is presigned, and the mail is
//! rendered and sent through `alga_delivery::Mailer`; then the row is marked and
//! `mail.sent` / `mail.failed` audited in one transaction.
//!
//! Who sends a row is decided in Postgres, so several gateways share the outbox:
//! - a new row is *reserved* for the request that queued it ([`outbox::enqueue`]): it
//!   is not due for the workers until the reservation ends. Right after its commit the
//!   request claims the first attempt ([`first_attempt`], `attempts = 0` → 1) and sends
//!   it within `mail.first_attempt_timeout_secs`: `email.status` is `sent` when that
//!   worked, else `queued` (a request that dies leaves the row to the workers);
//! - the workers claim due rows with `FOR UPDATE SKIP LOCKED` and a lease (attempts + 1,
//!   next attempt pushed [`LEASE_SECS`] ahead); a send is cut off at [`SEND_BOUND`],
//!   well inside the lease, so no other claim of the row can start while it runs;
//! - every mark is fenced by the claimed attempt number, so a stale sender changes
//!   nothing.
//!
//! A failed attempt is retried with doubling delays (`[mail]` config) until
//! `mail.max_attempts`; then the mail is marked failed, audited, counted in
//! `alga_gateway_mail_deliveries_total{outcome="failed"}` and shown by
//! `GET /tenants/{id}`. A code that was reissued, used or expired before its mail went
//! out is not mailed (failed at once). Delivery is exactly once per row unless the
//! process dies (or the SMTP server stalls past the bound) after the server accepted
//! the message and before the mark: then it is sent again, with the same `Message-ID`,
//! so the receiver can de-duplicate.

use std::sync::Arc;
use std::time::Duration;

use alga_delivery::{DeliveryId, DisplayName, MailAddress, Mailer, OutgoingMail};
use alga_protocol::InstallCode;
use alga_protocol::api::MailState;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::App;
use crate::audit::{self, Ctx, actions};
use crate::config::MailConfig;
use crate::db::{self, outbox};

/// How long a claimed mail is reserved for its sender.
pub const LEASE_SECS: f64 = 120.0;
/// Longest a worker's send may take (issuer + presign + SMTP), well inside the lease.
pub const SEND_BOUND: Duration = Duration::from_secs(60);
/// Mails claimed per round.
const BATCH: i64 = 10;
/// Pause between rounds when nothing is due (a failed first attempt wakes the worker).
const IDLE: Duration = Duration::from_secs(2);

/// The outbox's sender and delivery rules, shared by requests and the worker.
#[derive(Debug)]
pub struct Outbox {
    mailer: Mailer,
    rules: MailConfig,
    /// Wakes the worker.
    wake: Notify,
}

impl Outbox {
    pub fn new(mailer: Mailer, rules: MailConfig) -> Outbox {
        Outbox {
            mailer,
            rules,
            wake: Notify::new(),
        }
    }

    /// How long a new row stays reserved for its request's first attempt (none when
    /// first attempts are off: the row is due for the workers at once).
    pub fn reserve_secs(&self) -> f64 {
        if self.first_attempt_bound().is_zero() {
            0.0
        } else {
            LEASE_SECS
        }
    }

    fn first_attempt_bound(&self) -> Duration {
        Duration::try_from_secs_f64(self.rules.first_attempt_timeout_secs).unwrap_or_default()
    }

    /// The delay before the attempt after attempt number `attempts` (1-based):
    /// `retry_initial_secs` doubling, at most `retry_max_secs`.
    fn backoff(&self, attempts: i32) -> f64 {
        let exp = attempts.clamp(1, 64) - 1;
        (self.rules.retry_initial_secs * 2f64.powi(exp)).min(self.rules.retry_max_secs)
    }

    fn max_attempts(&self) -> i32 {
        i32::try_from(self.rules.max_attempts).unwrap_or(i32::MAX)
    }
}

/// The first attempt of a mail queued by a request that just committed: claims it
/// (only if no attempt was made yet) and sends it within the configured bound. `Sent`
/// only when the SMTP server accepted it and that was recorded; otherwise `Queued`, and
/// the worker retries with backoff.
///
/// The attempt runs in its own task: a client hanging up does not cut it off between
/// SMTP and the mark.
pub async fn first_attempt(app: &Arc<App>, mail_id: Uuid) -> MailState {
    let bound = app.outbox.first_attempt_bound();
    if bound.is_zero() {
        app.outbox.wake.notify_one();
        return MailState::Queued;
    }
    let task = {
        let app = app.clone();
        tokio::spawn(async move {
            let claimed = async {
                let conn = app.pool.get().await?;
                outbox::claim_reserved(&conn, mail_id, LEASE_SECS).await
            }
            .await;
            let mail = match claimed {
                Ok(Some(m)) => m,
                Ok(None) => return false,
                Err(e) => {
                    // Hand the reservation back so the worker need not wait for it to
                    // lapse; if even that fails, the worker sends it once it has.
                    let released = async {
                        let conn = app.pool.get().await?;
                        outbox::release_reserved(&conn, mail_id).await
                    }
                    .await;
                    match released {
                        Ok(_) => {
                            tracing::warn!(error = %e, mail.id = %mail_id, "cannot claim the first attempt; released it to the worker")
                        }
                        Err(e2) => {
                            tracing::warn!(error = %e, release_error = %e2, mail.id = %mail_id, "cannot claim the first attempt; the worker sends the mail once its reservation lapses")
                        }
                    }
                    app.outbox.wake.notify_one();
                    return false;
                }
            };
            let outcome = match tokio::time::timeout(bound, send_one(&app, &mail)).await {
                Ok(o) => o,
                Err(_) => Outcome::Retry(format!("first attempt took over {bound:?}")),
            };
            let sent = record(&app, &mail, outcome, "first")
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, mail.id = %mail_id, "could not record a mail outcome; it will be retried");
                    false
                });
            if !sent {
                app.outbox.wake.notify_one();
            }
            sent
        })
    };
    // The task is bounded by `bound` plus two short transactions; a response is not
    // held much longer than that whatever the database does.
    match tokio::time::timeout(bound + Duration::from_secs(2), task).await {
        Ok(Ok(true)) => MailState::Sent,
        _ => MailState::Queued,
    }
}

/// Runs the worker until `stop` resolves.
pub async fn run(app: Arc<App>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let sent = match round(&app).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "mail outbox round failed");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = app.outbox.wake.notified() => {}
            _ = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// One round: claim, send, mark. Returns how many mails were handled.
async fn round(app: &App) -> Result<usize, db::DbError> {
    let due = {
        let mut conn = app.pool.get().await?;
        let tx = conn.transaction().await?;
        let due = outbox::claim_due(&tx, BATCH, LEASE_SECS).await?;
        tx.commit().await?;
        due
    };
    let n = due.len();
    for mail in due {
        let outcome = match tokio::time::timeout(SEND_BOUND, send_one(app, &mail)).await {
            Ok(o) => o,
            Err(_) => Outcome::Retry(format!("the attempt took over {SEND_BOUND:?}")),
        };
        if let Err(e) = record(app, &mail, outcome, "worker").await {
            tracing::error!(error = %e, mail.id = %mail.mail_id, "could not record a mail outcome; it will be retried");
        }
    }
    Ok(n)
}

/// What happened to one mail.
enum Outcome {
    Sent,
    Retry(String),
    Failed(String),
}

#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
async fn send_one(app: &App, m: &outbox::DueMail) -> Outcome {
    if !m.code_usable {
        return Outcome::Failed(
            "the code is no longer redeemable (reissued, used or expired)".into(),
        );
    }
    let parts =
        || -> Result<(MailAddress, Option<DisplayName>, DisplayName, DeliveryId), String> {
            Ok((
                MailAddress::parse("to", &m.recipient).map_err(|e| e.to_string())?,
                DisplayName::parse("contact.name", &m.contact_name).ok(),
                DisplayName::parse("company", &m.company).map_err(|e| e.to_string())?,
                DeliveryId::from(m.mail_id),
            ))
        };
    let (to, to_name, company, outbox_id) = match parts() {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    let code = match app.issuer.derive_code(&m.binding).await {
        Ok(c) => c,
        Err(e) => return Outcome::Retry(format!("issuer: {e}")),
    };
    let code = match InstallCode::parse(code.expose()) {
        Ok(c) => c,
        Err(_) => return Outcome::Retry("issuer returned a malformed code".into()),
    };
    let now = time::OffsetDateTime::now_utc();
    let link = match app.presigner.presign(now, app.policy.download_link_ttl) {
        Ok(l) => l,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let mail = OutgoingMail {
        outbox_id,
        kind: m.kind,
        to,
        to_name,
        company,
        code,
        code_expires_at: m.binding.expires_at,
        link,
    };
    match app.outbox.mailer.send(&mail).await {
        Ok(()) => Outcome::Sent,
        Err(e) if e.is_transient() => Outcome::Retry(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Marks the mail and audits the outcome in one transaction, fenced by the claimed
/// attempt; a retry past the budget becomes a failure. Returns whether the mail was
/// recorded as sent. `path` (`first` or `worker`) labels the metric.
#[allow(
    clippy::disallowed_methods,
    reason = "reads the clock at an edge and passes `now` down"
)]
async fn record(
    app: &App,
    m: &outbox::DueMail,
    outcome: Outcome,
    path: &str,
) -> Result<bool, crate::error::ApiError> {
    let outcome = match outcome {
        Outcome::Retry(reason) if m.attempts >= app.outbox.max_attempts() => Outcome::Failed(
            format!("{reason} (retry budget of {} attempts spent)", m.attempts),
        ),
        o => o,
    };
    // Reasons are server and issuer messages: bounded, so a chatty SMTP server cannot
    // make the audit record too large to write (which would block the mark).
    let outcome = match outcome {
        Outcome::Retry(r) => Outcome::Retry(bounded(r)),
        Outcome::Failed(r) => Outcome::Failed(bounded(r)),
        Outcome::Sent => Outcome::Sent,
    };
    let ctx = Ctx {
        request_id: format!("mail-{}", m.mail_id.simple()),
        source: None,
        actor_role: "system",
        actor_id: Some("mail-worker".to_owned()),
        now: time::OffsetDateTime::now_utc(),
    };
    let mut conn = app.pool.get().await.map_err(db::DbError::from)?;
    let tx = conn.transaction().await.map_err(db::DbError::from)?;
    let base = |action: &str| -> Result<_, audit::AuditError> {
        Ok(ctx
            .record(action)?
            .tenant(m.tenant_id)
            .subject("mail_id", m.mail_id)
            .subject("code_id", m.binding.code_id.as_str())
            .detail("kind", m.kind.as_str())
            .detail("attempt", m.attempts))
    };
    let (held, label) = match &outcome {
        Outcome::Sent => {
            let held = outbox::mark_sent(&tx, m.mail_id, m.attempts).await?;
            if held {
                audit::append(&tx, base(actions::MAIL_SENT)?).await?;
            }
            (held, "sent")
        }
        Outcome::Retry(reason) => {
            let delay = app.outbox.backoff(m.attempts);
            let held = outbox::mark_retry(&tx, m.mail_id, m.attempts, delay, reason).await?;
            if held {
                tracing::warn!(mail.id = %m.mail_id, mail.attempt = m.attempts, reason = %reason, retry_in_s = delay, "mail not sent; will retry");
            }
            (held, "retry")
        }
        Outcome::Failed(reason) => {
            let held = outbox::mark_failed(&tx, m.mail_id, m.attempts, reason).await?;
            if held {
                tracing::warn!(mail.id = %m.mail_id, mail.attempt = m.attempts, reason = %reason, "mail given up");
                audit::append(
                    &tx,
                    base(actions::MAIL_FAILED)?
                        .detail("reason", reason.as_str())
                        .failure("mail_failed"),
                )
                .await?;
            }
            (held, "failed")
        }
    };
    if !held {
        // Another claim took the row over (our lease ran out): its sender records it.
        tracing::warn!(mail.id = %m.mail_id, mail.attempt = m.attempts, outcome = label, "mail claim lost before its outcome was recorded");
        return Ok(false);
    }
    tx.commit().await.map_err(db::DbError::from)?;
    app.metrics.mail_delivery(label, path);
    if matches!(outcome, Outcome::Sent) {
        tracing::info!(mail.id = %m.mail_id, code.id = %m.binding.code_id, mail.path = path, "install-code mail sent");
    }
    Ok(matches!(outcome, Outcome::Sent))
}

/// Longest reason kept in the outbox and the audit record, in characters.
const MAX_REASON_CHARS: usize = 500;

fn bounded(reason: String) -> String {
    if reason.chars().count() <= MAX_REASON_CHARS {
        reason
    } else {
        let mut r: String = reason.chars().take(MAX_REASON_CHARS).collect();
        r.push('…');
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded() {
        assert_eq!(bounded("short".into()), "short");
        let long = bounded("x".repeat(5000));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1);
    }

    fn outbox(rules: MailConfig) -> Outbox {
        let smtp: alga_delivery::SmtpConfig = toml::from_str(
            "host = \"127.0.0.1\"\nport = 25\nsecurity = \"none\"\nfrom = \"alga <l@alga.test>\"",
        )
        .expect("smtp config");
        let mailer = Mailer::new(&smtp).expect("mailer");
        Outbox::new(mailer, rules)
    }

    #[test]
    fn backoff_doubles_to_the_configured_maximum() {
        let o = outbox(MailConfig::default());
        assert_eq!(o.backoff(1), 30.0);
        assert_eq!(o.backoff(2), 60.0);
        assert_eq!(o.backoff(8), 3600.0);
        assert_eq!(o.backoff(50), 3600.0);
        assert_eq!(o.backoff(i32::MAX), 3600.0);
        let fast = outbox(MailConfig {
            retry_initial_secs: 0.2,
            retry_max_secs: 0.5,
            ..MailConfig::default()
        });
        assert_eq!(fast.backoff(1), 0.2);
        assert_eq!(fast.backoff(2), 0.4);
        assert_eq!(fast.backoff(3), 0.5);
    }

    #[test]
    fn reservation_only_when_first_attempts_are_on() {
        assert_eq!(outbox(MailConfig::default()).reserve_secs(), LEASE_SECS);
        let off = outbox(MailConfig {
            first_attempt_timeout_secs: 0.0,
            ..MailConfig::default()
        });
        assert_eq!(off.reserve_secs(), 0.0);
    }
}
