//! C2SP `tlog-tiles` (https://c2sp.org/tlog-tiles): the log's Merkle tree
//! as tiles of height 8, and entry bundles.
//!
//! A tile at level `L`, index `N`, holds the hashes
//! `MTH(D[(N·256 + i)·256^L : (N·256 + i + 1)·256^L])` for `i` in
//! `0..W` (`W` = 256 for a full tile, 1–255 for a partial one). Each of
//! them is a *perfect* subtree of height `8·L`, which is exactly what the
//! [`NodeStore`] keeps: a tile is one batched read of at most 256 stored
//! hashes, never a recomputation.
//!
//! This module parses and formats tile paths (`tile/<L>/<N>[.p/<W>]`, `N`
//! in `x001/x234/067` groups) and reads tiles; it knows nothing of HTTP.

use crate::hash::Hash;
use crate::tree::{NodeId, NodeStore, TreeError};

/// Hashes in a full tile (tile height 8).
pub const TILE_WIDTH: u64 = 256;

/// Highest tile level the spec allows (63). Tiles above level 7 cover more
/// than 2^64 entries and never exist.
pub const MAX_LEVEL: u8 = 63;

/// Longest `N` path: a u64 has at most 20 digits, 7 groups of 3.
const MAX_GROUPS: usize = 7;

/// What a tile path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    /// `tile/<L>/…`: Merkle tree hashes at level `L`.
    Hashes(u8),
    /// `tile/entries/…`: an entry bundle.
    Entries,
}

/// A parsed tile path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub kind: TileKind,
    pub index: u64,
    /// 1–255 for a partial tile, 256 for a full one.
    pub width: u16,
}

/// Why a tile path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TilePathError {
    #[error("malformed tile path: {0}")]
    Malformed(&'static str),
}

fn malformed(m: &'static str) -> TilePathError {
    TilePathError::Malformed(m)
}

/// A decimal without leading zeroes (`0` alone is fine).
fn canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

impl Tile {
    /// Parse what follows `tile/`: `<L>/<N>[.p/<W>]` or
    /// `entries/<N>[.p/<W>]`. Strict: every form the spec does not allow
    /// (leading zeroes, a missing `x`, a width of 0 or 256, too many
    /// groups) is refused, so each tile has exactly one path.
    pub fn parse(path: &str) -> Result<Tile, TilePathError> {
        let (head, rest) = path
            .split_once('/')
            .ok_or(malformed("expected <L>/<N> or entries/<N>"))?;
        let kind = if head == "entries" {
            TileKind::Entries
        } else {
            if !canonical_decimal(head) || head.len() > 2 {
                return Err(malformed("level is not a decimal 0-63"));
            }
            let level: u8 = head.parse().map_err(|_| malformed("level"))?;
            if level > MAX_LEVEL {
                return Err(malformed("level is not a decimal 0-63"));
            }
            TileKind::Hashes(level)
        };
        let (index_part, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                if !canonical_decimal(w) || w.len() > 3 {
                    return Err(malformed("partial width is not a decimal 1-255"));
                }
                let w: u16 = w.parse().map_err(|_| malformed("width"))?;
                if !(1..=255).contains(&w) {
                    return Err(malformed("partial width is not a decimal 1-255"));
                }
                (i, w)
            }
            None => (rest, 256),
        };
        let groups: Vec<&str> = index_part.split('/').collect();
        if groups.len() > MAX_GROUPS {
            return Err(malformed("index has too many path elements"));
        }
        let mut index: u64 = 0;
        for (k, g) in groups.iter().enumerate() {
            let digits = if k + 1 < groups.len() {
                g.strip_prefix('x')
                    .ok_or(malformed("index elements but the last must start with x"))?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed("index elements must be 3 digits"));
            }
            let d: u64 = digits.parse().map_err(|_| malformed("index"))?;
            index = index
                .checked_mul(1000)
                .and_then(|i| i.checked_add(d))
                .ok_or(malformed("index out of range"))?;
        }
        // One spelling per index: no leading all-zero groups.
        if groups.len() > 1 && groups[0] == "x000" {
            return Err(malformed("index has a leading zero element"));
        }
        Ok(Tile { kind, index, width })
    }

    /// The path after `tile/`, as [`Tile::parse`] reads it.
    pub fn path(&self) -> String {
        let head = match self.kind {
            TileKind::Hashes(l) => l.to_string(),
            TileKind::Entries => "entries".to_string(),
        };
        let mut groups = Vec::new();
        let mut n = self.index;
        loop {
            groups.push(n % 1000);
            n /= 1000;
            if n == 0 {
                break;
            }
        }
        let last = groups.len() - 1;
        let index: Vec<String> = groups
            .iter()
            .rev()
            .enumerate()
            .map(|(k, g)| {
                if k == last {
                    format!("{g:03}")
                } else {
                    format!("x{g:03}")
                }
            })
            .collect();
        let mut s = format!("{head}/{}", index.join("/"));
        if self.width < 256 {
            s.push_str(&format!(".p/{}", self.width));
        }
        s
    }

    pub fn is_full(&self) -> bool {
        self.width == 256
    }

    /// The tree level of the hashes in a tile of tile level `level`.
    fn tree_level(&self) -> Option<u8> {
        match self.kind {
            TileKind::Hashes(l) => l.checked_mul(8).filter(|t| *t < 64),
            TileKind::Entries => Some(0),
        }
    }

    /// The first node (at [`Self::tree_level`]) the tile holds, and one past
    /// the last; `None` when the numbers overflow (no such tile exists).
    fn node_range(&self) -> Option<(u8, u64, u64)> {
        let level = self.tree_level()?;
        let first = self.index.checked_mul(TILE_WIDTH)?;
        let end = first.checked_add(u64::from(self.width))?;
        Some((level, first, end))
    }

    /// Whether a tree of `size` entries has this tile, i.e. every hash in
    /// it is complete at that size. A partial tile exists for every width
    /// up to what the size covers: its hashes never change, so the width a
    /// checkpoint of an earlier size needed stays servable. The full tile
    /// exists once all 256 of its hashes do.
    pub fn exists_at(&self, size: u64) -> bool {
        let Some((level, _, end)) = self.node_range() else {
            return false;
        };
        // The last node, (level, end - 1), is complete once the tree has
        // `end · 2^level` entries.
        NodeId::new(level, end - 1).end().is_some_and(|e| e <= size)
    }

    /// The entry indices of an entry bundle (or the leaves under a level-0
    /// tile).
    pub fn entry_range(&self) -> Option<std::ops::Range<u64>> {
        match self.kind {
            TileKind::Entries | TileKind::Hashes(0) => {
                let (_, first, end) = self.node_range()?;
                Some(first..end)
            }
            TileKind::Hashes(_) => None,
        }
    }
}

