//! The audit log as a transparency log, on the operator's side: the RFC 6962 tree
//! over the chained records (`FORMAT.md`, "Tree"), built from Postgres, and what the
//! gateway serves from it (c2sp.org/tlog-tiles tiles, proofs, checkpoints).
//!
//! - Leaf `seq − 1` is the record `seq`; its entry is SHA-256 of the stored bytes, so
//!   the level-0 tiles and entry bundles are computed from `audit_events` on read.
//! - `audit_tree_nodes` stores the complete subtrees of height 8, 16, …, written by the
//!   sequencer in the same statement as the chain rows they cover.
//! - `audit_log_checkpoints` holds the signed notes; `audit_log_cosignatures` the
//!   witnesses' lines.
//!
//! Every proof this module returns was computed from tiles authenticated against the
//! signed root first (`alga_tlog::tiles`): a damaged database yields an error, never
//! a proof that does not verify. The reader's side (and the witness) is `alga_tlog`.
#![allow(
    clippy::disallowed_methods,
    reason = "the audit crate's own tables: the tree's stored nodes"
)]

use std::path::Path;

use alga_tlog::tiles::{self, encode_entries};
use alga_tlog::{
    Hash, InclusionProof, LogKeys, Node, ProvenRecord, TILE_WIDTH, TenantAudit, TilePath, TileSet,
    TlogError, TreeEdge, entry_of, leaf_hash,
};
use serde::Serialize;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use tracing::info;
use uuid::Uuid;

use crate::error::AuditError;
use crate::store::{hash32, to_i64, to_u64};

/// A signed checkpoint of the tree, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCheckpoint {
    pub size: u64,
    pub root: [u8; 32],
    pub kid: String,
    /// The note as the log key signed it.
    pub note: String,
    /// The witnesses' cosignature lines collected for it, by witness name.
    pub cosignatures: Vec<String>,
}

impl LogCheckpoint {
    /// The note with every cosignature appended: what readers are served.
    pub fn cosigned(&self) -> String {
        let mut out = self.note.clone();
        for line in &self.cosignatures {
            out.push_str(line);
        }
        out
    }
}

/// Most records per page of [`tenant_audit`].
pub const MAX_TENANT_PAGE: u32 = 1000;

