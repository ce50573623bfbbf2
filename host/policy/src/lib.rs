//! Capability policy: everything a pipeline may touch and every limit it runs
//! under. Deny by default: an empty policy grants no files, no environment
//! variables and no network, and applies the default limits.
//!
//! The policy is plain data (serde, TOML or JSON, unknown keys rejected) and
//! has no wasmtime dependency, so the server, the CLI and clients can all
//! validate it. The sandbox (`kasbah-runtime`) turns it into a WASI context.
//!
//! ```toml
//! zones = ["eu-paris-1"]       # residency: where this tenant's data may be processed
//! datasets = true              # runs may mount the tenant's datasets read-only at /datasets
//!
//! [[files]]
//! host = "/srv/tenant-a/data"
//! guest = "/data"
//! mode = "ro"
//!
//! [env]
//! vars = { MODEL = "small" }
//! inherit = ["LANG"]
//!
//! [network]
//! allow = ["10.0.0.5:443", "api.example.org:443"]
//!
//! [limits]
//! memory_bytes = 67108864
//! wall_time_ms = 5000
//! fuel = 5000000000
//! max_open_files = 256         # host descriptors held at once
//! max_write_bytes = 67108864   # into rw preopens, by apparent size
//! max_files_created = 1000     # files, directories, hard links
//! max_dir_depth = 32
//! max_log_records = 1000
//! max_http_requests = 64       # outgoing HTTP (needs [network]): requests per run
//! max_http_bytes = 16777216    # request + response body bytes per run
//! http_timeout_ms = 10000      # connect / first byte / between chunks
//!
//! [gpu]                        # absent = no GPU: every kasbah:gpu call is `denied`
//! zones = ["eu-paris-1"]       # adapters in these zones (default: the policy's `zones`)
//! max_buffer_bytes = 67108864  # each limit below has a default; see `GpuGrant`
//! max_total_bytes = 268435456
//! max_dispatches = 10000
//! max_workgroups_per_dimension = 65535
//! max_kernels = 64
//! max_invocations_per_dispatch = 268435456   # workgroups × workgroup size
//! max_invocations = 68719476736             # over the run
//! max_transfer_bytes = 17179869184          # written + read back + copied
//! max_resident_bytes = 268435456            # dataset-backed buffers kept on an adapter
//!
//! [secrets.api_key]            # a stored secret, by name (see `secrets.rs`)
//! env = "API_KEY"              # delivered as an environment variable
//! file = "/secrets/api_key"    # and/or as a read-only file
//!
//! [signatures]                 # absent = publish needs no signature
//! keys = ["<base64 Ed25519 public key>"]   # as `kasbah key generate` prints it
//! threshold = 1                # valid signatures by distinct listed, unrevoked keys
//! ```

mod ceiling;
mod secrets;

pub use ceiling::{
    Bounds, Ceiling, Cidr, EnvCeiling, Excess, NetRule, NetworkCeiling, RuleHost, SignatureCeiling,
    special_range,
};
pub use secrets::{
    MAX_SECRET_ENV_NAME, MAX_SECRET_GRANTS, MAX_SECRET_PATH, SecretGrant, is_env_name,
    is_secret_name, secret_dir,
};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A tenant's capability policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Residency zones where this tenant's data may be processed (placement
    /// picks one of them; every dataset label and the output label are
    /// within them). Empty: every zone the node serves.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub zones: BTreeSet<String>,
    /// Runs may mount the tenant's datasets read-only under `/datasets`
    /// (which is what grants a module the `wasi:filesystem` import when the
    /// policy has no `files`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub datasets: bool,
    /// Host directories preopened into the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DirGrant>,
    /// Environment variables visible to the guest.
    #[serde(default, skip_serializing_if = "EnvGrant::is_empty")]
    pub env: EnvGrant,
    /// Outbound network destinations.
    #[serde(default, skip_serializing_if = "NetworkGrant::is_empty")]
    pub network: NetworkGrant,
    #[serde(default)]
    pub limits: Limits,
    /// GPU compute (`kasbah:gpu`). `None`: no GPU, every call is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuGrant>,
    /// Module signatures a publish needs. `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<SignaturePolicy>,
    /// Stored secrets granted to runs, by secret name (`secrets.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretGrant>,
}

/// Most keys a signature policy (or ceiling) lists.
pub const MAX_SIGNING_KEYS: usize = 32;

/// Publish needs `threshold` valid DSSE signatures of the module, each by a
/// distinct key of `keys` that is not revoked for the tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturePolicy {
    /// Ed25519 public keys, each the base64 of its raw 32 bytes (a key id
    /// alone cannot verify a signature, so keys are listed whole).
    pub keys: Vec<String>,
    pub threshold: u32,
}

/// Whether `k` is the base64 of 32 bytes (the shape of an Ed25519 public
/// key; whether it is a valid point is checked where signatures are).
pub fn is_public_key(k: &str) -> bool {
    use base64::Engine as _;
    k.len() == 44
        && base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|b| b.len() == 32)
}

