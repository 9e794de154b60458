//! c2sp.org/tlog-tiles paths: `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`.
//!
//! `<N>` is written in groups of three decimal digits, every group but the last
//! prefixed with `x` (`x001/x234/067`); `.p/<W>` marks a partial tile of `W` (1–255)
//! hashes or entries. Only the canonical spelling is accepted, so one tile has one
//! path (and one cache key).

use crate::error::TlogError;
use crate::merkle::{MAX_TREE_SIZE, TILE_WIDTH};

/// Highest tile level a tree of [`MAX_TREE_SIZE`] leaves has.
const MAX_LEVEL: u8 = 6;

/// One tile's coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TilePath {
    /// `None` for an entry bundle, else the hash tile's level.
    pub level: Option<u8>,
    /// Tile number within its level.
    pub index: u64,
    /// Hashes (or entries) in it: 256 for a full tile.
    pub width: usize,
}

impl TilePath {
    /// The hash tile `level`/`index` of `width` hashes.
    pub fn hashes(level: u8, index: u64, width: usize) -> TilePath {
        TilePath {
            level: Some(level),
            index,
            width,
        }
    }

    /// The entry bundle `index` of `width` entries.
    pub fn entries(index: u64, width: usize) -> TilePath {
        TilePath {
            level: None,
            index,
            width,
        }
    }

    /// Whether the tile is full (and so immutable).
    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The first leaf (0-based) the tile covers, and how many.
    pub fn leaves(&self) -> (u64, u64) {
        let shift = 8 * u32::from(self.level.unwrap_or(0));
        ((self.index << 8) << shift, (self.width as u64) << shift)
    }

    /// Parses a path (without any URL prefix), refusing anything not canonical.
    pub fn parse(path: &str) -> Result<TilePath, TlogError> {
        let bad = |why: &str| TlogError::malformed("tile path", format!("{path:?}: {why}"));
        if path.len() > 64 {
            return Err(bad("too long"));
        }
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad("not under tile/"))?;
        let (level, rest) = rest.split_once('/').ok_or_else(|| bad("no tile number"))?;
        let level = if level == "entries" {
            None
        } else {
            if level.is_empty() || level.len() > 1 || !level.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the level is not a single digit"));
            }
            let l: u8 = level.parse().map_err(|_| bad("bad level"))?;
            if l > MAX_LEVEL {
                return Err(bad("level beyond any tree this log can have"));
            }
            Some(l)
        };
        let (number, width) = match rest.split_once(".p/") {
            Some((n, w)) => {
                if w.is_empty()
                    || w.starts_with('0')
                    || !w.bytes().all(|b| b.is_ascii_digit())
                    || w.len() > 3
                {
                    return Err(bad("bad partial width"));
                }
                let w: usize = w.parse().map_err(|_| bad("bad partial width"))?;
                if !(1..TILE_WIDTH).contains(&w) {
                    return Err(bad("partial width must be 1 to 255"));
                }
                (n, w)
            }
            None => (rest, TILE_WIDTH),
        };
        let groups: Vec<&str> = number.split('/').collect();
        let mut index: u64 = 0;
        for (i, group) in groups.iter().enumerate() {
            let last = i + 1 == groups.len();
            let digits = if last {
                *group
            } else {
                group
                    .strip_prefix('x')
                    .ok_or_else(|| bad("inner groups start with x"))?
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("groups are three digits"));
            }
            let d: u64 = digits.parse().map_err(|_| bad("bad digits"))?;
            index = index
                .checked_mul(1000)
                .and_then(|n| n.checked_add(d))
                .ok_or_else(|| bad("tile number too large"))?;
        }
        let tile = TilePath {
            level,
            index,
            width,
        };
        let (first, _) = tile
            .leaves_checked()
            .ok_or_else(|| bad("beyond any tree this log can have"))?;
        if first >= MAX_TREE_SIZE {
            return Err(bad("beyond any tree this log can have"));
        }
        if tile.to_string() != path {
            return Err(bad("not the canonical spelling"));
        }
        Ok(tile)
    }

    fn leaves_checked(&self) -> Option<(u64, u64)> {
        let shift = 8 * u32::from(self.level.unwrap_or(0)) + 8;
        let first = self.index.checked_shl(shift)?;
        if first >> shift != self.index {
            return None;
        }
        Some((first, (self.width as u64) << (shift - 8)))
    }

    /// The path of a `tlog_tiles` tile of height 8.
    pub(crate) fn from_tile(tile: &tlog_tiles::Tile) -> TilePath {
        TilePath {
            level: if tile.is_data() {
                None
            } else {
                Some(tile.level())
            },
            index: tile.level_index(),
            width: tile.width() as usize,
        }
    }
}

