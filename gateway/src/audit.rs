//! How the gateway writes to the audit log (`alga_audit`): every flow records through
//! here, so the adaptation to the audit crate's writing API is in one place (the log's
//! read routes, the event feed and the migrations call the audit crate directly).
//!
//! Fail-closed: [`append`] runs inside the caller's transaction; when it fails, the
//! flow's transaction fails with it and nothing changes. Failures of a request are
//! recorded by [`append_failure`] in a transaction of their own, after the failed one
//! rolled back. When the database does not take that record either (it is down, or
//! failing over to a standby), the record is kept in memory ([`PendingFailures`]) and
//! written again every few seconds, with the request's own time, until it is taken:
//! a request that had something signed before its transaction failed stays accounted
//! for in `alga-audit reconcile` (RELIABILITY R23). The client already has its answer.
//!
//! Refusals of requests whose caller was never established (no or a wrong client
//! certificate, a wrong role, a redeem rate-limited or malformed before its code was
//! verified) are not recorded one by one: [`Refusals`] counts them and appends one
//! summary record ([`actions::REFUSED_SUMMARY`]) per refused action, error code, route
//! and source network for each window. Every request that passed authentication, and
//! every redeem that reached code verification, still gets a record of its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use alga_audit::record::RecordBuilder;
use alga_audit::{Action, Actor, NewRecord};
use deadpool_postgres::Pool;
use time::OffsetDateTime;

pub use alga_audit::actions;

/// Why an audit record could not be written: the library's
/// [`Error`](crate::error::Error) (`AuditRecord`, `AuditAppend`), under the name this
/// module uses.
pub type AuditError = crate::error::Error;

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
                Actor::new(role, Some(id)).map_err(|e| AuditError::AuditRecord(e.to_string()))
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
        let action = Action::new(action).map_err(|e| AuditError::AuditRecord(e.to_string()))?;
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
        .map_err(|e| AuditError::AuditRecord(e.to_string()))?;
    alga_audit::append_cached(c, &record)
        .await
        .map_err(|e| AuditError::AuditAppend(e.to_string()))?;
    Ok(())
}

/// Appends built records in a transaction of their own (all or none).
async fn append_alone(pool: &Pool, records: &[NewRecord]) -> Result<(), AuditError> {
    let append_error = |e: &dyn std::fmt::Display| AuditError::AuditAppend(e.to_string());
    let mut conn = pool.get().await.map_err(|e| append_error(&e))?;
    let tx = conn.transaction().await.map_err(|e| append_error(&e))?;
    for r in records {
        alga_audit::append_cached(&tx, r)
            .await
            .map_err(|e| append_error(&e))?;
    }
    tx.commit().await.map_err(|e| append_error(&e))
}

/// Records a failed request in its own transaction. When the database does not take
/// it, the record is kept in `pending` for [`PendingFailures::flush`].
pub async fn append_failure(
    pool: &Pool,
    pending: &PendingFailures,
    record: Result<RecordBuilder, AuditError>,
    error_code: &str,
) {
    let record = match record.and_then(|r| {
        r.failure(error_code)
            .build()
            .map_err(|e| AuditError::AuditRecord(e.to_string()))
    }) {
        Ok(r) => r,
        // A bug (the names are ours): logged, never retried.
        Err(e) => {
            tracing::error!(error = %e, error.code = error_code, "could not record a failed request in the audit log");
            return;
        }
    };
    // Records kept earlier go first, so the log keeps their order.
    if !pending.is_empty() {
        pending.keep(record);
        pending.flush(pool).await;
        return;
    }
    if let Err(e) = append_alone(pool, std::slice::from_ref(&record)).await {
        tracing::warn!(error = %e, error.code = error_code, "failed request not recorded yet; kept for the next try");
        pending.keep(record);
    }
}

/// How often kept failure records are written again.
pub const PENDING_FAILURES_FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Failure records kept while the database does not take them; beyond it the oldest
/// is dropped (logged).
pub const MAX_PENDING_FAILURES: usize = 10_000;

/// Failure records the database did not take when their request failed (module docs).
#[derive(Debug, Default)]
pub struct PendingFailures {
    records: Mutex<VecDeque<NewRecord>>,
}

