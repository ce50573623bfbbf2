//! The zone worker against a real `nats-server` (see `kasbah_fleet::testing`
//! for which binary): jobs published as the control plane would, results
//! read back from `KASBAH_RESULTS`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use kasbah_core::{Digest, Outcome};
use kasbah_fleet::proto::{
    self, ConsumerTiming, JOBS_STREAM, MODULES_BUCKET, MSG_ID_HEADER, RESULTS_STREAM,
    WORKERS_BUCKET, ensure_streams, ensure_zone, job_subject, zone_consumer,
};
use kasbah_fleet::testing::NatsServer;
use kasbah_fleet::{Job, JobResult, WorkerConfig, WorkerInfo};
use kasbah_policy::{Limits, Policy};
use tokio::sync::oneshot;

type Res<T = ()> = anyhow::Result<T>;

/// Every guest crate, as `kasbah_tests::GUESTS` lists them: building the
/// same selection as the end-to-end tests keeps cargo from rebuilding
/// shared guest dependencies with other features between the two.
const GUESTS: &[&str] = &[
    "hello",
    "hostile",
    "net-probe",
    "gpu-matmul",
    "gpu-hostile",
    "minilm-embed",
    "residency-probe",
];

/// Build the guest components once per process (cargo's freshness check
/// when they are up to date) and return one's bytes.
fn guest(name: &str) -> Vec<u8> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
            .args(GUESTS.iter().flat_map(|g| ["-p", g]))
            .status()
            .expect("run cargo to build the guests");
        assert!(status.success(), "building guest components failed");
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("wasm32-wasip2/guest")
    });
    std::fs::read(dir.join(format!("{name}.wasm"))).expect("read guest component")
}

struct Fleet {
    nats: NatsServer,
    js: jetstream::Context,
    hello: Digest,
    hostile: Digest,
    work: tempfile::TempDir,
}

impl Fleet {
    async fn start(timing: ConsumerTiming) -> Res<Fleet> {
        Self::start_on(
            NatsServer::start()?,
            async_nats::ConnectOptions::new(),
            timing,
        )
        .await
    }

    /// On a given server, connecting as the control plane would.
    async fn start_on(
        nats: NatsServer,
        admin: async_nats::ConnectOptions,
        timing: ConsumerTiming,
    ) -> Res<Fleet> {
        let client = admin.connect(nats.url()).await?;
        let js = jetstream::new(client);
        ensure_streams(&js).await?;
        for z in ["zone-a", "zone-b"] {
            ensure_zone(&js, z, timing).await?;
        }
        let modules = js.get_object_store(MODULES_BUCKET).await?;
        let mut digests = Vec::new();
        for name in ["hello", "hostile"] {
            let wasm = guest(name);
            let d = Digest::of(&wasm);
            modules.put(d.hex().as_str(), &mut wasm.as_slice()).await?;
            digests.push(d);
        }
        Ok(Fleet {
            nats,
            js,
            hello: digests[0],
            hostile: digests[1],
            work: tempfile::tempdir()?,
        })
    }

    fn config(
        &self,
        id: &str,
        zones: &[&str],
        capacity: u32,
        timing: ConsumerTiming,
    ) -> WorkerConfig {
        let mut c = WorkerConfig {
            id: id.into(),
            nats: self.nats.url(),
            capacity,
            work_dir: self.work.path().join(id),
            ack_wait_ms: timing.ack_wait.as_millis() as u64,
            max_deliver: timing.max_deliver,
            ..WorkerConfig::default()
        };
        c.zones.node = zones.iter().map(|z| z.to_string()).collect();
        c
    }

    fn job(&self, run_id: &str, zone: &str, module: Digest, input: &str) -> Job {
        Job {
            run_id: run_id.into(),
            tenant: "t1".into(),
            module,
            policy: Policy::default(),
            policy_version: 1,
            zone: zone.into(),
            adapter: None,
            label: vec![zone.into()],
            datasets: Vec::new(),
            input: input.as_bytes().to_vec(),
            content_type: Some("text/plain".into()),
            metadata: BTreeMap::new(),
            deadline_unix_ms: kasbah_fleet::worker::now_ms() + 60_000,
            store_output: false,
        }
    }

    /// A hostile job that sleeps until its wall limit (`deadline_exceeded`).
    fn sleeper(&self, run_id: &str, wall_ms: u64) -> Job {
        let mut j = self.job(run_id, "zone-a", self.hostile, "");
        j.metadata.insert("attack".into(), "sleep".into());
        j.policy = Policy {
            limits: Limits {
                wall_time_ms: wall_ms,
                ..Limits::default()
            },
            ..Policy::default()
        };
        j
    }

