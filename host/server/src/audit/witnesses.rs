//! Submitting checkpoints to witnesses (C2SP tlog-witness, the log's side).
//!
//! A background task looks every `witness_interval_ms` for a log size no
//! witness round has covered yet, signs the checkpoint of that size, and
//! sends it to every configured witness at once (`POST <url>/add-checkpoint`
//! with a consistency proof from the size that witness last cosigned). A
//! witness that answers 409 tells its size: the proof is rebuilt from there
//! and the request repeated (at most [`ATTEMPTS`] requests per witness and
//! round, each within `witness_timeout_ms`). Cosignature lines are kept only
//! if they verify with the witness's configured key; the checkpoint with
//! every line collected becomes the one served (`AuditKey::set_witnessed`).
//! A witness that failed is tried again on the next round, with the newest
//! size; nothing here can fail a request or a commit.

use std::sync::Mutex;
use std::time::Duration;

use kasbah_audit::witness::request_body;
use kasbah_audit::{CosignerVerifier, SignedCheckpoint};

use super::service::log_error;
use crate::error::ApiError;
use crate::state::AppState;

/// Requests per witness and round (a 409 resynchronisation costs one).
pub const ATTEMPTS: usize = 3;

/// Largest answer read from a witness.
const MAX_ANSWER: usize = 64 * 1024;

/// One configured witness and what the log knows of it.
pub struct Witness {
    url: String,
    key: CosignerVerifier,
    /// The size this witness last cosigned, as far as the log knows
    /// (`None`: not known yet; the first request says 0 and learns it).
    known: Mutex<Option<u64>>,
}

impl Witness {
    pub fn new(url: &str, key: CosignerVerifier) -> Self {
        Witness {
            url: url.trim_end_matches('/').to_string(),
            key,
            known: Mutex::new(None),
        }
    }

    fn known(&self) -> Option<u64> {
        *self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_known(&self, size: u64) {
        *self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(size);
    }
}

/// Start the submission task if witnesses are configured.
pub fn start(s: &AppState) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if s.config.audit_witnesses.is_empty() {
        return Ok(None);
    }
    let witnesses = s
        .config
        .audit_witnesses
        .iter()
        .map(|w| Ok(Witness::new(&w.url, w.verifier()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quorum = s.config.witness_quorum.unwrap_or(witnesses.len());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(s.config.witness_timeout_ms))
        .build()?;
    let mut sub = Submitter {
        witnesses,
        http,
        quorum,
        partial: None,
    };
    let s = s.clone();
    Ok(Some(tokio::spawn(async move {
        let every = Duration::from_millis(s.config.witness_interval_ms);
        loop {
            if let Err(e) = sub.round(&s).await {
                tracing::warn!("witness round: {}", e.message);
            }
            tokio::time::sleep(every).await;
        }
    })))
}

struct Submitter {
    witnesses: Vec<Witness>,
    http: reqwest::Client,
    /// Cosignatures a checkpoint needs before it is served.
    quorum: usize,
    /// The newest checkpoint submitted, with the lines collected so far.
    partial: Option<SignedCheckpoint>,
}

impl Submitter {
    /// One round: sign the checkpoint of the log's size and submit it to
    /// every witness whose cosignature on it is still missing. Once it has
    /// `quorum` cosignatures it becomes the checkpoint served; until then
    /// the previous one stays served.
    async fn round(&mut self, s: &AppState) -> Result<(), ApiError> {
        let signed =
            s.db.audit_read(|snap| s.audit.checkpoint(snap))?
                .map_err(log_error)?;
        let mut note = match self.partial.take() {
            Some(p) if p.checkpoint == signed.checkpoint => p.note,
            _ => signed.note.clone(),
        };
        let pending: Vec<&Witness> = self
            .witnesses
            .iter()
            .filter(|w| w.key.verify(&note).is_err())
            .collect();
        let answers = futures_util::future::join_all(
            pending.iter().map(|w| submit(s, &self.http, w, &signed)),
        )
        .await;
        for (w, a) in pending.iter().zip(answers) {
            match a {
                Ok(line) => note.push_str(&line),
                Err(e) => tracing::warn!(
                    witness = %w.url,
                    "checkpoint of size {} not cosigned: {e}",
                    signed.checkpoint.size
                ),
            }
        }
        let cosigned = self
            .witnesses
            .iter()
            .filter(|w| w.key.verify(&note).is_ok())
            .count();
        let collected = SignedCheckpoint {
            checkpoint: signed.checkpoint.clone(),
            note,
        };
        if cosigned >= self.quorum.max(1) {
            s.audit.set_witnessed(collected.clone());
        }
        self.partial = Some(collected);
        Ok(())
    }
}

/// Submit `signed` to one witness; its verified cosignature line.
async fn submit(
    s: &AppState,
    http: &reqwest::Client,
    w: &Witness,
    signed: &SignedCheckpoint,
) -> Result<String, String> {
    let new = signed.checkpoint.size;
    for _ in 0..ATTEMPTS {
        let old = w.known().unwrap_or(0);
        if old > new {
            return Err(format!(
                "the witness cosigned a tree of {old} entries, larger than this log's {new}: \
                 it saw another (forked or rolled-back) view of this log"
            ));
        }
        let proof = if old == 0 || old == new {
            Vec::new()
        } else {
            s.db.audit_read(|snap| snap.log().consistency_proof(old, new))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let body = request_body(old, &proof, &signed.note);
        let resp = http
            .post(format!("{}/add-checkpoint", w.url))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        let text = read_bounded(resp).await?;
        match status {
            200 => {
                // Keep only this witness's verifying line(s).
                let lines: String = text
                    .lines()
                    .filter(|l| l.starts_with('\u{2014}'))
                    .filter(|l| w.key.verify(&format!("{}{l}\n", signed.note)).is_ok())
                    .map(|l| format!("{l}\n"))
                    .collect();
                if lines.is_empty() {
                    return Err("the answer carries no valid cosignature by its key".into());
                }
                w.set_known(new);
                return Ok(lines);
            }
            409 => {
                let theirs: u64 = text.trim_end_matches('\n').parse().map_err(|_| {
                    format!(
                        "409 without a size: {:?}",
                        text.chars().take(80).collect::<String>()
                    )
                })?;
                w.set_known(theirs);
            }
            _ => {
                return Err(format!(
                    "{status}: {}",
                    text.chars().take(200).collect::<String>().trim_end()
                ));
            }
        }
    }
    Err(format!(
        "no agreement on the old size after {ATTEMPTS} requests"
    ))
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if buf.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("answer larger than {MAX_ANSWER} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| "answer is not UTF-8".to_string())
}
