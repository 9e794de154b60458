//! Reading a log through its tiles: entry bundles, a tile set that authenticates what
//! it is given against a signed root, and the proofs computed from tiles.
//!
//! Tiles come from anywhere (the gateway's `/audit/log/`, a static copy on S3, a
//! directory written by `alga-audit publish`): nothing fetched is used until it is
//! authenticated against the checkpoint's root hash ([`AuthReader`], after
//! research.swtch.com/tlog#authenticating_tiles): the right-edge tiles recompute the
//! root, and every other tile hashes to its entry in its parent tile.
//!
//! `tlog_tiles` 0.2's own `TileHashReader` is not used: when several of the root's
//! subtrees share one right-edge tile, it skips the parent check of the first child
//! tiles it fetched, so a changed leaf tile was accepted (size 600, leaf 300: see
//! `tiles_are_authenticated_against_the_checkpoint` in `tests/log.rs`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tlog_tiles::{
    Hash, HashReader, RecordProof, Tile, TileReader, TreeProof, node_hash, stored_hash_index,
    sub_tree_index,
};

use crate::error::TlogError;
use crate::merkle::{TILE_HEIGHT, check_size};
use crate::path::TilePath;

/// Where tiles come from. Fetching is the caller's business (HTTP, a directory);
/// this crate only checks what comes back.
pub trait TileFetch {
    /// The bytes served at `path` (hash tiles: 32 bytes per hash; entry bundles: as
    /// [`decode_entries`] reads them).
    fn fetch(&self, path: &TilePath) -> Result<Vec<u8>, TlogError>;
}

/// Tiles from a directory laid out as the log serves them (`alga-audit publish`).
#[derive(Debug, Clone)]
pub struct DirFetch {
    pub root: PathBuf,
}

impl TileFetch for DirFetch {
    fn fetch(&self, path: &TilePath) -> Result<Vec<u8>, TlogError> {
        let file = self.root.join(path.to_string());
        std::fs::read(&file).map_err(|e| TlogError::io(file, e))
    }
}

/// Encodes entries as a c2sp.org/tlog-tiles entry bundle: each entry a big-endian
/// `u16` length (always 32 here) and its bytes.
pub fn encode_entries(entries: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 34);
    for e in entries {
        out.extend_from_slice(&32u16.to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Decodes an entry bundle whose entries are 32-byte digests.
pub fn decode_entries(data: &[u8]) -> Result<Vec<[u8; 32]>, TlogError> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let [hi, lo, tail @ ..] = rest else {
            return Err(TlogError::malformed("entry bundle", "truncated length"));
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len != 32 || tail.len() < 32 {
            return Err(TlogError::malformed(
                "entry bundle",
                format!("entry {} is not a 32-byte digest", out.len()),
            ));
        }
        let mut entry = [0u8; 32];
        entry.copy_from_slice(&tail[..32]);
        out.push(entry);
        rest = &tail[32..];
    }
    Ok(out)
}

/// Tiles on hand for one computation. As a `TileReader` it answers from what it has
/// and notes what it lacks, so the same computation can run again once the caller
/// fetched the rest (in one round, from async code, or from [`TileFetch`]).
///
/// Thread-safe (`Sync`), so async code can hold it across awaits while it fetches.
#[derive(Debug, Default)]
pub struct TileSet {
    have: Mutex<HashMap<TilePath, Vec<u8>>>,
    wanted: Mutex<BTreeSet<TilePath>>,
}

/// A lock that a panic elsewhere never poisons for good: the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TileSet {
    pub fn new() -> TileSet {
        TileSet::default()
    }

    /// Adds a tile's bytes (checked for length when read).
    pub fn insert(&self, path: TilePath, data: Vec<u8>) {
        lock(&self.have).insert(path, data);
    }

    /// The tiles the last computation lacked (and forgets them).
    pub fn take_wanted(&self) -> Vec<TilePath> {
        std::mem::take(&mut *lock(&self.wanted))
            .into_iter()
            .collect()
    }

    /// Runs `op` until it no longer lacks tiles, fetching them from `fetch`.
    pub fn run<T>(
        &self,
        fetch: &dyn TileFetch,
        mut op: impl FnMut(&TileSet) -> Result<T, TlogError>,
    ) -> Result<T, TlogError> {
        for _ in 0..8 {
            let result = op(self);
            let wanted = self.take_wanted();
            if wanted.is_empty() {
                return result;
            }
            for path in wanted {
                let data = fetch.fetch(&path)?;
                self.insert(path, data);
            }
        }
        Err(TlogError::Tile {
            path: String::new(),
            detail: "tiles still missing after eight rounds".into(),
        })
    }
}

