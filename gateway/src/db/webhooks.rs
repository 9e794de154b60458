//! `webhook_cursors` and `webhook_deliveries`: the webhook outbox. Rows hold an
//! event's JSON body (the same as `GET /events` shows, nothing secret) and delivery
//! state; never the endpoint's secret or a signature.

use uuid::Uuid;

use super::{DbError, GenericClient};

/// Locks the endpoint's feed cursor for the caller's transaction (creating it at the
/// start of the feed on first use) and returns the last sequence number copied.
pub async fn lock_cursor(c: &impl GenericClient, endpoint: &str) -> Result<u64, DbError> {
    c.execute(
        &c.prepare_cached(
            "INSERT INTO webhook_cursors (endpoint) VALUES ($1) ON CONFLICT (endpoint) DO NOTHING",
        )
        .await?,
        &[&endpoint],
    )
    .await?;
    let row = c
        .query_one(
            &c.prepare_cached(
                "SELECT after_seq FROM webhook_cursors WHERE endpoint = $1 FOR UPDATE",
            )
            .await?,
            &[&endpoint],
        )
        .await?;
    let seq: i64 = row.get(0);
    u64::try_from(seq).map_err(|_| super::corrupt("webhook_cursors.after_seq", &seq.to_string()))
}

/// Moves the endpoint's cursor (the caller holds its lock).
pub async fn set_cursor(c: &impl GenericClient, endpoint: &str, seq: u64) -> Result<(), DbError> {
    let seq = to_i64(seq)?;
    c.execute(
        &c.prepare_cached(
            "UPDATE webhook_cursors SET after_seq = $2, updated_at = now() WHERE endpoint = $1",
        )
        .await?,
        &[&endpoint, &seq],
    )
    .await?;
    Ok(())
}

/// An event to deliver.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub seq: u64,
    pub tenant_id: Option<Uuid>,
    pub event_type: &'a str,
    pub body: &'a [u8],
}

/// Queues events for the endpoint (an event already queued is left as it is).
pub async fn enqueue(
    c: &impl GenericClient,
    endpoint: &str,
    events: &[NewDelivery<'_>],
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let seqs = events
        .iter()
        .map(|e| to_i64(e.seq))
        .collect::<Result<Vec<_>, _>>()?;
    let tenants: Vec<Option<Uuid>> = events.iter().map(|e| e.tenant_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let bodies: Vec<&[u8]> = events.iter().map(|e| e.body).collect();
    c.execute(
        &c.prepare_cached(
            "INSERT INTO webhook_deliveries (endpoint, seq, tenant_id, event_type, body) \
             SELECT $1::text, * FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::bytea[]) \
             ON CONFLICT (endpoint, seq) DO NOTHING",
        )
        .await?,
        &[&endpoint, &seqs, &tenants, &types, &bodies],
    )
    .await?;
    Ok(())
}

/// An event claimed for one delivery attempt.
#[derive(Debug, Clone)]
pub struct Due {
    pub seq: u64,
    pub tenant_id: Option<Uuid>,
    pub body: Vec<u8>,
    /// Attempts before this one.
    pub attempts: i32,
}

/// Claims, for up to `tenants` tenants, each tenant's lowest undelivered event when it
/// is due, for `lease_secs` (no other claim takes it meanwhile; if the claimer dies,
/// it is due again when the lease ends). A tenant whose lowest event is not due (it
/// failed and waits for its retry) has nothing claimed: its later events wait, so a
/// tenant's events are delivered in order, and other tenants' go on.
pub async fn claim_due(
    c: &impl GenericClient,
    endpoint: &str,
    tenants: i64,
    lease_secs: f64,
) -> Result<Vec<Due>, DbError> {
    let rows = c
        .query(
            &c.prepare_cached(
                "WITH heads AS ( \
                     SELECT seq, next_attempt_at FROM ( \
                         SELECT DISTINCT ON (tenant_id) seq, next_attempt_at \
                         FROM webhook_deliveries \
                         WHERE endpoint = $1 AND delivered_at IS NULL \
                         ORDER BY tenant_id, seq) h \
                     WHERE next_attempt_at <= now() ORDER BY seq LIMIT $2) \
                 UPDATE webhook_deliveries d \
                 SET next_attempt_at = now() + make_interval(secs => $3) \
                 FROM heads \
                 WHERE d.endpoint = $1 AND d.seq = heads.seq \
                   AND d.delivered_at IS NULL AND d.next_attempt_at <= now() \
                 RETURNING d.seq, d.tenant_id, d.body, d.attempts",
            )
            .await?,
            &[&endpoint, &tenants, &lease_secs],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            Ok(Due {
                seq: u64::try_from(seq)
                    .map_err(|_| super::corrupt("webhook_deliveries.seq", &seq.to_string()))?,
                tenant_id: r.get(1),
                body: r.get(2),
                attempts: r.get(3),
            })
        })
        .collect()
}

/// Records a delivered event.
pub async fn mark_delivered(
    c: &impl GenericClient,
    endpoint: &str,
    seq: u64,
) -> Result<(), DbError> {
    let seq = to_i64(seq)?;
    c.execute(
        &c.prepare_cached(
            "UPDATE webhook_deliveries SET delivered_at = now(), attempts = attempts + 1, \
             last_error = NULL WHERE endpoint = $1 AND seq = $2 AND delivered_at IS NULL",
        )
        .await?,
        &[&endpoint, &seq],
    )
    .await?;
    Ok(())
}

/// Records a failed attempt; the event is due again in `retry_in_secs`.
pub async fn mark_failed(
    c: &impl GenericClient,
    endpoint: &str,
    seq: u64,
    retry_in_secs: f64,
    error: &str,
) -> Result<(), DbError> {
    let seq = to_i64(seq)?;
    c.execute(
        &c.prepare_cached(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, \
             next_attempt_at = now() + make_interval(secs => $3), last_error = $4 \
             WHERE endpoint = $1 AND seq = $2 AND delivered_at IS NULL",
        )
        .await?,
        &[&endpoint, &seq, &retry_in_secs, &error],
    )
    .await?;
    Ok(())
}

/// Undelivered events of the endpoint and the age in seconds of the oldest one
/// (0 when there is none).
pub async fn backlog(c: &impl GenericClient, endpoint: &str) -> Result<(i64, f64), DbError> {
    let row = c
        .query_one(
            &c.prepare_cached(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 \
                 FROM webhook_deliveries WHERE endpoint = $1 AND delivered_at IS NULL",
            )
            .await?,
            &[&endpoint],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Deletes delivered events older than `keep_secs`; returns how many.
pub async fn prune_delivered(c: &impl GenericClient, keep_secs: f64) -> Result<u64, DbError> {
    Ok(c.execute(
        &c.prepare_cached(
            "DELETE FROM webhook_deliveries \
             WHERE delivered_at < now() - make_interval(secs => $1)",
        )
        .await?,
        &[&keep_secs],
    )
    .await?)
}

fn to_i64(seq: u64) -> Result<i64, DbError> {
    i64::try_from(seq).map_err(|_| DbError::Corrupt(format!("sequence number {seq} too large")))
}
