//! All SQL of the audit log: `append`, the sequencer's reads and writes, and the
//! queries behind `GET /audit/events` and `GET /audit/checkpoints`.
//!
//! Every function takes a [`GenericClient`], so it runs on a pooled connection or
//! inside the caller's transaction alike. None of them commits.
#![allow(
    clippy::disallowed_methods,
    reason = "the audit store: SQL for the audit crate's own tables"
)]

use alga_protocol::issuer_api::SignedCheckpoint;
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, IsolationLevel};
use uuid::Uuid;

use crate::canonical;
use crate::error::AuditError;
use crate::record::{Action, NewRecord, Record};

/// The id of an appended, not yet chained, record (`audit_events.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EventId(pub i64);

/// The append statement and its parameter types (one statement, shared by [`append`]
/// and [`append_cached`]).
const APPEND_SQL: &str = "INSERT INTO audit_events (recorded_at, tenant_id, action, record) \
                          VALUES ($1, $2, $3, $4) RETURNING id";
const APPEND_TYPES: [Type; 4] = [Type::TIMESTAMPTZ, Type::UUID, Type::TEXT, Type::BYTEA];

/// Appends `record` in the caller's transaction and returns its event id.
///
/// Call it inside the transaction that makes the change the record describes, before
/// committing: the record then commits with the change or not at all. If it fails,
/// roll back and fail the action (fail-closed). It never commits and takes no lock
/// that another business transaction waits for: the record is chained after commit,
/// within milliseconds, by the [`Sequencer`](crate::Sequencer).
///
/// This form takes any tokio-postgres client and sends the statement unprepared (parsed
/// and planned each time). On a deadpool connection or transaction use
/// [`append_cached`], which prepares it once per connection.
pub async fn append<C>(client: &C, record: &NewRecord) -> Result<EventId, AuditError>
where
    C: GenericClient + Sync,
{
    let r = record.record();
    let action = r.action.as_str();
    let bytes = record.canonical_bytes();
    let row = client
        .query_typed_one(
            APPEND_SQL,
            &[
                (&r.time, APPEND_TYPES[0].clone()),
                (&r.tenant_id, APPEND_TYPES[1].clone()),
                (&action, APPEND_TYPES[2].clone()),
                (&bytes, APPEND_TYPES[3].clone()),
            ],
        )
        .await?;
    Ok(EventId(row.try_get(0)?))
}

/// [`append`] on a deadpool connection or transaction (`append_cached(&tx, &record)`),
/// through the connection's statement cache: one round trip, and Postgres neither
/// parses nor plans the insert again. The same rules as [`append`].
pub async fn append_cached<C>(client: &C, record: &NewRecord) -> Result<EventId, AuditError>
where
    C: deadpool_postgres::GenericClient,
{
    let r = record.record();
    let action = r.action.as_str();
    let bytes = record.canonical_bytes();
    let statement = client
        .prepare_typed_cached(APPEND_SQL, &APPEND_TYPES)
        .await?;
    let row = client
        .query_one(&statement, &[&r.time, &r.tenant_id, &action, &bytes])
        .await?;
    Ok(EventId(row.try_get(0)?))
}

/// A record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedRecord {
    pub seq: u64,
    pub event_id: EventId,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    /// When the sequencer chained it (database clock).
    pub chained_at: OffsetDateTime,
    /// The canonical bytes, exactly as stored and hashed.
    pub canonical: Vec<u8>,
}

impl ChainedRecord {
    /// Decodes the canonical bytes.
    pub fn record(&self) -> Result<Record, AuditError> {
        Record::from_canonical(&self.canonical)
    }

    /// The export line of this record (see `FORMAT.md`): the canonical bytes appear
    /// verbatim as the `record` value, or, when they are not a one-line JSON object
    /// (damaged), in lowercase hex as `record_hex`. Never re-encodes.
    pub fn to_json_line(&self) -> Result<String, AuditError> {
        serde_json::to_string(self).map_err(|e| AuditError::Corrupt(e.to_string()))
    }

    /// Whether the stored bytes go into an export line verbatim (`"record":…`) rather
    /// than in hex (`"record_hex":…`); see [`verbatim_json`].
    pub fn is_verbatim(&self) -> bool {
        verbatim_json(&self.canonical).is_some()
    }
}

