//! The fleet's wire protocol: the JetStream names and the JSON messages the
//! control plane and the zone workers exchange. **Stable**: a field may be
//! added (with a serde default), never renamed or retyped; every message is
//! one JSON object (serde_json), byte fields are base64 strings.
//!
//! | what | name | shape |
//! |---|---|---|
//! | jobs stream | [`JOBS_STREAM`] `KASBAH_JOBS`, work-queue retention, subjects `kasbah.jobs.>` | one [`Job`] per message on [`job_subject`] `kasbah.jobs.<zone>`, header `Nats-Msg-Id: <run_id>` |
//! | per-zone consumer | [`zone_consumer`] `zone-<zone>`, durable pull, explicit ack, filter `kasbah.jobs.<zone>` | shared by every worker of the zone |
//! | results stream | [`RESULTS_STREAM`] `KASBAH_RESULTS`, limits retention, subjects `kasbah.results.>` | one [`JobResult`] per message on [`result_subject`] `kasbah.results.<zone>`, header `Nats-Msg-Id: <run_id>` |
//! | worker registry | KV [`WORKERS_BUCKET`] `kasbah-workers`, max age [`HEARTBEAT_TTL`] | one key per zone a worker serves, [`heartbeat_key`] `<zone>.<worker id>`, value = [`WorkerInfo`]; a zone's NATS user may write only its zone's keys, and [`live_workers`] counts a key only for its own zone |
//! | module bytes | object store [`MODULES_BUCKET`] `kasbah-modules` | key = digest hex, put by the control plane |
//! | zone data | object store [`zone_bucket`] `kasbah-zone-<zone>` | dataset bytes and run outputs (over [`INLINE_OUTPUT_MAX`], or stored as datasets), key = digest hex |
//!
//! Zone names are [`kasbah_policy::is_zone_name`] (lowercase letters,
//! digits, `-`), so they are safe as subject tokens and in bucket names.
//!
//! Delivery: a job is delivered to one worker of its zone at a time; the
//! worker sends `+WPI` (in progress) every `ack_wait / 3` while it runs,
//! publishes the result (waiting for JetStream's ack) and only then acks the
//! job. A worker lost mid-run stops sending progress: the job is redelivered
//! after `ack_wait`, at most `max_deliver` times. A job can therefore run
//! more than once, and **the control plane records one result per run id**
//! (the first it sees); the results stream's duplicate window also drops a
//! second result published with the same `Nats-Msg-Id` within it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use kasbah_core::{Digest, Outcome, RunReport};
use kasbah_policy::Policy;
use serde::{Deserialize, Serialize};

