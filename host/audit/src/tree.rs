//! The log's Merkle tree over a pluggable [`NodeStore`].
//!
//! The store keeps one hash per *perfect* subtree: the node at `(level, index)`
//! covers leaves `[index·2^level, (index+1)·2^level)` and exists once all of
//! them are appended. Appending a leaf writes the leaf hash and every perfect
//! subtree it completes (on average two hashes per leaf, never rewritten).
//!
//! Everything else is derived with O(log n) reads, issued as a single batched
//! [`NodeStore::nodes`] call per operation: the root at any size `m` is
//! the right fold of the ≤ 64 perfect subtrees that make up `[0, m)` (one per
//! set bit of `m`), and the one *ephemeral* node a proof can need on the
//! incomplete right edge is folded the same way. Proofs are therefore correct
//! for every historical size, not just the current one, and never load leaves.
//!
//! The algorithms produce exactly the `PATH` and `PROOF` of RFC 9162 §2.1.3.1
//! and §2.1.4.1 (checked against a literal transcription of the RFC's
//! recursive definitions, against the transparency-dev/merkle test vectors and
//! against the independent `ct-merkle` crate in the tests).

use crate::hash::Hash;
use std::error::Error as StdError;

/// Coordinates of a perfect subtree: `level` 0 is a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

impl NodeId {
    pub const fn new(level: u8, index: u64) -> Self {
        NodeId { level, index }
    }

    /// First leaf covered.
    pub fn start(&self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf covered, i.e. the tree size at which the node
    /// becomes complete. `None` on overflow (no such node can exist).
    pub fn end(&self) -> Option<u64> {
        self.index
            .checked_add(1)?
            .checked_mul(1u64.checked_shl(self.level.into())?)
    }

    /// Position of this node in the append order (post-order: leaf `k` is
    /// followed by the nodes it completes, lowest level first). Every node
    /// ever written has a unique, dense position, so an append-only array or
    /// file indexed by it holds exactly `2n - popcount(n)` hashes for `n`
    /// leaves. `None` on overflow.
    pub fn position(&self) -> Option<u64> {
        let t = self.end()?; // leaf t-1 completes this node
        Some(nodes_for_size(t - 1) + u64::from(self.level))
    }
}

/// Number of perfect-subtree hashes stored for a tree of `n` leaves.
pub fn nodes_for_size(n: u64) -> u64 {
    // Every leaf adds 1 + (number of subtrees it completes); summed this is
    // 2n - popcount(n). Computed without overflow for n < 2^63.
    2 * n - u64::from(n.count_ones())
}

/// A boxed store error, so that tree errors are one concrete type whatever the
/// backing store is.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Where the tree's perfect-subtree hashes live.
///
/// Implement this for an in-memory array ([`crate::MemoryStore`]), an
/// append-only file ([`crate::FileStore`]) or a database table written in
/// the same transaction as the state change an entry records (the server's
/// SQLite store: a `(level, index) → hash` table plus the size in a one-row
/// table, both written inside the caller's transaction).
///
/// Contract:
/// * after [`extend`](NodeStore::extend) returns `Ok`, [`size`](NodeStore::size)
///   is `new_size` and [`node`](NodeStore::node) returns every hash passed;
/// * `node` returns `Some` for every node with `end() <= size()`;
/// * a failed `extend` leaves the store as it was (or the caller discards it,
///   e.g. by rolling back the transaction).
pub trait NodeStore {
    type Error: StdError + Send + Sync + 'static;

    /// Number of leaves appended so far.
    fn size(&self) -> Result<u64, Self::Error>;

    /// The hash of the perfect subtree `id`, or `None` if it was never stored.
    fn node(&self, id: NodeId) -> Result<Option<Hash>, Self::Error>;

    /// The hashes of several nodes, in order. Every tree operation issues
    /// exactly one such call (at most ~2·log2(n) ids), so a database can
    /// answer it with one query (`... WHERE pos IN (...)`, with
    /// [`NodeId::position`] as the key). The default calls `node` per id.
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, Self::Error> {
        ids.iter().map(|id| self.node(*id)).collect()
    }

    /// Record appended leaves: `nodes` are the leaf hashes and the newly
    /// completed perfect subtrees, in append (post-)order (so
    /// `nodes[i].0.position()` is consecutive, starting at
    /// `nodes_for_size(old size)`), and `new_size` is the new leaf count.
    fn extend(&mut self, new_size: u64, nodes: &[(NodeId, Hash)]) -> Result<(), Self::Error>;
}

impl<S: NodeStore + ?Sized> NodeStore for &mut S {
    type Error = S::Error;
    fn size(&self) -> Result<u64, Self::Error> {
        (**self).size()
    }
    fn node(&self, id: NodeId) -> Result<Option<Hash>, Self::Error> {
        (**self).node(id)
    }
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, Self::Error> {
        (**self).nodes(ids)
    }
    fn extend(&mut self, new_size: u64, nodes: &[(NodeId, Hash)]) -> Result<(), Self::Error> {
        (**self).extend(new_size, nodes)
    }
}

/// Why a tree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("node store failed: {0}")]
    Store(#[source] BoxError),
    #[error("node store is missing {0:?} (tree size {1}): the store is corrupt or truncated")]
    MissingNode(NodeId, u64),
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {requested} is larger than the log ({size} entries)")]
    SizeOutOfRange { requested: u64, size: u64 },
    #[error("consistency proof needs 0 < old size ({old}) <= new size ({new})")]
    BadConsistencyRange { old: u64, new: u64 },
    #[error("the log is full")]
    Full,
}

fn store_err<E: StdError + Send + Sync + 'static>(e: E) -> TreeError {
    TreeError::Store(Box::new(e))
}