/// Why a tile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("tile {0} is not in a tree of {1} entries")]
    NotFound(String, u64),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The bytes of hash tile `tile` (W × 32 bytes) of the tree at the store's
/// size: one batched read of at most 256 stored perfect-subtree hashes.
pub fn read_hash_tile<S: NodeStore + ?Sized>(store: &S, tile: &Tile) -> Result<Vec<u8>, TileError> {
    let size = crate::tree::size(store)?;
    let not_found = || TileError::NotFound(tile.path(), size);
    if matches!(tile.kind, TileKind::Entries) || !tile.exists_at(size) {
        return Err(not_found());
    }
    let (level, first, end) = tile.node_range().ok_or_else(not_found)?;
    let ids: Vec<NodeId> = (first..end).map(|i| NodeId::new(level, i)).collect();
    let hashes = store
        .nodes(&ids)
        .map_err(|e| TreeError::Store(Box::new(e)))?;
    let mut out = Vec::with_capacity(ids.len() * 32);
    for (id, h) in ids.iter().zip(hashes) {
        let h: Hash = h.ok_or(TreeError::MissingNode(*id, size))?;
        out.extend_from_slice(h.as_bytes());
    }
    Ok(out)
}

/// Why an entry bundle could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "entry {index} is {len} bytes, more than an entry bundle's 16-bit length prefix can carry \
     (65535)"
)]
pub struct BundleTooLarge {
    pub index: u64,
    pub len: usize,
}

