//! `idempotency_keys`: the first response to an `Idempotency-Key`, per caller.

use super::{DbError, GenericClient};

const GET: &str = "SELECT request_hash, response_status, response_body FROM idempotency_keys \
     WHERE caller = $1 AND key = $2";

/// This module's statements on the flows' hot paths, by name: `tests/it/explain.rs`
/// checks the plan of each against a seeded registry.
pub(super) const HOT: &[(&str, &str)] = &[("idempotency lookup", GET)];

/// A stored response.
#[derive(Debug, Clone)]
pub struct Stored {
    pub request_hash: String,
    pub status: u16,
    pub body: serde_json::Value,
}

/// The record of `(caller, key)`.
pub async fn get(
    c: &impl GenericClient,
    caller: &str,
    key: &str,
) -> Result<Option<Stored>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(GET).await?, &[&caller, &key])
        .await?;
    row.map(|r| {
        let status: i16 = r.get(1);
        Ok(Stored {
            request_hash: r.get(0),
            status: u16::try_from(status)
                .map_err(|_| super::corrupt("idempotency status", &status.to_string()))?,
            body: r.get(2),
        })
    })
    .transpose()
}

/// Stores the response; `false` when a concurrent request stored one first.
pub async fn insert(
    c: &impl GenericClient,
    caller: &str,
    key: &str,
    request_hash: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<bool, DbError> {
    let status = i16::try_from(status).map_err(|_| DbError::Corrupt(format!("status {status}")))?;
    let n = c
        .execute(
            &c.prepare_cached("INSERT INTO idempotency_keys (caller, key, request_hash, response_status, response_body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING").await?,
            &[&caller, &key, &request_hash, &status, body],
        )
        .await?;
    Ok(n == 1)
}
