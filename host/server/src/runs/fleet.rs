//! The control plane's connection to the fleet (issue 14): the half of the
//! protocol in `kasbah-fleet` (`host/fleet/src/proto.rs`) that needs no
//! other state — the live-worker view, publishing jobs and the bytes they
//! need, the runs this process waits for. `dispatch.rs` runs and records
//! runs with it.
//!
//! - **Live workers**: the workers KV bucket, re-read every
//!   [`LIVE_REFRESH`]; placement only considers zones (and GPU adapter
//!   entries) of workers whose heartbeat is fresh, each heartbeat key
//!   counting only for the zone it names (`<zone>.<worker>`: the only keys
//!   that zone's credentials may write).
//! - **Dispatch**: a run's module bytes go to the modules bucket (once per
//!   digest), its datasets to its zone's bucket (once per digest and zone:
//!   streamed from the blob store, or copied from the zone bucket holding a
//!   dataset a fleet run stored there), then its [`Job`] to
//!   `kasbah.jobs.<zone>` with the run id as `Nats-Msg-Id`.
//! - **Outputs in zone buckets**: [`Fleet::output`] streams a run output a
//!   worker put in its zone's bucket, checked against its digest and size.
//! - **Uploaded datasets in zone buckets**: [`Fleet::store_dataset`] puts
//!   an upload in the bucket of each zone of its label (and nowhere else);
//!   [`Fleet::dataset`] streams it back from the first bucket that serves
//!   it. Dispatch then finds it in the run's zone bucket already.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store};
use futures_util::StreamExt;
use kasbah_core::Digest;
use kasbah_core::api::{PolicyRecord, RunRecord};
use kasbah_fleet::proto::{
    self, Job, JobDataset, MODULES_BUCKET, MSG_ID_HEADER, WORKERS_BUCKET, WorkerInfo,
};
use kasbah_runtime::Request;
use kasbah_runtime::kasbah_gpu::AdapterStatus;
use tokio::sync::oneshot;

use kasbah_fleet::objects;

use super::storage::{NewRun, RunResidency};
use crate::blobs::Blobs;
use crate::ids::now_ms;
use crate::store::lock;