/// The jobs stream (work-queue retention: a job is removed once acked).
pub const JOBS_STREAM: &str = "KASBAH_JOBS";
/// Subjects of [`JOBS_STREAM`].
pub const JOBS_SUBJECTS: &str = "kasbah.jobs.>";
/// The results stream (limits retention: the control plane consumes it
/// durably; results age out after [`RESULTS_MAX_AGE`]).
pub const RESULTS_STREAM: &str = "KASBAH_RESULTS";
/// Subjects of [`RESULTS_STREAM`].
pub const RESULTS_SUBJECTS: &str = "kasbah.results.>";
/// How long results are kept in [`RESULTS_STREAM`].
pub const RESULTS_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Window in which a second message with the same `Nats-Msg-Id` (the run
/// id) is dropped by JetStream, on both streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The header carrying the run id for JetStream's de-duplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// KV bucket of live workers: key = [`heartbeat_key`], value = [`WorkerInfo`].
pub const WORKERS_BUCKET: &str = "kasbah-workers";
/// Entries of [`WORKERS_BUCKET`] expire this long after their last put: a
/// worker that stops heartbeating disappears on its own.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How often a worker rewrites its [`WorkerInfo`].
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Object store of module bytes, key = digest hex; readable by every worker.
pub const MODULES_BUCKET: &str = "kasbah-modules";
/// Prefix of the per-zone object stores (see [`zone_bucket`]).
pub const ZONE_BUCKET_PREFIX: &str = "kasbah-zone-";
/// How long a delivered job may go without an ack or a progress message
/// before JetStream delivers it again (to another worker of the zone).
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Most deliveries of one job (the first included).
pub const MAX_DELIVER: i64 = 3;

/// Largest run id, tenant id, worker id or adapter label, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Most entries in a job's `label`, `datasets` or `metadata`.
pub const MAX_LIST: usize = 64;
/// Largest metadata key or value, in bytes.
pub const MAX_META_LEN: usize = 4096;
/// Bytes kept free in a result message for headers and framing.
pub const RESULT_HEADROOM: usize = 4096;
/// Outputs up to this size travel inside the result message (and are kept
/// inline in the run's record); larger ones are put in the zone's object
/// store by the worker and the result carries a [`StoredOutput`]. Mirrors
/// `INLINE_OUTPUT_MAX` of kasbah-server's `runs/storage.rs` (a test there
/// checks that they agree).
pub const INLINE_OUTPUT_MAX: usize = 64 * 1024;

/// Subject of the jobs for `zone`.
pub fn job_subject(zone: &str) -> String {
    format!("kasbah.jobs.{zone}")
}

/// Subject of the results of runs in `zone`.
pub fn result_subject(zone: &str) -> String {
    format!("kasbah.results.{zone}")
}

/// Core NATS subject (no stream: a cancel matters only while the run
/// executes) on which the control plane asks `zone`'s workers to stop a
/// run; the payload is the run's id.
pub fn cancel_subject(zone: &str) -> String {
    format!("kasbah.cancel.{zone}")
}

/// Subjects of every zone's cancels (the control plane publishes them).
pub const CANCEL_SUBJECTS: &str = "kasbah.cancel.>";

/// The durable pull consumer of `zone`'s jobs, shared by its workers.
pub fn zone_consumer(zone: &str) -> String {
    format!("zone-{zone}")
}

/// The object store holding `zone`'s data (datasets by digest hex).
pub fn zone_bucket(zone: &str) -> String {
    format!("{ZONE_BUCKET_PREFIX}{zone}")
}

/// One dataset a job mounts: `/datasets/<name>`, bytes in the zone's bucket
/// under `digest`'s hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDataset {
    pub name: String,
    pub digest: Digest,
}

/// A run placed in a zone, published by the control plane on
/// [`job_subject`]`(zone)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The run's id (also the `Nats-Msg-Id`).
    pub run_id: String,
    pub tenant: String,
    /// The module's digest; its bytes are in [`MODULES_BUCKET`].
    pub module: Digest,
    /// The policy the run executes under (already resolved and checked by
    /// the control plane; the worker validates it again).
    pub policy: Policy,
    pub policy_version: u32,
    /// The zone the run is placed in.
    pub zone: String,
    /// The GPU adapter entry (label) the run is bound to, if any.
    #[serde(default)]
    pub adapter: Option<String>,
    /// The run's residency label (zones its data may reach); holds `zone`.
    pub label: Vec<String>,
    #[serde(default)]
    pub datasets: Vec<JobDataset>,
    /// The request body (base64 in JSON).
    #[serde(with = "base64_bytes")]
    pub input: Vec<u8>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The run must be finished by then (Unix ms); a worker that receives
    /// it later reports `deadline_exceeded` without running it.
    pub deadline_unix_ms: i64,
    /// The output is stored as a dataset (`store_output_as`): the worker
    /// puts it in the zone's object store whatever its size.
    #[serde(default)]
    pub store_output: bool,
}

/// A run's output put in its zone's object store ([`zone_bucket`], object
/// name = the digest's hex) by the worker that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredOutput {
    pub digest: Digest,
    pub size: u64,
    pub content_type: String,
}