/// The stored bytes as a JSON value to embed verbatim in an export line, if they can
/// be: UTF-8 text of exactly one JSON object, with no space before or after it and no
/// line break (CR or LF) anywhere, so that the line stays one line and a verifier
/// reads back exactly these bytes. Every canonical record qualifies; anything else is
/// exported as `record_hex` (see `FORMAT.md`).
pub(crate) fn verbatim_json(bytes: &[u8]) -> Option<&RawValue> {
    if bytes.first() != Some(&b'{') || bytes.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let raw: &RawValue = serde_json::from_str(text).ok()?;
    (raw.get().len() == text.len()).then_some(raw)
}

/// `{"type":"record","seq":…,"event_id":…,"prev_hash":hex,"hash":hex,"chained_at":…,
/// "record":{canonical bytes verbatim}}`: the export line and the `GET /audit/events`
/// item. Stored bytes that cannot be embedded verbatim ([`verbatim_json`]: not UTF-8
/// JSON, not an object, spaces around it, a line break) end the line with
/// `"record_hex":"<lowercase hex of the stored bytes>"` instead of `"record":…`, so
/// a damaged record is still exported, losslessly, for a verifier to name. Never
/// re-encodes, never fails.
impl Serialize for ChainedRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            seq: u64,
            event_id: i64,
            prev_hash: String,
            hash: String,
            chained_at: String,
            record: &'a RawValue,
        }
        #[derive(Serialize)]
        struct HexLine {
            #[serde(rename = "type")]
            kind: &'static str,
            seq: u64,
            event_id: i64,
            prev_hash: String,
            hash: String,
            chained_at: String,
            record_hex: String,
        }
        match verbatim_json(&self.canonical) {
            Some(raw) => Line {
                kind: "record",
                seq: self.seq,
                event_id: self.event_id.0,
                prev_hash: hex::encode(self.prev_hash),
                hash: hex::encode(self.hash),
                chained_at: canonical::format_time(self.chained_at),
                record: raw,
            }
            .serialize(s),
            None => HexLine {
                kind: "record",
                seq: self.seq,
                event_id: self.event_id.0,
                prev_hash: hex::encode(self.prev_hash),
                hash: hex::encode(self.hash),
                chained_at: canonical::format_time(self.chained_at),
                record_hex: hex::encode(&self.canonical),
            }
            .serialize(s),
        }
    }
}

/// Filters of `GET /audit/events` and `alga-audit export`. Pages go by sequence
/// number: ask again with `after_seq` = the last `seq` you got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only records with a larger sequence number (0: from the start).
    pub after_seq: u64,
    /// Only this tenant's records.
    pub tenant_id: Option<Uuid>,
    /// Only this action.
    pub action: Option<Action>,
    /// Only records whose own time is at or after this.
    pub since: Option<OffsetDateTime>,
    /// At most this many (capped at [`MAX_PAGE`]); 0 means [`MAX_PAGE`].
    pub limit: u32,
}

/// The largest page [`list_events`] returns.
pub const MAX_PAGE: u32 = 10_000;

