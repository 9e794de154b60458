//! `mail_outbox`: mail to send (the delivery worker sends it). Holds the code id and the
//! recipient only: never the code, never the presigned URL.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DbError, GenericClient};

/// Why a mail is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    Registration,
    Reissue,
}

impl MailKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Registration => "registration",
            MailKind::Reissue => "reissue",
        }
    }
}

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
}

/// Queues a mail.
pub async fn enqueue(
    c: &(impl GenericClient + Sync),
    code_id: &str,
    tenant_id: Uuid,
    recipient: &str,
    kind: MailKind,
) -> Result<Uuid, DbError> {
    let mail_id = Uuid::now_v7();
    c.execute(
        "INSERT INTO mail_outbox (mail_id, code_id, tenant_id, recipient, kind) VALUES ($1, $2, $3, $4, $5)",
        &[&mail_id, &code_id, &tenant_id, &recipient, &kind.as_str()],
    )
    .await?;
    Ok(mail_id)
}

/// The tenant's mail, newest first.
pub async fn list_for_tenant(
    c: &(impl GenericClient + Sync),
    tenant_id: Uuid,
) -> Result<Vec<Mail>, DbError> {
    let rows = c
        .query(
            "SELECT mail_id, code_id, kind, state, attempts, created_at, sent_at FROM mail_outbox \
             WHERE tenant_id = $1 ORDER BY created_at DESC, mail_id",
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
        })
        .collect())
}
