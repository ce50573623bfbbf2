//! Offline verification: receipts (one entry proven into a signed
//! checkpoint) and the watcher (a newer checkpoint proven to extend the last
//! trusted one). Both need only the log's public key.

use crate::checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint, open_checkpoint};
use crate::entry::{Entry, EntryError};
use crate::hash::Hash;
use crate::note::LogVerifier;
use crate::verify::{ProofError, verify_consistency, verify_inclusion};
use kasbah_core::Digest;
use serde::{Deserialize, Serialize};

/// Version of the receipt JSON shape.
pub const RECEIPT_VERSION: u32 = 1;

/// Proof that one entry is in the log: the entry's canonical bytes, its
/// index, the inclusion proof and the signed checkpoint it leads to.
///
/// JSON: `{"version":1,"entry":"<base64>","index":7,"inclusion_proof":
/// ["<base64>",...],"checkpoint":"<signed note>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    /// Canonical entry bytes (what the leaf hash covers).
    #[serde(with = "base64_bytes")]
    pub entry: Vec<u8>,
    pub index: u64,
    pub inclusion_proof: Vec<Hash>,
    /// The C2SP signed checkpoint the proof leads to.
    pub checkpoint: String,
}

mod base64_bytes {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// What a successful [`verify_receipt`] proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEntry {
    pub entry: Entry,
    pub index: u64,
    pub leaf_hash: Hash,
    /// The verified checkpoint the entry is included in. Hand it to a
    /// [`Watcher`] to make sure the log never forks away from it.
    pub checkpoint: SignedCheckpoint,
}

/// Why a receipt (or a checkpoint) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("unsupported receipt version {0} (this build reads version {RECEIPT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("checkpoint rejected: {0}")]
    Checkpoint(#[source] CheckpointError),
    #[error(
        "entry is not included at index {index} in the signed tree of size {size}: {reason} \
         (the entry or the proof was altered, or the log does not contain it)"
    )]
    InclusionFailed {
        index: u64,
        size: u64,
        #[source]
        reason: ProofError,
    },
    #[error("entry bytes are not a valid audit entry: {0}")]
    MalformedEntry(#[source] EntryError),
    #[error("entry names module {found} but {expected} was expected")]
    ModuleMismatch { expected: Digest, found: Digest },
    #[error("entry is a {kind} record, which names no module; expected one naming {expected}")]
    NoModule {
        expected: Digest,
        kind: &'static str,
    },
}

impl From<CheckpointError> for VerifyError {
    fn from(e: CheckpointError) -> Self {
        VerifyError::Checkpoint(e)
    }
}

impl Receipt {
    /// Assemble a receipt (server side).
    pub fn new(
        entry: Vec<u8>,
        index: u64,
        proof: Vec<Hash>,
        checkpoint: &SignedCheckpoint,
    ) -> Self {
        Receipt {
            version: RECEIPT_VERSION,
            entry,
            index,
            inclusion_proof: proof,
            checkpoint: checkpoint.note.clone(),
        }
    }
}

/// Verify a receipt offline with only the log's public key:
/// 1. the checkpoint is signed by `log_key` and its origin is the key's name;
/// 2. the entry's leaf hash is at `index` in that tree (RFC 9162 §2.1.3.2);
/// 3. the entry decodes;
/// 4. if `expected_module` is given, the entry names exactly that module.
pub fn verify_receipt(
    receipt: &Receipt,
    log_key: &LogVerifier,
    expected_module: Option<Digest>,
) -> Result<VerifiedEntry, VerifyError> {
    if receipt.version != RECEIPT_VERSION {
        return Err(VerifyError::UnsupportedVersion(receipt.version));
    }
    let checkpoint = open_checkpoint(log_key, &receipt.checkpoint)?;
    let leaf_hash = Hash::leaf(&receipt.entry);
    let size = checkpoint.checkpoint.size;
    verify_inclusion(
        &leaf_hash,
        receipt.index,
        size,
        &receipt.inclusion_proof,
        &checkpoint.checkpoint.root,
    )
    .map_err(|reason| VerifyError::InclusionFailed {
        index: receipt.index,
        size,
        reason,
    })?;
    let entry = Entry::decode(&receipt.entry).map_err(VerifyError::MalformedEntry)?;
    if let Some(expected) = expected_module {
        match entry.body.module() {
            Some(found) if found == expected => {}
            Some(found) => return Err(VerifyError::ModuleMismatch { expected, found }),
            None => {
                return Err(VerifyError::NoModule {
                    expected,
                    kind: entry.body.kind(),
                });
            }
        }
    }
    Ok(VerifiedEntry {
        entry,
        index: receipt.index,
        leaf_hash,
        checkpoint,
    })
}

