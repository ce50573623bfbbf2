//! Executing runs on the fleet (issue 14): the control plane's half of the
//! protocol in `kasbah-fleet` (`host/fleet/src/proto.rs`).
//!
//! - **Live workers**: a task reads the workers KV bucket every
//!   [`LIVE_REFRESH`]; placement only considers zones (and GPU adapter
//!   entries) of workers whose heartbeat is fresh. No live worker in any
//!   zone the run may use → `503 no_capacity`, audited, nothing runs.
//! - **Dispatch**: an admitted run's module bytes go to the modules bucket
//!   (once per digest), its datasets to its zone's bucket (once per digest
//!   and zone), then its [`Job`] to `kasbah.jobs.<zone>` with the run id as
//!   `Nats-Msg-Id`. The run's admission slot is held until its record is
//!   written, so admission bounds runs in flight across the fleet as it does
//!   in one process.
//! - **Results**: one durable consumer (`control-plane`) on the results
//!   stream records each result: the run's one final record and its entries
//!   ([`RunStore::finish_run`]), then wakes a waiting request. A result for
//!   a run already recorded (a job delivered twice) is acknowledged and
//!   dropped: one record per run id. Results wait in the stream while the
//!   control plane is down, and are recorded when it is back: runs that
//!   finished on workers are not interrupted by a control-plane restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, object_store};
use futures_util::StreamExt;
use kasbah_core::api::{PolicyRecord, RunRecord, RunStatus};
use kasbah_core::{Digest, Outcome, RunReport};
use kasbah_fleet::proto::{
    self, HEARTBEAT_TTL, Job, JobDataset, JobResult, MODULES_BUCKET, MSG_ID_HEADER, WORKERS_BUCKET,
    WorkerInfo,
};
use kasbah_runtime::Request;
use kasbah_runtime::kasbah_gpu::AdapterStatus;
use tokio::sync::oneshot;

use super::execute::keep_output;
use super::placement::Placed;
use super::scheduler::Admission;
use super::storage::{Finished, NewRun, RunStore};
use crate::ids::now_ms;
use crate::state::AppState;
use crate::store::lock;

