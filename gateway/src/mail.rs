//! The mail outbox worker: sends the install-code mails that registration and reissue
//! queued in their transactions.
//!
//! The outbox row holds no secret. At send time the worker re-derives the code from the
//! stored binding (issuer `DERIVE_CODE`), presigns a fresh ISO link, renders and sends
//! through `alga_delivery::Mailer`, then marks the row and audits `mail.sent` /
//! `mail.failed` in one transaction. A claim is a lease (attempts + 1, next attempt
//! pushed ahead), so a crashed worker's mail is retried and several gateways share the
//! outbox (`FOR UPDATE SKIP LOCKED`). A code that was reissued, used or expired before
//! its mail went out is not mailed. At-least-once: a crash between SMTP and the mark
//! can send a mail twice, with the same `Message-ID` so the receiver can de-duplicate.

use std::sync::Arc;
use std::time::Duration;

use alga_delivery::{
    DeliveryId, DisplayName, MailAddress, Mailer, OutgoingMail, PresignedLink, Sender,
};
use alga_protocol::InstallCode;
use tokio::sync::Notify;

use crate::App;
use crate::audit::{self, Ctx, actions};
use crate::config::SmtpConfig;
use crate::db::{self, outbox};

/// Attempts before a transiently failing mail is given up.
pub const MAX_ATTEMPTS: i32 = 8;
/// How long a claimed mail is reserved for the worker that claimed it.
const LEASE_SECS: f64 = 120.0;
/// Mails claimed per round.
const BATCH: i64 = 10;
/// Pause between rounds when nothing is due (a registration wakes the worker earlier).
const IDLE: Duration = Duration::from_secs(2);

/// Why the mailer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("mail setup: {0}")]
pub struct MailSetupError(String);

/// The SMTP sender of the `[smtp]` section.
pub fn mailer(c: &SmtpConfig) -> Result<Mailer, MailSetupError> {
    let from = Sender::parse(&c.from).map_err(|e| MailSetupError(format!("smtp.from: {e}")))?;
    let security = match c.security {
        crate::config::SmtpSecurity::None => alga_delivery::SmtpSecurity::None,
        crate::config::SmtpSecurity::Starttls => alga_delivery::SmtpSecurity::Starttls,
        crate::config::SmtpSecurity::Tls => alga_delivery::SmtpSecurity::Tls,
    };
    Mailer::new(&alga_delivery::SmtpConfig {
        host: c.host.clone(),
        port: c.port,
        security,
        from,
        username: c.username.clone(),
        password_file: c.password_file.clone(),
        ca_file: None,
        timeout: alga_delivery::mail::DEFAULT_SMTP_TIMEOUT,
    })
    .map_err(|e| MailSetupError(e.to_string()))
}

/// Backoff before attempt `attempts + 1`: 30 s doubling, at most an hour.
fn backoff(attempts: i32) -> f64 {
    let exp = u32::try_from(attempts.clamp(1, 8) - 1).unwrap_or(0);
    (30.0 * f64::from(2u32.pow(exp))).min(3600.0)
}

/// Runs the worker until `stop` resolves.
pub async fn run(
    app: Arc<App>,
    mailer: Mailer,
    wake: Arc<Notify>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let sent = match round(&app, &mailer).await {
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
            _ = wake.notified() => {}
            _ = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// One round: claim, send, mark. Returns how many mails were handled.
async fn round(app: &App, mailer: &Mailer) -> Result<usize, db::DbError> {
    let due = {
        let mut conn = app.pool.get().await?;
        let tx = conn.transaction().await?;
        let due = outbox::claim_due(&*tx, BATCH, LEASE_SECS).await?;
        tx.commit().await?;
        due
    };
    let n = due.len();
    for mail in due {
        let outcome = send_one(app, mailer, &mail).await;
        if let Err(e) = record(app, &mail, outcome).await {
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

async fn send_one(app: &App, mailer: &Mailer, m: &outbox::DueMail) -> Outcome {
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
        kind: match m.kind {
            outbox::MailKind::Registration => alga_delivery::MailKind::Registration,
            outbox::MailKind::Reissue => alga_delivery::MailKind::Reissue,
        },
        to,
        to_name,
        company,
        code,
        code_expires_at: m.binding.expires_at,
        link: PresignedLink {
            url: link.url,
            expires_at: link.expires_at,
        },
    };
    match mailer.send(&mail).await {
        Ok(()) => Outcome::Sent,
        Err(e) if e.is_transient() && m.attempts < MAX_ATTEMPTS => Outcome::Retry(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn record(
    app: &App,
    m: &outbox::DueMail,
    outcome: Outcome,
) -> Result<(), crate::error::ApiError> {
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
    match outcome {
        Outcome::Sent => {
            outbox::mark_sent(&*tx, m.mail_id).await?;
            audit::append(&*tx, base(actions::MAIL_SENT)?).await?;
            tracing::info!(mail.id = %m.mail_id, code.id = %m.binding.code_id, "install-code mail sent");
        }
        Outcome::Retry(reason) => {
            let delay = backoff(m.attempts);
            tracing::warn!(mail.id = %m.mail_id, reason = %reason, retry_in_s = delay, "mail not sent; will retry");
            outbox::mark_retry(&*tx, m.mail_id, delay, &reason).await?;
        }
        Outcome::Failed(reason) => {
            tracing::warn!(mail.id = %m.mail_id, reason = %reason, "mail given up");
            outbox::mark_failed(&*tx, m.mail_id, &reason).await?;
            audit::append(&*tx, base(actions::MAIL_FAILED)?.failure("mail_failed")).await?;
        }
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(super::backoff(1), 30.0);
        assert_eq!(super::backoff(2), 60.0);
        assert_eq!(super::backoff(8), 3600.0);
        assert_eq!(super::backoff(50), 3600.0);
    }
}