    async fn publish(&self, job: &Job) -> Res {
        self.publish_raw(&job.zone, &job.run_id, serde_json::to_vec(job)?)
            .await
    }

    async fn publish_raw(&self, zone: &str, id: &str, body: Vec<u8>) -> Res {
        let mut h = async_nats::HeaderMap::new();
        h.insert(MSG_ID_HEADER, id);
        self.js
            .publish_with_headers(job_subject(zone), h, body.into())
            .await?
            .await?;
        Ok(())
    }

    /// Every result in the results stream within `wait` until `n` arrived.
    async fn results(&self, n: usize, wait: Duration) -> Res<Vec<JobResult>> {
        let stream = self.js.get_stream(RESULTS_STREAM).await?;
        let c = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + wait;
        while out.len() < n && tokio::time::Instant::now() < until {
            let mut batch = c
                .batch()
                .max_messages(n - out.len())
                .expires(Duration::from_millis(500))
                .messages()
                .await?;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
                out.push(serde_json::from_slice::<JobResult>(&m.payload)?);
            }
        }
        Ok(out)
    }

    /// `zone`'s consumer: (jobs not yet delivered, delivered and unacked).
    async fn pending(&self, zone: &str) -> Res<(u64, usize)> {
        let info = self.consumer(zone).await?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    async fn consumer(&self, zone: &str) -> Res<consumer::Info> {
        let stream = self.js.get_stream(JOBS_STREAM).await?;
        Ok(stream.consumer_info(zone_consumer(zone)).await?)
    }

    /// Worker `id`'s heartbeat (of any of its zones' keys).
    async fn heartbeat(&self, id: &str) -> Res<Option<WorkerInfo>> {
        let kv = self.js.get_key_value(WORKERS_BUCKET).await?;
        let mut keys = kv.keys().await?;
        while let Some(k) = keys.next().await {
            let k = k?;
            if k.split_once('.').is_some_and(|(_, w)| w == id)
                && let Some(b) = kv.get(&k).await?
            {
                return Ok(Some(serde_json::from_slice(&b)?));
            }
        }
        Ok(None)
    }
}

/// A worker on its own tokio runtime: `stop` drains it, dropping the
/// handle's runtime kills it mid-run like a lost node.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<anyhow::Result<()>>>,
    rt: Option<tokio::runtime::Runtime>,
}

fn spawn_worker(config: WorkerConfig) -> Res<Running> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (tx, done) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let r = kasbah_fleet::run(config, async move {
            let _ = stopped.await;
        })
        .await;
        let _ = tx.send(r);
    });
    Ok(Running {
        stop: Some(stop),
        done: Some(done),
        rt: Some(rt),
    })
}