/// The log size currently recorded by `store`.
pub fn size<S: NodeStore + ?Sized>(store: &S) -> Result<u64, TreeError> {
    store.size().map_err(store_err)
}

/// Read `ids` with one [`NodeStore::nodes`] call; all must be present.
fn read_all<S: NodeStore + ?Sized>(
    store: &S,
    ids: &[NodeId],
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let got = store.nodes(ids).map_err(store_err)?;
    if got.len() != ids.len() {
        return Err(TreeError::Store(
            format!("asked for {} nodes, got {}", ids.len(), got.len()).into(),
        ));
    }
    ids.iter()
        .zip(got)
        .map(|(id, h)| h.ok_or(TreeError::MissingNode(*id, size)))
        .collect()
}

/// Append leaves (already leaf-hashed with [`Hash::leaf`]). Returns the index
/// of the first one. Reads, in one batch, only the stored perfect subtrees
/// the new leaves will merge with (at most one per level), and makes a single
/// [`NodeStore::extend`] call, so a batch is one write for a file or one
/// group of inserts in a transaction.
pub fn append_leaves<S: NodeStore + ?Sized>(
    store: &mut S,
    leaves: &[Hash],
) -> Result<u64, TreeError> {
    let first = size(store)?;
    if leaves.is_empty() {
        return Ok(first);
    }
    let count = u64::try_from(leaves.len()).map_err(|_| TreeError::Full)?;
    let new_size = first
        .checked_add(count)
        .filter(|n| *n < 1 << 62)
        .ok_or(TreeError::Full)?;
    // Left siblings from before the batch: the perfect subtree ending at
    // `first` on each level where `first` has a set bit, if the batch
    // completes its right sibling.
    let frontier: Vec<NodeId> = (0..62u8)
        .filter(|&l| first >> l & 1 == 1 && ((first >> l) + 1) << l <= new_size)
        .map(|l| NodeId::new(l, (first >> l) - 1))
        .collect();
    let frontier_hashes = read_all(store, &frontier, first)?;
    // Last node known at each level: a merge's left sibling is always there.
    let mut recent: [Option<(u64, Hash)>; 64] = [None; 64];
    for (id, h) in frontier.iter().zip(frontier_hashes) {
        recent[usize::from(id.level)] = Some((id.index, h));
    }
    let mut out = Vec::with_capacity(leaves.len() * 2 + 64);
    for (k, leaf) in (first..).zip(leaves) {
        let mut id = NodeId::new(0, k);
        let mut h = *leaf;
        loop {
            let slot = &mut recent[usize::from(id.level)];
            let left = match (id.index & 1, *slot) {
                (0, _) => None,
                (_, Some((i, lh))) if i + 1 == id.index => Some(lh),
                _ => {
                    return Err(TreeError::MissingNode(
                        NodeId::new(id.level, id.index - 1),
                        first,
                    ));
                }
            };
            out.push((id, h));
            *slot = Some((id.index, h));
            let Some(lh) = left else { break };
            h = Hash::node(&lh, &h);
            id = NodeId::new(id.level + 1, id.index >> 1);
        }
    }
    store.extend(new_size, &out).map_err(store_err)?;
    Ok(first)
}

/// Append one leaf hash; returns its index.
pub fn append_leaf<S: NodeStore + ?Sized>(store: &mut S, leaf: Hash) -> Result<u64, TreeError> {
    append_leaves(store, std::slice::from_ref(&leaf))
}

/// What a proof or root is made of, before any read: each part is one
/// stored node or the right fold of a run of stored nodes (an ephemeral
/// node on the incomplete right edge, or a whole root).
struct Plan {
    ids: Vec<NodeId>,
    /// `(from, to)`: the result is the right fold of `ids[from..to]`.
    parts: Vec<(usize, usize)>,
}

impl Plan {
    fn new() -> Self {
        // Enough for any tree below 2^62 leaves: no reallocation.
        Plan {
            ids: Vec::with_capacity(128),
            parts: Vec::with_capacity(66),
        }
    }

    fn one(&mut self, id: NodeId) {
        self.ids.push(id);
        self.parts.push((self.ids.len() - 1, self.ids.len()));
    }