/// Chained records matching `q`, in sequence order.
pub async fn list_events<C>(client: &C, q: &EventQuery) -> Result<Vec<ChainedRecord>, AuditError>
where
    C: GenericClient + Sync,
{
    let limit = i64::from(if q.limit == 0 {
        MAX_PAGE
    } else {
        q.limit.min(MAX_PAGE)
    });
    let after = to_i64(q.after_seq)?;
    let action = q.action.as_ref().map(Action::as_str);
    let rows = client
        .query_typed(
            "SELECT c.seq, c.event_id, c.prev_hash, c.hash, c.chained_at, e.record \
             FROM audit_chain c JOIN audit_events e ON e.id = c.event_id \
             WHERE c.seq > $1 \
               AND ($2::uuid IS NULL OR e.tenant_id = $2) \
               AND ($3::text IS NULL OR e.action = $3) \
               AND ($4::timestamptz IS NULL OR e.recorded_at >= $4) \
             ORDER BY c.seq LIMIT $5",
            &[
                (&after, Type::INT8),
                (&q.tenant_id, Type::UUID),
                (&action, Type::TEXT),
                (&q.since, Type::TIMESTAMPTZ),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(chained_from_row).collect()
}

/// What [`scan_actions`] read: the chained records of the asked actions in a range of
/// sequence numbers, and how far that range went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionScan {
    /// The newest chained sequence number, read in the same snapshot as `records`.
    pub head: u64,
    /// Records of the asked actions with `after_seq < seq <= scanned_to`, in sequence
    /// order: all of them, none left out.
    pub records: Vec<ChainedRecord>,
    /// The last sequence number the scan covered (`after_seq` when there was nothing
    /// after it). The next scan starts after it.
    pub scanned_to: u64,
}

/// The most sequence numbers one [`scan_actions`] walks (records of other actions
/// included), so that a page over a stretch of unrelated records stays cheap.
pub const MAX_SCAN: u64 = 10_000;

/// Chained records whose action is one of `actions`, after `after_seq`, in sequence
/// order: at most `limit` of them, within at most `window` sequence numbers (capped at
/// [`MAX_SCAN`]). The store's event feed reads the log through this.
///
/// The chain is gap-free and append-only: every sequence number up to `head` exists
/// and never changes, so a range up to `head` read once is final, and scanning on from
/// `scanned_to` neither misses nor repeats a record, whatever order the business
/// transactions committed in (the sequencer chained them in a safe order). `head` is
/// read in the same statement, hence the same snapshot, as the records.
pub async fn scan_actions<C>(
    client: &C,
    after_seq: u64,
    actions: &[&str],
    limit: u32,
    window: u64,
) -> Result<ActionScan, AuditError>
where
    C: GenericClient + Sync,
{
    let limit = i64::from(limit.clamp(1, MAX_PAGE));
    let window = window.clamp(1, MAX_SCAN);
    let window_sql = to_i64(window)?;
    let after = to_i64(after_seq)?;
    let actions: Vec<&str> = actions.to_vec();
    let rows = client
        .query_typed(
            "WITH h AS (SELECT coalesce(max(seq), 0) AS head FROM audit_chain) \
             SELECT h.head, r.seq, r.event_id, r.prev_hash, r.hash, r.chained_at, r.record \
             FROM h LEFT JOIN LATERAL ( \
                 SELECT c.seq, c.event_id, c.prev_hash, c.hash, c.chained_at, e.record \
                 FROM audit_chain c JOIN audit_events e ON e.id = c.event_id \
                 WHERE c.seq > $1 AND c.seq <= least(h.head, $1 + $2) \
                   AND e.action = ANY($3) \
                 ORDER BY c.seq LIMIT $4) r ON true \
             ORDER BY r.seq",
            &[
                (&after, Type::INT8),
                (&window_sql, Type::INT8),
                (&actions, Type::TEXT_ARRAY),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    let head = match rows.first() {
        Some(row) => to_u64(row.try_get(0)?)?,
        None => return Err(AuditError::Corrupt("the head query returned no row".into())),
    };
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: Option<i64> = row.try_get(1)?;
        if seq.is_none() {
            continue;
        }
        records.push(ChainedRecord {
            seq: to_u64(row.try_get(1)?)?,
            event_id: EventId(row.try_get(2)?),
            prev_hash: hash32(row.try_get(3)?)?,
            hash: hash32(row.try_get(4)?)?,
            chained_at: row.try_get(5)?,
            canonical: row.try_get(6)?,
        });
    }
    let full = i64::try_from(records.len()).unwrap_or(i64::MAX) >= limit;
    let scanned_to = match records.last() {
        Some(last) if full => last.seq,
        _ => head.min(after_seq.saturating_add(window)).max(after_seq),
    };
    Ok(ActionScan {
        head,
        records,
        scanned_to,
    })
}

pub(crate) fn chained_from_row(row: &tokio_postgres::Row) -> Result<ChainedRecord, AuditError> {
    Ok(ChainedRecord {
        seq: to_u64(row.try_get(0)?)?,
        event_id: EventId(row.try_get(1)?),
        prev_hash: hash32(row.try_get(2)?)?,
        hash: hash32(row.try_get(3)?)?,
        chained_at: row.try_get(4)?,
        canonical: row.try_get(5)?,
    })
}

/// Stored checkpoints with a sequence number above `after_seq`, oldest first, at most
/// `limit` (capped at [`MAX_PAGE`]; 0 means [`MAX_PAGE`]).
pub async fn list_checkpoints<C>(
    client: &C,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<SignedCheckpoint>, AuditError>
where
    C: GenericClient + Sync,
{
    let limit = i64::from(if limit == 0 {
        MAX_PAGE
    } else {
        limit.min(MAX_PAGE)
    });
    let after = to_i64(after_seq)?;
    let rows = client
        .query_typed(
            "SELECT seq, head_hash, signed_at, kid, signature FROM audit_checkpoints \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[(&after, Type::INT8), (&limit, Type::INT8)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(SignedCheckpoint {
                sequence: to_u64(row.try_get(0)?)?,
                head_hash: hex::encode(hash32(row.try_get(1)?)?),
                signed_at: row.try_get(2)?,
                kid: row.try_get(3)?,
                signature: row.try_get(4)?,
            })
        })
        .collect()
}