/// Why a [`Job`] was refused by a worker before running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job: {}", .0.join("; "))]
pub struct JobError(pub Vec<String>);

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Job {
    /// Every problem with the job's fields (sizes, names, policy), at once.
    pub fn check(&self) -> Result<(), JobError> {
        let mut p = Vec::new();
        if !is_id(&self.run_id) {
            p.push("run_id must be 1-128 of [A-Za-z0-9._-]".to_string());
        }
        if self.tenant.is_empty() || self.tenant.len() > MAX_ID_LEN {
            p.push("tenant must be 1-128 bytes".into());
        }
        if !kasbah_policy::is_zone_name(&self.zone) {
            p.push(format!("zone {:?} is not a zone name", self.zone));
        }
        if let Some(a) = &self.adapter
            && !is_id(a)
        {
            p.push("adapter must be 1-128 of [A-Za-z0-9._-]".into());
        }
        if self.label.len() > MAX_LIST {
            p.push(format!("label has more than {MAX_LIST} zones"));
        } else if let Some(z) = self.label.iter().find(|z| !kasbah_policy::is_zone_name(z)) {
            p.push(format!("label: {z:?} is not a zone name"));
        }
        if !self.label.contains(&self.zone) {
            p.push(format!("zone {:?} is not in the run's label", self.zone));
        }
        if self.datasets.len() > MAX_LIST {
            p.push(format!("more than {MAX_LIST} datasets"));
        } else {
            let mut seen = BTreeSet::new();
            for d in &self.datasets {
                if !kasbah_policy::is_dataset_name(&d.name) {
                    p.push(format!("dataset name {:?} is not valid", d.name));
                } else if !seen.insert(d.name.as_str()) {
                    p.push(format!("dataset {:?} is named twice", d.name));
                }
            }
        }
        if self.metadata.len() > MAX_LIST {
            p.push(format!("more than {MAX_LIST} metadata entries"));
        } else if self
            .metadata
            .iter()
            .any(|(k, v)| k.len() > MAX_META_LEN || v.len() > MAX_META_LEN)
        {
            p.push(format!(
                "a metadata key or value exceeds {MAX_META_LEN} bytes"
            ));
        }
        if let Some(ct) = &self.content_type
            && ct.len() > MAX_META_LEN
        {
            p.push(format!("content_type exceeds {MAX_META_LEN} bytes"));
        }
        if let Err(e) = self.policy.validate() {
            p.push(format!("policy: {e}"));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(JobError(p))
        }
    }
}

/// What a worker publishes when a job ends, on [`result_subject`]`(zone)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub run_id: String,
    /// The worker that ran it ([`WorkerInfo::id`]).
    pub worker: String,
    /// The zone it ran in.
    pub zone: String,
    #[serde(default)]
    pub adapter: Option<String>,
    /// The run's report, output body included (see [`JobResult::encode`]).
    pub report: RunReport,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The output, when the worker put it in the zone's object store (over
    /// [`INLINE_OUTPUT_MAX`], or stored as a dataset). The report's output
    /// body is then empty if the output is over [`INLINE_OUTPUT_MAX`], and
    /// the output's bytes otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<StoredOutput>,
}