impl Running {
    /// Drain and wait for the worker to return.
    async fn shutdown(mut self) -> Res {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let done = self.done.take().expect("once");
        let r = tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(30)))
            .await??;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        r
    }

    /// Kill it: every task of the worker is dropped, its connection closed.
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn wait_for<F, Fut>(what: &str, wait: Duration, mut f: F) -> Res
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<bool>>,
{
    let until = tokio::time::Instant::now() + wait;
    loop {
        if f().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn output_text(r: &JobResult) -> String {
    match &r.report.outcome {
        Outcome::Ok { output } => String::from_utf8_lossy(&output.body).into_owned(),
        o => format!("not ok: {o:?}"),
    }
}

fn short() -> ConsumerTiming {
    ConsumerTiming {
        ack_wait: Duration::from_millis(1500),
        max_deliver: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_a_worker_runs_zone_a_jobs_only_and_heartbeats() -> Res {
    let fleet = Fleet::start(ConsumerTiming::default()).await?;
    let w = spawn_worker(fleet.config("w-a1", &["zone-a"], 2, ConsumerTiming::default()))?;
    wait_for("the heartbeat", Duration::from_secs(20), || async {
        Ok(fleet.heartbeat("w-a1").await?.is_some())
    })
    .await?;
    let info = fleet.heartbeat("w-a1").await?.expect("heartbeat");
    assert_eq!(info.zones, ["zone-a"]);
    assert_eq!(info.capacity, 2);
    assert!((kasbah_fleet::worker::now_ms() - info.heartbeat_unix_ms).abs() < 10_000);

    // Garbage and a job whose subject and zone disagree are terminated.
    fleet
        .publish_raw("zone-a", "junk", b"{not json".to_vec())
        .await?;
    let mut liar = fleet.job("run_liar", "zone-b", fleet.hello, "x");
    liar.label = vec!["zone-b".into()];
    fleet
        .publish_raw("zone-a", "run_liar", serde_json::to_vec(&liar)?)
        .await?;
    let b = fleet.job("run_b", "zone-b", fleet.hello, "for zone b");
    fleet.publish(&b).await?;
    let late = Job {
        deadline_unix_ms: kasbah_fleet::worker::now_ms() - 1,
        ..fleet.job("run_late", "zone-a", fleet.hello, "late")
    };
    fleet.publish(&late).await?;
    let a = fleet.job("run_a", "zone-a", fleet.hello, "hello fleet");
    fleet.publish(&a).await?;

    let mut results = fleet.results(2, Duration::from_secs(30)).await?;
    results.sort_by(|x, y| x.run_id.cmp(&y.run_id));
    let ids: Vec<_> = results.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run_a", "run_late"], "{results:?}");
    let ok = &results[0];
    assert_eq!(ok.worker, "w-a1");
    assert_eq!(ok.zone, "zone-a");
    assert_eq!(output_text(ok), "HELLO FLEET");
    assert_eq!(ok.report.module, fleet.hello);
    assert!(ok.started_at_ms <= ok.finished_at_ms);
    assert!(
        matches!(
            results[1].report.outcome,
            Outcome::DeadlineExceeded { limit_ms: 0 }
        ),
        "{:?}",
        results[1].report.outcome
    );

    // Junk and the liar were terminated (nothing left for zone-a), the
    // zone-b job waits for a zone-b worker, and nothing else was published.
    wait_for(
        "zone-a's queue to empty",
        Duration::from_secs(10),
        || async { Ok(fleet.pending("zone-a").await? == (0, 0)) },
    )
    .await?;
    assert_eq!(fleet.pending("zone-b").await?, (1, 0));
    assert_eq!(fleet.results(5, Duration::from_secs(1)).await?.len(), 2);

    w.shutdown().await?;
    assert_eq!(
        fleet.heartbeat("w-a1").await?,
        None,
        "heartbeat left behind"
    );

    // A zone-b worker takes it.
    let wb = spawn_worker(fleet.config("w-b1", &["zone-b"], 1, ConsumerTiming::default()))?;
    let results = fleet.results(3, Duration::from_secs(30)).await?;
    let r = results
        .iter()
        .find(|r| r.run_id == "run_b")
        .expect("run_b result");
    assert_eq!((r.worker.as_str(), r.zone.as_str()), ("w-b1", "zone-b"));
    assert_eq!(output_text(r), "FOR ZONE B");
    wb.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_bounds_runs_at_once() -> Res {
    let fleet = Fleet::start(ConsumerTiming::default()).await?;
    for i in 0..3 {
        fleet
            .publish(&fleet.sleeper(&format!("run_s{i}"), 1200))
            .await?;
    }
    let w = spawn_worker(fleet.config("w-cap", &["zone-a"], 2, ConsumerTiming::default()))?;
    let results = fleet.results(3, Duration::from_secs(40)).await?;
    assert_eq!(results.len(), 3, "{results:?}");
    for r in &results {
        assert!(
            matches!(r.report.outcome, Outcome::DeadlineExceeded { .. }),
            "{:?}",
            r.report.outcome
        );
    }
    // Most runs overlapping at any instant, from their start/finish times.
    let mut events: Vec<(i64, i32)> = results
        .iter()
        .flat_map(|r| [(r.started_at_ms, 1), (r.finished_at_ms, -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "runs at once: {results:?}");
    w.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_worker_completes_on_another() -> Res {
    let fleet = Fleet::start(short()).await?;
    let w1 = spawn_worker(fleet.config("w-doomed", &["zone-a"], 1, short()))?;
    wait_for("w-doomed's heartbeat", Duration::from_secs(20), || async {
        Ok(fleet.heartbeat("w-doomed").await?.is_some())
    })
    .await?;
    // Longer than the ack wait: only progress messages keep it on w1.
    fleet.publish(&fleet.sleeper("run_k", 6000)).await?;
    wait_for(
        "w-doomed to take the job",
        Duration::from_secs(10),
        || async { Ok(fleet.pending("zone-a").await? == (0, 1)) },
    )
    .await?;
    let w2 = spawn_worker(fleet.config("w-heir", &["zone-a"], 1, short()))?;
    wait_for("w-heir's heartbeat", Duration::from_secs(20), || async {
        Ok(fleet.heartbeat("w-heir").await?.is_some())
    })
    .await?;
    // Still on w1 past an ack wait: its progress messages hold the job.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let info = fleet.consumer("zone-a").await?;
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_redelivered,
            info.delivered.stream_sequence
        ),
        (1, 0, 1),
        "the job left w-doomed while it ran"
    );
    assert_eq!(fleet.results(1, Duration::from_millis(10)).await?.len(), 0);
    w1.kill();
    let results = fleet.results(1, Duration::from_secs(20)).await?;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].run_id, "run_k");
    assert_eq!(results[0].worker, "w-heir");
    assert!(matches!(
        results[0].report.outcome,
        Outcome::DeadlineExceeded { .. }
    ));
    w2.shutdown().await?;
    wait_for("the job's ack", Duration::from_secs(5), || async {
        Ok(fleet.pending("zone-a").await? == (0, 0))
    })
    .await?;
    let all = fleet.results(3, Duration::from_secs(1)).await?;
    assert!(
        all.len() <= 2 && all.iter().all(|r| r.run_id == "run_k"),
        "{all:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_survives_a_nats_restart() -> Res {
    let mut fleet = Fleet::start(ConsumerTiming::default()).await?;
    let w = spawn_worker(fleet.config("w-r", &["zone-a"], 1, ConsumerTiming::default()))?;
    fleet
        .publish(&fleet.job("run_1", "zone-a", fleet.hello, "one"))
        .await?;
    assert_eq!(fleet.results(1, Duration::from_secs(30)).await?.len(), 1);
    fleet.nats.restart()?;
    // The test's own connection reconnects too.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match fleet
            .publish(&fleet.job("run_2", "zone-a", fleet.hello, "two"))
            .await
        {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < until => {
                eprintln!("publish after restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let results = fleet.results(2, Duration::from_secs(30)).await?;
    let two = results
        .iter()
        .find(|r| r.run_id == "run_2")
        .expect("run_2 ran after the restart");
    assert_eq!(output_text(two), "TWO");
    w.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_come_from_the_zone_bucket_verified_and_read_only() -> Res {
    use std::os::unix::fs::PermissionsExt;
    let fleet = Fleet::start(ConsumerTiming::default()).await?;
    let data = b"zone-a only: 42".to_vec();
    let digest = Digest::of(&data);
    let zone_a = fleet
        .js
        .get_object_store(proto::zone_bucket("zone-a"))
        .await?;
    zone_a
        .put(digest.hex().as_str(), &mut data.as_slice())
        .await?;
    // Bytes whose name is not their digest: refused, never mounted.
    let forged = Digest::of(b"what the control plane meant");
    zone_a
        .put(forged.hex().as_str(), &mut b"something else".as_slice())
        .await?;
    let reader = |id: &str, d: Digest| {
        let mut j = fleet.job(id, "zone-a", fleet.hostile, "/datasets/notes.txt");
        j.metadata.insert("attack".into(), "read-outside".into());
        j.policy.datasets = true;
        j.datasets = vec![kasbah_fleet::JobDataset {
            name: "notes.txt".into(),
            digest: d,
        }];
        j
    };
    fleet.publish(&reader("run_read", digest)).await?;
    fleet
        .publish(&reader("run_missing", Digest::of(b"nowhere")))
        .await?;
    fleet.publish(&reader("run_forged", forged)).await?;
    let config = fleet.config("w-data", &["zone-a"], 2, ConsumerTiming::default());
    let cached = config.work_dir.join("datasets").join(digest.hex());
    let w = spawn_worker(config)?;
    let mut results = fleet.results(3, Duration::from_secs(30)).await?;
    results.sort_by(|x, y| x.run_id.cmp(&y.run_id));
    let ids: Vec<_> = results.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run_forged", "run_missing", "run_read"]);
    assert_eq!(output_text(&results[2]), "zone-a only: 42");
    for (r, needle) in [
        (
            &results[0],
            format!("content has digest {}", Digest::of(b"something else")),
        ),
        (&results[1], "not found".to_string()),
    ] {
        match &r.report.outcome {
            Outcome::Denied { reason } => assert!(
                reason.contains(&needle) && reason.contains("kasbah-zone-zone-a/"),
                "{reason}"
            ),
            o => panic!("{}: expected denied, got {o:?}", r.run_id),
        }
    }
    assert_eq!(std::fs::read(&cached)?, data);
    assert_eq!(
        std::fs::metadata(&cached)?.permissions().mode() & 0o777,
        0o400
    );
    w.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_finishes_the_running_job_and_takes_no_more() -> Res {
    let fleet = Fleet::start(ConsumerTiming::default()).await?;
    let w = spawn_worker(fleet.config("w-drain", &["zone-a"], 1, ConsumerTiming::default()))?;
    fleet.publish(&fleet.sleeper("run_d1", 1500)).await?;
    wait_for(
        "w-drain to take the job",
        Duration::from_secs(20),
        || async { Ok(fleet.pending("zone-a").await? == (0, 1)) },
    )
    .await?;
    fleet.publish(&fleet.sleeper("run_d2", 1500)).await?;
    w.shutdown().await?;
    // Returned only once the run's result was out and its job acked.
    let results = fleet.results(2, Duration::from_secs(1)).await?;
    let ids: Vec<_> = results.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["run_d1"]);
    assert_eq!(
        fleet.pending("zone-a").await?,
        (1, 0),
        "run_d2 stays queued"
    );
    assert_eq!(fleet.heartbeat("w-drain").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_credentials_run_their_zone_and_cannot_read_another() -> Res {
    let perms = proto::worker_permissions(&["zone-a".to_string()], "_INBOX_za");
    let conf = format!(
        "authorization {{ users = [\n  {{ user: admin, password: admin-pw }}\n  {{ user: za, \
         password: za-pw, permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }} }} \
         }}\n] }}\n",
        serde_json::to_string(&perms.publish)?,
        serde_json::to_string(&perms.subscribe)?
    );
    let nats = NatsServer::start_with_config(&conf)?;
    let admin =
        async_nats::ConnectOptions::new().user_and_password("admin".into(), "admin-pw".into());
    let fleet = Fleet::start_on(nats, admin, ConsumerTiming::default()).await?;
    let data_a = b"zone-a data".to_vec();
    let data_b = b"zone-b secret".to_vec();
    for (zone, data) in [("zone-a", &data_a), ("zone-b", &data_b)] {
        let store = fleet.js.get_object_store(proto::zone_bucket(zone)).await?;
        store
            .put(Digest::of(data).hex().as_str(), &mut data.as_slice())
            .await?;
    }

    let mut config = fleet.config("w-za", &["zone-a"], 1, ConsumerTiming::default());
    config.nats_user = Some("za".into());
    config.nats_password = Some("za-pw".into());
    config.nats_inbox_prefix = "_INBOX_za".into();
    let w = spawn_worker(config)?;
    let mut j = fleet.job("run_za", "zone-a", fleet.hostile, "/datasets/d");
    j.metadata.insert("attack".into(), "read-outside".into());
    j.policy.datasets = true;
    j.datasets = vec![kasbah_fleet::JobDataset {
        name: "d".into(),
        digest: Digest::of(&data_a),
    }];
    fleet.publish(&j).await?;
    let results = fleet.results(1, Duration::from_secs(30)).await?;
    assert_eq!(results.len(), 1, "no result: {}", fleet.nats.log());
    assert_eq!(results[0].worker, "w-za");
    assert_eq!(output_text(&results[0]), "zone-a data");
    assert!(fleet.heartbeat("w-za").await?.is_some());

    // The same credentials reach nothing of zone-b.
    let za = async_nats::ConnectOptions::new()
        .user_and_password("za".into(), "za-pw".into())
        .custom_inbox_prefix("_INBOX_za")
        .connect(fleet.nats.url())
        .await?;
    let mut js = jetstream::new(za);
    js.set_timeout(Duration::from_secs(1));
    assert!(
        js.get_object_store(proto::zone_bucket("zone-a"))
            .await
            .is_ok()
    );
    assert!(
        js.get_object_store(proto::zone_bucket("zone-b"))
            .await
            .is_err(),
        "zone-b's bucket is visible with zone-a credentials"
    );
    let b_stream = fleet
        .js
        .get_stream(format!("OBJ_{}", proto::zone_bucket("zone-b")))
        .await?;
    let direct = js
        .get_stream_no_info(format!("OBJ_{}", proto::zone_bucket("zone-b")))
        .await?;
    assert!(
        direct.direct_get(1).await.is_err(),
        "direct get of zone-b data"
    );
    assert!(b_stream.get_raw_message(1).await.is_ok(), "admin reads it");
    let jobs = js.get_stream(JOBS_STREAM).await?;
    assert!(
        jobs.get_consumer::<consumer::pull::Config>(&zone_consumer("zone-b"))
            .await
            .is_err(),
        "zone-b's consumer is reachable with zone-a credentials"
    );
    w.shutdown().await?;
    assert_eq!(fleet.heartbeat("w-za").await?, None);
    Ok(())
}
