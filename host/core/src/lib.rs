//! Types shared by every kasbah crate (host, CLI, and later the server and the
//! SDK's native client): content digests, run outcomes and usage records.
//! Deliberately free of wasmtime/wgpu/axum so clients can depend on it.

pub mod api;
pub mod phases;
pub mod report;
mod units;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A SHA-256 content digest, written `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn hex(&self) -> String {
        self.text().as_str()[PREFIX.len()..].to_string()
    }
    /// `sha256:<64 hex>` in a stack buffer: digests are written into every
    /// run record and row, and `hex::encode` + `format!` allocated twice and
    /// went through a char iterator each time.
    fn text(&self) -> DigestText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; TEXT_LEN];
        out[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        for (i, b) in self.0.iter().enumerate() {
            out[PREFIX.len() + 2 * i] = HEX[usize::from(b >> 4)];
            out[PREFIX.len() + 2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        DigestText(out)
    }
}

const PREFIX: &str = "sha256:";
const TEXT_LEN: usize = PREFIX.len() + 64;

struct DigestText([u8; TEXT_LEN]);

impl DigestText {
    fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Incremental hashing, for streamed uploads.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes)
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.text().as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {0:?}: expected `sha256:` followed by 64 lowercase hex digits")]
pub struct InvalidDigest(pub String);

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidDigest(s.chars().take(80).collect());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a pipeline returned on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub content_type: String,
    #[serde(with = "bytes_as_base64_or_text")]
    pub body: Vec<u8>,
}

/// The guest's typed error (the `error` variant of `kasbah:pipeline/types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorKind {
    InvalidInput,
    Denied,
    Unavailable,
    Failed,
}

impl GuestErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            GuestErrorKind::InvalidInput => "invalid_input",
            GuestErrorKind::Denied => "denied",
            GuestErrorKind::Unavailable => "unavailable",
            GuestErrorKind::Failed => "failed",
        }
    }
}

/// How a run ended. Every variant except `Ok` and `GuestError` is decided by
/// the host, never by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The pipeline returned a response within every limit.
    Ok { output: Output },
    /// The pipeline returned its typed error.
    GuestError {
        code: GuestErrorKind,
        message: String,
    },
    /// The guest trapped (panic, stack overflow, unreachable, ...) or a host
    /// call faulted.
    Trap { message: String },
    /// The wall-clock limit passed.
    DeadlineExceeded { limit_ms: u64 },
    /// The guest tried to grow memory (or tables/instances) past its limit.
    MemoryLimit { limit_bytes: u64 },
    /// Fuel ran out.
    FuelExhausted { limit: u64 },
    /// The response was larger than the policy allows; it was discarded.
    OutputTooLarge { size: u64, limit: u64 },
    /// The run was refused before any guest code ran (e.g. the module needs
    /// an import the host does not provide).
    Denied { reason: String },
    /// The tenant cancelled the run (`POST /v1/runs/{id}/cancel`) while it
    /// was queued or running; a running guest was stopped. Usage is what it
    /// took until then.
    Cancelled {},
}

impl Outcome {
    /// A stable, short name for tables, metrics and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::GuestError { .. } => "guest_error",
            Outcome::Trap { .. } => "trap",
            Outcome::DeadlineExceeded { .. } => "deadline_exceeded",
            Outcome::MemoryLimit { .. } => "memory_limit",
            Outcome::FuelExhausted { .. } => "fuel_exhausted",
            Outcome::OutputTooLarge { .. } => "output_too_large",
            Outcome::Denied { .. } => "denied",
            Outcome::Cancelled {} => "cancelled",
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }

    /// One human line describing the outcome.
    pub fn summary(&self) -> String {
        match self {
            Outcome::Ok { output } => {
                format!("ok ({} bytes, {})", output.body.len(), output.content_type)
            }
            Outcome::GuestError { code, message } => {
                format!("guest error {}: {message}", code.as_str())
            }
            Outcome::Trap { message } => format!("trap: {message}"),
            Outcome::DeadlineExceeded { limit_ms } => {
                format!("deadline exceeded ({limit_ms} ms)")
            }
            Outcome::MemoryLimit { limit_bytes } => {
                format!("memory limit reached ({limit_bytes} bytes)")
            }
            Outcome::FuelExhausted { limit } => format!("fuel exhausted ({limit})"),
            Outcome::OutputTooLarge { size, limit } => {
                format!("output too large ({size} bytes > {limit})")
            }
            Outcome::Denied { reason } => format!("denied: {reason}"),
            Outcome::Cancelled {} => "cancelled".to_string(),
        }
    }
}