impl JobResult {
    /// Every problem with the result's own fields (ids, zone), at once: the
    /// control plane drops a result that fails this (a worker id goes into
    /// the run's record and its audit entry).
    pub fn check(&self) -> Result<(), JobError> {
        let mut p = Vec::new();
        if !is_id(&self.run_id) {
            p.push("run_id must be 1-128 of [A-Za-z0-9._-]".to_string());
        }
        if !is_id(&self.worker) {
            p.push("worker must be 1-128 of [A-Za-z0-9._-]".into());
        }
        if !kasbah_policy::is_zone_name(&self.zone) {
            p.push(format!("zone {:?} is not a zone name", self.zone));
        }
        if let Some(a) = &self.adapter
            && !is_id(a)
        {
            p.push("adapter must be 1-128 of [A-Za-z0-9._-]".into());
        }
        if let Some(o) = &self.output {
            match &self.report.outcome {
                Outcome::Ok { output } => {
                    if o.content_type.len() > MAX_META_LEN {
                        p.push(format!("output content_type exceeds {MAX_META_LEN} bytes"));
                    }
                    if output.content_type != o.content_type {
                        p.push("the stored output's content type is not the report's".into());
                    }
                    let big = o.size > INLINE_OUTPUT_MAX as u64;
                    if big && !output.body.is_empty() {
                        p.push(format!(
                            "an output over {INLINE_OUTPUT_MAX} bytes must not be in the report"
                        ));
                    }
                    if !big
                        && (output.body.len() as u64 != o.size
                            || Digest::of(&output.body) != o.digest)
                    {
                        p.push("the stored output is not the report's output".into());
                    }
                }
                _ => p.push("a stored output for a run that did not end ok".into()),
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(JobError(p))
        }
    }

    /// The message body, at most `max_payload` bytes (the server's
    /// `max_payload`, less [`RESULT_HEADROOM`] for headers). A report too
    /// large to fit (outputs over [`INLINE_OUTPUT_MAX`] are in the object
    /// store, so only a worker that failed to put one there, or huge
    /// captured stdio, get here) has its outcome replaced by `denied` and,
    /// if still too large, its captured stdio and logs dropped.
    pub fn encode(&self, max_payload: usize) -> Result<Vec<u8>, serde_json::Error> {
        let limit = max_payload.saturating_sub(RESULT_HEADROOM);
        let body = serde_json::to_vec(self)?;
        if body.len() <= limit {
            return Ok(body);
        }
        let mut smaller = self.clone();
        smaller.output = None;
        let what = match &self.report.outcome {
            Outcome::Ok { output } => format!("an output of {} bytes", output.body.len()),
            _ => "a report".to_string(),
        };
        smaller.report.outcome = Outcome::Denied {
            reason: format!(
                "the run produced {what}: its result ({} bytes) is larger than the fleet's \
                 message limit ({limit} bytes)",
                body.len()
            ),
        };
        let body = serde_json::to_vec(&smaller)?;
        if body.len() <= limit {
            return Ok(body);
        }
        smaller.report.stdout = Default::default();
        smaller.report.stderr = Default::default();
        smaller.report.logs = Default::default();
        smaller.report.denials.clear();
        serde_json::to_vec(&smaller)
    }
}

/// The key of `worker`'s heartbeat for `zone` in [`WORKERS_BUCKET`]:
/// `<zone>.<worker>` (subject `$KV.kasbah-workers.<zone>.<worker>`). A
/// worker writes one per zone it serves; a zone's NATS user may write only
/// `$KV.kasbah-workers.<zone>.>` ([`worker_permissions`]).
pub fn heartbeat_key(zone: &str, worker: &str) -> String {
    format!("{zone}.{worker}")
}

/// The live workers from the entries of [`WORKERS_BUCKET`] (key, value) at
/// `now_ms`, by id. An entry counts only for the zone its key names (the
/// one zone its writer's credentials could write), and only if its value
/// is the worker its key names, claims that zone, and is fresher than
/// [`HEARTBEAT_TTL`]; anything else is ignored (a zone-a user cannot make
/// a worker look live in zone-b). A worker's entries are merged: its zones
/// are those of its accepted keys (in its own order of preference), its
/// adapters those in these zones, the rest from its latest heartbeat.
pub fn live_workers(
    entries: impl IntoIterator<Item = (String, WorkerInfo)>,
    now_ms: i64,
) -> Vec<WorkerInfo> {
    let ttl = i64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(i64::MAX);
    let mut by_id: BTreeMap<String, (WorkerInfo, BTreeSet<String>)> = BTreeMap::new();
    for (key, info) in entries {
        let Some((zone, id)) = key.split_once('.') else {
            continue;
        };
        if !kasbah_policy::is_zone_name(zone)
            || id != info.id
            || !info.zones.iter().any(|z| z == zone)
            || now_ms.saturating_sub(info.heartbeat_unix_ms) >= ttl
        {
            continue;
        }
        let zone = zone.to_string();
        match by_id.get_mut(id) {
            Some((latest, zones)) => {
                zones.insert(zone);
                if info.heartbeat_unix_ms > latest.heartbeat_unix_ms {
                    *latest = info;
                }
            }
            None => {
                by_id.insert(id.to_string(), (info, BTreeSet::from([zone])));
            }
        }
    }
    by_id
        .into_values()
        .map(|(mut w, zones)| {
            w.zones.retain(|z| zones.contains(z));
            w.adapters.retain(|a| zones.contains(&a.zone));
            w
        })
        .collect()
}

/// A GPU adapter entry of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAdapter {
    pub label: String,
    pub zone: String,
}

