//! The store's event feed: what happened to tenants, codes and appliances, in the
//! order of the sequenced audit log; and the sweep that records appliances going
//! overdue.
//!
//! Every business action already writes an audit record in its own transaction, and
//! the audit sequencer gives each committed record a gap-free sequence number: a
//! transaction's records together, transactions in the order they first wrote, each
//! chained once it and every transaction that wrote before it have ended. So the
//! chain never grows in the middle, whatever order transactions commit in. The feed
//! is the chained records whose action maps to an event type ([`event_of`]); its
//! cursor is the last sequence number a page covered, so pages neither skip nor
//! repeat, however many gateways write at once. A tenant's changes lock its row
//! first and so appear in the order they took effect. An event shows up once the
//! sequencer has chained its record (milliseconds after the commit; longer while a
//! long transaction holds the sequencer back, see `alga_audit::sequencer`).
//!
//! `appliance.overdue` has no request behind it: [`sweep_overdue`] finds active
//! appliances of paid editions past their next expected check-in plus the edition's
//! grace and records each once per episode (the episode is the appliance's last
//! check-in, or its redeem before the first: a later check-in starts a new one).

use alga_audit::Record;
use alga_policies::Policy;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use crate::audit::{self, Ctx, actions};
use crate::db::{self, appliances};
use crate::error::{ApiError, Error};

/// Largest page of `GET /events`.
pub const MAX_EVENT_PAGE: u32 = 1000;
/// Page size when none is asked for.
pub const DEFAULT_EVENT_PAGE: u32 = 100;
/// Appliances recorded overdue per sweep transaction.
pub const OVERDUE_BATCH: i64 = 500;

/// What happened, as the feed names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    TenantRegistered,
    CodeIssued,
    CodeRedeemed,
    ApplianceReplaced,
    ApplianceRevoked,
    ApplianceOverdue,
    EntitlementChanged,
    TenantSuspended,
    TenantResumed,
    MailFailed,
}

impl EventKind {
    /// The wire name (`alga_protocol::api::event_type`).
    pub fn as_str(self) -> &'static str {
        use alga_protocol::api::event_type as t;
        match self {
            EventKind::TenantRegistered => t::TENANT_REGISTERED,
            EventKind::CodeIssued => t::CODE_ISSUED,
            EventKind::CodeRedeemed => t::CODE_REDEEMED,
            EventKind::ApplianceReplaced => t::APPLIANCE_REPLACED,
            EventKind::ApplianceRevoked => t::APPLIANCE_REVOKED,
            EventKind::ApplianceOverdue => t::APPLIANCE_OVERDUE,
            EventKind::EntitlementChanged => t::ENTITLEMENT_CHANGED,
            EventKind::TenantSuspended => t::TENANT_SUSPENDED,
            EventKind::TenantResumed => t::TENANT_RESUMED,
            EventKind::MailFailed => t::MAIL_FAILED,
        }
    }
}

/// The audit actions the feed reads. `code.reissue` is not one of them: a reissue
/// mints its code in the same transaction, and that `code.mint` is the
/// `code.issued` event.
pub const FEED_ACTIONS: [&str; 10] = [
    actions::TENANT_REGISTER,
    actions::CODE_MINT,
    actions::CODE_REDEEM,
    actions::APPLIANCE_REPLACE,
    actions::APPLIANCE_REVOKE,
    actions::APPLIANCE_OVERDUE,
    actions::ENTITLEMENT_CHANGE,
    actions::TENANT_SUSPEND,
    actions::TENANT_RESUME,
    actions::MAIL_FAILED,
];

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// The audit record's sequence number: the event's stable id.
    pub seq: u64,
    pub kind: EventKind,
    /// The audit record's time.
    pub at: OffsetDateTime,
    pub tenant_id: Option<Uuid>,
    pub appliance_id: Option<Uuid>,
    /// Type-specific fields, copied from the record's subjects and details by name
    /// (never the record's actor, source or request id, and nothing secret: the audit
    /// guard keeps secrets out of records in the first place).
    pub data: Map<String, Value>,
}