/// An entry bundle: each entry as a big-endian u16 length and its bytes.
pub fn encode_bundle<'a>(
    first: u64,
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, BundleTooLarge> {
    let mut out = Vec::new();
    for (index, e) in (first..).zip(entries) {
        let len = u16::try_from(e.len()).map_err(|_| BundleTooLarge {
            index,
            len: e.len(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Log, MemoryStore};

    #[test]
    fn paths_parse_strictly_and_round_trip() {
        for (p, kind, index, width) in [
            ("0/000", TileKind::Hashes(0), 0, 256),
            ("0/001.p/5", TileKind::Hashes(0), 1, 5),
            ("1/x001/x234/067", TileKind::Hashes(1), 1_234_067, 256),
            ("entries/x001/000.p/255", TileKind::Entries, 1000, 255),
            ("63/999", TileKind::Hashes(63), 999, 256),
        ] {
            let t = Tile::parse(p).expect(p);
            assert_eq!((t.kind, t.index, t.width), (kind, index, width), "{p}");
            assert_eq!(t.path(), p);
        }
        for bad in [
            "",
            "0",
            "0/",
            "00/000",
            "64/000",
            "0/0",
            "0/0000",
            "0/001/002",
            "0/x001",
            "0/x000/001",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/05",
            "0/000.p/",
            "x/000",
            "entries/000.p/x",
            "0/x001/x002/x003/x004/x005/x006/x007/008",
            "0/-01",
            "0/x999/x999/x999/x999/x999/x999/999",
            "0/000.p/1/2",
            "-1/000",
            "+1/000",
        ] {
            assert!(Tile::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Tiles read from the store equal the spec's definition, computed
    /// from the leaves with the log's own root function, and exist exactly
    /// when the spec says.
    #[test]
    fn tiles_are_the_perfect_subtrees_the_spec_defines() {
        let mut log = Log::new(MemoryStore::new());
        let n: u64 = 256 * 256 + 300;
        let leaves: Vec<Hash> = (0..n).map(|i| Hash::leaf(&i.to_be_bytes())).collect();
        log.append_leaf_hashes(&leaves).expect("append");
        // The spec's example: 70,000 entries → 273 full level-0 tiles, one
        // of width 112, one full level-1 tile, one of width 17, a level-2
        // tile of width 1. Here: 65,836 entries.
        let full0 = Tile::parse("0/256").expect("t");
        assert!(full0.exists_at(n) && !Tile::parse("0/257").expect("t").exists_at(n));
        assert!(Tile::parse("0/257.p/44").expect("t").exists_at(n));
        assert!(!Tile::parse("0/257.p/45").expect("t").exists_at(n));
        assert!(Tile::parse("1/000").expect("t").exists_at(n));
        assert!(Tile::parse("1/001.p/1").expect("t").exists_at(n));
        assert!(!Tile::parse("1/001.p/2").expect("t").exists_at(n));
        assert!(Tile::parse("2/000.p/1").expect("t").exists_at(n));
        assert!(!Tile::parse("2/000").expect("t").exists_at(n));
        assert!(!Tile::parse("7/000.p/1").expect("t").exists_at(n));
        assert!(!Tile::parse("63/999").expect("t").exists_at(u64::MAX));

        let l1 = read_hash_tile(log.store(), &Tile::parse("1/000").expect("t")).expect("tile");
        assert_eq!(l1.len(), 256 * 32);
        for i in [0u64, 1, 77, 255] {
            // MTH(D[i·256 : (i+1)·256]) = root of the 256 leaves there.
            let mut sub = Log::new(MemoryStore::new());
            sub.append_leaf_hashes(&leaves[(i * 256) as usize..((i + 1) * 256) as usize])
                .expect("sub");
            let want = sub.root().expect("root");
            assert_eq!(
                &l1[(i * 32) as usize..(i as usize + 1) * 32],
                want.as_bytes()
            );
        }
        let l0 = read_hash_tile(log.store(), &Tile::parse("0/257.p/44").expect("t")).expect("t");
        assert_eq!(l0.len(), 44 * 32);
        assert_eq!(&l0[..32], leaves[257 * 256].as_bytes());
        let l2 = read_hash_tile(log.store(), &Tile::parse("2/000.p/1").expect("t")).expect("t");
        assert_eq!(l2, log.root_at(65_536).expect("root").as_bytes().to_vec());
        assert!(matches!(
            read_hash_tile(log.store(), &Tile::parse("0/258.p/1").expect("t")),
            Err(TileError::NotFound(..))
        ));
    }

    #[test]
    fn bundles_are_length_prefixed_and_bounded() {
        let b = encode_bundle(0, [&b"ab"[..], &b""[..], &[7u8; 300][..]]).expect("bundle");
        assert_eq!(&b[..4], &[0, 2, b'a', b'b']);
        assert_eq!(&b[4..6], &[0, 0]);
        assert_eq!(&b[6..8], &[1, 44]);
        assert_eq!(b.len(), 4 + 2 + 2 + 300);
        let big = vec![0u8; 65_536];
        assert_eq!(
            encode_bundle(9, [&b"x"[..], &big[..]]),
            Err(BundleTooLarge {
                index: 10,
                len: 65_536
            })
        );
    }
}
