//! kasbah's transparency log (issue 5), without the server.
//!
//! * [`hash`]: RFC 6962 leaf/node hashing.
//! * [`tree`]: the Merkle tree over a [`NodeStore`] of perfect-subtree
//!   hashes: append, root at any size, inclusion and consistency proofs, all
//!   with O(log n) node reads. [`MemoryStore`] and [`FileStore`] implement
//!   the store; the server implements it over SQLite in its own transaction.
//! * [`verify`]: the RFC 9162 §2.1.3.2 / §2.1.4.2 verifiers.
//! * [`entry`]: audit entries and their frozen canonical byte format.
//! * [`dsse`]: module signatures (in-toto statements in DSSE envelopes,
//!   Ed25519 keys, key ids).
//! * [`note`], [`checkpoint`]: C2SP signed notes (Ed25519) and checkpoints.
//! * [`receipt`]: offline receipt verification and the fork/rollback
//!   [`Watcher`].
//! * [`tiles`]: the tree as C2SP tlog-tiles (hash tiles read from the
//!   store, entry bundles).
//! * [`cosignature`], [`witness`]: C2SP tlog-cosignature (Ed25519, type
//!   0x04) and the rules of a tlog-witness `add-checkpoint` call.
//!
//! No async runtime, no HTTP, no wasmtime: the SDK's native client reuses the
//! verifier half as is.
//!
//! # Server side
//!
//! Implement [`NodeStore`] over the database transaction that records the
//! state change (a `audit_nodes(pos INTEGER PRIMARY KEY, hash BLOB)` table
//! keyed by [`NodeId::position`], the size in a one-row table, and the
//! canonical entry bytes in `audit_entries(idx, bytes)`), wrap it in a
//! [`Log`] and append inside the same transaction: the entry, its tree nodes
//! and the change commit or roll back together. (`kasbah-server` does this,
//! with the nodes a leaf completes stored in that leaf's row: same order,
//! half the rows; see its `audit` module.)
//!
//! ```
//! use kasbah_audit::{Entry, EntryBody, Log, LogSigner, MemoryStore, TenantCreated};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = LogSigner::from_seed("kasbah.example/audit", &[7; 32])?; // LogSigner::load(path) in production
//! let mut log = Log::new(MemoryStore::new()); // the SQLite-backed store in the server
//! let appended = log.append(&Entry::new(
//!     1_767_225_600_000,
//!     EntryBody::TenantCreated(TenantCreated { tenant: "acme".into(), operator: "op".into() }),
//! ))?;
//! // Store `appended.bytes` at `appended.index`; after commit, sign a checkpoint:
//! let checkpoint = log.checkpoint(&key)?; // serve `checkpoint.note` as text/plain
//! let receipt = log.receipt(appended.bytes, appended.index, &checkpoint)?;
//! let json = serde_json::to_string(&receipt)?;
//!
//! // Client side, offline, with only the public key string:
//! let vkey: kasbah_audit::LogVerifier = key.verifier().to_string().parse()?;
//! let receipt: kasbah_audit::Receipt = serde_json::from_str(&json)?;
//! let verified = kasbah_audit::verify_receipt(&receipt, &vkey, None)?;
//! assert_eq!(verified.entry.body.tenant(), "acme");
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod cosignature;
pub mod dsse;
pub mod entry;
pub mod hash;
pub mod note;
pub mod receipt;
pub mod store;
pub mod tiles;
pub mod tree;
pub mod verify;
pub mod witness;

pub use checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint, open_checkpoint};
pub use cosignature::{CosignatureError, CosignerKey, CosignerVerifier, require_cosignatures};
pub use entry::{
    Credential, DatasetCreated, Denial, Entry, EntryBody, EntryError, ModulePublished, PolicySet,
    ProvenancePublished, RunExecuted, SecretChanged, SigningKeyRevoked, TenantCreated,
};
pub use hash::Hash;
pub use note::{KeyError, LogSigner, LogVerifier, NoteError};
pub use receipt::{
    Receipt, VerifiedEntry, VerifyError, WatchError, WatchOutcome, Watcher, verify_receipt,
};
#[cfg(unix)]
pub use store::FileStore;
pub use store::{MemoryStore, StoreError};
pub use tree::{NodeId, NodeStore, TreeError};
pub use verify::{ProofError, verify_consistency, verify_inclusion};

