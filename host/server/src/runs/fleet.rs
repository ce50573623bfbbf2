//! The control plane's connection to the fleet (issue 14): the half of the
//! protocol in `kasbah-fleet` (`host/fleet/src/proto.rs`) that needs no
//! other state — the live-worker view, publishing jobs and the bytes they
//! need, the runs this process waits for. `dispatch.rs` runs and records
//! runs with it.
//!
//! - **Live workers**: the workers KV bucket, re-read every
//!   [`LIVE_REFRESH`]; placement only considers zones (and GPU adapter
//!   entries) of workers whose heartbeat is fresh.
//! - **Dispatch**: a run's module bytes go to the modules bucket (once per
//!   digest), its datasets to its zone's bucket (once per digest and zone),
//!   then its [`Job`] to `kasbah.jobs.<zone>` with the run id as
//!   `Nats-Msg-Id`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store};
use futures_util::StreamExt;
use kasbah_core::Digest;
use kasbah_core::api::{PolicyRecord, RunRecord};
use kasbah_fleet::proto::{
    self, HEARTBEAT_TTL, Job, JobDataset, MODULES_BUCKET, MSG_ID_HEADER, WORKERS_BUCKET, WorkerInfo,
};
use kasbah_runtime::Request;
use kasbah_runtime::kasbah_gpu::AdapterStatus;
use tokio::sync::oneshot;

use super::storage::{NewRun, RunResidency};
use crate::blobs::Blobs;
use crate::ids::now_ms;
use crate::store::lock;

/// How often the live-worker view is refreshed from the workers bucket.
pub const LIVE_REFRESH: Duration = Duration::from_millis(500);
/// The control plane's durable consumer on the results stream.
pub const RESULTS_CONSUMER: &str = "control-plane";

/// The control plane's connection to the fleet.
pub struct Fleet {
    js: jetstream::Context,
    max_payload: usize,
    /// Live workers, by id (refreshed from the workers bucket).
    live: Mutex<Vec<WorkerInfo>>,
    /// Module digests known to be in the modules bucket.
    modules: Mutex<HashSet<Digest>>,
    /// (zone, dataset digest) known to be in the zone's bucket.
    data: Mutex<HashSet<(String, Digest)>>,
    /// Requests waiting for a run's record, by run id.
    waiters: Mutex<HashMap<String, oneshot::Sender<RunRecord>>>,
    /// Runs dispatched by this process and not yet recorded. A result can
    /// come back before the run's in-flight row is committed (its insert is
    /// queued, not waited for); recording it from here keeps the order in
    /// the single writer (insert, then result) as for in-process runs.
    pending: Mutex<HashMap<String, NewRun>>,
}