/// Resources one run consumed.
///
/// JSON: the wall time is `wall_time_us` (microseconds). `wall_time` (the
/// same microseconds, the field's name before issue 18) is still written
/// for older readers and read when `wall_time_us` is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "units::UsageJson", try_from = "units::UsageJson")]
pub struct Usage {
    /// Wall-clock time from store creation to the end of the call.
    pub wall_time: Duration,
    /// Fuel consumed, when fuel metering is on.
    pub fuel_consumed: Option<u64>,
    /// Largest total linear memory the guest held, in bytes.
    pub peak_memory_bytes: u64,
    /// GPU use, when the run was bound to a GPU adapter (its policy has a
    /// `[gpu]` section and the host placed it on an adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuUsage>,
    /// Outgoing HTTP (`wasi:http/outgoing-handler`), when the run tried
    /// at least one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpUsage>,
}

/// What one run did with outgoing HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpUsage {
    /// Requests that passed the host's checks and were sent (a connection
    /// was attempted).
    pub requests: u64,
    /// Requests the host refused before any connection: destination not
    /// allowlisted or outside the run's residency label, bad scheme or
    /// URL, or a per-run limit reached.
    pub refused: u64,
    /// Request body bytes sent.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
}

/// What one run did with its GPU adapter.
///
/// JSON: `gpu_time_us` (microseconds); `gpu_time`, the same value under its
/// name before issue 18, is still written and read when `gpu_time_us` is
/// absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "units::GpuUsageJson", try_from = "units::GpuUsageJson")]
pub struct GpuUsage {
    /// The host's label of the adapter entry the run was bound to.
    pub adapter: String,
    /// The residency zone of that adapter.
    pub zone: String,
    /// Dispatches submitted to the GPU and completed.
    pub dispatches: u64,
    /// Compute pipelines compiled.
    pub kernels: u64,
    /// Bytes of buffers created over the run (a buffer created and dropped
    /// twice counts twice).
    pub bytes_allocated: u64,
    /// Largest amount of buffer bytes alive at once.
    pub peak_bytes: u64,
    /// Invocations (workgroups × workgroup size) of the dispatches
    /// completed.
    #[serde(default)]
    pub invocations: u64,
    /// Bytes written to, read back from and copied between buffers.
    #[serde(default)]
    pub bytes_transferred: u64,
    /// Wall-clock time the run's GPU process worked for it: every device
    /// call (compiles, writes, dispatches, copies, read-backs) from request
    /// to answer, or to the kill when the run's deadline cut it short.
    pub gpu_time: Duration,
    /// Bytes of dataset-backed buffers (resident weights) the run used,
    /// each once, whether already resident (a warm hit, not billed as a
    /// transfer) or uploaded by this run.
    pub resident_bytes_used: u64,
    /// Of those, the bytes this run uploaded (and paid as transfer and GPU
    /// time): a warm hit uploads nothing.
    pub resident_bytes_uploaded: u64,
    /// Compute pipelines taken from the kernel cache instead of compiled.
    pub kernels_cached: u64,
}

/// A bounded capture of one output stream (stdout, stderr).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    #[serde(with = "bytes_as_base64_or_text")]
    pub bytes: Vec<u8>,
    /// Bytes the guest wrote beyond the bound; they were dropped.
    pub dropped_bytes: u64,
}

impl Captured {
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
}

/// Logs the guest sent through `kasbah:pipeline/log`, bounded per run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    pub records: Vec<LogRecord>,
    /// Records dropped because the per-run log budget was spent.
    pub dropped: u64,
}

/// One event of a run's log stream (`GET /v1/runs/{id}/logs?follow=true`,
/// server-sent events whose event name is `type` and whose data is this
/// JSON). The runtime emits `log`, `stdout` and `stderr` as the guest
/// produces them (only what the per-run bounds keep); the server adds `gap`
/// (this client fell behind: that many events were skipped for it; the run
/// record has them all) and `end` (the run ended; the last event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    Log {
        level: LogLevel,
        message: String,
    },
    Stdout {
        #[serde(with = "bytes_as_base64_or_text")]
        bytes: Vec<u8>,
    },
    Stderr {
        #[serde(with = "bytes_as_base64_or_text")]
        bytes: Vec<u8>,
    },
    Gap {
        missed: u64,
    },
    End {
        /// The run's status (`done`, `interrupted`).
        status: String,
        /// Its outcome (an ok outcome's body is in the record's `output`).
        outcome: Option<Outcome>,
    },
}