impl TileReader for TileSet {
    fn height(&self) -> u8 {
        TILE_HEIGHT
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        let have = lock(&self.have);
        let mut out = Vec::with_capacity(tiles.len());
        let mut missing = false;
        for tile in tiles {
            let path = TilePath::from_tile(tile);
            match have.get(&path) {
                Some(data) => out.push(data.clone()),
                None => {
                    lock(&self.wanted).insert(path);
                    missing = true;
                }
            }
        }
        if missing {
            return Err(tlog_tiles::Error::InvalidInput(
                "tiles not fetched yet".into(),
            ));
        }
        Ok(out)
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

/// A `HashReader` over the tiles of the tree `(size, root)` that answers only with
/// hashes from authenticated tiles.
struct AuthReader<'a> {
    size: u64,
    root: Hash,
    set: &'a TileSet,
}

impl AuthReader<'_> {
    fn tile_of(&self, index: u64) -> Result<Tile, tlog_tiles::Error> {
        Tile::from_index(TILE_HEIGHT, index)
            .parent(0, self.size)
            .ok_or(tlog_tiles::Error::IndexesNotInTree)
    }
}

impl HashReader for AuthReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        if self.size == 0 {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        let stx = sub_tree_index(0, self.size, Vec::new());
        let mut order: HashMap<Tile, usize> = HashMap::new();
        let mut tiles: Vec<Tile> = Vec::new();
        fn add(order: &mut HashMap<Tile, usize>, tiles: &mut Vec<Tile>, tile: Tile) -> usize {
            *order.entry(tile).or_insert_with(|| {
                tiles.push(tile);
                tiles.len() - 1
            })
        }
        let stx_tiles: Vec<usize> = stx
            .iter()
            .map(|&x| self.tile_of(x).map(|t| add(&mut order, &mut tiles, t)))
            .collect::<Result<_, _>>()?;
        let edge = tiles.len();
        let limit = stored_hash_index(0, self.size);
        let mut index_tiles = Vec::with_capacity(indexes.len());
        for &x in indexes {
            if x >= limit {
                return Err(tlog_tiles::Error::IndexesNotInTree);
            }
            let tile = self.tile_of(x)?;
            let known = order.contains_key(&tile);
            index_tiles.push(add(&mut order, &mut tiles, tile));
            // Every ancestor up to one already listed (its chain is), to authenticate
            // the chain up to the right edge.
            let mut k = 1;
            while !known && let Some(parent) = tile.parent(k, self.size) {
                if order.contains_key(&parent) {
                    break;
                }
                add(&mut order, &mut tiles, parent);
                k += 1;
            }
        }
        let data = self.set.read_tiles(&tiles)?;
        for (tile, d) in tiles.iter().zip(&data) {
            if d.len() != tile.width() as usize * tlog_tiles::HASH_SIZE {
                return Err(tlog_tiles::Error::InconsistentTile);
            }
        }
        // The right edge recomputes the root.
        let mut root: Option<Hash> = None;
        for (i, &x) in stx.iter().enumerate().rev() {
            let j = stx_tiles[i];
            let h = tiles[j].hash_at_index(&data[j], x)?;
            root = Some(match root {
                None => h,
                Some(right) => node_hash(h, right),
            });
        }
        if root != Some(self.root) {
            return Err(tlog_tiles::Error::InconsistentTile);
        }
        // Every other tile is full and hashes to its entry in its parent tile.
        for (i, tile) in tiles.iter().enumerate().skip(edge) {
            if tile.width() != 1 << TILE_HEIGHT {
                return Err(tlog_tiles::Error::InconsistentTile);
            }
            let parent = tile
                .parent(1, self.size)
                .ok_or(tlog_tiles::Error::InconsistentTile)?;
            let j = *order
                .get(&parent)
                .ok_or(tlog_tiles::Error::InconsistentTile)?;
            let expected = parent.hash_at_index(
                &data[j],
                stored_hash_index(parent.level() * TILE_HEIGHT, tile.level_index()),
            )?;
            if Tile::subtree_hash(&data[i]) != expected {
                return Err(tlog_tiles::Error::InconsistentTile);
            }
        }
        indexes
            .iter()
            .zip(index_tiles)
            .map(|(&x, j)| tiles[j].hash_at_index(&data[j], x))
            .collect()
    }
}

