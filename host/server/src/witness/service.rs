//! The witness's rules: parse and check an `add-checkpoint` request
//! (`kasbah_audit::witness::check`: 400/403/404/409/422 as C2SP
//! tlog-witness says), record the new size durably, then cosign — all under
//! one lock, so two requests can never roll the recorded size back.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kasbah_audit::witness::{self, Cosigned, Refusal};
use kasbah_audit::{CosignerKey, Hash, LogVerifier};
use sha2::{Digest as _, Sha256};

use super::storage::{LogState, StateFile};

/// Why a request was not cosigned.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("recording the checkpoint failed: {0}")]
    Storage(#[from] std::io::Error),
}

/// A witness: its key, the logs it knows, its state.
pub struct WitnessService {
    key: CosignerKey,
    logs: BTreeMap<String, Vec<LogVerifier>>,
    state: Mutex<StateFile>,
}

impl WitnessService {
    /// `logs`: (origin, key) pairs; an origin may have several keys.
    pub fn new(key: CosignerKey, logs: Vec<(String, LogVerifier)>, state: StateFile) -> Self {
        let mut by_origin: BTreeMap<String, Vec<LogVerifier>> = BTreeMap::new();
        for (origin, k) in logs {
            by_origin.entry(origin).or_default().push(k);
        }
        WitnessService {
            key,
            logs: by_origin,
            state: Mutex::new(state),
        }
    }

    pub fn verifier(&self) -> kasbah_audit::CosignerVerifier {
        self.key.verifier()
    }

    /// Handle `POST /add-checkpoint`: the cosignature line(s) to answer.
    /// Blocking (it fsyncs): call it off the async threads.
    pub fn add_checkpoint(&self, body: &str) -> Result<String, WitnessError> {
        let req = witness::parse_request(body)?;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let checked = witness::check(
            &req,
            |origin| self.logs.get(origin).cloned(),
            |origin| {
                state.get(origin).and_then(|s| {
                    Some(Cosigned {
                        size: s.size,
                        root: Hash::from_base64(&s.root)?,
                    })
                })
            },
        );
        let checkpoint = match checked {
            Ok(c) => c,
            Err(r) => {
                if matches!(r, Refusal::Conflict { .. } | Refusal::Unprocessable(_)) {
                    // Validly signed by the log: possible evidence of a
                    // fork or rollback. Logged, never cosigned.
                    tracing::warn!("refused a signed checkpoint ({r}):\n{}", req.note);
                }
                return Err(r.into());
            }
        };
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        let text = checkpoint.text();
        let line = self.key.cosign(&text, timestamp);
        // The note monitors get: the text, the signatures of the log's
        // trusted keys, and this cosignature.
        let log_lines: String = req
            .note
            .rsplit_once("\n\n")
            .map(|(_, sigs)| sigs.to_string())
            .unwrap_or_default();
        state.put(
            &checkpoint.origin,
            LogState {
                size: checkpoint.size,
                root: checkpoint.root.to_base64(),
                note: format!("{text}\n{log_lines}{line}"),
            },
        )?;
        Ok(line)
    }

    /// `GET /<hex sha256(origin)>/checkpoint`: the last cosigned checkpoint
    /// of that log.
    pub fn checkpoint(&self, origin_hash: &str) -> Option<String> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state
            .origins()
            .find(|(o, _)| hex::encode(Sha256::digest(o.as_bytes())) == origin_hash)
            .map(|(_, s)| s.note.clone())
    }
}
