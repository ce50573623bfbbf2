//! The log's signing key and the latest checkpoint it signed.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use kasbah_audit::{Log, LogError, LogSigner, LogVerifier, Receipt, SignedCheckpoint};

use super::log::{Snapshot, StoredEntry};

/// The log's signing key and the latest checkpoint it signed.
pub struct AuditKey {
    signer: LogSigner,
    latest: Mutex<Option<SignedCheckpoint>>,
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
        Ok(AuditKey {
            signer,
            latest: Mutex::new(None),
        })
    }

    pub fn from_signer(signer: LogSigner) -> Self {
        AuditKey {
            signer,
            latest: Mutex::new(None),
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

    /// A receipt for `entry` (read in the same snapshot) proven into a
    /// checkpoint that covers it. The log checks the bytes against the
    /// stored leaf and the proof against the checkpoint before handing it
    /// out.
    pub fn receipt(&self, snap: &Snapshot<'_>, entry: StoredEntry) -> Result<Receipt, LogError> {
        let size = snap.size;
        // The cached checkpoint is good if it already covers the entry.
        let cached = self
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|c| c.checkpoint.size > entry.index && c.checkpoint.size <= size);
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
