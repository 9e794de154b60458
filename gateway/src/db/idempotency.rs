//! `idempotency_keys`: the first response to an `Idempotency-Key`, per caller.

use tokio_postgres::types::Json;

use super::{DbError, GenericClient};

const GET: &str = "SELECT request_hash, response_status, response_body FROM idempotency_keys \
     WHERE caller = $1 AND key = $2";

/// This module's statements on the flows' hot paths, by name: `tests/it/explain.rs`
/// checks the plan of each against a seeded registry.
pub(super) const HOT: &[(&str, &str)] = &[("idempotency lookup", GET)];

/// A stored outcome: the flow's own serde type `T`, kept as JSON.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub request_hash: String,
    pub status: u16,
    pub outcome: T,
}

/// The record of `(caller, key)`. An outcome that does not parse as `T` is
/// [`DbError::Corrupt`], named by its caller and key (its content is not logged).
pub async fn get<T: serde::de::DeserializeOwned>(
    c: &impl GenericClient,
    caller: &str,
    key: &str,
) -> Result<Option<Stored<T>>, DbError> {
    let row = c
        .query_opt(&c.prepare_cached(GET).await?, &[&caller, &key])
        .await?;
    row.map(|r| {
        let status: i16 = r.get(1);
        let Json(outcome) = r.try_get::<_, Json<T>>(2).map_err(|e| {
            DbError::Corrupt(format!(
                "idempotency_keys ({caller:?}, {key:?}): the stored outcome does not parse: {}",
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string)
            ))
        })?;
        Ok(Stored {
            request_hash: r.get(0),
            status: u16::try_from(status)
                .map_err(|_| super::corrupt("idempotency status", &status.to_string()))?,
            outcome,
        })
    })
    .transpose()
}

/// Stores the outcome; `false` when a concurrent request stored one first.
pub async fn insert<T: serde::Serialize + std::fmt::Debug + Sync>(
    c: &impl GenericClient,
    caller: &str,
    key: &str,
    request_hash: &str,
    status: u16,
    outcome: &T,
) -> Result<bool, DbError> {
    let status = i16::try_from(status).map_err(|_| DbError::Corrupt(format!("status {status}")))?;
    let n = c
        .execute(
            &c.prepare_cached("INSERT INTO idempotency_keys (caller, key, request_hash, response_status, response_body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING").await?,
            &[&caller, &key, &request_hash, &status, &Json(outcome)],
        )
        .await?;
    Ok(n == 1)
}