/// The leaf hashes of records `first_seq ..= last_seq` (and their entries).
///
/// Each record is fetched by its event id (`LATERAL … OFFSET 0` keeps Postgres from
/// turning the lookups into a join), so that reading a range costs what the range
/// holds, whatever the log's size. As a plain join, a range of 4,096 records of a log
/// of 110,000 was planned as a hash join over the whole of `audit_events` (33 ms
/// instead of 13). [`chain_rows`] reads the same way.
async fn leaves<C: GenericClient + Sync>(
    client: &C,
    first_seq: u64,
    last_seq: u64,
) -> Result<Vec<[u8; 32]>, AuditError> {
    if last_seq < first_seq {
        return Ok(Vec::new());
    }
    let rows = client
        .query_typed(
            "SELECT c.seq, e.record FROM audit_chain c CROSS JOIN LATERAL (SELECT record \
             FROM audit_events WHERE id = c.event_id OFFSET 0) e \
             WHERE c.seq BETWEEN $1 AND $2 ORDER BY c.seq",
            &[
                (&to_i64(first_seq)?, Type::INT8),
                (&to_i64(last_seq)?, Type::INT8),
            ],
        )
        .await?;
    let want = last_seq - first_seq + 1;
    if rows.len() as u64 != want {
        return Err(AuditError::Corrupt(format!(
            "records {first_seq}..={last_seq}: {} chained, expected {want}",
            rows.len()
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let seq = to_u64(row.try_get(0)?)?;
            if seq != first_seq + i as u64 {
                return Err(AuditError::Corrupt(format!(
                    "a gap in the chain before {seq}"
                )));
            }
            let record: Vec<u8> = row.try_get(1)?;
            Ok(entry_of(&record))
        })
        .collect()
}

/// Stored nodes of `level`, indexes `first .. first + count`, all present.
async fn nodes<C: GenericClient + Sync>(
    client: &C,
    level: u8,
    first: u64,
    count: u64,
) -> Result<Vec<Hash>, AuditError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let rows = client
        .query_typed(
            "SELECT idx, hash FROM audit_tree_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 \
             ORDER BY idx",
            &[
                (&i16::from(level), Type::INT2),
                (&to_i64(first)?, Type::INT8),
                (&to_i64(first + count)?, Type::INT8),
            ],
        )
        .await?;
    if rows.len() as u64 != count {
        return Err(AuditError::Corrupt(format!(
            "tree nodes of level {level} from {first}: {} stored, expected {count}",
            rows.len()
        )));
    }
    rows.iter()
        .map(|row| Ok(Hash(hash32(row.try_get(1)?)?)))
        .collect()
}

/// Rebuilds the writer's right edge for a chain of `size` records. A log chained
/// before the tree existed (nodes missing) has its nodes written first, from the
/// records, in one pass.
pub(crate) async fn load_edge<C: GenericClient + Sync>(
    client: &C,
    size: u64,
) -> Result<TreeEdge, AuditError> {
    let expected: u64 = (1..=6u32).map(|l| size >> (8 * l)).sum();
    let row = client
        .query_typed_one("SELECT count(*) FROM audit_tree_nodes", &[])
        .await?;
    let stored = to_u64(row.try_get(0)?)?;
    if stored < expected {
        backfill(client, size).await?;
    } else if stored > expected {
        return Err(AuditError::Corrupt(format!(
            "{stored} tree nodes stored for a chain of {size} records (expected {expected})"
        )));
    }
    let mut tiles = Vec::new();
    for (level, first, count) in alga_tlog::merkle::partial_tiles(size) {
        let hashes = if level == 0 {
            leaves(client, first + 1, first + count as u64)
                .await?
                .iter()
                .map(leaf_hash)
                .collect()
        } else {
            nodes(client, level, first, count as u64).await?
        };
        tiles.push(hashes);
    }
    Ok(TreeEdge::from_partial_tiles(size, tiles)?)
}

/// Writes the nodes of the first `size` records (a log chained before the tree).
async fn backfill<C: GenericClient + Sync>(client: &C, size: u64) -> Result<(), AuditError> {
    info!(
        records = size,
        "audit tree: building the tree of the records chained before it"
    );
    let mut edge = TreeEdge::new();
    let mut seq = 1u64;
    while seq <= size {
        let last = (seq + 9_999).min(size);
        let mut new = Vec::new();
        for entry in leaves(client, seq, last).await? {
            edge.push(leaf_hash(&entry), &mut new);
        }
        insert_nodes(client, &new).await?;
        seq = last + 1;
    }
    Ok(())
}

async fn insert_nodes<C: GenericClient + Sync>(client: &C, new: &[Node]) -> Result<(), AuditError> {
    if new.is_empty() {
        return Ok(());
    }
    let NodeColumns {
        levels,
        idxs,
        hashes,
    } = NodeColumns::of(new)?;
    client
        .execute_typed(
            "INSERT INTO audit_tree_nodes (level, idx, hash) \
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[]) \
             ON CONFLICT (level, idx) DO NOTHING",
            &[
                (&levels, Type::INT2_ARRAY),
                (&idxs, Type::INT8_ARRAY),
                (&hashes, Type::BYTEA_ARRAY),
            ],
        )
        .await?;
    Ok(())
}

/// New nodes as columns, for inserting with `unnest`.
#[derive(Debug, Default)]
pub(crate) struct NodeColumns {
    pub levels: Vec<i16>,
    pub idxs: Vec<i64>,
    pub hashes: Vec<Vec<u8>>,
}

impl NodeColumns {
    pub(crate) fn of(new: &[Node]) -> Result<NodeColumns, AuditError> {
        Ok(NodeColumns {
            levels: new.iter().map(|n| i16::from(n.level)).collect(),
            idxs: new
                .iter()
                .map(|n| to_i64(n.index))
                .collect::<Result<_, _>>()?,
            hashes: new.iter().map(|n| n.hash.0.to_vec()).collect(),
        })
    }
}

/// The newest signed checkpoint, with its cosignatures appended.
pub async fn latest_checkpoint<C: GenericClient + Sync>(
    client: &C,
) -> Result<Option<LogCheckpoint>, AuditError> {
    checkpoint_where(client, "ORDER BY size DESC LIMIT 1", None).await
}

/// The signed checkpoint of exactly `size` records, if one was stored.
pub async fn checkpoint_of_size<C: GenericClient + Sync>(
    client: &C,
    size: u64,
) -> Result<Option<LogCheckpoint>, AuditError> {
    checkpoint_where(client, "WHERE size = $1", Some(to_i64(size)?)).await
}

async fn checkpoint_where<C: GenericClient + Sync>(
    client: &C,
    clause: &str,
    size: Option<i64>,
) -> Result<Option<LogCheckpoint>, AuditError> {
    let sql = format!("SELECT size, root, kid, note FROM audit_log_checkpoints {clause}");
    let row = match size {
        Some(s) => client.query_typed_opt(&sql, &[(&s, Type::INT8)]).await?,
        None => client.query_typed_opt(&sql, &[]).await?,
    };
    let Some(row) = row else { return Ok(None) };
    let size: i64 = row.try_get(0)?;
    let cosignatures = client
        .query_typed(
            "SELECT line FROM audit_log_cosignatures WHERE size = $1 ORDER BY witness",
            &[(&size, Type::INT8)],
        )
        .await?
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
    Ok(Some(LogCheckpoint {
        size: to_u64(size)?,
        root: hash32(row.try_get(1)?)?,
        kid: row.try_get(2)?,
        note: row.try_get(3)?,
        cosignatures,
    }))
}

/// A stored tree checkpoint as reconcile compares it with the issuer's signing log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLogCheckpoint {
    pub size: u64,
    /// Root hash, lowercase hex (as the signing log records it).
    pub root_hex: String,
    pub stored_at: time::OffsetDateTime,
}