impl SignaturePolicy {
    fn problems(&self, field: &str, out: &mut Vec<String>) {
        if self.keys.len() > MAX_SIGNING_KEYS {
            out.push(format!("{field}.keys: at most {MAX_SIGNING_KEYS} keys"));
        }
        let mut seen = BTreeSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if !is_public_key(k) {
                out.push(format!(
                    "{field}.keys[{i}] is not an Ed25519 public key (base64 of 32 bytes, as `kasbah key generate` prints it)"
                ));
            } else if !seen.insert(k) {
                out.push(format!("{field}.keys[{i}] is listed twice"));
            }
        }
        if self.threshold == 0 {
            out.push(format!("{field}.threshold must be at least 1"));
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Guest path under which a run's datasets are mounted (read-only), each as
/// the file `/datasets/<dataset-name>`. Reserved: no `files` grant may use it.
pub const DATASETS_GUEST_PATH: &str = "/datasets";

/// A dataset name: `[a-z0-9][a-z0-9._-]{0,63}` (it becomes a file name in
/// the guest, so no `/`, no leading `.`).
pub fn is_dataset_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host. Everything the guest reaches through this grant
    /// stays beneath it (cap-std: no `..`, no absolute paths, no symlink escape).
    pub host: PathBuf,
    /// Absolute path the guest sees, e.g. `/data`.
    pub guest: String,
    #[serde(default)]
    pub mode: DirMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirMode {
    /// Read-only: files and directories may be opened for reading only.
    #[default]
    Ro,
    /// Read-write.
    Rw,
}

/// Environment variables: explicit values and host variables passed through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvGrant {
    /// Variables set to fixed values.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Names of host variables the guest may read (absent ones are skipped).
    #[serde(default)]
    pub inherit: BTreeSet<String>,
}

impl EnvGrant {
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty() && self.inherit.is_empty()
    }
}

/// Outbound network allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkGrant {
    /// `host:port` destinations the guest may connect to (TCP) or send to
    /// (UDP). Hosts are IP literals or DNS names; names are resolved by the
    /// host and only the resulting addresses are allowed.
    #[serde(default)]
    pub allow: Vec<NetTarget>,
}

impl NetworkGrant {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }
}

/// A `host:port` network destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetTarget {
    pub host: NetHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetHost {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for NetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            NetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            NetHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            NetHost::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl FromStr for NetTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("network target {s:?} must be `host:port`"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("network target {s:?}: invalid port {port:?}"))?;
        if port == 0 {
            return Err(format!("network target {s:?}: port 0 is not a destination"));
        }
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            NetHost::Ip(IpAddr::V6(v6.parse().map_err(|_| {
                format!("network target {s:?}: invalid IPv6 address {v6:?}")
            })?))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            NetHost::Ip(ip)
        } else if is_dns_name(host) {
            NetHost::Name(host.to_ascii_lowercase())
        } else {
            return Err(format!(
                "network target {s:?}: {host:?} is neither an IP address nor a DNS name"
            ));
        };
        Ok(NetTarget { host, port })
    }
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Serialize for NetTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Resource limits for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Total linear memory the guest may hold, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit for one run, in milliseconds.
    pub wall_time_ms: u64,
    /// Fuel (roughly: wasm instructions) for one run; `None` = unmetered.
    pub fuel: Option<u64>,
    /// Largest request body handed to the guest.
    pub max_input_bytes: u64,
    /// Largest response body accepted from the guest.
    pub max_output_bytes: u64,
    /// Bound on each of the captured stdout and stderr.
    pub max_stdio_bytes: u64,
    /// Bound on the total size of log messages kept per run.
    pub max_log_bytes: u64,
    /// Largest table (elements) the guest may create.
    pub max_table_elements: u64,
    /// Largest module accepted at publish time.
    pub max_module_bytes: u64,
    /// Runs of this tenant that may execute at once.
    pub max_concurrent_runs: u32,
    /// Bound on the number of log records kept per run (each record also
    /// costs at least [`LOG_RECORD_OVERHEAD_BYTES`] of `max_log_bytes`).
    #[serde(skip_serializing_if = "defaults::is_log_records")]
    pub max_log_records: u64,
    /// Files and directories the guest may hold open at once (each is a
    /// host file descriptor). Opens past it fail with `quota`.
    #[serde(skip_serializing_if = "defaults::is_open_files")]
    pub max_open_files: u64,
    /// Bytes one run may write into `rw` preopens, counted by apparent size:
    /// every byte written plus every byte of a hole a write or `set-size`
    /// creates past the end of a file.
    #[serde(skip_serializing_if = "defaults::is_write_bytes")]
    pub max_write_bytes: u64,
    /// Files, directories and hard links one run may create in `rw` preopens.
    #[serde(skip_serializing_if = "defaults::is_files_created")]
    pub max_files_created: u64,
    /// Deepest directory (levels below its preopen) a run may create.
    #[serde(skip_serializing_if = "defaults::is_dir_depth")]
    pub max_dir_depth: u64,
    /// Outgoing HTTP requests (`wasi:http/outgoing-handler`) one run may
    /// send; past it the guest gets an error and no connection is made.
    #[serde(skip_serializing_if = "defaults::is_http_requests")]
    pub max_http_requests: u64,
    /// Bytes of outgoing HTTP request and response bodies one run may move,
    /// together; counted as they stream.
    #[serde(skip_serializing_if = "defaults::is_http_bytes")]
    pub max_http_bytes: u64,
    /// Connect (TCP + TLS) and first-byte timeout of one outgoing HTTP
    /// request, and the longest pause between response body chunks, in
    /// milliseconds. A guest may ask for less, never more.
    #[serde(skip_serializing_if = "defaults::is_http_timeout")]
    pub http_timeout_ms: u64,
}