/// Every stored checkpoint, oldest first, read page by page (call it in a
/// [`snapshot`] for a consistent set).
pub async fn all_checkpoints<C>(client: &C) -> Result<Vec<SignedCheckpoint>, AuditError>
where
    C: GenericClient + Sync,
{
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |c: &SignedCheckpoint| c.sequence);
        let page = list_checkpoints(client, after, 0).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Opens a `REPEATABLE READ READ ONLY` transaction: one consistent snapshot of the
/// log for the readers that take several statements (verify, export, reconcile),
/// while the service keeps writing.
pub(crate) async fn snapshot(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, AuditError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The last chained sequence number, 0 for an empty chain: where `alga-audit tail`
/// starts counting back from.
pub async fn last_seq<C>(client: &C) -> Result<u64, AuditError>
where
    C: GenericClient + Sync,
{
    let row = client
        .query_one("SELECT coalesce(max(seq), 0) FROM audit_chain", &[])
        .await?;
    to_u64(row.try_get(0)?)
}

/// The last chained record: where the sequencer continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    /// `(xid, id)` of its event: the sequencer's cursor.
    pub xid: u64,
    pub event_id: i64,
}

impl Head {
    pub(crate) const GENESIS: Head = Head {
        seq: 0,
        hash: canonical::GENESIS_PREV_HASH,
        xid: 0,
        event_id: 0,
    };
}

pub(crate) async fn head<C: GenericClient + Sync>(client: &C) -> Result<Head, AuditError> {
    let row = client
        .query_typed_opt(
            "SELECT c.seq, c.hash, e.xid::text, e.id FROM audit_chain c \
             JOIN audit_events e ON e.id = c.event_id ORDER BY c.seq DESC LIMIT 1",
            &[],
        )
        .await?;
    match row {
        None => Ok(Head::GENESIS),
        Some(row) => Ok(Head {
            seq: to_u64(row.try_get(0)?)?,
            hash: hash32(row.try_get(1)?)?,
            xid: parse_xid(row.try_get(2)?)?,
            event_id: row.try_get(3)?,
        }),
    }
}

/// An event ready to chain.
#[derive(Debug)]
pub(crate) struct FinalEvent {
    pub id: i64,
    pub xid: u64,
    pub record: Vec<u8>,
}

