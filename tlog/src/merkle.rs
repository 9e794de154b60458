//! The tree: what a leaf is, and the right edge the log's writer keeps to append.
//!
//! - A record's **entry** is the SHA-256 of its canonical bytes (the audit crate's
//!   `FORMAT.md`), so the public tree and its entry bundles reveal no content.
//! - Its **leaf hash** is RFC 6962's `SHA-256(0x00 ‖ entry)`; interior nodes are
//!   `SHA-256(0x01 ‖ left ‖ right)`; record `seq` (1-based) is leaf `seq − 1`.
//! - Tiles are c2sp.org/tlog-tiles tiles of height 8: a tile at level `L` holds up to
//!   256 hashes of complete subtrees of height `8·L`.

use sha2::{Digest, Sha256};
use tlog_tiles::{Hash, Tile, node_hash, record_hash};

use crate::error::TlogError;

/// Height of every tile (c2sp.org/tlog-tiles fixes it at 8).
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;
/// The largest tree this crate accepts (2^48 leaves): bounds every shift and product
/// computed from a size read off the wire.
pub const MAX_TREE_SIZE: u64 = 1 << 48;

/// The log entry of a record: SHA-256 of its stored bytes.
pub fn entry_of(record: &[u8]) -> [u8; 32] {
    Sha256::digest(record).into()
}

/// RFC 6962 leaf hash of an entry.
pub fn leaf_hash(entry: &[u8; 32]) -> Hash {
    record_hash(entry)
}

/// Refuses sizes beyond [`MAX_TREE_SIZE`].
pub fn check_size(size: u64) -> Result<(), TlogError> {
    if size > MAX_TREE_SIZE {
        return Err(TlogError::BeyondTree(format!(
            "size {size} is larger than this verifier accepts ({MAX_TREE_SIZE})"
        )));
    }
    Ok(())
}

/// A new stored node: the hash of the complete subtree of height `8·level` number
/// `index` (leaves `index·256^level ..`), produced when a tile below it fills up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Tile level (≥ 1): the subtree has height `8·level`.
    pub level: u8,
    pub index: u64,
    pub hash: Hash,
}

/// The right edge of a tree: for every tile level, the hashes of the tile that is not
/// full yet. Enough to append leaves and compute the root, and small (at most 255
/// hashes per level).
#[derive(Debug, Clone, Default)]
pub struct TreeEdge {
    size: u64,
    /// `levels[l]`: hashes (subtrees of height `8·l`) in the partial tile at level `l`;
    /// `levels[l].len() == (size >> 8l) % 256`.
    levels: Vec<Vec<Hash>>,
}

/// The partial tile at each level of a tree of `size` leaves: `(level, first index,
/// count)` of the hashes the edge holds there, lowest level first. Levels whose
/// partial tile is empty are included with count 0 up to the highest non-empty one.
pub fn partial_tiles(size: u64) -> Vec<(u8, u64, usize)> {
    let mut out = Vec::new();
    let mut level = 0u8;
    while size >> (u32::from(level) * 8) > 0 {
        let at_level = size >> (u32::from(level) * 8);
        let count = (at_level % TILE_WIDTH as u64) as usize;
        out.push((level, at_level - count as u64, count));
        level += 1;
    }
    out
}

impl TreeEdge {
    /// The empty tree.
    pub fn new() -> TreeEdge {
        TreeEdge::default()
    }

    /// Rebuilds the edge of a tree of `size` leaves from its partial tiles, as listed
    /// by [`partial_tiles`] (`tiles[l]` holds exactly that level's count).
    pub fn from_partial_tiles(size: u64, tiles: Vec<Vec<Hash>>) -> Result<TreeEdge, TlogError> {
        check_size(size)?;
        let expected = partial_tiles(size);
        if tiles.len() != expected.len()
            || tiles
                .iter()
                .zip(&expected)
                .any(|(t, (_, _, count))| t.len() != *count)
        {
            return Err(TlogError::malformed(
                "tree edge",
                format!("the partial tiles do not match a tree of size {size}"),
            ));
        }
        Ok(TreeEdge {
            size,
            levels: tiles,
        })
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash; pushes to `nodes` every subtree completed by it.
    pub fn push(&mut self, leaf: Hash, nodes: &mut Vec<Node>) {
        self.size += 1;
        let mut carry = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::with_capacity(TILE_WIDTH));
            }
            self.levels[level].push(carry);
            if self.levels[level].len() < TILE_WIDTH {
                return;
            }
            carry = subtree_of(&self.levels[level]);
            self.levels[level].clear();
            level += 1;
            let index = (self.size >> (8 * level as u32)) - 1;
            nodes.push(Node {
                level: level as u8,
                index,
                hash: carry,
            });
        }
    }

    /// The RFC 6962 root hash of the tree.
    pub fn root(&self) -> Hash {
        if self.size == 0 {
            return tlog_tiles::EMPTY_HASH;
        }
        // The complete subtrees the tree splits into, left to right: one per set bit
        // of the size, highest first.
        let mut parts = Vec::new();
        for hashes in self.levels.iter().rev() {
            let width = hashes.len();
            for bit in (0..TILE_HEIGHT).rev() {
                let group = 1usize << bit;
                if width & group != 0 {
                    let start = (width >> (bit + 1)) << (bit + 1);
                    parts.push(subtree_of(&hashes[start..start + group]));
                }
            }
        }
        let mut root = parts.pop().unwrap_or(tlog_tiles::EMPTY_HASH);
        while let Some(left) = parts.pop() {
            root = node_hash(left, root);
        }
        root
    }
}

/// Hash of the complete subtree over `hashes` (a power of two of them).
pub fn subtree_of(hashes: &[Hash]) -> Hash {
    let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
    Tile::subtree_hash(&bytes)
}