/// The event an audit record stands for, if any: successful changes (a failed
/// request changed nothing), except `mail.failed`, which is recorded as a failure.
/// A redeem retry (the same appliance asking again) and an edition "change" to the
/// edition the tenant had are no events.
pub fn event_of(seq: u64, r: &Record) -> Option<FeedEvent> {
    let success = r.outcome.is_success();
    let detail_bool = |k: &str| r.details.get(k).and_then(Value::as_bool);
    let (kind, subjects, details): (EventKind, &[&str], &[&str]) = match r.action.as_str() {
        actions::TENANT_REGISTER if success => {
            (EventKind::TenantRegistered, &["code_id"], &["edition"])
        }
        actions::CODE_MINT if success => (
            EventKind::CodeIssued,
            &["code_id", "replaces_appliance_id"],
            &["expires_at", "mail"],
        ),
        actions::CODE_REDEEM if success && detail_bool("retry") != Some(true) => (
            EventKind::CodeRedeemed,
            &["code_id", "replaced_appliance_id"],
            &["edition"],
        ),
        actions::APPLIANCE_REPLACE if success => (
            EventKind::ApplianceReplaced,
            &["replaced_by", "code_id"],
            &[],
        ),
        actions::APPLIANCE_REVOKE if success => (EventKind::ApplianceRevoked, &[], &["reason"]),
        actions::APPLIANCE_OVERDUE if success => (
            EventKind::ApplianceOverdue,
            &[],
            &["edition", "last_seen_at"],
        ),
        actions::ENTITLEMENT_CHANGE if success && detail_bool("changed") != Some(false) => (
            EventKind::EntitlementChanged,
            &[],
            &["from", "to", "revoked"],
        ),
        actions::TENANT_SUSPEND if success => (EventKind::TenantSuspended, &[], &["reason"]),
        actions::TENANT_RESUME if success => (EventKind::TenantResumed, &[], &[]),
        actions::MAIL_FAILED => (
            EventKind::MailFailed,
            &["mail_id", "code_id"],
            &["kind", "attempt"],
        ),
        _ => return None,
    };
    let mut data = Map::new();
    for k in subjects {
        if let Some(v) = r.subjects.get(*k) {
            data.insert((*k).to_owned(), Value::String(v.clone()));
        }
    }
    for k in details {
        if let Some(v) = r.details.get(*k) {
            data.insert((*k).to_owned(), unix_to_rfc3339(k, v));
        }
    }
    Some(FeedEvent {
        seq,
        kind,
        at: r.time,
        tenant_id: r.tenant_id,
        appliance_id: r
            .subjects
            .get("appliance_id")
            .and_then(|s| Uuid::try_parse(s).ok()),
        data,
    })
}

/// Times that records keep in Unix seconds are shown in RFC 3339, as everywhere else
/// in the API.
fn unix_to_rfc3339(key: &str, v: &Value) -> Value {
    if !matches!(key, "expires_at" | "last_seen_at") {
        return v.clone();
    }
    v.as_i64()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or_else(|| v.clone(), Value::String)
}

/// Where a reader of the feed is: after the record with this sequence number (0: at
/// the start). Opaque to clients: `base64url("ev1" ‖ seq as 8 bytes, big-endian)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub u64);

/// The version prefix of a cursor's bytes.
const CURSOR_V1: &[u8; 3] = b"ev1";

impl Cursor {
    /// The start of the feed.
    pub const START: Cursor = Cursor(0);