/// How often the live-worker view is refreshed from the workers bucket.
pub const LIVE_REFRESH: Duration = Duration::from_millis(500);
/// Most heartbeat keys read per refresh of the live-worker view.
const MAX_WORKER_KEYS: usize = 4096;
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
        let mut entries = Vec::new();
        // A zone's user may write any number of keys under its zone: read a
        // bounded number (far above any real fleet) every refresh.
        let mut read = 0;
        while read < MAX_WORKER_KEYS
            && let Some(Ok(k)) = keys.next().await
        {
            read += 1;
            if let Ok(Some(v)) = kv.get(&k).await
                && let Ok(w) = serde_json::from_slice::<WorkerInfo>(&v)
            {
                entries.push((k, w));
            }
        }
        // Each key counts only for the zone it names (see `live_workers`).
        *lock(&self.live) = proto::live_workers(entries, now_ms());
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

    /// Ask `zone`'s workers to stop run `id` (core NATS, fire and forget:
    /// the worker running it ends it as `cancelled` and sends its result
    /// with the usage it took; a worker that has not started it yet skips
    /// it).
    pub async fn cancel(&self, zone: &str, id: &str) -> anyhow::Result<()> {
        let client = self.js.client();
        client
            .publish(
                kasbah_fleet::proto::cancel_subject(zone),
                id.to_owned().into(),
            )
            .await?;
        client.flush().await?;
        Ok(())
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
    /// buckets first, once per digest; a dataset missing from the blob store
    /// is looked for in the buckets of `zones`).
    pub async fn dispatch(
        &self,
        blobs: &Blobs,
        run: &NewRun,
        policy: &PolicyRecord,
        request: Request,
        row: &RunResidency,
        zones: &[String],
    ) -> anyhow::Result<()> {
        self.ensure_module(blobs, &run.module).await?;
        for d in &row.datasets {
            self.ensure_data(blobs, &row.zone, &d.digest, zones).await?;
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
            store_output: row.store_output_as.is_some(),
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
        self.put_blob(blobs, &store, digest, &[]).await?;
        lock(&self.modules).insert(*digest);
        Ok(())
    }

    async fn ensure_data(
        &self,
        blobs: &Blobs,
        zone: &str,
        digest: &Digest,
        zones: &[String],
    ) -> anyhow::Result<()> {
        let key = (zone.to_string(), *digest);
        if lock(&self.data).contains(&key) {
            return Ok(());
        }
        let store = self.zone_store(zone).await?;
        let others: Vec<String> = zones.iter().filter(|z| *z != zone).cloned().collect();
        self.put_blob(blobs, &store, digest, &others).await?;
        lock(&self.data).insert(key);
        Ok(())
    }

    /// Hand a recorded run to the request waiting for it, if any.
    pub fn wake(&self, record: RunRecord) {
        if let Some(tx) = lock(&self.waiters).remove(&record.id) {
            let _ = tx.send(record);
        }
    }

    /// Put `digest` into `store` (object = its hex) unless it is there:
    /// streamed from the blob store (never read whole into memory), else
    /// copied from the first of the buckets of `zones` that holds it (a
    /// dataset a fleet run stored in the zone it ran in). Either source is
    /// checked against the digest while it is read.
    async fn put_blob(
        &self,
        blobs: &Blobs,
        store: &object_store::ObjectStore,
        digest: &Digest,
        zones: &[String],
    ) -> anyhow::Result<()> {
        let key = digest.hex();
        if store.info(&key).await.is_ok() {
            return Ok(());
        }
        let chunk = objects::chunk_size(self.max_payload);
        match tokio::fs::File::open(blobs.path(digest)).await {
            Ok(file) => {
                let size = file.metadata().await?.len();
                let mut file = objects::Checked::new(file, *digest, size);
                return objects::put(store, digest, chunk, &mut file).await;
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                anyhow::bail!("reading {digest}: {e}")
            }
            Err(_) => {}
        }
        for z in zones {
            let Ok(source) = self.js.get_object_store(proto::zone_bucket(z)).await else {
                continue;
            };
            let Ok(object) = source.get(&key).await else {
                continue;
            };
            let size = object.info().size as u64;
            let mut object = objects::Checked::new(object, *digest, size);
            return objects::put(store, digest, chunk, &mut object).await;
        }
        anyhow::bail!("{digest} is missing from the blob store and from the zone buckets")
    }

    /// The bytes of a run output a worker put in `zone`'s bucket, as a
    /// stream of chunks checked against `digest` and `size`: wrong bytes end
    /// the stream with an error, never with a clean end.
    pub async fn output(
        &self,
        zone: &str,
        digest: &Digest,
        size: u64,
    ) -> anyhow::Result<OutputStream> {
        let bucket = proto::zone_bucket(zone);
        let store = self
            .js
            .get_object_store(&bucket)
            .await
            .map_err(|e| anyhow::anyhow!("zone bucket {bucket}: {e}"))?;
        let object = store
            .get(digest.hex())
            .await
            .map_err(|e| anyhow::anyhow!("{bucket}/{}: {e}", digest.hex()))?;
        anyhow::ensure!(
            object.info().size as u64 == size,
            "{bucket}/{} holds {} bytes, the record says {size}",
            digest.hex(),
            object.info().size
        );
        Ok(checked_stream(object, *digest, size))
    }

    /// The bytes of a dataset kept in zone buckets, from the first of
    /// `zones` whose bucket serves them (checked as [`Fleet::output`]
    /// checks outputs); the error names every zone that could not.
    pub async fn dataset(
        &self,
        zones: &[String],
        digest: &Digest,
        size: u64,
    ) -> anyhow::Result<OutputStream> {
        let mut failures = Vec::new();
        for zone in zones {
            match self.output(zone, digest, size).await {
                Ok(stream) => return Ok(stream),
                Err(e) => failures.push(format!("{zone}: {e:#}")),
            }
        }
        anyhow::bail!("no zone bucket serves {digest}: {}", failures.join("; "))
    }

    /// Store an uploaded dataset (the complete bytes in `file`, `size`
    /// bytes with SHA-256 `digest`) in the bucket of each of `zones`
    /// (created if missing), checked against the digest while read. Used
    /// instead of the blob store: the control plane keeps no copy.
    pub async fn store_dataset(
        &self,
        zones: &[String],
        digest: &Digest,
        size: u64,
        file: &std::path::Path,
    ) -> anyhow::Result<()> {
        let chunk = objects::chunk_size(self.max_payload);
        for zone in zones {
            let store = self.zone_store(zone).await?;
            let f = tokio::fs::File::open(file)
                .await
                .map_err(|e| anyhow::anyhow!("reading the upload: {e}"))?;
            let mut reader = objects::Checked::new(f, *digest, size);
            objects::put(&store, digest, chunk, &mut reader).await?;
            lock(&self.data).insert((zone.clone(), *digest));
        }
        Ok(())
    }

    /// `zone`'s object store bucket, created if it does not exist yet.
    async fn zone_store(&self, zone: &str) -> anyhow::Result<object_store::ObjectStore> {
        let bucket = proto::zone_bucket(zone);
        match self.js.get_object_store(&bucket).await {
            Ok(st) => Ok(st),
            Err(_) => self
                .js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("zone bucket {bucket}: {e}")),
        }
    }
}

/// A run output's bytes, chunk by chunk (see [`Fleet::output`]).
pub type OutputStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send>>;

/// `reader`'s bytes in chunks of up to 64 KiB, checked against `digest` and
/// `size` while read: wrong bytes end the stream with an error, never with
/// a clean end.
pub fn checked_stream(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    digest: Digest,
    size: u64,
) -> OutputStream {
    let reader = objects::Checked::new(reader, digest, size);
    Box::pin(futures_util::stream::unfold(
        Some(reader),
        |reader| async move {
            use tokio::io::AsyncReadExt as _;
            let mut reader = reader?;
            let mut buf = vec![0u8; 64 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), Some(reader)))
                }
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}