/// What an empty log record costs against `limits.max_log_bytes`.
pub const LOG_RECORD_OVERHEAD_BYTES: u64 = 64;

/// Defaults of the limits added after policies were first stored: omitted
/// from the serialized form at their default, so the JSON (and the digest)
/// of a policy that does not set them is unchanged.
mod defaults {
    pub const LOG_RECORDS: u64 = 1_000;
    pub const OPEN_FILES: u64 = 256;
    pub const WRITE_BYTES: u64 = 64 * super::MIB;
    pub const FILES_CREATED: u64 = 1_000;
    pub const DIR_DEPTH: u64 = 32;
    pub fn is_log_records(v: &u64) -> bool {
        *v == LOG_RECORDS
    }
    pub fn is_open_files(v: &u64) -> bool {
        *v == OPEN_FILES
    }
    pub fn is_write_bytes(v: &u64) -> bool {
        *v == WRITE_BYTES
    }
    pub fn is_files_created(v: &u64) -> bool {
        *v == FILES_CREATED
    }
    pub fn is_dir_depth(v: &u64) -> bool {
        *v == DIR_DEPTH
    }
    pub const HTTP_REQUESTS: u64 = 64;
    pub const HTTP_BYTES: u64 = 16 * super::MIB;
    pub const HTTP_TIMEOUT_MS: u64 = 10_000;
    pub fn is_http_requests(v: &u64) -> bool {
        *v == HTTP_REQUESTS
    }
    pub fn is_http_bytes(v: &u64) -> bool {
        *v == HTTP_BYTES
    }
    pub fn is_http_timeout(v: &u64) -> bool {
        *v == HTTP_TIMEOUT_MS
    }
    pub const GPU_INVOCATIONS_PER_DISPATCH: u64 = 1 << 28;
    pub const GPU_INVOCATIONS: u64 = 1 << 36;
    pub const GPU_TRANSFER_BYTES: u64 = 16 * 1024 * super::MIB;
    pub fn is_gpu_invocations_per_dispatch(v: &u64) -> bool {
        *v == GPU_INVOCATIONS_PER_DISPATCH
    }
    pub fn is_gpu_invocations(v: &u64) -> bool {
        *v == GPU_INVOCATIONS
    }
    pub fn is_gpu_transfer_bytes(v: &u64) -> bool {
        *v == GPU_TRANSFER_BYTES
    }
    pub const GPU_RESIDENT_BYTES: u64 = 256 * super::MIB;
    pub fn is_gpu_resident_bytes(v: &u64) -> bool {
        *v == GPU_RESIDENT_BYTES
    }
}

pub const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 * MIB,
            wall_time_ms: 10_000,
            fuel: None,
            max_input_bytes: 16 * MIB,
            max_output_bytes: MIB,
            max_stdio_bytes: 64 * 1024,
            max_log_bytes: 64 * 1024,
            max_table_elements: 100_000,
            max_module_bytes: 64 * MIB,
            max_concurrent_runs: 4,
            max_log_records: defaults::LOG_RECORDS,
            max_open_files: defaults::OPEN_FILES,
            max_write_bytes: defaults::WRITE_BYTES,
            max_files_created: defaults::FILES_CREATED,
            max_dir_depth: defaults::DIR_DEPTH,
            max_http_requests: defaults::HTTP_REQUESTS,
            max_http_bytes: defaults::HTTP_BYTES,
            http_timeout_ms: defaults::HTTP_TIMEOUT_MS,
        }
    }
}

impl Limits {
    /// Absolute ceilings no policy may exceed (what a 32-bit wasm guest and a
    /// shared host can reasonably be given). Operators get lower ceilings.
    pub fn hard_ceiling() -> Self {
        Limits {
            memory_bytes: 4 * 1024 * MIB,
            wall_time_ms: 3_600_000,
            fuel: Some(u64::MAX / 2),
            max_input_bytes: 1024 * MIB,
            max_output_bytes: 1024 * MIB,
            max_stdio_bytes: 16 * MIB,
            max_log_bytes: 16 * MIB,
            max_table_elements: 10_000_000,
            max_module_bytes: 512 * MIB,
            max_concurrent_runs: 1024,
            max_log_records: 1_000_000,
            max_open_files: 4_096,
            max_write_bytes: 64 * 1024 * MIB,
            max_files_created: 1_000_000,
            max_dir_depth: 256,
            max_http_requests: 100_000,
            max_http_bytes: 64 * 1024 * MIB,
            http_timeout_ms: 600_000,
        }
    }