impl PendingFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<NewRecord>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many are waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn keep(&self, record: NewRecord) {
        let mut q = self.lock();
        if q.len() >= MAX_PENDING_FAILURES {
            q.pop_front();
            tracing::error!(
                kept = MAX_PENDING_FAILURES,
                "a failed request's audit record dropped: too many waiting for the database"
            );
        }
        q.push_back(record);
    }

    /// Writes every kept record, in one transaction; on failure they stay kept.
    pub async fn flush(&self, pool: &Pool) {
        let records: Vec<NewRecord> = self.lock().drain(..).collect();
        if records.is_empty() {
            return;
        }
        match append_alone(pool, &records).await {
            Ok(()) => tracing::info!(
                records = records.len(),
                "kept failed-request records recorded"
            ),
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "kept failed-request records not recorded yet");
                let mut q = self.lock();
                for r in records.into_iter().rev() {
                    q.push_front(r);
                }
                while q.len() > MAX_PENDING_FAILURES {
                    q.pop_front();
                }
            }
        }
    }

    /// At shutdown: one more try, at most [`SHUTDOWN_FLUSH_TIMEOUT`]; what is left is
    /// logged as lost.
    pub async fn flush_all(&self, pool: &Pool) {
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.flush(pool)).await;
        let left = self.len();
        if left > 0 {
            tracing::error!(
                records = left,
                "failed-request records lost: not recorded before shutdown"
            );
        }
    }
}

/// Records a refused request: in a record of its own when the caller is established
/// (a certificate the policy maps to a client, or an appliance credential), else only
/// counted in `refusals`' summary. For refusals before any flow ran.
pub async fn append_refusal(
    pool: &Pool,
    pending: &PendingFailures,
    refusals: &Refusals,
    ctx: &Ctx,
    action: &'static str,
    error_code: &'static str,
    record: impl FnOnce(RecordBuilder) -> RecordBuilder,
) {
    if ctx.actor_id.is_some() {
        append_failure(pool, pending, ctx.record(action).map(record), error_code).await;
    } else {
        refusals.count_request(ctx, action, error_code);
    }
}

// ------------------------------------------------------------------------------------
// Summaries of refusals
// ------------------------------------------------------------------------------------

/// Default length of a refusal summary window.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// How long a shutdown waits for the database to take the last summaries.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often ended windows are flushed.
pub const REFUSAL_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Default bound on the summary keys held in memory (all pending windows together).
pub const MAX_REFUSAL_KEYS: usize = 4096;
/// Windows kept for another try when the database refused their summaries; older
/// ones are dropped (logged with their counts).
pub const MAX_PENDING_WINDOWS: usize = 60;

/// The source network a refusal is counted under: an IPv4 /24 or an IPv6 /48 (the
/// smallest prefixes routed between networks: what one attacker usually holds at
/// least, and what a firewall rule would name), or, once the key bound is reached,
/// the catch-all `other`. IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceNetwork {
    /// The first three octets of the /24.
    V4([u8; 3]),
    /// The first three 16-bit groups of the /48.
    V6([u16; 3]),
    /// No address, or aggregated beyond [`Refusals`]' key bound.
    Other,
}

impl SourceNetwork {
    pub fn of(ip: Option<IpAddr>) -> SourceNetwork {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => {
                let o = v4.octets();
                SourceNetwork::V4([o[0], o[1], o[2]])
            }
            Some(IpAddr::V6(v6)) => {
                let s = v6.segments();
                SourceNetwork::V6([s[0], s[1], s[2]])
            }
            None => SourceNetwork::Other,
        }
    }
}

impl std::fmt::Display for SourceNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceNetwork::V4([a, b, c]) => write!(f, "{}/24", Ipv4Addr::new(*a, *b, *c, 0)),
            SourceNetwork::V6([a, b, c]) => {
                write!(f, "{}/48", Ipv6Addr::new(*a, *b, *c, 0, 0, 0, 0, 0))
            }
            SourceNetwork::Other => f.write_str("other"),
        }
    }
}

/// What one summary record counts (besides its window).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefusalKey {
    /// The action the request would have been (`access.denied`, `code.redeem`).
    pub action: &'static str,
    /// The stable error code the callers were given.
    pub error_code: &'static str,
    /// `(method, route template)` when the action does not name the route.
    pub route: Option<(String, String)>,
    pub network: SourceNetwork,
}

/// The count of one key in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalCount {
    /// Unix seconds, a multiple of the window length.
    pub window_start: i64,
    pub key: RefusalKey,
    pub count: u64,
}

#[derive(Debug, Default)]
struct RefusalState {
    /// Window start (unix seconds) → counts.
    windows: BTreeMap<i64, HashMap<RefusalKey, u64>>,
    /// Keys of every window, catch-all ones included.
    keys: usize,
}