/// Maps an error of the tree arithmetic to ours, unless tiles were only missing.
fn tree_error(set: &TileSet, e: tlog_tiles::Error) -> TlogError {
    if !lock(&set.wanted).is_empty() {
        return TlogError::Tile {
            path: String::new(),
            detail: "not fetched yet".into(),
        };
    }
    match e {
        tlog_tiles::Error::InconsistentTile => {
            TlogError::Proof("the tiles do not hash to the checkpoint's root".into())
        }
        tlog_tiles::Error::IndexesNotInTree => {
            TlogError::BeyondTree("index not in the tree".into())
        }
        other => TlogError::Proof(other.to_string()),
    }
}

/// The inclusion proof of leaf `index` in the tree `(size, root)`, from tiles that
/// are checked against `root` first.
pub fn inclusion_proof(
    set: &TileSet,
    size: u64,
    root: Hash,
    index: u64,
) -> Result<RecordProof, TlogError> {
    check_size(size)?;
    if index >= size {
        return Err(TlogError::BeyondTree(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    let reader = AuthReader { size, root, set };
    tlog_tiles::prove_record(size, index, &reader).map_err(|e| tree_error(set, e))
}

/// The consistency proof from the tree of `old_size` leaves to `(size, root)`, from
/// tiles checked against `root`.
pub fn consistency_proof(
    set: &TileSet,
    size: u64,
    root: Hash,
    old_size: u64,
) -> Result<TreeProof, TlogError> {
    check_size(size)?;
    if old_size == 0 || old_size > size {
        return Err(TlogError::BeyondTree(format!(
            "no consistency proof from size {old_size} to {size}"
        )));
    }
    let reader = AuthReader { size, root, set };
    tlog_tiles::prove_tree(size, old_size, &reader).map_err(|e| tree_error(set, e))
}

/// The leaf hashes `first..first+count` of the tree `(size, root)`, from tiles checked
/// against `root`.
pub fn leaf_hashes(
    set: &TileSet,
    size: u64,
    root: Hash,
    first: u64,
    count: u64,
) -> Result<Vec<Hash>, TlogError> {
    check_size(size)?;
    if first.checked_add(count).is_none_or(|end| end > size) {
        return Err(TlogError::BeyondTree(format!(
            "leaves {first}+{count} are not all in a tree of {size}"
        )));
    }
    let reader = AuthReader { size, root, set };
    let indexes: Vec<u64> = (first..first + count)
        .map(|i| tlog_tiles::stored_hash_index(0, i))
        .collect();
    reader.read_hashes(&indexes).map_err(|e| tree_error(set, e))
}

/// Checks that `proof` shows leaf `index` with hash `leaf` in the tree `(size, root)`.
pub fn check_inclusion(
    proof: &[Hash],
    size: u64,
    root: Hash,
    index: u64,
    leaf: Hash,
) -> Result<(), TlogError> {
    check_size(size)?;
    if index >= size {
        return Err(TlogError::BeyondTree(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    if proof.len() > 64 {
        return Err(TlogError::Proof("more hashes than any tree needs".into()));
    }
    tlog_tiles::check_record(&proof.to_vec(), size, root, index, leaf).map_err(|_| {
        TlogError::Proof(format!(
            "leaf {index} is not in the tree of size {size} with that root"
        ))
    })
}

/// Checks that `proof` shows the tree `(old_size, old_root)` is a prefix of
/// `(size, root)`. Equal sizes need equal roots and an empty proof.
pub fn check_consistency(
    proof: &[Hash],
    size: u64,
    root: Hash,
    old_size: u64,
    old_root: Hash,
) -> Result<(), TlogError> {
    check_size(size)?;
    if old_size > size {
        return Err(TlogError::Rollback {
            old_size,
            new_size: size,
        });
    }
    if proof.len() > 64 {
        return Err(TlogError::Proof("more hashes than any tree needs".into()));
    }
    let fork = || TlogError::Fork {
        old_size,
        new_size: size,
    };
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(fork())
        };
    }
    if old_size == size {
        return if proof.is_empty() && old_root == root {
            Ok(())
        } else {
            Err(fork())
        };
    }
    tlog_tiles::check_tree(&proof.to_vec(), size, root, old_size, old_root).map_err(|_| fork())
}