    /// Every limit that exceeds `ceiling`, as `(field, value, ceiling)`.
    /// `fuel` is compared when both set it (unmetered against a fuel
    /// ceiling is the caller's rule: see [`Policy::exceeding`]).
    pub fn exceeding(&self, ceiling: &Limits) -> Vec<(&'static str, u64, u64)> {
        // Exhaustive on purpose: a new limit does not compile until it is
        // compared here.
        let Limits {
            memory_bytes,
            wall_time_ms,
            fuel,
            max_input_bytes,
            max_output_bytes,
            max_stdio_bytes,
            max_log_bytes,
            max_table_elements,
            max_module_bytes,
            max_concurrent_runs,
            max_log_records,
            max_open_files,
            max_write_bytes,
            max_files_created,
            max_dir_depth,
            max_http_requests,
            max_http_bytes,
            http_timeout_ms,
        } = self;
        let c = ceiling;
        let mut all = vec![
            ("limits.memory_bytes", *memory_bytes, c.memory_bytes),
            ("limits.wall_time_ms", *wall_time_ms, c.wall_time_ms),
            (
                "limits.max_input_bytes",
                *max_input_bytes,
                c.max_input_bytes,
            ),
            (
                "limits.max_output_bytes",
                *max_output_bytes,
                c.max_output_bytes,
            ),
            (
                "limits.max_stdio_bytes",
                *max_stdio_bytes,
                c.max_stdio_bytes,
            ),
            ("limits.max_log_bytes", *max_log_bytes, c.max_log_bytes),
            (
                "limits.max_table_elements",
                *max_table_elements,
                c.max_table_elements,
            ),
            (
                "limits.max_module_bytes",
                *max_module_bytes,
                c.max_module_bytes,
            ),
            (
                "limits.max_concurrent_runs",
                u64::from(*max_concurrent_runs),
                u64::from(c.max_concurrent_runs),
            ),
            (
                "limits.max_log_records",
                *max_log_records,
                c.max_log_records,
            ),
            ("limits.max_open_files", *max_open_files, c.max_open_files),
            (
                "limits.max_write_bytes",
                *max_write_bytes,
                c.max_write_bytes,
            ),
            (
                "limits.max_files_created",
                *max_files_created,
                c.max_files_created,
            ),
            ("limits.max_dir_depth", *max_dir_depth, c.max_dir_depth),
            (
                "limits.max_http_requests",
                *max_http_requests,
                c.max_http_requests,
            ),
            ("limits.max_http_bytes", *max_http_bytes, c.max_http_bytes),
            (
                "limits.http_timeout_ms",
                *http_timeout_ms,
                c.http_timeout_ms,
            ),
        ];
        if let (Some(v), Some(cf)) = (fuel, c.fuel) {
            all.insert(2, ("limits.fuel", *v, cf));
        }
        all.retain(|(_, v, c)| v > c);
        all
    }
}

/// GPU compute grant: where a run's GPU work may happen and how much of it.
///
/// Every limit is checked by the host in the GPU call that would exceed it,
/// which then fails with `out-of-quota` (the guest sees an error value, the
/// GPU never sees the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuGrant {
    /// Residency zones whose adapters this tenant's runs may be bound to.
    /// Empty: the policy's top-level `zones` (one of the two must be set),
    /// otherwise a subset of them.
    pub zones: BTreeSet<String>,
    /// Largest single buffer, in bytes.
    pub max_buffer_bytes: u64,
    /// Bytes of GPU buffers alive at once in one run.
    pub max_total_bytes: u64,
    /// Dispatches one run may record.
    pub max_dispatches: u64,
    /// Workgroups per dimension (x, y and z each) of one dispatch.
    pub max_workgroups_per_dimension: u32,
    /// Compute pipelines (compiled kernels) one run may create.
    pub max_kernels: u32,
    /// Invocations (workgroups × workgroup size) of one dispatch.
    /// (These three are omitted from JSON at their default, so policies
    /// stored before they existed keep their serialized form.)
    #[serde(skip_serializing_if = "defaults::is_gpu_invocations_per_dispatch")]
    pub max_invocations_per_dispatch: u64,
    /// Invocations of all the dispatches one run records.
    #[serde(skip_serializing_if = "defaults::is_gpu_invocations")]
    pub max_invocations: u64,
    /// Bytes one run may write to, read back from and copy between buffers.
    #[serde(skip_serializing_if = "defaults::is_gpu_transfer_bytes")]
    pub max_transfer_bytes: u64,
    /// Bytes of dataset-backed buffers (`buffer-from-dataset`: resident
    /// weights) this tenant may keep on one adapter between runs; also the
    /// most one run may hold at once. Least recently used are evicted.
    #[serde(skip_serializing_if = "defaults::is_gpu_resident_bytes")]
    pub max_resident_bytes: u64,
}

impl Default for GpuGrant {
    fn default() -> Self {
        GpuGrant {
            zones: BTreeSet::new(),
            max_buffer_bytes: 64 * MIB,
            max_total_bytes: 256 * MIB,
            max_dispatches: 10_000,
            max_workgroups_per_dimension: 65_535,
            max_kernels: 64,
            max_invocations_per_dispatch: defaults::GPU_INVOCATIONS_PER_DISPATCH,
            max_invocations: defaults::GPU_INVOCATIONS,
            max_transfer_bytes: defaults::GPU_TRANSFER_BYTES,
            max_resident_bytes: defaults::GPU_RESIDENT_BYTES,
        }
    }
}

impl GpuGrant {
    /// A grant for `zones` with the default limits.
    pub fn in_zones<I, S>(zones: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GpuGrant {
            zones: zones.into_iter().map(Into::into).collect(),
            ..GpuGrant::default()
        }
    }

    /// Absolute ceilings no GPU grant may exceed.
    pub fn hard_ceiling() -> Self {
        GpuGrant {
            zones: BTreeSet::new(),
            max_buffer_bytes: 16 * 1024 * MIB,
            max_total_bytes: 64 * 1024 * MIB,
            max_dispatches: 100_000_000,
            max_workgroups_per_dimension: 65_535,
            max_kernels: 10_000,
            max_invocations_per_dispatch: 1 << 48,
            max_invocations: 1 << 60,
            max_transfer_bytes: 1 << 50,
            max_resident_bytes: 64 * 1024 * MIB,
        }
    }