/// Why a [`Log`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("cannot encode entry: {0}")]
    Entry(#[from] EntryError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("entry bytes do not hash to the leaf stored at index {index}")]
    EntryMismatch { index: u64 },
    #[error(
        "the node store is corrupt: the inclusion proof of entry {index} does not lead to the \
         signed root of size {size} ({reason})"
    )]
    ProofFailed {
        index: u64,
        size: u64,
        reason: ProofError,
    },
}

/// What [`Log::append`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub index: u64,
    pub leaf_hash: Hash,
    /// The canonical entry bytes: store them next to the index (the server's
    /// `audit_entries` table), they are what receipts carry.
    pub bytes: Vec<u8>,
}

/// The log over a node store. Holds no state of its own besides the store,
/// so a `Log` over a store that wraps a database transaction is exactly as
/// transactional as that transaction.
#[derive(Debug, Default)]
pub struct Log<S> {
    store: S,
}

impl<S: NodeStore> Log<S> {
    pub fn new(store: S) -> Self {
        Log { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn into_inner(self) -> S {
        self.store
    }

    /// Number of entries.
    pub fn size(&self) -> Result<u64, TreeError> {
        tree::size(&self.store)
    }

    /// Encode and append one entry.
    pub fn append(&mut self, entry: &Entry) -> Result<Appended, LogError> {
        let bytes = entry.encode()?;
        let leaf_hash = Hash::leaf(&bytes);
        let index = tree::append_leaf(&mut self.store, leaf_hash)?;
        Ok(Appended {
            index,
            leaf_hash,
            bytes,
        })
    }

    /// Encode and append several entries with one store write (group
    /// commit). Returns them in order.
    pub fn append_batch(&mut self, entries: &[Entry]) -> Result<Vec<Appended>, LogError> {
        let bytes = entries
            .iter()
            .map(Entry::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let leaves: Vec<Hash> = bytes.iter().map(|b| Hash::leaf(b)).collect();
        let first = tree::append_leaves(&mut self.store, &leaves)?;
        Ok((first..)
            .zip(bytes.into_iter().zip(leaves))
            .map(|(index, (bytes, leaf_hash))| Appended {
                index,
                leaf_hash,
                bytes,
            })
            .collect())
    }

    /// Append raw leaf hashes (see [`tree::append_leaves`]).
    pub fn append_leaf_hashes(&mut self, leaves: &[Hash]) -> Result<u64, TreeError> {
        tree::append_leaves(&mut self.store, leaves)
    }

    /// Root hash at the current size.
    pub fn root(&self) -> Result<Hash, TreeError> {
        tree::root_at(&self.store, self.size()?)
    }

    /// Root hash when the log had `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash, TreeError> {
        tree::root_at(&self.store, size)
    }

    /// Inclusion proof of entry `index` in the tree of size `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        tree::inclusion_proof(&self.store, index, size)
    }

    /// Consistency proof from size `old` to size `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, TreeError> {
        tree::consistency_proof(&self.store, old, new)
    }

    /// Sign a checkpoint of the current tree; the key's name is the origin.
    pub fn checkpoint(&self, signer: &LogSigner) -> Result<SignedCheckpoint, LogError> {
        self.checkpoint_at(self.size()?, signer)
    }

    /// Sign a checkpoint of the tree at `size`.
    pub fn checkpoint_at(
        &self,
        size: u64,
        signer: &LogSigner,
    ) -> Result<SignedCheckpoint, LogError> {
        let root = self.root_at(size)?;
        Ok(Checkpoint::new(signer.name(), size, root).sign(signer)?)
    }

    /// A receipt for the entry with canonical `bytes` at `index`, proven into
    /// `checkpoint` (which must be one of this log's). Checks the bytes
    /// against the stored leaf hash and verifies the proof against the
    /// checkpoint before returning, so a corrupted store is noticed here
    /// rather than by a client.
    pub fn receipt(
        &self,
        bytes: Vec<u8>,
        index: u64,
        checkpoint: &SignedCheckpoint,
    ) -> Result<Receipt, LogError> {
        let size = checkpoint.checkpoint.size;
        let proof = self.inclusion_proof(index, size)?;
        let stored = self
            .store
            .node(NodeId::new(0, index))
            .map_err(|e| TreeError::Store(Box::new(e)))?;
        let leaf = Hash::leaf(&bytes);
        if stored != Some(leaf) {
            return Err(LogError::EntryMismatch { index });
        }
        verify_inclusion(&leaf, index, size, &proof, &checkpoint.checkpoint.root).map_err(
            |reason| LogError::ProofFailed {
                index,
                size,
                reason,
            },
        )?;
        Ok(Receipt::new(bytes, index, proof, checkpoint))
    }
}