/// A worker's heartbeat, the value of its key in [`WORKERS_BUCKET`].
/// A reader should also ignore entries whose `heartbeat_unix_ms` is older
/// than [`HEARTBEAT_TTL`] (the bucket's max age removes them soon after).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    /// The zones it takes jobs for, in order of preference.
    pub zones: Vec<String>,
    pub adapters: Vec<WorkerAdapter>,
    /// Runs it executes at once.
    pub capacity: u32,
    /// Runs executing now.
    pub active: u32,
    /// The worker's build (`kasbah-fleet` version).
    pub version: String,
    pub heartbeat_unix_ms: i64,
}

/// What a zone worker's NATS user may publish and subscribe to: its zones'
/// consumers, acks and result subjects, its zones' keys of the workers KV
/// (`<zone>.*`), reads of the modules
/// bucket and of its zones' buckets, puts into its zones' buckets (run
/// outputs), replies on `inbox_prefix`, its zones' cancels — nothing
/// else (no other zone's jobs or data, no stream or bucket administration,
/// no publishing of jobs: the control plane, with
/// [`control_plane_permissions`], creates them first). For a
/// nats-server `authorization { users = [{user, password, permissions:
/// {publish: {allow: [...]}, subscribe: {allow: [...]}}}] }` entry. Give each
/// credential set its own `inbox_prefix` (the worker's `nats_inbox_prefix`):
/// subscribing to `_INBOX.>` would let it read other clients' replies.
pub fn worker_permissions(zones: &[String], inbox_prefix: &str) -> Permissions {
    let mut publish = vec![
        "$JS.API.INFO".to_string(),
        format!("$JS.API.STREAM.INFO.{JOBS_STREAM}"),
        format!("$JS.API.STREAM.INFO.{RESULTS_STREAM}"),
        format!("$JS.API.STREAM.INFO.KV_{WORKERS_BUCKET}"),
    ];
    let mut buckets = vec![MODULES_BUCKET.to_string()];
    for z in zones {
        let c = zone_consumer(z);
        publish.extend([
            format!("$JS.API.CONSUMER.INFO.{JOBS_STREAM}.{c}"),
            // Create-or-update of its zone's consumer only with the zone's
            // filter in the subject (the server checks it against the
            // request): neither `...{c}` (any filter in the body) nor
            // `...{c}.>`, which would let the user point its consumer at
            // another zone's jobs.
            format!(
                "$JS.API.CONSUMER.CREATE.{JOBS_STREAM}.{c}.{}",
                job_subject(z)
            ),
            format!("$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{c}"),
            format!("$JS.ACK.{JOBS_STREAM}.{c}.>"),
            result_subject(z),
            // Its heartbeat keys for this zone only (`heartbeat_key`).
            format!("$KV.{WORKERS_BUCKET}.{z}.>"),
        ]);
        buckets.push(zone_bucket(z));
    }
    for z in zones {
        // Outputs of the zone's runs go to its bucket: chunks, then the
        // object's metadata (no purge or delete: an object of a digest is
        // put once).
        let b = zone_bucket(z);
        publish.extend([format!("$O.{b}.C.>"), format!("$O.{b}.M.>")]);
    }
    for b in buckets {
        let s = format!("OBJ_{b}");
        publish.extend([
            format!("$JS.API.STREAM.INFO.{s}"),
            format!("$JS.API.STREAM.MSG.GET.{s}"),
            format!("$JS.API.DIRECT.GET.{s}.>"),
            format!("$JS.API.CONSUMER.CREATE.{s}"),
            format!("$JS.API.CONSUMER.CREATE.{s}.>"),
            format!("$JS.API.CONSUMER.DELETE.{s}.>"),
            format!("$JS.API.CONSUMER.INFO.{s}.>"),
            format!("$JS.FC.{s}.>"),
        ]);
    }
    let mut subscribe = vec![format!("{inbox_prefix}.>")];
    // Cancels of its zones' runs only.
    subscribe.extend(zones.iter().map(|z| cancel_subject(z)));
    Permissions { publish, subscribe }
}

