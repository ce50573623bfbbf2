//! One report shape for a run, wherever it ran (issue 18): a local run's
//! JSON (`kasbah run FILE.wasm --json`) is a run record of the server's
//! shape ([`crate::api::RunRecord`]) minus what only a server has (id,
//! tenant, policy version, placement, the output's download URL). Same
//! keys, same nesting, same meaning: `outcome` (an ok outcome's body is in
//! `output`, as in the server's records), `output` (digest, size, content
//! type, `inline` bytes), `usage` (`wall_time_us`, …), `stdout`, `stderr`,
//! `logs`, `denials`, and the timestamps (ms since the Unix epoch).

use serde::{Deserialize, Serialize};

use crate::api::{OutputRef, RunStatus};
use crate::{Captured, Denial, Digest, Logs, Outcome, RunReport, Usage};

/// A local run's record (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalRunRecord {
    pub module: Digest,
    pub status: RunStatus,
    pub input_digest: Digest,
    pub input_size: u64,
    pub outcome: Option<Outcome>,
    pub output: Option<OutputRef>,
    pub usage: Option<Usage>,
    pub stdout: Option<Captured>,
    pub stderr: Option<Captured>,
    pub logs: Option<Logs>,
    pub denials: Vec<Denial>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl LocalRunRecord {
    /// The record of a local run of `input` that started at `started_at`
    /// and ended at `finished_at` (ms since the Unix epoch). The whole
    /// output is inline (a local run keeps nothing elsewhere).
    pub fn new(report: RunReport, input: &[u8], started_at: i64, finished_at: i64) -> Self {
        let mut outcome = report.outcome;
        let output = match &mut outcome {
            Outcome::Ok { output } => {
                let body = std::mem::take(&mut output.body);
                Some(OutputRef {
                    digest: Digest::of(&body),
                    size: body.len() as u64,
                    content_type: output.content_type.clone(),
                    url: String::new(),
                    inline: Some(Captured {
                        bytes: body,
                        dropped_bytes: 0,
                    }),
                })
            }
            _ => None,
        };
        LocalRunRecord {
            module: report.module,
            status: RunStatus::Done,
            input_digest: Digest::of(input),
            input_size: input.len() as u64,
            outcome: Some(outcome),
            output,
            usage: Some(report.usage),
            stdout: Some(report.stdout),
            stderr: Some(report.stderr),
            logs: Some(report.logs),
            denials: report.denials,
            created_at: started_at,
            started_at: Some(started_at),
            finished_at: Some(finished_at),
        }
    }
}
