//! The gateway's one seam to the audit log (`alga_audit`): every flow records through
//! here, so the adaptation to the audit crate's API is in one place.
//!
//! Fail-closed: [`append`] runs inside the caller's transaction; when it fails, the
//! flow's transaction fails with it and nothing changes. Failures of a request are
//! recorded by [`append_failure`] in a transaction of their own, after the failed one
//! rolled back (a failure to record a failure is logged, the client already has its
//! answer).

use std::net::IpAddr;

use alga_audit::record::RecordBuilder;
use alga_audit::{Action, Actor, NewRecord};
use deadpool_postgres::Pool;
use time::OffsetDateTime;

pub use alga_audit::actions;

/// Why an audit record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record is invalid (a name, a length, the secret guard).
    #[error("audit record: {0}")]
    Record(String),
    /// The append failed in the database.
    #[error("audit append: {0}")]
    Append(String),
}

/// Who is acting and on which request: the common part of every record.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub request_id: String,
    /// The client's address; `None` for the service's own work (the mail worker).
    pub source: Option<IpAddr>,
    /// `store`, `auditor`, `appliance`, `anonymous`.
    pub actor_role: &'static str,
    /// The certificate's URI SAN, when there is one.
    pub actor_id: Option<String>,
    /// The flow's clock (the database's `now()` decides consumption).
    pub now: OffsetDateTime,
}

impl Ctx {
    fn actor(&self) -> Result<Actor, AuditError> {
        match (self.actor_role, &self.actor_id) {
            ("anonymous", _) | (_, None) => Ok(Actor::anonymous()),
            (role, Some(id)) => {
                Actor::new(role, Some(id)).map_err(|e| AuditError::Record(e.to_string()))
            }
        }
    }

    /// The source address for per-source limits (requests always have one).
    pub fn source_or_unspecified(&self) -> IpAddr {
        self.source
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// Starts a record of `action` with actor, request id and source filled in.
    pub fn record(&self, action: &str) -> Result<RecordBuilder, AuditError> {
        let action = Action::new(action).map_err(|e| AuditError::Record(e.to_string()))?;
        let r = NewRecord::builder(self.now, self.actor()?, action).request_id(&self.request_id);
        Ok(match self.source {
            Some(ip) => r.source(ip),
            None => r,
        })
    }
}

/// Appends a record inside the caller's transaction (`append(&tx, record)`), through
/// the connection's statement cache.
pub async fn append(
    c: &impl deadpool_postgres::GenericClient,
    record: RecordBuilder,
) -> Result<(), AuditError> {
    let record = record
        .build()
        .map_err(|e| AuditError::Record(e.to_string()))?;
    alga_audit::append_cached(c, &record)
        .await
        .map_err(|e| AuditError::Append(e.to_string()))?;
    Ok(())
}

/// Records a failed request in its own transaction; logs when even that fails.
pub async fn append_failure(
    pool: &Pool,
    record: Result<RecordBuilder, AuditError>,
    error_code: &str,
) {
    let result = async {
        let record = record?.failure(error_code);
        let mut conn = pool
            .get()
            .await
            .map_err(|e| AuditError::Append(e.to_string()))?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| AuditError::Append(e.to_string()))?;
        append(&tx, record).await?;
        tx.commit()
            .await
            .map_err(|e| AuditError::Append(e.to_string()))
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, error.code = error_code, "could not record a failed request in the audit log");
    }
}

/// Largest page of `GET /audit/events` and `/audit/checkpoints`.
pub const MAX_PAGE: i64 = 1000;

fn page(after: Option<i64>, limit: Option<i64>) -> Result<(u64, u32), crate::error::ApiError> {
    let bad = |f: &str, m: &str| {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(f.to_owned(), m.to_owned());
        crate::error::ApiError::Validation(fields)
    };
    let after = u64::try_from(after.unwrap_or(0)).map_err(|_| bad("after", "must be 0 or more"))?;
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad("limit", "must be between 1 and 1000"));
    }
    Ok((after, u32::try_from(limit).unwrap_or(100)))
}

/// A page of chained audit records, oldest first, as the export's JSON lines.
pub async fn events(
    pool: &Pool,
    after: Option<i64>,
    limit: Option<i64>,
    tenant_id: Option<uuid::Uuid>,
    action: Option<&str>,
) -> Result<EventsPage, crate::error::ApiError> {
    let (after_seq, limit) = page(after, limit)?;
    let action = action.map(Action::new).transpose().map_err(|_| {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "action".to_owned(),
            "must be dotted lowercase words like code.redeem".to_owned(),
        );
        crate::error::ApiError::Validation(fields)
    })?;
    let conn = pool.get().await.map_err(crate::db::DbError::from)?;
    let q = alga_audit::EventQuery {
        after_seq,
        limit,
        tenant_id,
        action,
        ..Default::default()
    };
    let records = alga_audit::list_events(&**conn, &q)
        .await
        .map_err(crate::error::ApiError::internal)?;
    let next_after = records.last().map(|r| r.seq);
    Ok(EventsPage {
        events: records,
        next_after,
    })
}

/// A page of `GET /audit/events`. Serialized as it is (never through a
/// `serde_json::Value`), so each record's stored bytes reach the auditor verbatim.
#[derive(Debug, serde::Serialize)]
pub struct EventsPage {
    pub events: Vec<alga_audit::ChainedRecord>,
    pub next_after: Option<u64>,
}

/// A page of signed checkpoints, oldest first.
pub async fn checkpoints(
    pool: &Pool,
    after: Option<i64>,
    limit: Option<i64>,
) -> Result<serde_json::Value, crate::error::ApiError> {
    let (after_seq, limit) = page(after, limit)?;
    let conn = pool.get().await.map_err(crate::db::DbError::from)?;
    let cps = alga_audit::list_checkpoints(&**conn, after_seq, limit)
        .await
        .map_err(crate::error::ApiError::internal)?;
    let next = cps.last().map(|c| c.sequence);
    Ok(serde_json::json!({ "checkpoints": cps, "next_after": next }))
}

/// The sequencer's checkpoint signer: the issuer's `SIGN_CHECKPOINT` (the audit key is
/// in the HSM).
#[derive(Debug, Clone)]
pub struct IssuerCheckpointSigner(pub crate::issuer_client::IssuerClient);

impl alga_audit::CheckpointSigner for IssuerCheckpointSigner {
    type Error = crate::issuer_client::IssuerError;

    fn sign(
        &self,
        sequence: u64,
        head_hash_hex: &str,
    ) -> impl std::future::Future<
        Output = Result<alga_protocol::issuer_api::SignedCheckpoint, Self::Error>,
    > + Send {
        let client = self.0.clone();
        let head = head_hash_hex.to_owned();
        async move { client.sign_checkpoint(sequence, &head).await }
    }
}