    /// Leaves `[start, end)` where `end - start < 2^tz(start)` (or
    /// `start == 0`): the perfect subtrees tiling the range, largest first.
    fn range(&mut self, start: u64, end: u64) {
        let from = self.ids.len();
        let len = end - start;
        let mut cur = start;
        for level in (0..64u8).rev() {
            if len >> level & 1 == 1 {
                self.ids.push(NodeId::new(level, cur >> level));
                cur += 1u64 << level;
            }
        }
        self.parts.push((from, self.ids.len()));
    }

    /// Node `id` in the tree of size `m`: stored if perfect, otherwise the
    /// ephemeral right-edge node over `[start, m)`.
    fn node_at(&mut self, id: NodeId, m: u64) {
        match id.end() {
            Some(end) if end <= m => self.one(id),
            _ => self.range(id.start(), m),
        }
    }

    /// The audit path from node `(level, index)` to the root of the tree of
    /// size `m`, bottom to top: for a leaf, RFC 9162 `PATH(index, D[m])`.
    fn path(&mut self, level: u8, index: u64, m: u64) {
        let last = (m - 1) >> level;
        // Below `inner` levels up, the paths to `index` and to the last leaf
        // differ: every sibling exists (the one holding the last leaf may be
        // ephemeral). Above, the node is on the right edge and only has a
        // (perfect) left sibling where it is a right child.
        let inner = 64 - (index ^ last).leading_zeros();
        for j in 0..64u8 {
            let idx = index >> j;
            if u32::from(j) >= inner && idx == 0 {
                break;
            }
            if u32::from(j) < inner {
                self.node_at(NodeId::new(level + j, idx ^ 1), m);
            } else if idx & 1 == 1 {
                self.one(NodeId::new(level + j, idx - 1));
            }
        }
    }

    /// One batched read, then assemble.
    fn run<S: NodeStore + ?Sized>(self, store: &S, size: u64) -> Result<Vec<Hash>, TreeError> {
        let hashes = read_all(store, &self.ids, size)?;
        Ok(self
            .parts
            .iter()
            .map(|&(from, to)| {
                let run = &hashes[from..to];
                let mut acc = run[run.len() - 1];
                for left in run[..run.len() - 1].iter().rev() {
                    acc = Hash::node(left, &acc);
                }
                acc
            })
            .collect())
    }
}

fn check_size<S: NodeStore + ?Sized>(store: &S, m: u64) -> Result<u64, TreeError> {
    let size = size(store)?;
    if m > size {
        return Err(TreeError::SizeOutOfRange { requested: m, size });
    }
    Ok(size)
}

/// `MTH(D[0:m])`, the root hash of the log when it had `m` entries.
pub fn root_at<S: NodeStore + ?Sized>(store: &S, m: u64) -> Result<Hash, TreeError> {
    let size = check_size(store, m)?;
    if m == 0 {
        return Ok(Hash::empty());
    }
    let mut plan = Plan::new();
    plan.range(0, m);
    let mut out = plan.run(store, size)?;
    out.pop()
        .ok_or(TreeError::MissingNode(NodeId::new(0, 0), size))
}

/// RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of size `m`.
pub fn inclusion_proof<S: NodeStore + ?Sized>(
    store: &S,
    index: u64,
    m: u64,
) -> Result<Vec<Hash>, TreeError> {
    let size = check_size(store, m)?;
    if index >= m {
        return Err(TreeError::IndexOutOfRange { index, size: m });
    }
    let mut plan = Plan::new();
    plan.path(0, index, m);
    plan.run(store, size)
}

/// RFC 9162 §2.1.4.1 consistency proof between the trees of sizes `old` and
/// `new` (`0 < old <= new`; empty when equal).
pub fn consistency_proof<S: NodeStore + ?Sized>(
    store: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, TreeError> {
    let size = check_size(store, new)?;
    if old == 0 || old > new {
        return Err(TreeError::BadConsistencyRange { old, new });
    }
    if old == new {
        return Ok(Vec::new());
    }
    // The largest perfect subtree ending at `old`. Its hash opens the proof
    // unless it is the whole old tree (old a power of two: the verifier has
    // it as the old root); then comes its path to the new root.
    let level = u8::try_from(old.trailing_zeros()).map_err(|_| TreeError::Full)?;
    let index = (old - 1) >> level;
    let mut plan = Plan::new();
    if index != 0 {
        plan.one(NodeId::new(level, index));
    }
    plan.path(level, index, new);
    plan.run(store, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_dense_and_in_append_order() {
        // Replay the append order for 300 leaves and check each node's
        // position is the next slot.
        let mut next = 0u64;
        for k in 0u64..300 {
            let mut id = NodeId::new(0, k);
            loop {
                assert_eq!(id.position(), Some(next), "{id:?}");
                next += 1;
                if id.index & 1 == 0 {
                    break;
                }
                id = NodeId::new(id.level + 1, id.index >> 1);
            }
            assert_eq!(nodes_for_size(k + 1), next);
        }
        assert_eq!(NodeId::new(64, 0).end(), None);
        assert_eq!(NodeId::new(1, u64::MAX).position(), None);
    }
}