/// Every stored tree checkpoint, smallest first.
pub async fn list_checkpoints<C: GenericClient + Sync>(
    client: &C,
) -> Result<Vec<StoredLogCheckpoint>, AuditError> {
    client
        .query_typed(
            "SELECT size, root, stored_at FROM audit_log_checkpoints ORDER BY size",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(StoredLogCheckpoint {
                size: to_u64(row.try_get(0)?)?,
                root_hex: hex::encode(hash32(row.try_get(1)?)?),
                stored_at: row.try_get(2)?,
            })
        })
        .collect()
}

/// Stores a signed checkpoint (`false`: one of that size was stored already).
pub(crate) async fn insert_checkpoint<C: GenericClient + Sync>(
    client: &C,
    size: u64,
    root: &[u8; 32],
    kid: &str,
    note: &str,
) -> Result<bool, AuditError> {
    let n = client
        .execute_typed(
            "INSERT INTO audit_log_checkpoints (size, root, kid, note) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (size) DO NOTHING",
            &[
                (&to_i64(size)?, Type::INT8),
                (&root.as_slice(), Type::BYTEA),
                (&kid, Type::TEXT),
                (&note, Type::TEXT),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Stores a witness's cosignature line for the checkpoint of `size` (`false`: that
/// witness's line was stored already).
pub async fn insert_cosignature<C: GenericClient + Sync>(
    client: &C,
    size: u64,
    witness: &str,
    line: &str,
) -> Result<bool, AuditError> {
    let n = client
        .execute_typed(
            "INSERT INTO audit_log_cosignatures (size, witness, line) VALUES ($1, $2, $3) \
             ON CONFLICT (size, witness) DO NOTHING",
            &[
                (&to_i64(size)?, Type::INT8),
                (&witness, Type::TEXT),
                (&line, Type::TEXT),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The size of the newest checkpoint a witness cosigned (0: none).
pub async fn cosigned_size<C: GenericClient + Sync>(
    client: &C,
    witness: &str,
) -> Result<u64, AuditError> {
    let row = client
        .query_typed_one(
            "SELECT coalesce(max(size), 0) FROM audit_log_cosignatures WHERE witness = $1",
            &[(&witness, Type::TEXT)],
        )
        .await?;
    to_u64(row.try_get(0)?)
}

/// The bytes of a tile of the tree of `size` records: hash tiles (32 bytes per
/// hash) and entry bundles. A tile beyond the tree is [`TlogError::BeyondTree`].
pub async fn read_tile<C: GenericClient + Sync>(
    client: &C,
    path: &TilePath,
    size: u64,
) -> Result<Vec<u8>, AuditError> {
    let level = path.level.unwrap_or(0);
    let available = size >> (8 * u32::from(level));
    let first = path.index * TILE_WIDTH as u64;
    if first + path.width as u64 > available {
        return Err(TlogError::BeyondTree(format!("{path} is not in a tree of {size}")).into());
    }
    if level == 0 {
        let entries = leaves(client, first + 1, first + path.width as u64).await?;
        return Ok(match path.level {
            None => encode_entries(&entries),
            Some(_) => entries.iter().flat_map(|e| leaf_hash(e).0).collect(),
        });
    }
    Ok(nodes(client, level, first, path.width as u64)
        .await?
        .iter()
        .flat_map(|h| h.0)
        .collect())
}

/// Runs `op` over tiles read from the database, fetching what it lacks.
async fn with_tiles<C, T>(
    client: &C,
    set: &TileSet,
    size: u64,
    mut op: impl FnMut(&TileSet) -> Result<T, TlogError>,
) -> Result<T, AuditError>
where
    C: GenericClient + Sync,
{
    for _ in 0..8 {
        let result = op(set);
        let wanted = set.take_wanted();
        if wanted.is_empty() {
            return Ok(result?);
        }
        for path in wanted {
            let data = read_tile(client, &path, size).await?;
            set.insert(path, data);
        }
    }
    Err(AuditError::Corrupt(
        "tiles still missing after eight rounds".into(),
    ))
}

fn require_checkpoint(cp: Option<LogCheckpoint>, what: &str) -> Result<LogCheckpoint, AuditError> {
    cp.ok_or_else(|| AuditError::NoCheckpoint(what.to_owned()))
}

/// Record `seq`'s inclusion in the newest checkpoint (`GET /audit/log/proof/{seq}`).
pub async fn inclusion_proof<C: GenericClient + Sync>(
    client: &C,
    seq: u64,
) -> Result<InclusionProof, AuditError> {
    let what = format!("record {seq}");
    let cp = require_checkpoint(latest_checkpoint(client).await?, &what)?;
    if seq == 0 || seq > cp.size {
        return Err(if seq == 0 {
            TlogError::BeyondTree("records are numbered from 1".into()).into()
        } else {
            AuditError::NoCheckpoint(what)
        });
    }
    let set = TileSet::new();
    let proof = with_tiles(client, &set, cp.size, |set| {
        tiles::inclusion_proof(set, cp.size, Hash(cp.root), seq - 1)
    })
    .await?;
    let entry = leaves(client, seq, seq).await?;
    Ok(InclusionProof {
        index: seq - 1,
        size: cp.size,
        entry: hex::encode(entry[0]),
        proof: proof.iter().map(|h| hex::encode(h.0)).collect(),
        checkpoint: cp.cosigned(),
    })
}

/// A tenant's records after `after` (sequence number), at most `limit`, each with
/// its inclusion proof in the newest checkpoint (`GET /tenants/{id}/audit`). Records
/// chained after that checkpoint are not listed yet.
pub async fn tenant_audit<C: GenericClient + Sync>(
    client: &C,
    tenant: Uuid,
    after: u64,
    limit: u32,
) -> Result<TenantAudit, AuditError> {
    let cp = require_checkpoint(latest_checkpoint(client).await?, "any record")?;
    let limit = i64::from(limit.clamp(1, MAX_TENANT_PAGE));
    // Sequence numbers fit in i64; any larger `after` is past every record.
    let after = after.min(i64::MAX as u64);
    let rows = client
        .query_typed(
            "SELECT c.seq, e.record FROM audit_events e JOIN audit_chain c ON c.event_id = e.id \
             WHERE e.tenant_id = $1 AND c.seq > $2 AND c.seq <= $3 ORDER BY c.seq LIMIT $4",
            &[
                (&tenant, Type::UUID),
                (&to_i64(after)?, Type::INT8),
                (&to_i64(cp.size)?, Type::INT8),
                (&(limit + 1), Type::INT8),
            ],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let set = TileSet::new();
    let mut records = Vec::with_capacity(rows.len());
    for row in rows.iter().take(limit as usize) {
        let seq = to_u64(row.try_get(0)?)?;
        let bytes: Vec<u8> = row.try_get(1)?;
        let proof = with_tiles(client, &set, cp.size, |set| {
            tiles::inclusion_proof(set, cp.size, Hash(cp.root), seq - 1)
        })
        .await?;
        records.push(ProvenRecord {
            seq,
            record: String::from_utf8_lossy(&bytes).into_owned(),
            proof: proof.iter().map(|h| hex::encode(h.0)).collect(),
        });
    }
    let next_after = if more {
        records.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(TenantAudit {
        tenant_id: tenant.to_string(),
        checkpoint: cp.cosigned(),
        records,
        next_after,
    })
}

/// The consistency proof from the tree of `old_size` records to the checkpoint `cp`.
pub async fn consistency_proof<C: GenericClient + Sync>(
    client: &C,
    old_size: u64,
    cp: &LogCheckpoint,
) -> Result<Vec<Hash>, AuditError> {
    if old_size == 0 || old_size == cp.size {
        return Ok(Vec::new());
    }
    let set = TileSet::new();
    with_tiles(client, &set, cp.size, |set| {
        tiles::consistency_proof(set, cp.size, Hash(cp.root), old_size)
    })
    .await
}

/// What [`publish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub size: u64,
    /// Tiles written (full tiles already present are left as they are).
    pub written: u64,
    /// Full tiles already present and kept.
    pub kept: u64,
}

/// Writes the newest checkpoint and every tile of its tree under `dir`, in the layout
/// the gateway serves (`checkpoint`, `tile/…`), so the log can be served as static
/// files. Full tiles are immutable: one already present is kept, not rewritten;
/// partial tiles and the checkpoint are replaced atomically. Records are read
/// `256` at a time; `progress` is called after each tile.
pub async fn publish<C: GenericClient + Sync>(
    client: &C,
    dir: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<Published, AuditError> {
    let cp = require_checkpoint(latest_checkpoint(client).await?, "anything to publish")?;
    let all = alga_tlog::path::tiles_for(cp.size);
    let total = all.len() as u64;
    let mut out = Published {
        size: cp.size,
        written: 0,
        kept: 0,
    };
    for (i, path) in all.iter().enumerate() {
        let file = dir.join(path.to_string());
        if path.is_full() && file.exists() {
            out.kept += 1;
        } else {
            let data = read_tile(client, path, cp.size).await?;
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            alga_tlog::witness::write_atomically(&file, &data)?;
            out.written += 1;
        }
        progress(i as u64 + 1, total);
    }
    // The checkpoint last: a reader who sees it finds every tile it names.
    alga_tlog::witness::write_atomically(&dir.join("checkpoint"), cp.cosigned().as_bytes())?;
    Ok(out)
}

/// Records read per round of [`verify_from`] (16 level-0 tiles).
pub const VERIFY_CHUNK: u64 = 4096;

/// What [`verify_from`] concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IncrementalOutcome {
    /// The newest checkpoint's tree extends the trusted one, and every record after
    /// the trusted size is the leaf the newest tree holds for it.
    Consistent,
    /// The database's newest checkpoint is smaller than the trusted one (or there is
    /// none): the database was restored from an older state, or rolled back.
    Rollback,
    /// The newest checkpoint's tree does not contain the trusted one: the log's
    /// history was rewritten, or the trusted checkpoint is of another tree.
    Fork,
    /// The database's newest checkpoint does not verify with the log keys.
    BadCheckpoint { detail: String },
    /// A record after the trusted size does not match the signed tree (changed or
    /// missing).
    Record { seq: u64, detail: String },
    /// The database's tree does not hash to its newest checkpoint, and no record after
    /// the trusted size could be named (stored nodes, or records up to the trusted
    /// size, changed: run the full verify).
    Tree { detail: String },
}

/// What [`verify_from`] checked and found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncrementalReport {
    /// The log's origin line.
    pub origin: String,
    /// Size of the trusted checkpoint.
    pub old_size: u64,
    /// Size of the database's newest checkpoint (0: none).
    pub new_size: u64,
    /// Records read from the database and checked against the newest tree: only
    /// those after the trusted size, `first_checked ..`.
    pub records_checked: u64,
    /// The first record checked (`old_size + 1`), if any was.
    pub first_checked: Option<u64>,
    pub outcome: IncrementalOutcome,
    /// The newest checkpoint note (verified), to keep in place of the trusted one once
    /// the outcome is [`Consistent`](IncrementalOutcome::Consistent).
    #[serde(skip)]
    pub checkpoint: Option<String>,
}

impl IncrementalReport {
    /// Whether the log passed: consistent growth, every new record in the tree.
    pub fn intact(&self) -> bool {
        self.outcome == IncrementalOutcome::Consistent
    }
}

/// One chained record as [`verify_from`] reads it.
struct ChainRow {
    seq: u64,
    record: Vec<u8>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl ChainRow {
    /// Whether the record's bytes still hash to its chain link.
    fn link_holds(&self) -> bool {
        <[u8; 32]>::try_from(self.prev_hash.as_slice())
            .map(|prev| crate::canonical::chain_hash(&prev, self.seq, &self.record))
            .is_ok_and(|h| h.as_slice() == self.hash.as_slice())
    }
}

async fn chain_rows<C: GenericClient + Sync>(
    client: &C,
    first_seq: u64,
    last_seq: u64,
) -> Result<Vec<ChainRow>, AuditError> {
    let rows = client
        .query_typed(
            "SELECT c.seq, e.record, c.prev_hash, c.hash FROM audit_chain c \
             CROSS JOIN LATERAL (SELECT record FROM audit_events WHERE id = c.event_id \
             OFFSET 0) e \
             WHERE c.seq BETWEEN $1 AND $2 ORDER BY c.seq",
            &[
                (&to_i64(first_seq)?, Type::INT8),
                (&to_i64(last_seq)?, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ChainRow {
                seq: to_u64(row.try_get(0)?)?,
                record: row.try_get(1)?,
                prev_hash: row.try_get(2)?,
                hash: row.try_get(3)?,
            })
        })
        .collect()
}

/// Damage found while reading the tree (as opposed to a failure to read it).
fn tree_damage(e: AuditError) -> Result<String, AuditError> {
    match e {
        AuditError::Log(TlogError::Proof(detail)) | AuditError::Corrupt(detail) => Ok(detail),
        other => Err(other),
    }
}

/// Incremental verification from a trusted checkpoint (a signed note kept from an
/// earlier verification): the database's newest checkpoint must verify with `keys`,
/// be no smaller, and its tree must contain the trusted one (a consistency proof
/// computed from the database's tiles, which are authenticated against the newest
/// root, checked against the trusted root); then every record **after** the trusted
/// size is read, in rounds of [`VERIFY_CHUNK`], and its leaf hash compared with the
/// level-0 hashes authenticated against the newest root. The first record that does
/// not match is named.
///
/// Records up to the trusted size are not read (the trusted checkpoint vouches for
/// them); beyond the new records, the cost is the few tiles on the path from the
/// trusted size to the newest root. The level-0 hashes of records after the trusted
/// size are computed from those records, so a changed record shows as a tile that no
/// longer hashes to the signed root; the record is then named within that tile by its
/// chain link (the record's bytes against its `audit_chain` hash), and if that link
/// still holds the tile's range is reported instead.
///
/// Errors are failures to run (the trusted note does not verify with `keys`, a
/// database error); what is wrong with the log is the report's outcome.
pub async fn verify_from<C: GenericClient + Sync>(
    client: &C,
    trusted_note: &str,
    keys: &LogKeys,
) -> Result<IncrementalReport, AuditError> {
    let trusted = keys.verify(trusted_note)?;
    let old_size = trusted.size;
    let mut report = IncrementalReport {
        origin: trusted.origin.clone(),
        old_size,
        new_size: 0,
        records_checked: 0,
        first_checked: None,
        outcome: IncrementalOutcome::Consistent,
        checkpoint: None,
    };
    let Some(stored) = latest_checkpoint(client).await? else {
        if old_size == 0 {
            return Err(AuditError::NoCheckpoint("the trusted checkpoint".into()));
        }
        report.outcome = IncrementalOutcome::Rollback;
        return Ok(report);
    };
    report.new_size = stored.size;
    let newest = match keys.verify(&stored.note) {
        Ok(cp) => cp,
        Err(e) => {
            report.outcome = IncrementalOutcome::BadCheckpoint {
                detail: format!("the checkpoint of size {}: {e}", stored.size),
            };
            return Ok(report);
        }
    };
    let (new_size, root) = (newest.size, newest.root);
    report.new_size = new_size;
    if new_size < old_size {
        report.outcome = IncrementalOutcome::Rollback;
        return Ok(report);
    }

    // The newest tree contains the trusted one.
    // The size and root as signed (not as stored beside the note).
    let mut cp = stored.clone();
    (cp.size, cp.root) = (new_size, root.0);
    let unauthenticated = match consistency_proof(client, old_size, &cp).await {
        Ok(proof) => {
            if tiles::check_consistency(&proof, new_size, root, old_size, trusted.root).is_err() {
                report.outcome = IncrementalOutcome::Fork;
                return Ok(report);
            }
            None
        }
        // The tiles do not hash to the newest root: look for the record at fault
        // among the new ones before blaming the tree.
        Err(e) => Some(tree_damage(e)?),
    };

    // Every new record is the leaf the newest tree holds.
    let mut seq = old_size + 1;
    while seq <= new_size {
        let last = ((seq - 1) / VERIFY_CHUNK + 1)
            .saturating_mul(VERIFY_CHUNK)
            .min(new_size);
        report.first_checked.get_or_insert(seq);
        if let Some(outcome) = check_records(client, new_size, root, old_size, seq, last).await? {
            report.records_checked += match &outcome {
                IncrementalOutcome::Record { seq: at, .. } => at + 1 - seq,
                _ => last + 1 - seq,
            };
            report.outcome = outcome;
            return Ok(report);
        }
        report.records_checked += last + 1 - seq;
        seq = last + 1;
    }
    if let Some(detail) = unauthenticated {
        report.outcome = IncrementalOutcome::Tree {
            detail: format!(
                "the database's tiles between the trusted size {old_size} and {new_size} \
                 do not hash to the newest checkpoint's root ({detail})"
            ),
        };
        return Ok(report);
    }
    report.checkpoint = Some(stored.cosigned());
    Ok(report)
}

/// Checks records `first ..= last` (after `old_size`) against the tree `(size, root)`;
/// `None` when they all match.
async fn check_records<C: GenericClient + Sync>(
    client: &C,
    size: u64,
    root: Hash,
    old_size: u64,
    first: u64,
    last: u64,
) -> Result<Option<IncrementalOutcome>, AuditError> {
    let rows = chain_rows(client, first, last).await?;
    let count = last + 1 - first;
    // Sequence numbers are unique: the first one out of place is the first missing.
    let missing = rows
        .iter()
        .enumerate()
        .find(|(i, r)| r.seq != first + *i as u64)
        .map(|(i, _)| first + i as u64)
        .or_else(|| ((rows.len() as u64) < count).then(|| first + rows.len() as u64));
    if let Some(seq) = missing {
        return Ok(Some(IncrementalOutcome::Record {
            seq,
            detail: format!("record {seq} is missing from the chain"),
        }));
    }
    let ours: Vec<Hash> = rows
        .iter()
        .map(|r| leaf_hash(&entry_of(&r.record)))
        .collect();
    // The level-0 tiles of the new records are ours; the one shared with records up
    // to the trusted size, and the tiles above, come from the database.
    let set = TileSet::new();
    let width = TILE_WIDTH as u64;
    let tiles_in = || ((first - 1) / width)..=((last - 1) / width);
    for t in tiles_in() {
        let (start, end) = (t * width, ((t + 1) * width).min(size));
        if start >= first - 1 {
            let from = (start - (first - 1)) as usize;
            let to = (end - (first - 1)) as usize;
            let bytes: Vec<u8> = ours[from..to].iter().flat_map(|h| h.0).collect();
            set.insert(TilePath::hashes(0, t, (end - start) as usize), bytes);
        }
    }
    match with_tiles(client, &set, size, |set| {
        tiles::leaf_hashes(set, size, root, first - 1, count)
    })
    .await
    {
        Ok(signed) => {
            Ok(rows
                .iter()
                .zip(ours.iter().zip(&signed))
                .find_map(|(row, (ours, signed))| {
                    (ours != signed).then(|| IncrementalOutcome::Record {
                        seq: row.seq,
                        detail: format!("record {} does not match the signed tree", row.seq),
                    })
                }))
        }
        Err(e) => {
            let detail = tree_damage(e)?;
            // Which tile: authenticate them one by one.
            for t in tiles_in() {
                let a = (t * width).max(first - 1);
                let b = ((t + 1) * width).min(size).min(last);
                let one = with_tiles(client, &set, size, |set| {
                    tiles::leaf_hashes(set, size, root, a, b - a)
                })
                .await;
                let Err(e) = one else { continue };
                let tile_detail = tree_damage(e)?;
                let path =
                    TilePath::hashes(0, t, (((t + 1) * width).min(size) - t * width) as usize);
                let named = rows
                    .iter()
                    .filter(|r| r.seq > a && r.seq <= b)
                    .find(|r| !r.link_holds());
                return Ok(Some(match named {
                    Some(r) => IncrementalOutcome::Record {
                        seq: r.seq,
                        detail: format!(
                            "record {} does not match the signed tree: {path}, which holds \
                             its leaf, does not hash to the root of size {size}, and the \
                             record no longer matches its chain hash",
                            r.seq
                        ),
                    },
                    None if old_size > t * width => IncrementalOutcome::Tree {
                        detail: format!(
                            "{path} (records {}..={}, shared with records up to the \
                             trusted size {old_size}) does not hash to the root of size \
                             {size}: {tile_detail}",
                            t * width + 1,
                            ((t + 1) * width).min(size)
                        ),
                    },
                    None => IncrementalOutcome::Tree {
                        detail: format!(
                            "records {}..={} do not match the signed tree ({path} does \
                             not hash to the root of size {size}), though each still \
                             matches its chain hash",
                            a + 1,
                            b
                        ),
                    },
                }));
            }
            Ok(Some(IncrementalOutcome::Tree { detail }))
        }
    }
}
