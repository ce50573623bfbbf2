//! Two [`NodeStore`]s: an in-memory array and an append-only file. Both lay
//! hashes out in append (post-)order, so node `id` lives at slot
//! `id.position()` and `n` leaves take exactly `2n - popcount(n)` hashes
//! (32 bytes each: ~640 MB for 10M entries, no per-node overhead).

use crate::hash::{HASH_LEN, Hash};
use crate::tree::{NodeId, NodeStore, nodes_for_size};

/// Why a store refused a write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "out-of-order write: {id:?} belongs at slot {expected:?}, the next free slot is {next}"
    )]
    OutOfOrder {
        id: NodeId,
        expected: Option<u64>,
        next: u64,
    },
    #[error("extend to size {new_size} left {nodes} hashes, expected {expected}")]
    SizeMismatch {
        new_size: u64,
        nodes: u64,
        expected: u64,
    },
    #[error("audit log file: {0}")]
    Io(#[from] std::io::Error),
}

fn check_batch(next: u64, new_size: u64, nodes: &[(NodeId, Hash)]) -> Result<(), StoreError> {
    for (k, (id, _)) in (next..).zip(nodes) {
        let expected = id.position();
        if expected != Some(k) {
            return Err(StoreError::OutOfOrder {
                id: *id,
                expected,
                next: k,
            });
        }
    }
    let total = next + nodes.len() as u64;
    if total != nodes_for_size(new_size) {
        return Err(StoreError::SizeMismatch {
            new_size,
            nodes: total,
            expected: nodes_for_size(new_size),
        });
    }
    Ok(())
}

/// Perfect-subtree hashes in one `Vec`, in append order.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    nodes: Vec<Hash>,
    size: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserve room for `leaves` entries up front (exactly
    /// `2·leaves - popcount(leaves)` hashes), avoiding reallocation spikes.
    pub fn with_capacity(leaves: u64) -> Self {
        let n = usize::try_from(nodes_for_size(leaves)).unwrap_or(0);
        MemoryStore {
            nodes: Vec::with_capacity(n),
            size: 0,
        }
    }

    /// Bytes held by the hashes (capacity included).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * HASH_LEN
    }

    /// Overwrite a stored hash in place. Only for tamper tests: a real store
    /// never rewrites a node.
    #[doc(hidden)]
    pub fn corrupt(&mut self, id: NodeId, hash: Hash) -> bool {
        let slot = id
            .position()
            .and_then(|p| usize::try_from(p).ok())
            .and_then(|p| self.nodes.get_mut(p));
        match slot {
            Some(s) => {
                *s = hash;
                true
            }
            None => false,
        }
    }
}

impl NodeStore for MemoryStore {
    type Error = StoreError;

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.size)
    }

    fn node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        Ok(id
            .position()
            .and_then(|p| usize::try_from(p).ok())
            .and_then(|p| self.nodes.get(p))
            .copied())
    }

    fn extend(&mut self, new_size: u64, nodes: &[(NodeId, Hash)]) -> Result<(), StoreError> {
        check_batch(self.nodes.len() as u64, new_size, nodes)?;
        self.nodes.extend(nodes.iter().map(|(_, h)| *h));
        self.size = new_size;
        Ok(())
    }
}

#[cfg(unix)]
pub use file::FileStore;

#[cfg(unix)]
mod file {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    use std::path::Path;

    /// Perfect-subtree hashes appended to a file, 32 bytes per node in
    /// append order; the tree size is implied by the file length. A torn
    /// tail (a crash mid-append) is cut back to the last whole append when
    /// the file is opened. With `sync` on, every `extend` is followed by
    /// `fdatasync`, so a batch of appends costs one sync (group commit).
    #[derive(Debug)]
    pub struct FileStore {
        file: File,
        size: u64,
        nodes: u64,
        sync: bool,
    }

    impl FileStore {
        /// Open (creating if needed) the node file at `path`.
        pub fn open(path: &Path, sync: bool) -> Result<Self, StoreError> {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)?;
            let whole = file.metadata()?.len() / HASH_LEN as u64;
            // Largest size whose node count fits in the file.
            let mut size = whole / 2;
            while nodes_for_size(size + 1) <= whole {
                size += 1;
            }
            while nodes_for_size(size) > whole {
                size -= 1;
            }
            let nodes = nodes_for_size(size);
            if nodes * HASH_LEN as u64 != file.metadata()?.len() {
                file.set_len(nodes * HASH_LEN as u64)?;
                file.sync_all()?;
            }
            Ok(FileStore {
                file,
                size,
                nodes,
                sync,
            })
        }
    }

    impl NodeStore for FileStore {
        type Error = StoreError;

        fn size(&self) -> Result<u64, StoreError> {
            Ok(self.size)
        }

        fn node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
            let Some(pos) = id.position().filter(|p| *p < self.nodes) else {
                return Ok(None);
            };
            let mut buf = [0u8; HASH_LEN];
            self.file.read_exact_at(&mut buf, pos * HASH_LEN as u64)?;
            Ok(Some(Hash(buf)))
        }

        fn extend(&mut self, new_size: u64, nodes: &[(NodeId, Hash)]) -> Result<(), StoreError> {
            check_batch(self.nodes, new_size, nodes)?;
            let mut buf = Vec::with_capacity(nodes.len() * HASH_LEN);
            for (_, h) in nodes {
                buf.extend_from_slice(&h.0);
            }
            if let Err(e) = self.file.write_all(&buf) {
                // Cut a partial write back so the file matches `self.nodes`.
                let _ = self.file.set_len(self.nodes * HASH_LEN as u64);
                return Err(e.into());
            }
            if self.sync {
                self.file.sync_data()?;
            }
            self.nodes += nodes.len() as u64;
            self.size = new_size;
            Ok(())
        }
    }
}
