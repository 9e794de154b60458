//! Relayed check-ins accepted once (`relayed_check_ins`, migration 0006).

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DbError, GenericClient};

/// Records a relayed check-in's payload digest; `false` when it was recorded before
/// (a replay). Runs in the check-in's transaction: a check-in that fails records
/// nothing, and of two concurrent submissions of one request the second waits for the
/// first's commit and then finds it.
pub async fn accept_once(
    c: &impl GenericClient,
    payload_sha256: &[u8; 32],
    nonce: Uuid,
    appliance_id: Uuid,
    issued_at: OffsetDateTime,
) -> Result<bool, DbError> {
    let n = c
        .execute(
            &c.prepare_cached(
                "INSERT INTO relayed_check_ins (payload_sha256, nonce, appliance_id, issued_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (payload_sha256) DO NOTHING",
            )
            .await?,
            &[
                &payload_sha256.as_slice(),
                &nonce,
                &appliance_id,
                &issued_at,
            ],
        )
        .await?;
    Ok(n == 1)
}