impl LogEvent {
    /// The SSE event name (`log`, `stdout`, `stderr`, `gap`, `end`).
    pub fn name(&self) -> &'static str {
        match self {
            LogEvent::Log { .. } => "log",
            LogEvent::Stdout { .. } => "stdout",
            LogEvent::Stderr { .. } => "stderr",
            LogEvent::Gap { .. } => "gap",
            LogEvent::End { .. } => "end",
        }
    }
}

/// A capability use the policy refused during a run (e.g. a connect to an
/// address outside the allowlist). The guest saw an error; the host kept a note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub capability: String,
    pub detail: String,
}

/// Everything the runner reports about one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub module: Digest,
    pub outcome: Outcome,
    pub usage: Usage,
    pub stdout: Captured,
    pub stderr: Captured,
    pub logs: Logs,
    /// Capability uses refused during the run (bounded).
    pub denials: Vec<Denial>,
}

impl RunReport {
    /// A run refused or failed by the host before or around the guest
    /// (`denied` with the reason; no usage, output or captures).
    pub fn denied(module: Digest, reason: String) -> Self {
        RunReport {
            module,
            outcome: Outcome::Denied { reason },
            usage: Usage::default(),
            stdout: Captured::default(),
            stderr: Captured::default(),
            logs: Logs::default(),
            denials: Vec::new(),
        }
    }

    /// A run cancelled before any guest code ran (no usage).
    pub fn cancelled(module: Digest) -> Self {
        RunReport {
            outcome: Outcome::Cancelled {},
            ..Self::denied(module, String::new())
        }
    }
}

/// Bytes serialize as a UTF-8 string when they are valid UTF-8 (the common
/// case, readable in JSON) and as `{"base64": "..."}` otherwise.
mod bytes_as_base64_or_text {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Base64 { base64: String },
    }

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(t) => Repr::Text(t.to_owned()).serialize(s),
            Err(_) => Repr::Base64 {
                base64: STANDARD.encode(b),
            }
            .serialize(s),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(t.into_bytes()),
            Repr::Base64 { base64 } => STANDARD.decode(base64).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_and_rejects_garbage() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        assert_eq!(d.hex(), hex::encode(d.as_bytes()));
        assert_eq!(serde_json::to_string(&d).expect("json"), format!("\"{d}\""));
        // Every nibble value, both halves of a byte.
        let all = Digest::from_bytes(std::array::from_fn(|i| (i as u8).wrapping_mul(0x1f)));
        assert_eq!(all.hex(), hex::encode(all.as_bytes()));
        for bad in [
            "",
            "sha256:",
            "md5:00",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn usage_json_carries_units_and_reads_the_old_names() {
        let u = Usage {
            wall_time: Duration::from_micros(1500),
            fuel_consumed: Some(7),
            peak_memory_bytes: 64,
            gpu: Some(GpuUsage {
                gpu_time: Duration::from_micros(40),
                ..GpuUsage::default()
            }),
            http: None,
        };
        let j = serde_json::to_value(&u).expect("json");
        assert_eq!(j["wall_time_us"], 1500);
        assert_eq!(j["wall_time"], 1500, "the old name, still written");
        assert_eq!(j["gpu"]["gpu_time_us"], 40);
        assert_eq!(j["gpu"]["gpu_time"], 40);
        assert_eq!(serde_json::from_value::<Usage>(j).expect("back"), u);
        // Records stored before issue 18 have only the old names.
        let old = serde_json::json!({"wall_time": 1500, "fuel_consumed": 7,
            "peak_memory_bytes": 64, "gpu": {"adapter": "", "zone": "", "dispatches": 0,
            "kernels": 0, "bytes_allocated": 0, "peak_bytes": 0, "gpu_time": 40}});
        assert_eq!(serde_json::from_value::<Usage>(old).expect("old"), u);
        let none = serde_json::json!({"fuel_consumed": null, "peak_memory_bytes": 0});
        assert!(serde_json::from_value::<Usage>(none).is_err());
        let c = serde_json::to_value(Outcome::Cancelled {}).expect("json");
        assert_eq!(c, serde_json::json!({"kind": "cancelled"}));
        assert_eq!(Outcome::Cancelled {}.kind(), "cancelled");
    }

    #[test]
    fn outcome_json_is_tagged_and_binary_output_is_base64() {
        let o = Outcome::Ok {
            output: Output {
                content_type: "application/octet-stream".into(),
                body: vec![0xff, 0x00],
            },
        };
        let j = serde_json::to_value(&o).expect("serialize");
        assert_eq!(j["kind"], "ok");
        assert_eq!(j["output"]["body"]["base64"], "/wA=");
        let back: Outcome = serde_json::from_value(j).expect("deserialize");
        assert_eq!(back, o);
    }
}