impl std::fmt::Display for TilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tile/")?;
        match self.level {
            Some(l) => write!(f, "{l}/")?,
            None => f.write_str("entries/")?,
        }
        let mut groups = Vec::new();
        let mut n = self.index;
        groups.push(n % 1000);
        while n >= 1000 {
            n /= 1000;
            groups.push(n % 1000);
        }
        for (i, g) in groups.iter().rev().enumerate() {
            if i + 1 < groups.len() {
                write!(f, "x{g:03}/")?;
            } else {
                write!(f, "{g:03}")?;
            }
        }
        if self.width != TILE_WIDTH {
            write!(f, ".p/{}", self.width)?;
        }
        Ok(())
    }
}

/// Every tile a reader needs for a tree of `size` leaves, for tile levels and entry
/// bundles both: the full ones and the partial one at the right edge of each level.
pub fn tiles_for(size: u64) -> Vec<TilePath> {
    let mut out = Vec::new();
    for level in 0..=MAX_LEVEL {
        let hashes = size >> (8 * u32::from(level));
        if hashes == 0 {
            break;
        }
        for index in 0..hashes / TILE_WIDTH as u64 {
            out.push(TilePath::hashes(level, index, TILE_WIDTH));
        }
        let partial = (hashes % TILE_WIDTH as u64) as usize;
        if partial > 0 {
            out.push(TilePath::hashes(level, hashes / TILE_WIDTH as u64, partial));
        }
        if level == 0 {
            for index in 0..hashes / TILE_WIDTH as u64 {
                out.push(TilePath::entries(index, TILE_WIDTH));
            }
            if partial > 0 {
                out.push(TilePath::entries(hashes / TILE_WIDTH as u64, partial));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_only_canonical_ones_parse() {
        for (path, tile) in [
            ("tile/0/000", TilePath::hashes(0, 0, 256)),
            ("tile/0/001.p/7", TilePath::hashes(0, 1, 7)),
            ("tile/1/x001/x234/067", TilePath::hashes(1, 1_234_067, 256)),
            ("tile/entries/x001/234.p/255", TilePath::entries(1234, 255)),
        ] {
            assert_eq!(TilePath::parse(path).expect(path), tile, "{path}");
            assert_eq!(tile.to_string(), path);
        }
        for bad in [
            "",
            "tile",
            "tile/0",
            "tile/0/",
            "tile/0/1",
            "tile/0/0001",
            "tile/0/x000/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/07",
            "tile/0/001.p/",
            "tile/7/000",
            "tile/10/000",
            "tile/-1/000",
            "tile/data/000",
            "tile/8/0/000",
            "tile/entries/x999/x999/x999/x999/x999/x999/999",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            "tile/0/000/",
            "/tile/0/000",
            "tile/0/abc",
        ] {
            assert!(TilePath::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn tiles_for_lists_full_and_partial_tiles() {
        let paths: Vec<String> = tiles_for(257).iter().map(|t| t.to_string()).collect();
        assert_eq!(
            paths,
            [
                "tile/0/000",
                "tile/0/001.p/1",
                "tile/entries/000",
                "tile/entries/001.p/1",
                "tile/1/000.p/1"
            ]
        );
        assert!(tiles_for(0).is_empty());
    }
}