/// In-memory counters of refusals, flushed as one summary record per key and window
/// when the window has ended ([`Refusals::flush_closed`], every few seconds) and at
/// shutdown ([`Refusals::flush_all`]).
///
/// **Bounded:** at most `max_keys` keys with a real network across all pending
/// windows; beyond, new keys count under [`SourceNetwork::Other`] (whose keys are
/// bounded by the fixed sets of actions, error codes and routes).
///
/// **Crash semantics:** counts live in memory until their window is flushed, so a
/// crash (kill -9, OOM, power) loses at most the current window's counts and the
/// previous one's if its flush had not committed yet; a graceful shutdown loses none.
/// Nothing else is at stake: a refused request changed nothing, and every state
/// change is still recorded in its own transaction (fail-closed). A flush the
/// database refuses is kept for the next one ([`MAX_PENDING_WINDOWS`]).
#[derive(Debug)]
pub struct Refusals {
    window_secs: i64,
    max_keys: usize,
    state: Mutex<RefusalState>,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals::new(REFUSAL_WINDOW, MAX_REFUSAL_KEYS)
    }
}

impl Refusals {
    /// Windows of `window` (whole seconds, at least 1), at most `max_keys` keys.
    pub fn new(window: Duration, max_keys: usize) -> Refusals {
        Refusals {
            window_secs: i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1),
            max_keys,
            state: Mutex::new(RefusalState::default()),
        }
    }

    /// The window length in seconds.
    pub fn window_secs(&self) -> i64 {
        self.window_secs
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RefusalState> {
        // The state is a set of counters: valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn window_of(&self, now: OffsetDateTime) -> i64 {
        now.unix_timestamp().div_euclid(self.window_secs) * self.window_secs
    }

    /// Counts one refusal of `action` with `error_code` of the request of `ctx` (its
    /// source, at its `now`; no route: the action names it).
    pub fn count_request(&self, ctx: &Ctx, action: &'static str, error_code: &'static str) {
        self.count(action, error_code, None, ctx.source, ctx.now);
    }

    /// Counts one refusal of `action` with `error_code` from `source` at `now`.
    pub fn count(
        &self,
        action: &'static str,
        error_code: &'static str,
        route: Option<(&str, &str)>,
        source: Option<IpAddr>,
        now: OffsetDateTime,
    ) {
        let window = self.window_of(now);
        let mut key = RefusalKey {
            action,
            error_code,
            route: route.map(|(m, r)| (m.to_owned(), r.to_owned())),
            network: SourceNetwork::of(source),
        };
        let mut st = self.state();
        let st = &mut *st;
        let keys = st.keys;
        let counts = st.windows.entry(window).or_default();
        if !counts.contains_key(&key)
            && key.network != SourceNetwork::Other
            && keys >= self.max_keys
        {
            key.network = SourceNetwork::Other;
        }
        let n = counts.entry(key).or_insert_with(|| {
            st.keys += 1;
            0
        });
        *n = n.saturating_add(1);
    }

    /// Takes the counts of every window that ended at or before `now`.
    pub fn take_closed(&self, now: OffsetDateTime) -> Vec<RefusalCount> {
        let open = self.window_of(now);
        let mut st = self.state();
        let mut closed = st.windows.split_off(&open);
        std::mem::swap(&mut closed, &mut st.windows);
        Self::drain(&mut st, closed)
    }

    /// Takes every count, the current window's included (shutdown).
    pub fn take_all(&self) -> Vec<RefusalCount> {
        let mut st = self.state();
        let all = std::mem::take(&mut st.windows);
        Self::drain(&mut st, all)
    }

    fn drain(
        st: &mut RefusalState,
        windows: BTreeMap<i64, HashMap<RefusalKey, u64>>,
    ) -> Vec<RefusalCount> {
        let mut out = Vec::new();
        for (window_start, counts) in windows {
            st.keys = st.keys.saturating_sub(counts.len());
            let mut counts: Vec<_> = counts.into_iter().collect();
            counts.sort();
            out.extend(counts.into_iter().map(|(key, count)| RefusalCount {
                window_start,
                key,
                count,
            }));
        }
        out
    }

    /// Puts counts back (their flush failed), dropping the oldest windows beyond
    /// [`MAX_PENDING_WINDOWS`].
    fn restore(&self, counts: Vec<RefusalCount>) {
        let mut st = self.state();
        for c in counts {
            let window = st.windows.entry(c.window_start).or_default();
            let mut added = false;
            let n = window.entry(c.key).or_insert_with(|| {
                added = true;
                0
            });
            *n = n.saturating_add(c.count);
            if added {
                st.keys += 1;
            }
        }
        while st.windows.len() > MAX_PENDING_WINDOWS {
            if let Some((start, dropped)) = st.windows.pop_first() {
                st.keys = st.keys.saturating_sub(dropped.len());
                let lost: u64 = dropped.values().sum();
                tracing::error!(
                    window_start = start,
                    refusals = lost,
                    "refusal counts dropped: their summary could not be recorded"
                );
            }
        }
    }

    /// The summary record of one count, written at `now`.
    pub fn record(&self, c: &RefusalCount, now: OffsetDateTime) -> Result<NewRecord, AuditError> {
        let action = Action::new(actions::REFUSED_SUMMARY)
            .map_err(|e| AuditError::AuditRecord(e.to_string()))?;
        let window_start = OffsetDateTime::from_unix_timestamp(c.window_start)
            .map_err(|e| AuditError::AuditRecord(e.to_string()))?
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| AuditError::AuditRecord(e.to_string()))?;
        let mut r = NewRecord::builder(now, Actor::anonymous(), action)
            .failure(c.key.error_code)
            .detail("refused_action", c.key.action)
            .detail("error_code", c.key.error_code)
            .detail("count", c.count.min(alga_audit::record::MAX_SAFE_INTEGER))
            .detail("window_start", window_start)
            .detail("window_seconds", self.window_secs)
            .detail("source_network", c.key.network.to_string());
        if let Some((method, route)) = &c.key.route {
            r = r
                .detail("method", method.as_str())
                .detail("route", route.as_str());
        }
        r.build()
            .map_err(|e| AuditError::AuditRecord(e.to_string()))
    }

    /// Appends the summaries of the windows that have ended.
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    pub async fn flush_closed(&self, pool: &Pool) {
        let now = OffsetDateTime::now_utc();
        let counts = self.take_closed(now);
        self.write(pool, counts, now).await;
    }

    /// Appends every summary, the current window's included (at shutdown), waiting at
    /// most [`SHUTDOWN_FLUSH_TIMEOUT`] for the database.
    #[allow(
        clippy::disallowed_methods,
        reason = "reads the clock at an edge and passes `now` down"
    )]
    pub async fn flush_all(&self, pool: &Pool) {
        let now = OffsetDateTime::now_utc();
        let counts = self.take_all();
        let sent: u64 = counts.iter().map(|c| c.count).sum();
        let timed_out = tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.write(pool, counts, now))
            .await
            .is_err();
        // What a failed write put back is lost with the process.
        let left: u64 = self.take_all().iter().map(|c| c.count).sum();
        if timed_out || left > 0 {
            let refusals = if timed_out { sent } else { left };
            tracing::error!(
                refusals,
                "refusal counts lost: their summaries were not recorded before shutdown"
            );
        }
    }

    /// One transaction for all of them; on failure they are kept for the next flush.
    async fn write(&self, pool: &Pool, counts: Vec<RefusalCount>, now: OffsetDateTime) {
        if counts.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(counts.len());
        for c in &counts {
            match self.record(c, now) {
                Ok(r) => records.push(r),
                // A bug (the names are ours): logged, never retried forever.
                Err(e) => tracing::error!(error = %e, "invalid refusal summary record"),
            }
        }
        match append_alone(pool, &records).await {
            Ok(()) => tracing::debug!(records = records.len(), "refusal summaries recorded"),
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "refusal summaries not recorded; kept for the next flush");
                self.restore(counts);
            }
        }
    }
}