/// What the control plane's NATS user may publish and subscribe to: the
/// JetStream API (streams, consumers, KV and object-store administration),
/// acks and flow control, the KV and object-store subjects, jobs on
/// [`JOBS_SUBJECTS`], cancels on [`CANCEL_SUBJECTS`], replies on
/// `inbox_prefix`. Not results: only workers
/// publish those.
pub fn control_plane_permissions(inbox_prefix: &str) -> Permissions {
    Permissions {
        publish: vec![
            "$JS.API.>".into(),
            "$JS.ACK.>".into(),
            "$JS.FC.>".into(),
            "$KV.>".into(),
            "$O.>".into(),
            JOBS_SUBJECTS.into(),
            CANCEL_SUBJECTS.into(),
        ],
        subscribe: vec![format!("{inbox_prefix}.>")],
    }
}

/// NATS subject permissions (allow lists), see [`worker_permissions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Timing of the per-zone consumers (the tests shorten `ack_wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerTiming {
    pub ack_wait: Duration,
    pub max_deliver: i64,
}

impl Default for ConsumerTiming {
    fn default() -> Self {
        ConsumerTiming {
            ack_wait: ACK_WAIT,
            max_deliver: MAX_DELIVER,
        }
    }
}

/// Errors setting up the fleet's streams, buckets and consumers.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("{0:?} is not a zone name")]
    BadZone(String),
}

fn nats<E: Into<async_nats::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> SetupError {
    let what = what.into();
    move |e| SetupError::Nats {
        what,
        source: e.into(),
    }
}