/// How often the live-worker view is refreshed from the workers bucket.
pub const LIVE_REFRESH: Duration = Duration::from_millis(500);
/// The control plane's durable consumer on the results stream.
pub const RESULTS_CONSUMER: &str = "control-plane";
/// Results recorded at once (each waits for a group commit; concurrent
/// ones share it).
const RESULTS_IN_FLIGHT: usize = 256;
/// A run's result is awaited this long past its wall-time limit (a job can
/// be delivered up to `max_deliver` times, each after an ack wait).
const RESULT_GRACE: Duration = Duration::from_secs(120);

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

    /// Start the background tasks: the live-worker view and the results
    /// consumer (which records results into `s`).
    pub async fn start(self: &Arc<Self>, s: AppState) -> anyhow::Result<()> {
        self.refresh_live().await;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIVE_REFRESH).await;
                me.refresh_live().await;
            }
        });
        let stream = self
            .js
            .get_stream(proto::RESULTS_STREAM)
            .await
            .map_err(|e| anyhow::anyhow!("results stream: {e}"))?;
        let consumer = stream
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
            .map_err(|e| anyhow::anyhow!("results consumer: {e}"))?;
        tokio::spawn(record_results(s, consumer));
        Ok(())
    }

    async fn refresh_live(&self) {
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
                })
            })
            .collect()
    }

    /// Run an admitted run on a worker of its zone and return its record
    /// (`None` if it could not be dispatched or recorded, logged).
    pub async fn execute(
        &self,
        s: &AppState,
        run: NewRun,
        policy: Arc<PolicyRecord>,
        request: Request,
        admission: Admission,
        placed: Placed,
    ) -> Option<RunRecord> {
        let _admission = admission;
        let id = run.id.clone();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        lock(&self.pending).insert(id.clone(), run.clone());
        let wait = Duration::from_millis(policy.policy.limits.wall_time_ms) + RESULT_GRACE;
        if let Err(e) = self.dispatch(s, &run, &policy, request, &placed).await {
            lock(&self.waiters).remove(&id);
            lock(&self.pending).remove(&id);
            tracing::error!(run = %id, "dispatching to the fleet: {e}");
            let report = failure(run.module, format!("the fleet could not take the run: {e}"));
            return finish(s, &run, now_ms(), report, placed.stores_output()).await;
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(record)) => Some(record),
            _ => {
                lock(&self.waiters).remove(&id);
                lock(&self.pending).remove(&id);
                // The result may still come (and be recorded then).
                tracing::warn!(run = %id, "no result from the fleet within {wait:?}");
                None
            }
        }
    }

    async fn dispatch(
        &self,
        s: &AppState,
        run: &NewRun,
        policy: &PolicyRecord,
        request: Request,
        placed: &Placed,
    ) -> anyhow::Result<()> {
        let row = &placed.row;
        self.ensure_module(s, &run.module).await?;
        for d in &row.datasets {
            self.ensure_data(s, &row.zone, &d.digest).await?;
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

    async fn ensure_module(&self, s: &AppState, digest: &Digest) -> anyhow::Result<()> {
        if lock(&self.modules).contains(digest) {
            return Ok(());
        }
        let store = self
            .js
            .get_object_store(MODULES_BUCKET)
            .await
            .map_err(|e| anyhow::anyhow!("modules bucket: {e}"))?;
        put_blob(s, &store, digest).await?;
        lock(&self.modules).insert(*digest);
        Ok(())
    }

    async fn ensure_data(&self, s: &AppState, zone: &str, digest: &Digest) -> anyhow::Result<()> {
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
        put_blob(s, &store, digest).await?;
        lock(&self.data).insert(key);
        Ok(())
    }

    fn wake(&self, record: RunRecord) {
        if let Some(tx) = lock(&self.waiters).remove(&record.id) {
            let _ = tx.send(record);
        }
    }
}

/// Put a blob from the blob store into an object store under its digest's
/// hex, unless it is there.
async fn put_blob(
    s: &AppState,
    store: &object_store::ObjectStore,
    digest: &Digest,
) -> anyhow::Result<()> {
    let key = digest.hex();
    if store.info(&key).await.is_ok() {
        return Ok(());
    }
    let bytes = s
        .blobs
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

fn failure(module: Digest, reason: String) -> RunReport {
    RunReport {
        module,
        outcome: Outcome::Denied { reason },
        usage: Default::default(),
        stdout: Default::default(),
        stderr: Default::default(),
        logs: Default::default(),
        denials: Vec::new(),
    }
}

/// Record a run's end (output kept as in-process runs keep it).
async fn finish(
    s: &AppState,
    run: &NewRun,
    started_at: i64,
    report: RunReport,
    stores_output: bool,
) -> Option<RunRecord> {
    let output = keep_output(s, &run.id, &report, stores_output);
    match s
        .runs
        .finish_run(run, started_at, Finished { report, output })
        .await
    {
        Ok((record, _)) => Some(record),
        Err(e) => {
            tracing::error!(run = %run.id, "recording the run: {e}");
            None
        }
    }
}

/// The results consumer: record each result once, wake its waiter.
async fn record_results(s: AppState, consumer: consumer::Consumer<consumer::pull::Config>) {
    loop {
        let messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("results consumer: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let s = s.clone();
        messages
            .for_each_concurrent(RESULTS_IN_FLIGHT, move |msg| {
                let s = s.clone();
                async move {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("results consumer: {e}");
                            return;
                        }
                    };
                    let done = match serde_json::from_slice::<JobResult>(&msg.payload) {
                        Ok(result) => record_one(&s, result).await,
                        Err(e) => {
                            tracing::error!("a result that does not decode, dropped: {e}");
                            true
                        }
                    };
                    let ack = if done {
                        msg.ack().await
                    } else {
                        msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                    };
                    if let Err(e) = ack {
                        tracing::warn!("acknowledging a result: {e}");
                    }
                }
            })
            .await;
    }
}

/// Record one result; `false` if it should be delivered again (the
/// database could not take it now).
async fn record_one(s: &AppState, result: JobResult) -> bool {
    let Some(fleet) = s.fleet.as_ref() else {
        return false;
    };
    let dispatched = lock(&fleet.pending).remove(&result.run_id);
    let run = match dispatched {
        Some(run) => run,
        None => match s.runs.inflight(&result.run_id) {
            Ok(Some(run)) => run,
            Ok(None) => {
                return match s.runs.run(&result.run_id) {
                    // Recorded already (a job delivered twice).
                    Ok(Some(r)) if r.status != RunStatus::Queued => {
                        fleet.wake(r);
                        true
                    }
                    // Not (yet) a run of this control plane: try later,
                    // a bounded number of times (the consumer's max_deliver).
                    _ => false,
                };
            }
            Err(e) => {
                tracing::error!(run = %result.run_id, "reading the run: {e}");
                return false;
            }
        },
    };
    if run
        .residency
        .as_ref()
        .is_some_and(|r| r.zone != result.zone)
    {
        // Never record a result from outside the run's zone.
        tracing::error!(
            run = %run.id,
            "a result from zone {:?} (worker {}) for a run placed in another zone: dropped",
            result.zone,
            result.worker
        );
        return true;
    }
    let stores_output = run
        .residency
        .as_ref()
        .is_some_and(|r| r.store_output_as.is_some());
    s.metrics
        .runs
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: result.report.outcome.kind().into(),
        })
        .inc();
    match finish(s, &run, result.started_at_ms, result.report, stores_output).await {
        Some(record) => {
            tracing::debug!(run = %record.id, worker = %result.worker, "recorded");
            fleet.wake(record);
            true
        }
        // Recorded meanwhile by a duplicate: fine; otherwise retry.
        None => s
            .runs
            .run(&run.id)
            .is_ok_and(|r| r.is_some_and(|r| r.status != RunStatus::Queued)),
    }
}
