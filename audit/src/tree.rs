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

use std::path::Path;

use alga_tlog::tiles::{self, encode_entries};
use alga_tlog::{
    Hash, InclusionProof, Node, ProvenRecord, TILE_WIDTH, TenantAudit, TilePath, TileSet,
    TlogError, TreeEdge, entry_of, leaf_hash,
};
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
            "SELECT c.seq, e.record FROM audit_chain c JOIN audit_events e ON e.id = c.event_id \
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
