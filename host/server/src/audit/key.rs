//! The log's signing key and the latest checkpoint it signed.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use kasbah_audit::{Log, LogError, LogSigner, LogVerifier, Receipt, SignedCheckpoint};

use super::log::{Snapshot, StoredEntry};

/// The log's signing key, the latest checkpoint it signed, and the newest
/// checkpoint witnesses cosigned (`audit/witnesses.rs` fills it).
pub struct AuditKey {
    signer: LogSigner,
    latest: Mutex<Option<SignedCheckpoint>>,
    /// Its note carries the log's signature and the cosignature lines
    /// collected so far, in that order.
    witnessed: Mutex<Option<SignedCheckpoint>>,
}

/// File name of the log's private key in the data dir.
pub const KEY_FILE: &str = "audit-log.key";

impl AuditKey {
    /// Load `<data_dir>/audit-log.key`, or create it (mode 0600) on first
    /// start. Its name (the checkpoint origin) must be `origin`.
    pub fn load_or_create(data_dir: &Path, origin: &str) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let signer = if path.exists() {
            let s = LogSigner::load(&path)
                .map_err(|e| anyhow::anyhow!("audit log key {}: {e}", path.display()))?;
            if s.name() != origin {
                anyhow::bail!(
                    "audit log key {} is for origin {:?}, but the configuration says \
                     audit_origin = {origin:?}; the origin of a log never changes",
                    path.display(),
                    s.name()
                );
            }
            s
        } else {
            let s = LogSigner::generate(origin)
                .map_err(|e| anyhow::anyhow!("creating the audit log key: {e}"))?;
            s.save(&path)
                .map_err(|e| anyhow::anyhow!("saving the audit log key: {e}"))?;
            tracing::info!(key = %s.verifier(), "created the audit log key {}", path.display());
            s
        };
        Ok(AuditKey::from_signer(signer))
    }

    pub fn from_signer(signer: LogSigner) -> Self {
        AuditKey {
            signer,
            latest: Mutex::new(None),
            witnessed: Mutex::new(None),
        }
    }

    pub fn verifier(&self) -> LogVerifier {
        self.signer.verifier()
    }

    /// A signed checkpoint of the tree at the snapshot's size (what a reader
    /// saw in its transaction), reusing the cached one when it matches.
    /// Only committed sizes are ever signed: the writer commits with
    /// `synchronous = FULL` before any reader can see the new size.
    pub fn checkpoint(&self, snap: &Snapshot<'_>) -> Result<SignedCheckpoint, LogError> {
        let size = snap.size;
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = latest.as_ref()
            && c.checkpoint.size == size
        {
            return Ok(c.clone());
        }
        let signed = snap.log().checkpoint_at(size, &self.signer)?;
        if latest
            .as_ref()
            .is_none_or(|c| c.checkpoint.size < signed.checkpoint.size)
        {
            *latest = Some(signed.clone());
        }
        Ok(signed)
    }

    /// The newest cosigned checkpoint, if witnesses cosigned one.
    pub fn witnessed(&self) -> Option<SignedCheckpoint> {
        self.witnessed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Record cosignatures collected on `signed` (a checkpoint this key
    /// signed): kept if it is newer than the one held, or the same tree
    /// with more cosignatures.
    pub fn set_witnessed(&self, signed: SignedCheckpoint) {
        let mut w = self
            .witnessed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let better = w.as_ref().is_none_or(|c| {
            c.checkpoint.size < signed.checkpoint.size
                || (c.checkpoint == signed.checkpoint && c.note.len() < signed.note.len())
        });
        if better {
            *w = Some(signed);
        }
    }

    /// The checkpoint to serve from a snapshot: the newest cosigned one when
    /// there is one (it may lag the log by a submission round), else a
    /// freshly signed one.
    pub fn served(&self, snap: &Snapshot<'_>) -> Result<SignedCheckpoint, LogError> {
        match self.witnessed().filter(|c| c.checkpoint.size <= snap.size) {
            Some(c) => Ok(c),
            None => self.checkpoint(snap),
        }
    }

    /// A receipt for `entry` (read in the same snapshot) proven into a
    /// checkpoint that covers it: the cosigned one if it does, else the
    /// latest. The log checks the bytes against the stored leaf and the
    /// proof against the checkpoint before handing it out.
    pub fn receipt(&self, snap: &Snapshot<'_>, entry: StoredEntry) -> Result<Receipt, LogError> {
        let size = snap.size;
        let covers =
            |c: &SignedCheckpoint| c.checkpoint.size > entry.index && c.checkpoint.size <= size;
        // A cached checkpoint is good if it already covers the entry.
        let cached = self.witnessed().filter(covers).or_else(|| {
            self.latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .filter(covers)
        });
        let checkpoint = match cached {
            Some(c) => c,
            None => self.checkpoint(snap)?,
        };
        Log::new(snap.store_at(checkpoint.checkpoint.size)).receipt(
            entry.bytes,
            entry.index,
            &checkpoint,
        )
    }
}