/// Create or update (idempotently) the jobs and results streams, the
/// workers KV bucket and the modules object store. Both the control plane
/// and every worker call it at start.
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), SetupError> {
    js.create_or_update_stream(stream::Config {
        name: JOBS_STREAM.into(),
        description: Some("kasbah jobs, one subject per zone".into()),
        subjects: vec![JOBS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(nats(format!("stream {JOBS_STREAM}")))?;
    js.create_or_update_stream(stream::Config {
        name: RESULTS_STREAM.into(),
        description: Some("kasbah run results, one subject per zone".into()),
        subjects: vec![RESULTS_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: RESULTS_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(nats(format!("stream {RESULTS_STREAM}")))?;
    js.create_or_update_key_value(kv::Config {
        bucket: WORKERS_BUCKET.into(),
        description: "live kasbah workers".into(),
        history: 1,
        max_age: HEARTBEAT_TTL,
        max_value_size: 64 * 1024,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(nats(format!("KV bucket {WORKERS_BUCKET}")))?;
    ensure_object_store(js, MODULES_BUCKET).await?;
    Ok(())
}

async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<object_store::ObjectStore, SetupError> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    js.create_object_store(object_store::Config {
        bucket: bucket.into(),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(nats(format!("object store {bucket}")))
}

/// Create (idempotently) `zone`'s object store and its durable pull
/// consumer on [`JOBS_STREAM`], with `timing` (create-or-update: the last
/// caller's timing wins). Returns the consumer.
pub async fn ensure_zone(
    js: &jetstream::Context,
    zone: &str,
    timing: ConsumerTiming,
) -> Result<consumer::PullConsumer, SetupError> {
    if !kasbah_policy::is_zone_name(zone) {
        return Err(SetupError::BadZone(zone.into()));
    }
    ensure_object_store(js, &zone_bucket(zone)).await?;
    let stream = js
        .get_stream(JOBS_STREAM)
        .await
        .map_err(nats(format!("stream {JOBS_STREAM}")))?;
    let name = zone_consumer(zone);
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("jobs of zone {zone}")),
            filter_subject: job_subject(zone),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: timing.ack_wait,
            max_deliver: timing.max_deliver,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(nats(format!("consumer {name}")))
}

/// `Vec<u8>` as a standard base64 string.
pub mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            run_id: "run_1".into(),
            tenant: "t1".into(),
            module: Digest::of(b"m"),
            policy: Policy::default(),
            policy_version: 1,
            zone: "zone-a".into(),
            adapter: None,
            label: vec!["zone-a".into(), "zone-b".into()],
            datasets: vec![JobDataset {
                name: "model.bin".into(),
                digest: Digest::of(b"d"),
            }],
            input: vec![0, 255, 1],
            content_type: Some("text/plain".into()),
            metadata: [("k".to_string(), "v".to_string())].into(),
            deadline_unix_ms: 1_700_000_000_000,
            store_output: false,
        }
    }

    #[test]
    fn job_round_trips_with_base64_input() {
        let j = job();
        let text = serde_json::to_string(&j).expect("serialize");
        assert!(text.contains(r#""input":"AP8B""#), "{text}");
        let back: Job = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, j);
        assert_eq!(j.check(), Ok(()));
    }

    #[test]
    fn bad_jobs_name_every_problem() {
        let mut j = job();
        j.run_id = "a.b c".into();
        j.zone = "Zone.A".into();
        j.datasets.push(j.datasets[0].clone());
        j.metadata.insert("x".into(), "y".repeat(MAX_META_LEN + 1));
        let e = j.check().expect_err("invalid");
        let text = e.to_string();
        for needle in [
            "run_id",
            "not a zone name",
            "named twice",
            "metadata",
            "label",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        let bad = r#"{"run_id":"r","input":"!!"}"#;
        assert!(serde_json::from_str::<Job>(bad).is_err());
    }

    #[test]
    fn oversized_results_become_denied() {
        let output = kasbah_core::Output {
            content_type: "text/plain".into(),
            body: vec![b'x'; 100_000],
        };
        let r = JobResult {
            run_id: "run_1".into(),
            worker: "w1".into(),
            zone: "zone-a".into(),
            adapter: None,
            report: RunReport {
                module: Digest::of(b"m"),
                outcome: Outcome::Ok { output },
                usage: Default::default(),
                stdout: Default::default(),
                stderr: Default::default(),
                logs: Default::default(),
                denials: Vec::new(),
            },
            started_at_ms: 1,
            finished_at_ms: 2,
            output: None,
        };
        let big = r.encode(1 << 20).expect("encode");
        let back: JobResult = serde_json::from_slice(&big).expect("decode");
        assert_eq!(back, r);
        let small = r.encode(64 * 1024).expect("encode");
        assert!(small.len() <= 64 * 1024 - RESULT_HEADROOM);
        let back: JobResult = serde_json::from_slice(&small).expect("decode");
        match back.report.outcome {
            Outcome::Denied { reason } => assert!(reason.contains("100000 bytes"), "{reason}"),
            o => panic!("expected denied, got {o:?}"),
        }
        assert_eq!(back.run_id, "run_1");
    }

    #[test]
    fn stored_outputs_must_agree_with_the_report() {
        let small = b"hello".to_vec();
        let result = |body: Vec<u8>, output: Option<StoredOutput>| JobResult {
            run_id: "run_1".into(),
            worker: "w1".into(),
            zone: "zone-a".into(),
            adapter: None,
            report: RunReport {
                outcome: Outcome::Ok {
                    output: kasbah_core::Output {
                        content_type: "text/plain".into(),
                        body,
                    },
                },
                ..RunReport::denied(Digest::of(b"m"), String::new())
            },
            started_at_ms: 1,
            finished_at_ms: 2,
            output,
        };
        let stored = |d: &[u8], size: usize| StoredOutput {
            digest: Digest::of(d),
            size: size as u64,
            content_type: "text/plain".into(),
        };
        let big = vec![b'x'; INLINE_OUTPUT_MAX + 1];
        assert_eq!(result(small.clone(), None).check(), Ok(()));
        assert_eq!(
            result(small.clone(), Some(stored(&small, 5))).check(),
            Ok(())
        );
        assert_eq!(
            result(Vec::new(), Some(stored(&big, big.len()))).check(),
            Ok(())
        );
        for (bad, needle) in [
            (
                result(big.clone(), Some(stored(&big, big.len()))),
                "must not be in the report",
            ),
            (
                result(small.clone(), Some(stored(b"other", 5))),
                "not the report's output",
            ),
            (
                result(Vec::new(), Some(stored(&small, 5))),
                "not the report's output",
            ),
        ] {
            let e = bad.check().expect_err("invalid").to_string();
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
        let mut denied = result(Vec::new(), Some(stored(&big, big.len())));
        denied.report.outcome = Outcome::Denied { reason: "x".into() };
        assert!(denied.check().is_err());
        let mut bad_worker = result(small, None);
        bad_worker.worker = "a b".into();
        assert!(
            bad_worker
                .check()
                .expect_err("invalid")
                .to_string()
                .contains("worker")
        );
        // A result naming a stored output round-trips; one without leaves
        // no `output` key (older control planes read both).
        let r = result(Vec::new(), Some(stored(&big, big.len())));
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<JobResult>(&text).expect("back"), r);
        let plain = serde_json::to_value(result(b"x".to_vec(), None)).expect("json");
        assert!(plain.get("output").is_none());
    }

    #[test]
    fn heartbeats_count_only_for_the_zone_their_key_names() {
        let info = |id: &str, zones: &[&str], beat: i64| WorkerInfo {
            id: id.into(),
            zones: zones.iter().map(|z| z.to_string()).collect(),
            adapters: zones
                .iter()
                .map(|z| WorkerAdapter {
                    label: format!("gpu-{z}"),
                    zone: z.to_string(),
                })
                .collect(),
            capacity: 2,
            active: 0,
            version: "v".into(),
            heartbeat_unix_ms: beat,
        };
        let now = 100_000;
        let live = live_workers(
            [
                // A two-zone worker, one key per zone: both count.
                (
                    heartbeat_key("zone-b", "w2"),
                    info("w2", &["zone-a", "zone-b"], now - 10),
                ),
                (
                    heartbeat_key("zone-a", "w2"),
                    info("w2", &["zone-a", "zone-b"], now - 5),
                ),
                // Written with zone-a's credentials, claiming zone-b too:
                // it counts for zone-a only.
                (
                    heartbeat_key("zone-a", "w1"),
                    info("w1", &["zone-a", "zone-b"], now),
                ),
                // A key that is not its value's worker, a zone the value
                // does not claim, no zone at all, a stale beat: ignored.
                (heartbeat_key("zone-a", "w3"), info("w4", &["zone-a"], now)),
                (heartbeat_key("zone-c", "w5"), info("w5", &["zone-a"], now)),
                ("w6".to_string(), info("w6", &["zone-a"], now)),
                (heartbeat_key("Zone.A", "w7"), info("w7", &["zone-a"], now)),
                (
                    heartbeat_key("zone-a", "w8"),
                    info("w8", &["zone-a"], now - 10_000),
                ),
            ],
            now,
        );
        let ids: Vec<&str> = live.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2"]);
        assert_eq!(live[0].zones, ["zone-a"]);
        assert_eq!(live[0].adapters.len(), 1);
        assert_eq!(live[0].adapters[0].zone, "zone-a");
        assert_eq!(live[1].zones, ["zone-a", "zone-b"]);
        assert_eq!(live[1].heartbeat_unix_ms, now - 5, "the latest beat");
        let p = worker_permissions(&["zone-a".to_string()], "_INBOX_w");
        assert!(
            p.publish
                .contains(&"$KV.kasbah-workers.zone-a.>".to_string())
        );
        assert!(!p.publish.iter().any(|s| s == "$KV.kasbah-workers.>"));
    }
}