    fn problems(&self, tenant_zones: &BTreeSet<String>, out: &mut Vec<String>) {
        if self.zones.is_empty() && tenant_zones.is_empty() {
            out.push(
                "gpu.zones must name at least one zone (or set the policy's `zones`; omit [gpu] for no GPU)"
                    .into(),
            );
        }
        if !tenant_zones.is_empty() {
            for z in self.zones.difference(tenant_zones) {
                out.push(format!(
                    "gpu.zones: {z:?} is not one of the policy's zones ({})",
                    tenant_zones.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for z in &self.zones {
            if !is_zone_name(z) {
                out.push(format!(
                    "gpu.zones: {z:?} is not a zone name (lowercase letters, digits and '-')"
                ));
            }
        }
        let c = GpuGrant::hard_ceiling();
        for (name, v, ceiling) in [
            (
                "gpu.max_buffer_bytes",
                self.max_buffer_bytes,
                c.max_buffer_bytes,
            ),
            (
                "gpu.max_total_bytes",
                self.max_total_bytes,
                c.max_total_bytes,
            ),
            ("gpu.max_dispatches", self.max_dispatches, c.max_dispatches),
            (
                "gpu.max_workgroups_per_dimension",
                u64::from(self.max_workgroups_per_dimension),
                u64::from(c.max_workgroups_per_dimension),
            ),
            (
                "gpu.max_kernels",
                u64::from(self.max_kernels),
                u64::from(c.max_kernels),
            ),
            (
                "gpu.max_invocations_per_dispatch",
                self.max_invocations_per_dispatch,
                c.max_invocations_per_dispatch,
            ),
            (
                "gpu.max_invocations",
                self.max_invocations,
                c.max_invocations,
            ),
            (
                "gpu.max_transfer_bytes",
                self.max_transfer_bytes,
                c.max_transfer_bytes,
            ),
            (
                "gpu.max_resident_bytes",
                self.max_resident_bytes,
                c.max_resident_bytes,
            ),
        ] {
            if v == 0 {
                out.push(format!("{name} must be greater than 0"));
            } else if v > ceiling {
                out.push(format!("{name} = {v} exceeds the hard ceiling {ceiling}"));
            }
        }
        if self.max_buffer_bytes > self.max_total_bytes {
            out.push(format!(
                "gpu.max_buffer_bytes = {} exceeds gpu.max_total_bytes = {}",
                self.max_buffer_bytes, self.max_total_bytes
            ));
        }
    }
}

/// A residency zone label such as `ma-rabat-1`.
pub fn is_zone_name(z: &str) -> bool {
    !z.is_empty()
        && z.len() <= 63
        && !z.starts_with('-')
        && !z.ends_with('-')
        && z.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Why a policy was rejected: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {}", .problems.join("; "))]
pub struct PolicyError {
    pub problems: Vec<String>,
}

impl PolicyError {
    fn one(p: impl Into<String>) -> Self {
        PolicyError {
            problems: vec![p.into()],
        }
    }
}

impl Policy {
    /// Parse TOML and validate.
    pub fn from_toml(s: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(s).map_err(|e| PolicyError::one(e.message()))?;
        p.validate()?;
        Ok(p)
    }

    /// Parse JSON and validate.
    pub fn from_json(s: &str) -> Result<Self, PolicyError> {
        let p: Policy = serde_json::from_str(s).map_err(|e| PolicyError::one(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Load from a file: `.json` is JSON, anything else TOML.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::one(format!("cannot read {}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        }
    }

    /// Structural checks that do not depend on who sets the policy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut problems = Vec::new();
        let mut guests = BTreeSet::new();
        for (i, d) in self.files.iter().enumerate() {
            if !d.host.is_absolute() {
                problems.push(format!("files[{i}].host must be an absolute path"));
            }
            if !d.guest.starts_with('/') {
                problems.push(format!("files[{i}].guest must start with '/'"));
            }
            if d.guest.split('/').any(|c| c == ".." || c == ".") {
                problems.push(format!("files[{i}].guest must not contain '.' or '..'"));
            }
            let g = d.guest.trim_end_matches('/');
            if g == DATASETS_GUEST_PATH || g.starts_with(&format!("{DATASETS_GUEST_PATH}/")) {
                problems.push(format!(
                    "files[{i}].guest {:?} is reserved for dataset mounts ({DATASETS_GUEST_PATH})",
                    d.guest
                ));
            }
            if !guests.insert(d.guest.trim_end_matches('/')) {
                problems.push(format!("files[{i}].guest {:?} is mounted twice", d.guest));
            }
        }
        for k in self.env.vars.keys().chain(self.env.inherit.iter()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                problems.push(format!("env: invalid variable name {k:?}"));
            }
        }
        for v in self.env.vars.values() {
            if v.contains('\0') {
                problems.push("env: values must not contain NUL".to_string());
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.memory_bytes", l.memory_bytes),
            ("limits.wall_time_ms", l.wall_time_ms),
            (
                "limits.max_concurrent_runs",
                u64::from(l.max_concurrent_runs),
            ),
            ("limits.max_module_bytes", l.max_module_bytes),
            ("limits.http_timeout_ms", l.http_timeout_ms),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if l.fuel == Some(0) {
            problems.push("limits.fuel must be greater than 0 (omit it for no fuel limit)".into());
        }
        for (name, v, c) in l.exceeding(&Limits::hard_ceiling()) {
            problems.push(format!("{name} = {v} exceeds the hard ceiling {c}"));
        }
        for z in &self.zones {
            if !is_zone_name(z) {
                problems.push(format!(
                    "zones: {z:?} is not a zone name (lowercase letters, digits and '-')"
                ));
            }
        }
        if let Some(gpu) = &self.gpu {
            gpu.problems(&self.zones, &mut problems);
        }
        if let Some(sig) = &self.signatures {
            sig.problems("signatures", &mut problems);
            if sig.threshold as usize > sig.keys.len() {
                problems.push(format!(
                    "signatures.threshold {} is more than the {} keys listed",
                    sig.threshold,
                    sig.keys.len()
                ));
            }
        }
        secrets::problems(self, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyError { problems })
        }
    }
}

impl Policy {
    /// The GPU grant with its zones resolved: `gpu.zones`, or the policy's
    /// `zones` when `gpu.zones` is empty. `None` without a `[gpu]` section.
    pub fn gpu_grant(&self) -> Option<GpuGrant> {
        self.gpu.as_ref().map(|g| {
            let mut g = g.clone();
            if g.zones.is_empty() {
                g.zones = self.zones.clone();
            }
            g
        })
    }

    /// The zones this tenant's data may be processed in, given the zones the
    /// node serves (`zones`, or all of `node` when the policy sets none).
    pub fn allowed_zones(&self, node: &[String]) -> BTreeSet<String> {
        if self.zones.is_empty() {
            node.iter().cloned().collect()
        } else {
            self.zones.clone()
        }
    }
}

/// One import a module needs that its tenant's policy does not grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedImport {
    pub import: String,
    pub reason: String,
}

impl Policy {
    /// Publish-time check: every interface a component imports must be
    /// granted by this policy. Baseline interfaces (I/O streams, clocks,
    /// random, stdio/environment/exit, kasbah's types and log) are always
    /// granted (what they expose is itself shaped by the policy: the
    /// environment holds only allowlisted variables); filesystem needs a
    /// `files` grant, sockets a `network` grant; anything else is refused.
    pub fn refused_imports<'a>(
        &self,
        imports: impl IntoIterator<Item = &'a str>,
    ) -> Vec<RefusedImport> {
        let mut out = Vec::new();
        for import in imports {
            let name = import.split('@').next().unwrap_or(import);
            let (pkg, iface) = name.split_once('/').unwrap_or((name, ""));
            let refusal = match pkg {
                "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:cli" => None,
                "kasbah:pipeline" => None,
                "wasi:filesystem" if !self.files.is_empty() || self.datasets => None,
                "wasi:filesystem" if self.secret_files() => None,
                "wasi:filesystem" => {
                    Some("the policy grants no files, no datasets and no secret files")
                }
                "wasi:sockets" if !self.network.is_empty() => None,
                "wasi:sockets" => Some("the policy grants no network access"),
                // Outgoing HTTP only: the host checks every request against
                // the same allowlist as sockets. Nothing serves incoming
                // HTTP to a pipeline (`incoming-handler` stays refused).
                "wasi:http" if !matches!(iface, "outgoing-handler" | "types") => Some(
                    "this interface is not provided to pipelines (only outgoing-handler and types)",
                ),
                "wasi:http" if !self.network.is_empty() => None,
                "wasi:http" => Some("the policy grants no network access"),
                "kasbah:gpu" if self.gpu.is_some() => None,
                "kasbah:gpu" => Some("the policy grants no GPU"),
                _ => Some("this interface is not provided to pipelines"),
            };
            if let Some(reason) = refusal {
                out.push(RefusedImport {
                    import: import.to_string(),
                    reason: reason.to_string(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_policy_denies_everything() {
        let p = Policy::from_toml("").expect("empty policy is valid");
        assert!(p.files.is_empty());
        assert!(p.env.is_empty());
        assert!(p.network.is_empty());
        assert_eq!(p.limits, Limits::default());
    }

    #[test]
    fn full_policy_parses_from_toml_and_json_identically() {
        let toml = r#"
            [[files]]
            host = "/srv/a"
            guest = "/data"
            [[files]]
            host = "/srv/b"
            guest = "/out"
            mode = "rw"
            [env]
            vars = { MODEL = "small" }
            inherit = ["LANG"]
            [network]
            allow = ["127.0.0.1:8080", "[::1]:443", "API.example.org:443"]
            [limits]
            memory_bytes = 1048576
            fuel = 1000
        "#;
        let p = Policy::from_toml(toml).expect("valid");
        assert_eq!(p.files[0].mode, DirMode::Ro);
        assert_eq!(p.files[1].mode, DirMode::Rw);
        assert_eq!(
            p.network.allow[2].host,
            NetHost::Name("api.example.org".into())
        );
        assert_eq!(p.network.allow[1].to_string(), "[::1]:443");
        assert_eq!(p.limits.fuel, Some(1000));
        assert_eq!(p.limits.wall_time_ms, Limits::default().wall_time_ms);
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(Policy::from_json(&json).expect("round trip"), p);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        for bad in [
            "allow_everything = true",
            "[limits]\nmemory = 5",
            "[[files]]\nhost = \"/a\"\nguest = \"/a\"\nwritable = true",
        ] {
            let e = Policy::from_toml(bad).expect_err(bad);
            assert!(e.to_string().contains("unknown field"), "{e}");
        }
        assert!(Policy::from_json(r#"{"gpu_everything": 1}"#).is_err());
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let e = Policy::from_toml(
            r#"
            [[files]]
            host = "relative"
            guest = "/a/../b"
            [limits]
            memory_bytes = 0
            wall_time_ms = 99999999999
        "#,
        )
        .expect_err("invalid");
        assert_eq!(e.problems.len(), 4, "{e}");
    }

    #[test]
    fn bad_network_targets_are_rejected() {
        for bad in [
            "nohost",
            "host:0",
            "host:99999",
            "bad_host!:80",
            "[zz]:80",
            ":80",
        ] {
            assert!(bad.parse::<NetTarget>().is_err(), "{bad}");
        }
        let t: NetTarget = "10.1.2.3:53".parse().expect("ip target");
        assert_eq!(t.host, NetHost::Ip("10.1.2.3".parse().expect("ip")));
    }

    #[test]
    fn imports_are_checked_against_grants() {
        let hello = [
            "kasbah:pipeline/log@0.1.0",
            "kasbah:pipeline/types@0.1.0",
            "wasi:io/streams@0.2.6",
            "wasi:cli/environment@0.2.6",
            "wasi:clocks/wall-clock@0.2.6",
            "wasi:random/random@0.2.6",
        ];
        assert!(Policy::default().refused_imports(hello).is_empty());
        let net = [
            "wasi:sockets/tcp@0.2.6",
            "wasi:filesystem/types@0.2.6",
            "acme:evil/x",
        ];
        let refused = Policy::default().refused_imports(net);
        assert_eq!(refused.len(), 3, "{refused:?}");
        let p = Policy::from_toml(
            "[network]\nallow = [\"10.0.0.1:80\"]\n[[files]]\nhost = \"/x\"\nguest = \"/x\"",
        )
        .expect("valid");
        let refused = p.refused_imports(net);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].import, "acme:evil/x");
        let gpu = ["kasbah:gpu/compute@0.1.0"];
        assert_eq!(Policy::default().refused_imports(gpu).len(), 1);
        let p = Policy::from_toml("[gpu]\nzones = [\"zone-a\"]").expect("valid");
        assert!(p.refused_imports(gpu).is_empty());
    }

    #[test]
    fn outgoing_http_needs_a_network_grant_and_incoming_is_refused() {
        let out = ["wasi:http/outgoing-handler@0.2.4", "wasi:http/types@0.2.4"];
        let refused = Policy::default().refused_imports(out);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].reason.contains("no network access"),
            "{refused:?}"
        );
        let net = Policy::from_toml("[network]\nallow = [\"localhost:443\"]").expect("valid");
        assert!(net.refused_imports(out).is_empty());
        let incoming = net.refused_imports(["wasi:http/incoming-handler@0.2.4"]);
        assert_eq!(incoming.len(), 1);
        assert!(incoming[0].reason.contains("not provided"), "{incoming:?}");
    }

    #[test]
    fn http_limits_default_round_trip_and_are_bounded() {
        let p = Policy::from_json(r#"{"limits":{"memory_bytes":1048576}}"#).expect("old policy");
        assert_eq!(p.limits.max_http_requests, 64);
        assert_eq!(p.limits.max_http_bytes, 16 * MIB);
        assert_eq!(p.limits.http_timeout_ms, 10_000);
        // Omitted at their default: a stored policy's JSON (and digest) is unchanged.
        let json = serde_json::to_string(&p).expect("json");
        assert!(!json.contains("http"), "{json}");
        let p =
            Policy::from_toml("[limits]\nmax_http_requests = 2\nmax_http_bytes = 10").expect("set");
        let json = serde_json::to_string(&p).expect("json");
        assert!(json.contains("\"max_http_requests\":2"), "{json}");
        assert_eq!(Policy::from_json(&json).expect("round trip"), p);
        let e = Policy::from_toml("[limits]\nhttp_timeout_ms = 0").expect_err("zero");
        assert!(e.to_string().contains("limits.http_timeout_ms"), "{e}");
        let e = Policy::from_toml("[limits]\nmax_http_requests = 100001").expect_err("ceiling");
        assert!(e.to_string().contains("limits.max_http_requests"), "{e}");
    }

    #[test]
    fn no_gpu_section_means_no_gpu_and_defaults_apply_when_present() {
        assert_eq!(Policy::from_toml("").expect("valid").gpu, None);
        let p =
            Policy::from_toml("[gpu]\nzones = [\"eu-paris-1\"]\nmax_kernels = 3\n").expect("valid");
        let gpu = p.gpu.expect("gpu section");
        assert_eq!(gpu.max_kernels, 3);
        assert_eq!(gpu.max_buffer_bytes, GpuGrant::default().max_buffer_bytes);
        assert!(gpu.zones.contains("eu-paris-1"));
        let json = serde_json::to_string(&Policy {
            gpu: Some(gpu.clone()),
            ..Policy::default()
        })
        .expect("serialize");
        assert_eq!(Policy::from_json(&json).expect("round trip").gpu, Some(gpu));
    }

    #[test]
    fn bad_gpu_sections_are_rejected() {
        let e = Policy::from_toml("[gpu]\nzones = [\"a\"]\nmax_memory = 1\n").expect_err("unknown");
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Policy::from_toml("[gpu]\n").expect_err("no zones");
        assert!(e.to_string().contains("gpu.zones"), "{e}");
        let e = Policy::from_toml(
            "[gpu]\nzones = [\"Bad Zone\"]\nmax_dispatches = 0\nmax_buffer_bytes = 1000\nmax_total_bytes = 10\n",
        )
        .expect_err("invalid");
        assert_eq!(e.problems.len(), 3, "{e}");
    }

    #[test]
    fn residency_zones_validate_and_derive_the_gpu_zones() {
        let p = Policy::from_toml("zones = [\"zone-a\", \"zone-b\"]\ndatasets = true\n[gpu]\n")
            .expect("gpu zones derived from the policy's zones");
        assert_eq!(
            p.gpu_grant().expect("gpu").zones,
            ["zone-a".to_string(), "zone-b".to_string()].into()
        );
        assert!(
            p.refused_imports(["wasi:filesystem/types@0.2.6"])
                .is_empty()
        );
        let p = Policy::from_toml("zones = [\"zone-a\", \"zone-b\"]\n[gpu]\nzones = [\"zone-b\"]")
            .expect("gpu zones within the policy's zones");
        assert_eq!(
            p.gpu_grant().expect("gpu").zones,
            ["zone-b".to_string()].into()
        );
        let node = vec!["zone-a".to_string(), "zone-c".to_string()];
        assert_eq!(p.allowed_zones(&node).len(), 2);
        assert_eq!(
            Policy::default().allowed_zones(&node),
            node.iter().cloned().collect()
        );
        let e = Policy::from_toml("zones = [\"zone-a\", \"Bad\"]\n[gpu]\nzones = [\"zone-c\"]")
            .expect_err("invalid");
        assert_eq!(e.problems.len(), 2, "{e}");
        let e = Policy::from_toml("[[files]]\nhost = \"/x\"\nguest = \"/datasets/x\"")
            .expect_err("reserved guest path");
        assert!(e.to_string().contains("reserved"), "{e}");
        // Unchanged serialization for policies without the new fields (the
        // policy digest is over this JSON).
        assert_eq!(
            serde_json::to_string(&Policy::default()).expect("json"),
            r#"{"limits":{"memory_bytes":67108864,"wall_time_ms":10000,"fuel":null,"max_input_bytes":16777216,"max_output_bytes":1048576,"max_stdio_bytes":65536,"max_log_bytes":65536,"max_table_elements":100000,"max_module_bytes":67108864,"max_concurrent_runs":4}}"#
        );
    }

    #[test]
    fn dataset_names_are_file_names() {
        for ok in ["weights", "minilm-l6.safetensors", "0", "a_b.c-d"] {
            assert!(is_dataset_name(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", ".hidden", "-x", "A", "a/b", "..", "a b", long.as_str()] {
            assert!(!is_dataset_name(bad), "{bad}");
        }
    }

    #[test]
    fn limits_above_a_ceiling_are_listed() {
        let ceiling = Limits {
            memory_bytes: MIB,
            ..Limits::default()
        };
        let over = Limits::default().exceeding(&ceiling);
        assert_eq!(over, vec![("limits.memory_bytes", 64 * MIB, MIB)]);
        // Every field is compared, the resource bounds included.
        let zero = Limits {
            memory_bytes: 0,
            wall_time_ms: 0,
            fuel: Some(0),
            max_input_bytes: 0,
            max_output_bytes: 0,
            max_stdio_bytes: 0,
            max_log_bytes: 0,
            max_table_elements: 0,
            max_module_bytes: 0,
            max_concurrent_runs: 0,
            max_log_records: 0,
            max_open_files: 0,
            max_write_bytes: 0,
            max_files_created: 0,
            max_dir_depth: 0,
            max_http_requests: 0,
            max_http_bytes: 0,
            http_timeout_ms: 0,
        };
        let over = Limits::hard_ceiling().exceeding(&zero);
        assert_eq!(over.len(), 18, "{over:?}");
        assert!(
            Limits::default()
                .exceeding(&Limits::hard_ceiling())
                .is_empty()
        );
    }

    #[test]
    fn resource_bounds_parse_default_and_round_trip() {
        // A policy stored before these limits existed still parses.
        let p = Policy::from_json(r#"{"limits":{"memory_bytes":1048576}}"#).expect("old policy");
        assert_eq!(p.limits.max_open_files, 256);
        assert_eq!(p.limits.max_log_records, 1_000);
        assert_eq!(p.limits.max_write_bytes, 64 * MIB);
        assert_eq!(p.limits.max_files_created, 1_000);
        assert_eq!(p.limits.max_dir_depth, 32);
        let p = Policy::from_toml("[limits]\nmax_open_files = 16\nmax_write_bytes = 0")
            .expect("new fields");
        assert_eq!(p.limits.max_open_files, 16);
        assert_eq!(p.limits.max_write_bytes, 0);
        let json = serde_json::to_string(&p).expect("json");
        assert!(json.contains("\"max_open_files\":16"), "{json}");
        assert_eq!(Policy::from_json(&json).expect("round trip"), p);
        let e = Policy::from_toml("[limits]\nmax_open_files = 100000").expect_err("over ceiling");
        assert!(e.to_string().contains("limits.max_open_files"), "{e}");
    }
}