/// Up to `limit` events after the cursor whose transactions have all ended, in
/// `(xid, id)` order. `xid < xmin` of the statement's own snapshot means the
/// inserting transaction is over: committed rows are visible in this very snapshot,
/// and an aborted one's rows will never appear. Nothing can later show up before the
/// cursor, so chaining in this order leaves no gap.
///
/// Prepared once per connection (the sequencer runs it every poll).
pub(crate) async fn final_events_after<C: deadpool_postgres::GenericClient>(
    client: &C,
    xid: u64,
    event_id: i64,
    limit: i64,
) -> Result<Vec<FinalEvent>, AuditError> {
    let xid = xid.to_string();
    let statement = client
        .prepare_typed_cached(
            // The text column gets its own name: a bare `ORDER BY xid` would bind to an
            // output column called `xid` (the cast) and sort transaction ids as text,
            // putting 100000 before 99999 and chaining out of order.
            "SELECT e.id, e.xid::text AS xid_text, e.record FROM audit_events e \
             WHERE (e.xid, e.id) > ($1::text::xid8, $2) \
               AND e.xid < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY e.xid, e.id LIMIT $3",
            &[Type::TEXT, Type::INT8, Type::INT8],
        )
        .await?;
    let rows = client.query(&statement, &[&xid, &event_id, &limit]).await?;
    rows.iter()
        .map(|row| {
            Ok(FinalEvent {
                id: row.try_get(0)?,
                xid: parse_xid(row.try_get(1)?)?,
                record: row.try_get(2)?,
            })
        })
        .collect()
}

/// Inserts chain rows, and the tree nodes they complete, in one statement (atomic):
/// the chain and the tree never disagree on how far they go. A conflict on `seq`,
/// `event_id` or a node means another sequencer got there first.
pub(crate) async fn insert_chain<C: deadpool_postgres::GenericClient>(
    client: &C,
    seqs: &[i64],
    event_ids: &[i64],
    prev_hashes: &[&[u8]],
    hashes: &[&[u8]],
    nodes: &crate::tree::NodeColumns,
) -> Result<(), AuditError> {
    let statement = client
        .prepare_typed_cached(
            "WITH chained AS ( \
                 INSERT INTO audit_chain (seq, event_id, prev_hash, hash) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[])) \
             INSERT INTO audit_tree_nodes (level, idx, hash) \
             SELECT * FROM unnest($5::smallint[], $6::bigint[], $7::bytea[])",
            &[
                Type::INT8_ARRAY,
                Type::INT8_ARRAY,
                Type::BYTEA_ARRAY,
                Type::BYTEA_ARRAY,
                Type::INT2_ARRAY,
                Type::INT8_ARRAY,
                Type::BYTEA_ARRAY,
            ],
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &seqs,
                &event_ids,
                &prev_hashes,
                &hashes,
                &nodes.levels,
                &nodes.idxs,
                &nodes.hashes,
            ],
        )
        .await?;
    Ok(())
}

pub(crate) async fn insert_checkpoint<C: GenericClient + Sync>(
    client: &C,
    cp: &SignedCheckpoint,
) -> Result<bool, AuditError> {
    let seq = to_i64(cp.sequence)?;
    let head = hex::decode(&cp.head_hash)
        .map_err(|_| AuditError::Signer("checkpoint head hash is not hex".into()))?;
    let n = client
        .execute_typed(
            "INSERT INTO audit_checkpoints (seq, head_hash, signed_at, kid, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
            &[
                (&seq, Type::INT8),
                (&head, Type::BYTEA),
                (&cp.signed_at, Type::TIMESTAMPTZ),
                (&cp.kid, Type::TEXT),
                (&cp.signature, Type::TEXT),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The newest checkpoint's sequence number and age in seconds (database clock).
pub(crate) async fn last_checkpoint<C: GenericClient + Sync>(
    client: &C,
) -> Result<Option<(u64, f64)>, AuditError> {
    let row = client
        .query_typed_opt(
            "SELECT seq, extract(epoch FROM now() - stored_at)::float8 \
             FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some((to_u64(row.try_get(0)?)?, row.try_get(1)?))),
    }
}

pub(crate) fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], AuditError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| AuditError::Corrupt(format!("a hash of {} bytes", bytes.len())))
}

pub(crate) fn to_u64(v: i64) -> Result<u64, AuditError> {
    u64::try_from(v).map_err(|_| AuditError::Corrupt(format!("negative sequence number {v}")))
}

pub(crate) fn to_i64(v: u64) -> Result<i64, AuditError> {
    i64::try_from(v).map_err(|_| AuditError::Corrupt(format!("sequence number {v} too large")))
}

fn parse_xid(text: String) -> Result<u64, AuditError> {
    text.parse()
        .map_err(|_| AuditError::Corrupt(format!("transaction id {text:?}")))
}