/// The watcher's verdict on a newer checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Same size and root as the trusted checkpoint.
    Unchanged,
    /// Proven to extend the trusted checkpoint; it is now the trusted one.
    Advanced { from: u64, to: u64 },
}

/// A log misbehaviour (or a bad answer) the watcher refuses to accept. The
/// trusted checkpoint is left unchanged. Fork and rollback carry both signed
/// notes: together they are evidence to show a third party.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("checkpoint rejected: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "LOG ROLLBACK: the log now claims {offered} entries but previously signed a tree of \
         {trusted} entries; entries were dropped or this is a stale or forked view"
    )]
    Rollback {
        trusted: u64,
        offered: u64,
        trusted_note: String,
        offered_note: String,
    },
    #[error(
        "LOG FORK: the log signed two different trees of size {size} (roots {trusted_root} \
         and {offered_root}); keep both checkpoints as proof of equivocation"
    )]
    Fork {
        size: u64,
        trusted_root: Hash,
        offered_root: Hash,
        trusted_note: String,
        offered_note: String,
    },
    #[error(
        "LOG FORK OR BAD PROOF: the signed tree of size {to} is not proven to extend the \
         trusted tree of size {from}: {reason}"
    )]
    Inconsistent {
        from: u64,
        to: u64,
        #[source]
        reason: ProofError,
        trusted_note: String,
        offered_note: String,
    },
}

/// Keeps the last checkpoint a client trusts and only moves forward along
/// consistency proofs.
#[derive(Debug, Clone)]
pub struct Watcher {
    log_key: LogVerifier,
    trusted: SignedCheckpoint,
}

impl Watcher {
    /// Start from a checkpoint note (trust on first use, or one pinned out of
    /// band); its signature is checked.
    pub fn new(log_key: LogVerifier, trusted_note: &str) -> Result<Self, WatchError> {
        let trusted = open_checkpoint(&log_key, trusted_note)?;
        Ok(Watcher { log_key, trusted })
    }

    pub fn trusted(&self) -> &SignedCheckpoint {
        &self.trusted
    }

    /// Check `offered_note` (signed by the log key) against the trusted
    /// checkpoint with `consistency_proof` (from the trusted size to the
    /// offered size). Accepts and advances only on proof.
    pub fn update(
        &mut self,
        offered_note: &str,
        consistency_proof: &[Hash],
    ) -> Result<WatchOutcome, WatchError> {
        let offered = open_checkpoint(&self.log_key, offered_note)?;
        let (old, new): (&Checkpoint, &Checkpoint) =
            (&self.trusted.checkpoint, &offered.checkpoint);
        if new.size < old.size {
            return Err(WatchError::Rollback {
                trusted: old.size,
                offered: new.size,
                trusted_note: self.trusted.note.clone(),
                offered_note: offered.note,
            });
        }
        if new.size == old.size {
            if new.root != old.root {
                return Err(WatchError::Fork {
                    size: old.size,
                    trusted_root: old.root,
                    offered_root: new.root,
                    trusted_note: self.trusted.note.clone(),
                    offered_note: offered.note,
                });
            }
            return Ok(WatchOutcome::Unchanged);
        }
        let (from, to) = (old.size, new.size);
        // The empty tree is a prefix of every tree; any other size needs a proof.
        let proven = if from == 0 {
            if old.root == Hash::empty() && consistency_proof.is_empty() {
                Ok(())
            } else {
                Err(ProofError::EmptyOldTree)
            }
        } else {
            verify_consistency(from, to, &old.root, &new.root, consistency_proof)
        };
        if let Err(reason) = proven {
            return Err(WatchError::Inconsistent {
                from,
                to,
                reason,
                trusted_note: self.trusted.note.clone(),
                offered_note: offered.note,
            });
        }
        self.trusted = offered;
        Ok(WatchOutcome::Advanced { from, to })
    }
}