    /// The opaque form clients pass back as `after`.
    pub fn encode(self) -> String {
        let mut bytes = CURSOR_V1.to_vec();
        bytes.extend_from_slice(&self.0.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a cursor; `None` for anything this version did not write.
    pub fn parse(s: &str) -> Option<Cursor> {
        if s.len() > 32 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let seq = bytes.strip_prefix(CURSOR_V1.as_slice())?;
        Some(Cursor(u64::from_be_bytes(seq.try_into().ok()?)))
    }
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    /// Where the next page starts (the same cursor when there was nothing new).
    pub next: Cursor,
}

/// Audit sequence numbers one page walks at most while it finds no event (records of
/// other actions, such as check-ins, in between), in windows of
/// `alga_audit::store::MAX_SCAN`: a page comes back empty with its `next` moved only
/// after a stretch this long without an event.
pub const MAX_EMPTY_SCAN: u64 = 10 * alga_audit::store::MAX_SCAN;

/// Up to `limit` events after `after`, in the audit chain's order, on any client (a
/// pooled connection or a transaction). A page can hold fewer than `limit` events
/// while more follow (failed requests share their actions with events and are
/// skipped); it is empty with `next == after` exactly when the reader is at the end.
pub async fn read_page<C>(c: &C, after: Cursor, limit: u32) -> Result<FeedPage, Error>
where
    C: tokio_postgres::GenericClient + Sync,
{
    let mut from = after.0;
    loop {
        let scan =
            alga_audit::scan_actions(c, from, &FEED_ACTIONS, limit, alga_audit::store::MAX_SCAN)
                .await?;
        if from > scan.head {
            return Err(Error::FeedBeyondHead);
        }
        let mut events = Vec::with_capacity(scan.records.len());
        for chained in &scan.records {
            let record = chained.record()?;
            if let Some(e) = event_of(chained.seq, &record) {
                events.push(e);
            }
        }
        let next = Cursor(scan.scanned_to);
        // Each scan reads its own snapshot; the chain only grows, so going on from
        // `scanned_to` in a later one neither skips nor repeats.
        if !events.is_empty()
            || scan.scanned_to >= scan.head
            || scan.scanned_to - after.0 >= MAX_EMPTY_SCAN
        {
            return Ok(FeedPage { events, next });
        }
        from = scan.scanned_to;
    }
}

/// `GET /events`: a page of the feed from the pool.
pub async fn page(pool: &Pool, after: Cursor, limit: u32) -> Result<FeedPage, ApiError> {
    let conn = pool.get().await.map_err(db::DbError::from)?;
    read_page(&**conn, after, limit).await.map_err(|e| match e {
        Error::FeedBeyondHead => ApiError::Validation(
            [(
                "after".to_owned(),
                "is beyond the end of the feed: pass the `next` of a previous page".to_owned(),
            )]
            .into_iter()
            .collect(),
        ),
        Error::AuditLog(e) => ApiError::internal(format!("event feed: {e}")),
        other => ApiError::from(other),
    })
}

/// Records `appliance.overdue` for every active appliance of a paid edition that is
/// overdue at `now` (see `lifecycle::health_cutoffs`; stale ones included) and has not
/// been recorded for its current episode; returns how many were recorded.
///
/// Each batch is one transaction: the appliances' episode marks and their audit
/// records commit together. Safe to run on several gateways at once: the mark is set
/// by an `UPDATE` that re-checks it under the row's lock, so an appliance's episode
/// is recorded once.
#[instrument(skip_all)]
pub async fn sweep_overdue(
    pool: &Pool,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<u64, ApiError> {
    let cutoffs = super::lifecycle::health_cutoffs(policy, now);
    let ctx = Ctx {
        request_id: format!("overdue-sweep-{}", now.unix_timestamp()),
        source: None,
        actor_role: "system",
        actor_id: Some("overdue-sweep".to_owned()),
        now,
    };
    let mut total = 0;
    loop {
        let mut conn = pool.get().await.map_err(db::DbError::from)?;
        let tx = conn.transaction().await.map_err(db::DbError::from)?;
        let marked = appliances::mark_overdue(&tx, &cutoffs, OVERDUE_BATCH).await?;
        for o in &marked {
            audit::append(
                &tx,
                ctx.record(actions::APPLIANCE_OVERDUE)?
                    .tenant(o.tenant_id)
                    .subject("appliance_id", o.appliance_id)
                    .detail("edition", o.edition.as_str())
                    .detail("last_seen_at", o.last_seen_at.unix_timestamp()),
            )
            .await?;
        }
        tx.commit().await.map_err(db::DbError::from)?;
        let n = marked.len() as u64;
        total += n;
        if n > 0 {
            tracing::info!(appliances = n, "appliances recorded overdue");
        }
        if i64::try_from(n).unwrap_or(i64::MAX) < OVERDUE_BATCH {
            return Ok(total);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use alga_audit::{Action, Actor, NewRecord};
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn record(
        action: &str,
        f: impl FnOnce(alga_audit::record::RecordBuilder) -> alga_audit::record::RecordBuilder,
    ) -> Record {
        let b = NewRecord::builder(
            datetime!(2030-01-02 03:04:05 UTC),
            Actor::client("store", "spiffe://alga.test/service/nm-store").unwrap(),
            Action::new(action).unwrap(),
        )
        .tenant(Uuid::nil())
        .request_id("req-1")
        .source("192.0.2.1".parse().unwrap());
        f(b).build().unwrap().record().clone()
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        for seq in [0, 1, 41, u64::MAX] {
            let c = Cursor(seq);
            assert_eq!(Cursor::parse(&c.encode()), Some(c));
        }
        for bad in [
            "",
            "42",
            "ZXYxAAAAAAAAACo=", // padded
            "ZXYyAAAAAAAAACo",  // "ev2"
            "ZXYxAAAAAAAAAA",   // short
            "ZXYxAAAAAAAAACoA", // long
            "ZXYx!AAAAAAAACo",  // not base64url
            &"A".repeat(64),
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Cursor(42).encode(), "ZXYxAAAAAAAAACo");
    }

    #[test]
    fn records_map_to_events() {
        let a = Uuid::from_u128(7);
        let table: Vec<(Record, Option<(EventKind, Value)>)> = vec![
            (
                record(actions::TENANT_REGISTER, |r| {
                    r.subject("code_id", "K7M2Q9XD4T").detail("edition", "pro")
                }),
                Some((
                    EventKind::TenantRegistered,
                    json!({"code_id": "K7M2Q9XD4T", "edition": "pro"}),
                )),
            ),
            (
                record(actions::TENANT_REGISTER, |r| r.failure("tenant_exists")),
                None,
            ),
            (
                record(actions::CODE_MINT, |r| {
                    r.subject("code_id", "K7M2Q9XD4T")
                        .detail("expires_at", 1_900_000_000)
                        .detail("key_version", 1)
                        .detail("mail", "reissue")
                }),
                Some((
                    EventKind::CodeIssued,
                    json!({"code_id": "K7M2Q9XD4T", "expires_at": "2030-03-17T17:46:40Z", "mail": "reissue"}),
                )),
            ),
            (record(actions::CODE_REISSUE, |r| r), None),
            (
                record(actions::CODE_REDEEM, |r| {
                    r.subject("code_id", "K7M2Q9XD4T")
                        .subject("appliance_id", a)
                        .subject("jti", "j-1")
                        .detail("retry", false)
                        .detail("edition", "pro")
                }),
                Some((
                    EventKind::CodeRedeemed,
                    json!({"code_id": "K7M2Q9XD4T", "edition": "pro"}),
                )),
            ),
            (
                record(actions::CODE_REDEEM, |r| r.detail("retry", true)),
                None,
            ),
            (
                record(actions::ENTITLEMENT_CHANGE, |r| {
                    r.detail("from", "pro")
                        .detail("to", "pro")
                        .detail("changed", false)
                }),
                None,
            ),
            (
                record(actions::MAIL_FAILED, |r| {
                    r.subject("mail_id", a)
                        .detail("kind", "registration")
                        .detail("attempt", 8)
                        .detail("reason", "550 no such user")
                        .failure("mail_failed")
                }),
                Some((
                    EventKind::MailFailed,
                    json!({"mail_id": a.to_string(), "kind": "registration", "attempt": 8}),
                )),
            ),
            (record(actions::APPLIANCE_CHECK_IN, |r| r), None),
            (record(actions::REFUSED_SUMMARY, |r| r), None),
        ];
        for (r, want) in table {
            let got = event_of(9, &r).map(|e| (e.kind, Value::Object(e.data)));
            assert_eq!(got, want, "{}", r.action);
        }
        let e = event_of(
            3,
            &record(actions::APPLIANCE_REVOKE, |r| {
                r.subject("appliance_id", a).detail("reason", "stolen")
            }),
        )
        .unwrap();
        assert_eq!(
            (e.seq, e.kind, e.appliance_id, e.tenant_id),
            (3, EventKind::ApplianceRevoked, Some(a), Some(Uuid::nil()))
        );
        assert_eq!(e.at, datetime!(2030-01-02 03:04:05 UTC));
    }

    #[test]
    fn every_feed_action_has_a_type() {
        let kinds: std::collections::HashSet<_> = FEED_ACTIONS
            .iter()
            .filter_map(|a| {
                let r = record(a, |r| r);
                event_of(1, &r).map(|e| e.kind.as_str())
            })
            .collect();
        // mail.failed maps whatever its outcome; the others on success, as built here.
        assert_eq!(kinds.len(), FEED_ACTIONS.len());
        for t in alga_protocol::api::event_type::ALL {
            assert!(kinds.contains(t), "{t}");
        }
    }
}