impl Fleet {
    /// Connect as `auth` (the control plane's NATS user, see
    /// `kasbah_fleet::nats_config`), make sure the streams and buckets
    /// exist.
    pub async fn connect(url: &str, auth: &kasbah_fleet::NatsAuth) -> anyhow::Result<Arc<Fleet>> {
        let client = kasbah_fleet::connect(url, "kasbah control plane", auth).await?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client);
        proto::ensure_streams(&js).await?;
        Ok(Arc::new(Fleet {
            js,
            max_payload,
            live: Mutex::default(),
            modules: Mutex::default(),
            data: Mutex::default(),
            waiters: Mutex::default(),
            pending: Mutex::default(),
        }))
    }

    /// Re-read the live workers from the workers bucket.
    pub async fn refresh_live(&self) {
        let Ok(kv) = self.js.get_key_value(WORKERS_BUCKET).await else {
            return;
        };
        let Ok(mut keys) = kv.keys().await else {
            return;
        };
        let now = now_ms();
        let ttl = i64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut live = Vec::new();
        while let Some(Ok(k)) = keys.next().await {
            if let Ok(Some(v)) = kv.get(&k).await
                && let Ok(w) = serde_json::from_slice::<WorkerInfo>(&v)
                && now.saturating_sub(w.heartbeat_unix_ms) < ttl
            {
                live.push(w);
            }
        }
        *lock(&self.live) = live;
    }

    /// The live workers' last heartbeats.
    pub fn live_workers(&self) -> Vec<WorkerInfo> {
        lock(&self.live).clone()
    }

    /// Zones with a live worker.
    pub fn live_zones(&self) -> BTreeSet<String> {
        lock(&self.live)
            .iter()
            .flat_map(|w| w.zones.iter().cloned())
            .collect()
    }

    /// GPU adapter entries of live workers, as placement sees adapters
    /// (least busy first: a worker's active runs count for each of its
    /// entries).
    pub fn live_adapters(&self) -> Vec<AdapterStatus> {
        lock(&self.live)
            .iter()
            .flat_map(|w| {
                w.adapters.iter().map(|a| AdapterStatus {
                    label: a.label.clone(),
                    zone: a.zone.clone(),
                    adapter_name: None,
                    backend: None,
                    unavailable: None,
                    active_runs: w.active as usize,
                    idle_devices: 0,
                    devices_created: 0,
                    devices_reused: 0,
                    devices_discarded: 0,
                    runs_bound: 0,
                    resident_bytes: 0,
                    warm_purged: 0,
                })
            })
            .collect()
    }

    /// Note a run about to be dispatched: its record will be handed to the
    /// returned receiver.
    pub fn expect(&self, run: &NewRun) -> oneshot::Receiver<RunRecord> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(run.id.clone(), tx);
        lock(&self.pending).insert(run.id.clone(), run.clone());
        rx
    }

    /// Stop waiting for a run (dispatch failed, or no result in time).
    pub fn forget(&self, id: &str) {
        lock(&self.waiters).remove(id);
        lock(&self.pending).remove(id);
    }

    /// A run this process dispatched and has not recorded yet, taken.
    pub fn take_pending(&self, id: &str) -> Option<NewRun> {
        lock(&self.pending).remove(id)
    }

    /// Whether this process still waits for the run's result.
    pub fn is_pending(&self, id: &str) -> bool {
        lock(&self.pending).contains_key(id)
    }

    /// The control plane's durable consumer on the results stream.
    pub async fn results_consumer(
        &self,
    ) -> anyhow::Result<consumer::Consumer<consumer::pull::Config>> {
        let stream = self
            .js
            .get_stream(proto::RESULTS_STREAM)
            .await
            .map_err(|e| anyhow::anyhow!("results stream: {e}"))?;
        stream
            .get_or_create_consumer(
                RESULTS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(RESULTS_CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    // A result for no known run is retried (1 s apart) and
                    // then dropped by the server.
                    max_deliver: 30,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("results consumer: {e}"))
    }

    /// Publish an admitted run's job (its module and datasets put in their
    /// buckets first, once per digest).
    pub async fn dispatch(
        &self,
        blobs: &Blobs,
        run: &NewRun,
        policy: &PolicyRecord,
        request: Request,
        row: &RunResidency,
    ) -> anyhow::Result<()> {
        self.ensure_module(blobs, &run.module).await?;
        for d in &row.datasets {
            self.ensure_data(blobs, &row.zone, &d.digest).await?;
        }
        let deadline = now_ms()
            .saturating_add(i64::try_from(policy.policy.limits.wall_time_ms).unwrap_or(i64::MAX));
        let job = Job {
            run_id: run.id.clone(),
            tenant: run.tenant_id.clone(),
            module: run.module,
            policy: policy.policy.clone(),
            policy_version: policy.version,
            zone: row.zone.clone(),
            adapter: row.adapter.clone(),
            label: row.output_label.clone(),
            datasets: row
                .datasets
                .iter()
                .map(|d| JobDataset {
                    name: d.name.clone(),
                    digest: d.digest,
                })
                .collect(),
            input: request.body,
            content_type: Some(request.content_type),
            metadata: request.metadata.into_iter().collect(),
            deadline_unix_ms: deadline,
        };
        let body = serde_json::to_vec(&job)?;
        if body.len() > self.max_payload {
            anyhow::bail!(
                "the job is {} bytes, over the NATS server's max_payload ({})",
                body.len(),
                self.max_payload
            );
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, run.id.as_str());
        self.js
            .publish_with_headers(proto::job_subject(&row.zone), headers, body.into())
            .await
            .map_err(|e| anyhow::anyhow!("publishing the job: {e}"))?
            .await
            .map_err(|e| anyhow::anyhow!("the jobs stream did not take the job: {e}"))?;
        Ok(())
    }

    async fn ensure_module(&self, blobs: &Blobs, digest: &Digest) -> anyhow::Result<()> {
        if lock(&self.modules).contains(digest) {
            return Ok(());
        }
        let store = self
            .js
            .get_object_store(MODULES_BUCKET)
            .await
            .map_err(|e| anyhow::anyhow!("modules bucket: {e}"))?;
        put_blob(blobs, &store, digest).await?;
        lock(&self.modules).insert(*digest);
        Ok(())
    }

    async fn ensure_data(&self, blobs: &Blobs, zone: &str, digest: &Digest) -> anyhow::Result<()> {
        let key = (zone.to_string(), *digest);
        if lock(&self.data).contains(&key) {
            return Ok(());
        }
        let bucket = proto::zone_bucket(zone);
        let store = match self.js.get_object_store(&bucket).await {
            Ok(st) => st,
            Err(_) => self
                .js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("zone bucket {bucket}: {e}"))?,
        };
        put_blob(blobs, &store, digest).await?;
        lock(&self.data).insert(key);
        Ok(())
    }

    /// Hand a recorded run to the request waiting for it, if any.
    pub fn wake(&self, record: RunRecord) {
        if let Some(tx) = lock(&self.waiters).remove(&record.id) {
            let _ = tx.send(record);
        }
    }
}

/// Put a blob from the blob store into an object store under its digest's
/// hex, unless it is there.
async fn put_blob(
    blobs: &Blobs,
    store: &object_store::ObjectStore,
    digest: &Digest,
) -> anyhow::Result<()> {
    let key = digest.hex();
    if store.info(&key).await.is_ok() {
        return Ok(());
    }
    let bytes = blobs
        .get(digest)
        .map_err(|e| anyhow::anyhow!("reading {digest}: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("{digest} is missing from the blob store"))?;
    let mut reader = std::io::Cursor::new(bytes);
    store
        .put(key.as_str(), &mut reader)
        .await
        .map_err(|e| anyhow::anyhow!("storing {digest}: {e}"))?;
    Ok(())
}