/// Largest page of `GET /audit/events` and `/audit/checkpoints`.
pub const MAX_PAGE: i64 = 1000;

fn page(after: Option<i64>, limit: Option<i64>) -> Result<(u64, u32), crate::error::ApiError> {
    let bad = crate::error::ApiError::field;
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
        crate::error::ApiError::field("action", "must be dotted lowercase words like code.redeem")
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

    fn sign_log(
        &self,
        size: u64,
        root: [u8; 32],
    ) -> impl std::future::Future<
        Output = Result<alga_protocol::issuer_api::SignedLogCheckpoint, Self::Error>,
    > + Send {
        let client = self.0.clone();
        async move { client.sign_log_checkpoint(size, root).await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("time")
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn networks_are_ipv4_24_and_ipv6_48() {
        let n = |s: &str| SourceNetwork::of(ip(s)).to_string();
        assert_eq!(n("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(n("::ffff:192.0.2.77"), "192.0.2.0/24");
        assert_eq!(n("2001:db8:1:2:3:4:5:6"), "2001:db8:1::/48");
        assert_eq!(
            SourceNetwork::of(ip("2001:db8:1:ffff::1")),
            SourceNetwork::of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(SourceNetwork::of(None).to_string(), "other");
    }

    /// Counts per key and window; a window is taken once it has ended; counts are
    /// preserved; the summary record passes the audit crate's checks and guard.
    #[test]
    fn counts_per_key_and_window_then_one_record_each() {
        let r = Refusals::new(Duration::from_secs(60), 100);
        for i in 0..1000 {
            let source = ip(&format!("198.51.100.{}", i % 200));
            r.count(
                "access.denied",
                "unauthenticated",
                Some(("GET", "/audit/events")),
                source,
                at(6000 + i % 60),
            );
        }
        r.count(
            "code.redeem",
            "rate_limited",
            None,
            ip("2001:db8:5::9"),
            at(6059),
        );
        r.count(
            "code.redeem",
            "rate_limited",
            None,
            ip("2001:db8:5:1::9"),
            at(6060),
        );
        assert!(
            r.take_closed(at(6059)).is_empty(),
            "the window is still open"
        );
        let closed = r.take_closed(at(6060));
        assert_eq!(closed.len(), 2);
        assert_eq!(closed.iter().map(|c| c.count).sum::<u64>(), 1001);
        let rest = r.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].window_start, 6060);
        assert!(r.take_all().is_empty());

        let denied = closed
            .iter()
            .find(|c| c.key.action == "access.denied")
            .expect("denied");
        let rec = r.record(denied, at(6061)).expect("a valid record");
        let v: serde_json::Value =
            serde_json::from_slice(rec.canonical_bytes()).expect("canonical JSON");
        assert_eq!(v["action"], actions::REFUSED_SUMMARY);
        assert_eq!(v["actor"]["role"], "anonymous");
        assert_eq!(v["outcome"]["error_code"], "unauthenticated");
        assert_eq!(v["source"], serde_json::Value::Null);
        assert_eq!(
            v["details"],
            serde_json::json!({
                "refused_action": "access.denied",
                "error_code": "unauthenticated",
                "count": 1000,
                "window_start": "1970-01-01T01:40:00Z",
                "window_seconds": 60,
                "source_network": "198.51.100.0/24",
                "method": "GET",
                "route": "/audit/events",
            })
        );
    }

    /// Beyond the key bound, new networks count under `other`: memory stays bounded,
    /// no refusal is lost.
    #[test]
    fn beyond_the_bound_new_networks_aggregate_under_other() {
        let r = Refusals::new(Duration::from_secs(60), 10);
        for i in 0..5000u32 {
            let [_, b, c, d] = i.to_be_bytes();
            let source = Some(IpAddr::V4(Ipv4Addr::new(10, b, c, d)));
            r.count("code.redeem", "code_malformed", None, source, at(0));
        }
        let all = r.take_all();
        assert_eq!(all.len(), 11, "10 networks and the catch-all");
        assert_eq!(all.iter().map(|c| c.count).sum::<u64>(), 5000);
        let other = all
            .iter()
            .find(|c| c.key.network == SourceNetwork::Other)
            .expect("other");
        assert_eq!(other.count, 5000 - 10 * 256);
    }

    /// A failed flush puts the counts back, merged with what came since.
    #[test]
    fn kept_failure_records_are_bounded_dropping_the_oldest() {
        let r = Refusals::new(Duration::from_secs(60), 10);
        r.count("code.redeem", "rate_limited", None, ip("192.0.2.1"), at(10));
        let c = r.take_all().pop().expect("one count");
        let pending = PendingFailures::default();
        assert!(pending.is_empty());
        let mut sixth = None;
        for i in 0..MAX_PENDING_FAILURES + 5 {
            let rec = r
                .record(&c, at(100 + i64::try_from(i).expect("small")))
                .expect("record");
            if i == 5 {
                sixth = Some(rec.clone());
            }
            pending.keep(rec);
        }
        assert_eq!(pending.len(), MAX_PENDING_FAILURES);
        // The five oldest went; the first kept is the sixth.
        assert_eq!(pending.lock().front().cloned(), sixth);
    }

    #[test]
    fn restored_counts_merge() {
        let r = Refusals::new(Duration::from_secs(60), 100);
        r.count("code.redeem", "rate_limited", None, ip("192.0.2.1"), at(10));
        let taken = r.take_all();
        r.count("code.redeem", "rate_limited", None, ip("192.0.2.2"), at(20));
        r.restore(taken);
        let all = r.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].count, 2);
    }
}
